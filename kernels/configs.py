"""Launch configurations for the MoE dequant-GEMM, by shape and average tokens per expert.

The tables are the winners of ``python benchmarks/bench_kernels.py --sweep`` on the GPU machine
(an H100; see docs/benchmarks-kernels.md for the runs). ``kernel="fma"`` configs are in no
table: timed in run 3, the CUDA-core kernel lost every shape (1.3-15x slower than the best).
Weights in the pair-ordered layout (:mod:`dedicated.kernels.pair_order`) have tables of their
own. A lookup table rather than ``triton.autotune`` so that serving and validation never pay for
benchmarking at first call and every launch is reproducible. Shapes without a tuned table use the
generic rule, which is the shape-independent part of the same measurements.
"""

from __future__ import annotations

from dataclasses import replace

from dedicated.kernels.gemm import GemmConfig
from dedicated.kernels.pair_order import PAIR_TILE_K

Table = list[tuple[float, GemmConfig]]  # (max average tokens per expert, config); first fit wins


def _mma(bm, bn, bk, swap, warps, stages, scale_b=False, mode=0, permute_a=False) -> GemmConfig:
    return GemmConfig(block_m=bm, block_n=bn, block_k=bk, swap_ab=swap, mode=mode, num_warps=warps,
                      num_stages=stages, scale_b=scale_b, permute_a=permute_a)


def _pair(bm, bn, warps, stages, permute_a=False, scale_b=True, split_k=1) -> GemmConfig:
    """Unpack mode 2 (pairs in the MMA's registers), swapped, 128-wide K tile: the runs 3-7 winners."""
    return GemmConfig(block_m=bm, block_n=bn, block_k=128, swap_ab=True, mode=2, num_warps=warps, num_stages=stages,
                      scale_b=scale_b, permute_a=permute_a, split_k=split_k)


INF = float("inf")

# Sweep winners of the third H100 run (docs/benchmarks-kernels.md). Bounds are average tokens per
# expert, M * top_k / E: 1 token ~ 0.03, 8 ~ 0.25, 32 ~ 1, 128 ~ 4, 2048 ~ 64, 8192 ~ 256 for
# 256 experts top-8. Pair-register unpack (mode 2) with the scale folded won every shape but the
# single-token gate/up, where run 2's interleave unpack (mode 0) stays 1.05-1.35x faster; prefill
# tiles reorder the activation columns once per call (permute_a). Where two configs were within
# 1% of each other, the one already in the table for a neighbouring size is kept.
GENERIC: Table = [
    (4.0, _pair(16, 128, 4, 3)),
    (64.0, _pair(64, 128, 4, 3, permute_a=True)),
    (INF, _pair(128, 128, 8, 3, permute_a=True)),
]

# keyed by (bits, N, K): Qwen3.6-35B-A3B experts, gate/up fused (N=1024, K=2048) and down (2048, 512)
TUNED: dict[tuple[int, int, int], Table] = {
    (2, 1024, 2048): [
        (0.1, _mma(16, 64, 128, True, 4, 3, scale_b=True)),
        (1.0, _pair(16, 128, 4, 3)),
        (4.0, _pair(16, 256, 8, 3)),
        (INF, _pair(128, 128, 8, 3, permute_a=True)),
    ],
    (4, 1024, 2048): [
        (0.1, _mma(16, 64, 128, True, 4, 3)),
        (4.0, _pair(16, 128, 4, 3)),
        (INF, _pair(128, 128, 8, 3, permute_a=True)),
    ],
    (2, 2048, 512): [
        (0.1, _pair(16, 64, 4, 4)),
        (4.0, _pair(16, 128, 4, 3)),
        (64.0, _pair(64, 128, 4, 3, permute_a=True)),
        (INF, _pair(128, 256, 8, 3, permute_a=True)),
    ],
    (4, 2048, 512): [
        (0.1, _pair(16, 64, 4, 4)),
        (1.0, _pair(16, 64, 4, 3)),
        (4.0, _pair(16, 128, 4, 3)),
        (64.0, _pair(64, 128, 4, 3, permute_a=True)),
        (INF, _pair(128, 256, 8, 3, permute_a=True)),
    ],
}


# Winners of the seventh H100 run (docs/benchmarks-kernels.md) for weights re-laid into pair order
# (dedicated.kernels.pair_order), row-major words. The unscaled variant (bias removed through the
# activation sum, scale per K tile) wins most 4-bit decode sizes, the folded one the rest; split-K
# wins the single token (and 2-bit gate/up at 8 tokens, 4-bit gate/up up to 128).
GENERIC_PAIR_ORDERED: Table = [
    (4.0, _pair(16, 128, 4, 3, scale_b=True)),
    (64.0, _pair(64, 128, 4, 3, scale_b=True)),
    (INF, _pair(128, 128, 8, 3, scale_b=True)),
]

