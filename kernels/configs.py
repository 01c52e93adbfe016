"""Launch configurations for the MoE dequant-GEMM, by shape and average tokens per expert.

The tables are the winners of ``python benchmarks/bench_kernels.py --sweep`` on the GPU machine
(an H100; see docs/benchmarks-kernels.md for the run). ``kernel="fma"`` configs are not in any
table: that kernel has not yet been timed on a GPU. A lookup table rather than
``triton.autotune`` so that serving and validation never pay for benchmarking at first call and
every launch is reproducible. Shapes without a tuned table use the generic rule, which is the
shape-independent part of the same measurements.
"""

from __future__ import annotations

from dedicated.kernels.gemm import GemmConfig

Table = list[tuple[float, GemmConfig]]  # (max average tokens per expert, config); first fit wins


def _mma(bm, bn, bk, swap, warps, stages, scale_b=False) -> GemmConfig:
    return GemmConfig(block_m=bm, block_n=bn, block_k=bk, swap_ab=swap, mode=0, num_warps=warps,
                      num_stages=stages, scale_b=scale_b)


INF = float("inf")

# Sweep winners of the second H100 run (docs/benchmarks-kernels.md). Bounds are average tokens per
# expert, M * top_k / E: 1 token ~ 0.03, 8 ~ 0.25, 32 ~ 1, 128 ~ 4, 2048 ~ 64, 8192 ~ 256 for
# 256 experts top-8. Unpack mode 0 everywhere (the pair mode lost at every shape in run 1); the
# scale-folded, chained-accumulator variant (scale_b) won almost everywhere in run 2.
GENERIC: Table = [
    (4.0, _mma(16, 64, 128, True, 4, 3, scale_b=True)),
    (64.0, _mma(64, 128, 64, False, 4, 4, scale_b=True)),
    (INF, _mma(128, 128, 64, False, 8, 3, scale_b=True)),
]

# keyed by (bits, N, K): Qwen3.6-35B-A3B experts, gate/up fused (N=1024, K=2048) and down (2048, 512)
TUNED: dict[tuple[int, int, int], Table] = {
    (2, 1024, 2048): [
        (4.0, _mma(16, 64, 128, True, 4, 3, scale_b=True)),
        (64.0, _mma(64, 128, 64, False, 4, 4, scale_b=True)),
        (INF, _mma(128, 128, 64, False, 8, 3, scale_b=True)),
    ],
    (4, 1024, 2048): [
        (0.1, _mma(16, 64, 128, True, 4, 3)),
        (4.0, _mma(16, 64, 128, True, 4, 3, scale_b=True)),
        (64.0, _mma(64, 128, 64, False, 4, 4, scale_b=True)),
        (INF, _mma(128, 128, 64, False, 8, 3, scale_b=True)),
    ],
    (2, 2048, 512): [
        (0.1, _mma(16, 64, 128, True, 4, 3)),
        (4.0, _mma(16, 128, 128, True, 4, 3, scale_b=True)),
        (64.0, _mma(64, 128, 64, False, 4, 4, scale_b=True)),
        (INF, _mma(128, 256, 64, False, 8, 3, scale_b=True)),
    ],
    (4, 2048, 512): [
        (0.1, _mma(16, 64, 128, True, 4, 3)),
        (0.5, _mma(16, 64, 128, True, 4, 3, scale_b=True)),
        (4.0, _mma(16, 128, 128, True, 4, 3, scale_b=True)),
        (INF, _mma(128, 128, 64, False, 8, 3, scale_b=True)),
    ],
}


def moe_config(avg_tokens_per_expert: float, n: int, k: int, bits: int) -> GemmConfig:
    table = TUNED.get((bits, n, k), GENERIC)
    for bound, cfg in table:
        if avg_tokens_per_expert <= bound:
            return cfg
    return table[-1][1]


def all_configs() -> list[GemmConfig]:
    """Every distinct config the tables can return (the GPU tests check each one)."""
    seen: dict[GemmConfig, None] = {}
    for table in (GENERIC, *TUNED.values()):
        for _, cfg in table:
            seen[cfg] = None
    return list(seen)
