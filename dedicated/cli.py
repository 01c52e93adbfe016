"""The `dedicated` command line: one entry point, one subcommand group per area.

Each area owns its own arguments in a module that exposes ``register(subparsers)``; this file only
lists them, so adding a command never means editing another area's code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (module, what it adds) — imported lazily so `dedicated cluster up` never imports torch.
COMMAND_MODULES: tuple[str, ...] = (
    "dedicated.operator.crdgen",  # crds generate [--check]
    "dedicated.operator.vram.cli",  # vram profile|plan (the VRAM planner by hand)
    "dedicated.localcluster.cli",  # cluster build|up|down|status|env
    "dedicated.quantize_job.humming.cli",  # repack SRC DST (compressed-tensors -> Humming)
    "dedicated.quantize_job.cli",  # quantize run --config FILE (the quantize Job's program)
    "dedicated.operator.runtime",  # run (the operator)
    "dedicated.operator.modelfacts",  # model-facts DIR --claim C (ConfigMap for volume checkpoints)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dedicated",
        description="Dedicated quantized LLM endpoints on Kubernetes: operator, local cluster, "
        "quantization and checkpoint tools.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result = args.handler(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
