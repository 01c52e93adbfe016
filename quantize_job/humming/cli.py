"""`dedicated repack SRC DST`: compressed-tensors pack-quantized -> Humming, from the shell."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "repack",
        help="convert a compressed-tensors pack-quantized checkpoint to Humming format",
        description="Repack a compressed-tensors pack-quantized checkpoint (for example GSQ's "
        "2-bit export) into an exact-width Humming checkpoint for vLLM. Streams shard by shard; "
        "DST must not exist and appears only when the conversion is complete.",
    )
    parser.add_argument("src", help="source checkpoint directory (pack-quantized)")
    parser.add_argument("dst", help="destination directory (must not exist)")
    parser.add_argument("--bits", type=int, choices=(2, 3, 4, 8), default=None,
                        help="Humming bit width (default: the width the source declares; "
                        "narrower widths check that every code fits)")
    parser.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                        help="extra ignore entry for config.json ('re:REGEX' or a substring); "
                        "repeatable")
    parser.add_argument("--no-default-ignore", action="store_true",
                        help="do not add the design card's ignore patterns (lm_head, attention, "
                        "linear attention, vision, MTP, router gates, shared experts)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at module level: `dedicated` registers every command's parser, and the
    # Humming modules import torch, which `dedicated run` (the operator) must never load.
    from dedicated.quantize_job.humming.format import DEFAULT_IGNORE
    from dedicated.quantize_job.humming.repack import repack_checkpoint

    try:
        report = repack_checkpoint(
            args.src, args.dst, bits=args.bits, extra_ignore=args.ignore,
            default_ignore=() if args.no_default_ignore else DEFAULT_IGNORE,
            progress=lambda msg: print(f"[repack] {msg}", file=sys.stderr),
        )
    except (ValueError, OSError) as exc:
        print(f"dedicated repack: error: {exc}", file=sys.stderr)
        return 2
    print(f"repacked {report.quantized_modules} quantized modules "
          f"({report.expert_modules} routed-expert projections) and copied "
          f"{report.copied_tensors} tensors across {report.shards} shard(s) into {report.dst}")
    print(f"uint{report.bits}, group {report.group_size}: "
          f"{report.bits_per_weight:.4f} bits per quantized weight (codes + bf16 scales)")
    return 0
