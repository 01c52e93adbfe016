#!/usr/bin/env python3
"""One MoE dequant-GEMM shape, ours beside Humming's, for Nsight Compute to read the counters of.

The benchmark (bench_kernels.py) says how long each kernel takes; this says why: run it under
``ncu`` and compare stall reasons, issue activity, occupancy and DRAM throughput of the two
kernels on the same packed weights and routing. Warm-up (compiles, Humming's transform) happens
before ``cudaProfilerStart``, so with ``--profile-from-start off`` only the measured calls are
profiled:

    ncu --profile-from-start off --clock-control none --set full \\
        python3 benchmarks/profile_moe_ncu.py --bits 4 --kind gate_up --tokens 8 128

``benchmarks/run_ncu_on_gpu.sh`` does that on the lent GPU machine and keeps the reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_kernels as bk  # noqa: E402


def main() -> int:
    import torch

    from dedicated.kernels.moe_gemm import default_moe_config, moe_align, moe_gemm
    from dedicated.kernels.pair_order import n_major_scales, to_pair_order

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--kind", choices=sorted(bk.SHAPES), default="gate_up")
    p.add_argument("--tokens", type=int, nargs="+", default=[8, 128])
    p.add_argument("--skip-humming", action="store_true")
    p.add_argument("--split-k", type=int, default=None, help="override the table's split_k for ours")
    p.add_argument("--tile-major", action="store_true", help="ours on K-tile-major weights, N-contiguous scales")
    args = p.parse_args()

    n, k = bk.SHAPES[args.kind]
    packed, scales = bk.random_packed(n, k, args.bits, seed=1)
    packed_po = to_pair_order(packed, args.bits, tile_major=args.tile_major)
    scales_po = n_major_scales(scales) if args.tile_major else scales
    hum = None if args.skip_humming else bk.Humming(args.kind, args.bits, packed, scales)
    calls = []
    for m in args.tokens:
        ids, weights = bk.routings(m, 1, seed=m)[0]
        rows = m if args.kind == "gate_up" else m * bk.TOP_K
        x = torch.randn(rows, k, device=bk.DEVICE).to(torch.bfloat16)
        out = torch.empty(m * bk.TOP_K, n, device=bk.DEVICE, dtype=torch.bfloat16)
        cfg = default_moe_config(m, bk.TOP_K, bk.E, n, k, args.bits, pair_ordered=True)
        if args.split_k:
            cfg = dataclasses.replace(cfg, split_k=args.split_k)
        r = moe_align(ids, bk.E, cfg.block_m)
        tw = weights if args.kind == "down" else None
        calls.append((f"ours {cfg.short()} M={m}", lambda x=x, r=r, tw=tw, out=out, cfg=cfg: moe_gemm(
            x, packed_po, scales_po, r, args.bits, bk.GROUP, topk_weights=tw, config=cfg, out=out, pair_ordered=True)))
        if hum is not None:
            hr = moe_align(ids, bk.E, hum.block_m(m))
            calls.append((f"humming M={m}", lambda x=x, hr=hr, out=out: hum.call(x, hr, out)))
    for _, fn in calls:  # compile and warm up outside the profiled range
        fn()
        fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for name, fn in calls:
        torch.cuda.nvtx.range_push(name)
        fn()
        torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print("profiled, in order:", *[name for name, _ in calls], sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