TUNED_PAIR_ORDERED: dict[tuple[int, int, int], Table] = {
    (2, 1024, 2048): [
        (0.1, _pair(16, 64, 4, 3, scale_b=True, split_k=4)),
        (0.5, _pair(16, 128, 4, 3, scale_b=False, split_k=2)),
        (4.0, _pair(16, 128, 4, 3, scale_b=False)),
        (64.0, _pair(128, 128, 8, 3, scale_b=True)),
        (INF, _pair(128, 256, 8, 3, scale_b=True)),
    ],
    (2, 2048, 512): [
        (0.1, _pair(16, 64, 4, 3, scale_b=True)),
        (4.0, _pair(16, 128, 4, 3, scale_b=True)),
        (64.0, _pair(64, 128, 4, 3, scale_b=True)),
        (INF, _pair(128, 256, 8, 3, scale_b=True)),
    ],
    (4, 1024, 2048): [
        (1.0, _pair(16, 128, 4, 3, scale_b=False, split_k=4)),
        (4.0, _pair(16, 128, 4, 4, scale_b=False, split_k=2)),
        (64.0, _pair(64, 128, 4, 3, scale_b=True)),
        (INF, _pair(128, 128, 4, 3, scale_b=True)),
    ],
    (4, 2048, 512): [
        (0.1, _pair(16, 64, 4, 3, scale_b=False)),
        (4.0, _pair(16, 128, 4, 3, scale_b=False)),
        (64.0, _pair(128, 128, 4, 3, scale_b=True)),
        (INF, _pair(128, 256, 8, 3, scale_b=True)),
    ],
}

# The same run's winners for pair-ordered words stored K-tile-major with N-contiguous scales
# (to_pair_order(tile_major=True), n_major_scales): each launch's weight tile is one contiguous
# read. 1.08-1.30x faster than row-major pair order for 4-bit decode (8-128 tokens), 3-18% slower
# at 2 bits and for prefill (docs/benchmarks-kernels.md). The 2-bit rows were timed before a fix that
# gave 2-bit K-tile-major launches 16-byte weight copies; re-time them at the next GPU run.
GENERIC_TILE_MAJOR: Table = GENERIC_PAIR_ORDERED

TUNED_TILE_MAJOR: dict[tuple[int, int, int], Table] = {
    (2, 1024, 2048): [
        (0.1, _pair(16, 64, 4, 3, scale_b=True, split_k=4)),
        (0.5, _pair(16, 128, 4, 3, scale_b=True, split_k=4)),
        (4.0, _pair(16, 128, 4, 3, scale_b=True)),
        (64.0, _pair(64, 128, 4, 3, scale_b=True)),
        (INF, _pair(128, 128, 8, 3, scale_b=True)),
    ],
    (2, 2048, 512): [
        (0.1, _pair(16, 128, 4, 3, scale_b=False, split_k=4)),
        (4.0, _pair(16, 128, 4, 3, scale_b=True)),
        (64.0, _pair(64, 128, 4, 3, scale_b=True)),
        (INF, _pair(128, 256, 8, 3, scale_b=True)),
    ],
    (4, 1024, 2048): [
        (0.1, _pair(16, 128, 4, 3, scale_b=False, split_k=4)),
        (0.5, _pair(16, 128, 4, 4, scale_b=False)),
        (4.0, _pair(16, 64, 4, 3, scale_b=False)),
        (64.0, _pair(64, 128, 4, 3, scale_b=True)),
        (INF, _pair(128, 128, 8, 3, scale_b=True)),
    ],
    (4, 2048, 512): [
        (4.0, _pair(16, 128, 4, 3, scale_b=False)),
        (64.0, _pair(128, 128, 4, 3, scale_b=True)),
        (INF, _pair(128, 256, 8, 3, scale_b=True)),
    ],
}


def moe_config(avg_tokens_per_expert: float, n: int, k: int, bits: int, pair_ordered: bool = False,
               tile_major: bool = False, pair_tile_k: int = PAIR_TILE_K) -> GemmConfig:
    """The tuned config for this size and weight layout (the generic rule for untuned shapes).

    The pair-ordered tables are for weights laid out over 128-wide K tiles; for another tile the
    same config reads it with ``block_k`` set to that tile.
    """
    cfg = _lookup(avg_tokens_per_expert, n, k, bits, pair_ordered, tile_major)
    if pair_ordered and cfg.block_k != pair_tile_k:
        cfg = replace(cfg, block_k=pair_tile_k)
        while cfg.num_stages > 2 and pipeline_bytes(cfg, bits) > SHARED_MEMORY_BUDGET:
            cfg = replace(cfg, num_stages=cfg.num_stages - 1)  # a deeper tile holds fewer stages
    return cfg


SHARED_MEMORY_BUDGET = 200 * 1024  # of an H100 SM's 227 KB per block, with room for the epilogue


def pipeline_bytes(cfg: GemmConfig, bits: int) -> int:
    """Shared memory the software pipeline's buffers take: per stage one activation tile (bf16) and
    one packed weight tile (an estimate: Triton adds a little for barriers and the epilogue)."""
    return cfg.num_stages * (cfg.block_m * cfg.block_k * 2 + cfg.block_n * cfg.block_k * bits // 8)


def _lookup(avg_tokens_per_expert: float, n: int, k: int, bits: int, pair_ordered: bool,
            tile_major: bool) -> GemmConfig:
    if pair_ordered and tile_major:
        table = TUNED_TILE_MAJOR.get((bits, n, k), GENERIC_TILE_MAJOR)
    elif pair_ordered:
        table = TUNED_PAIR_ORDERED.get((bits, n, k), GENERIC_PAIR_ORDERED)
    else:
        table = TUNED.get((bits, n, k), GENERIC)
    for bound, cfg in table:
        if avg_tokens_per_expert <= bound:
            return cfg
    return table[-1][1]


def all_configs() -> list[GemmConfig]:
    """Every distinct config the tables can return (the GPU tests check each one, on the checkpoint
    layout; pair-ordered weights are checked through the defaults)."""
    seen: dict[GemmConfig, None] = {}
    for table in (GENERIC, *TUNED.values(), GENERIC_PAIR_ORDERED, *TUNED_PAIR_ORDERED.values(),
                  *TUNED_TILE_MAJOR.values()):
        for _, cfg in table:
            seen[cfg] = None
    return list(seen)
