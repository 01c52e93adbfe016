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

from dedicated.kernels.gemm_config import GemmConfig
from dedicated.kernels.pair_order import PAIR_TILE_K

Table = list[tuple[float, GemmConfig]]  # (max average tokens per expert, config); first fit wins


def _mma(bm, bn, bk, swap, warps, stages, scale_b=False, mode=0, permute_a=False) -> GemmConfig:
    return GemmConfig(block_m=bm, block_n=bn, block_k=bk, swap_ab=swap, mode=mode, num_warps=warps,
                      num_stages=stages, scale_b=scale_b, permute_a=permute_a)


def _pair(bm, bn, warps, stages, permute_a=False, scale_b=True, split_k=1, block_k=128, tma=False,
          tiles_n=1) -> GemmConfig:
    """Unpack mode 2 (pairs in the MMA's registers), swapped: the runs 3-13 winners."""
    return GemmConfig(block_m=bm, block_n=bn, block_k=block_k, swap_ab=True, mode=2, num_warps=warps,
                      num_stages=stages, scale_b=scale_b, permute_a=permute_a, split_k=split_k, tma=tma,
                      tiles_n=tiles_n)


def _wide(bm, bn, warps, stages, scale_b=True, split_k=1) -> GemmConfig:
    """The same over a 256-wide K tile (weights pair-ordered with ``tile_k=256``)."""
    return _pair(bm, bn, warps, stages, scale_b=scale_b, split_k=split_k, block_k=256)


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
# (dedicated.kernels.pair_order), row-major words; the eighth run found the same winners (within 2%).
# The unscaled variant (bias removed through the activation sum, scale per K tile) wins most 4-bit
# decode sizes, the folded one the rest; split-K wins the single token (and 2-bit gate/up at 8
# tokens). At 4 bits, 8-128 tokens, run 10 found the weight tiles better loaded by TMA descriptor
# (tma=True): row-major words then read 1.24-1.27x faster (gate/up) and 1.07-1.08x (down, 32-128
# tokens), close to the K-tile-major layout. Run 13 (two machines): the 4-bit down GEMM at 8 tokens
# 1.08x faster again with two output tiles per program (tiles_n=2; 18.0 -> 16.7 us on both).
# TMA configs cost 17-45 us more CPU per eager call (a descriptor built and encoded per launch):
# they are for callers that replay CUDA graphs, as vLLM does at decode.
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
        (0.1, _pair(16, 128, 4, 3, scale_b=False, split_k=4)),
        (0.5, _pair(16, 128, 4, 3, scale_b=False, tma=True)),
        (1.0, _pair(16, 128, 4, 3, scale_b=True, tma=True)),
        (4.0, _pair(16, 128, 4, 3, scale_b=False, tma=True)),
        (64.0, _pair(64, 128, 4, 3, scale_b=True)),
        (INF, _pair(128, 128, 4, 3, scale_b=True)),
    ],
    (4, 2048, 512): [
        (0.1, _pair(16, 64, 4, 3, scale_b=False)),
        (0.5, _pair(16, 128, 4, 3, scale_b=False, tma=True, tiles_n=2)),
        (4.0, _pair(16, 128, 4, 3, scale_b=True, tma=True)),
        (64.0, _pair(128, 128, 4, 3, scale_b=True)),
        (INF, _pair(128, 256, 8, 3, scale_b=True)),
    ],
}

# Winners for pair-ordered words stored K-tile-major with N-contiguous scales
# (to_pair_order(tile_major=True), n_major_scales): each launch's weight tile is one contiguous
# read. 4-bit rows from run 7 (confirmed by run 8), 2-bit rows from run 8 (after the fix that gave
# 2-bit K-tile-major launches 16-byte weight copies). Against row-major pair order, run 8: 4-bit
# decode (8-128 tokens) 1.06-1.31x faster, 2-bit decode 1-4% faster, prefill 0-13% slower.
# Run 13: 4-bit gate/up at 128 tokens 1.04x faster with two output tiles per program (106.2 ->
# 102.4 us; the 128-row tile alone 109.9), 32 tokens stay on 64-row tiles (tiles_n loses 16% there).
GENERIC_TILE_MAJOR: Table = GENERIC_PAIR_ORDERED

TUNED_TILE_MAJOR: dict[tuple[int, int, int], Table] = {
    (2, 1024, 2048): [
        (0.5, _pair(16, 128, 4, 3, scale_b=False, split_k=4)),
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
        (1.0, _pair(16, 64, 4, 3, scale_b=False)),
        (4.0, _pair(16, 128, 4, 3, scale_b=False, tiles_n=2)),
        (64.0, _pair(64, 128, 4, 3, scale_b=True)),
        (INF, _pair(128, 128, 8, 3, scale_b=True)),
    ],
    (4, 2048, 512): [
        (4.0, _pair(16, 128, 4, 3, scale_b=False)),
        (64.0, _pair(128, 128, 4, 3, scale_b=True)),
        (INF, _pair(128, 256, 8, 3, scale_b=True)),
    ],
}


# Run 8's winners for 2-bit weights pair-ordered over 256-wide K tiles (to_pair_order(tile_k=256)),
# row-major and K-tile-major: each pair MMA is 32 deep, and each tile covers two scale groups. Gate/up
# (K=2048) 1.05-1.12x faster than the best 128-wide layout at 1-128 tokens; the down GEMM (K=512, two
# such tiles) 3-4% slower at 8-128 tokens, 1.12x faster at one token. 4-bit wide tiles were not tuned (at
# 128 rows they need 217 registers): their lookup falls back to the 128-wide tables.
_WIDE_2BIT_DOWN: Table = [  # the same winners on both layouts
    (0.1, _wide(16, 64, 4, 3, scale_b=True)),
    (4.0, _wide(16, 128, 4, 3, scale_b=True)),
    (64.0, _wide(64, 128, 4, 3, scale_b=True)),
    (INF, _wide(128, 256, 8, 2, scale_b=True)),
]

TUNED_WIDE: dict[tuple[int, int, int], Table] = {
    (2, 1024, 2048): [
        (0.1, _wide(16, 128, 4, 3, scale_b=True, split_k=4)),
        (0.5, _wide(16, 128, 4, 3, scale_b=False)),
        (4.0, _wide(16, 128, 4, 3, scale_b=True)),
        (INF, _wide(64, 128, 4, 3, scale_b=True)),
    ],
    (2, 2048, 512): _WIDE_2BIT_DOWN,
}

TUNED_WIDE_TILE_MAJOR: dict[tuple[int, int, int], Table] = {
    (2, 1024, 2048): [
        (0.1, _wide(16, 64, 4, 3, scale_b=True, split_k=4)),
        (0.5, _wide(16, 128, 4, 3, scale_b=False)),
        (4.0, _wide(16, 128, 4, 3, scale_b=True)),
        (64.0, _wide(64, 128, 4, 3, scale_b=True)),
        (INF, _wide(128, 256, 8, 2, scale_b=True)),
    ],
    (2, 2048, 512): _WIDE_2BIT_DOWN,
}

# pair-ordered tables by weight layout: (K-tile-major, pair tile K)
TUNED_BY_LAYOUT: dict[tuple[bool, int], dict[tuple[int, int, int], Table]] = {
    (False, 128): TUNED_PAIR_ORDERED, (True, 128): TUNED_TILE_MAJOR,
    (False, 256): TUNED_WIDE, (True, 256): TUNED_WIDE_TILE_MAJOR,
}

# The layout that decodes fastest (run 8, 8-128 tokens) for each tuned shape, as
# (tile_major, tile_k) for to_pair_order: 2-bit gate/up wants the wide row-major tiles, the rest
# K-tile-major 128-wide ones. Prefill prefers row-major words (by 0-13% over K-tile-major).
PREFERRED_LAYOUT: dict[tuple[int, int, int], tuple[bool, int]] = {
    (2, 1024, 2048): (False, 256),
    (2, 2048, 512): (True, 128),
    (4, 1024, 2048): (True, 128),
    (4, 2048, 512): (True, 128),
}


def preferred_layout(bits: int, n: int, k: int) -> tuple[bool, int]:
    """``(tile_major, tile_k)`` to re-lay a weight with for decode; untuned shapes get K-tile-major
    128-wide tiles, the layout that won three of the four tuned shapes."""
    return PREFERRED_LAYOUT.get((bits, n, k), (True, 128))


def moe_config(avg_tokens_per_expert: float, n: int, k: int, bits: int, pair_ordered: bool = False,
               tile_major: bool = False, pair_tile_k: int = PAIR_TILE_K) -> GemmConfig:
    """The tuned config for this size and weight layout (the generic rule for untuned shapes).

    A layout without a tuned table for the shape borrows the 128-wide table's config with ``block_k``
    set to its tile (and fewer pipeline stages where the deeper tile would not fit shared memory).
    """
    table = TUNED_BY_LAYOUT.get((tile_major, pair_tile_k), {}).get((bits, n, k)) if pair_ordered else None
    if table is not None:
        return _first_fit(table, avg_tokens_per_expert)
    if pair_ordered:
        base = TUNED_TILE_MAJOR if tile_major else TUNED_PAIR_ORDERED
        cfg = _first_fit(base.get((bits, n, k), GENERIC_TILE_MAJOR if tile_major else GENERIC_PAIR_ORDERED),
                         avg_tokens_per_expert)
    else:
        cfg = _first_fit(TUNED.get((bits, n, k), GENERIC), avg_tokens_per_expert)
    return cfg.for_pair_tile(pair_tile_k, bits) if pair_ordered else cfg


def _first_fit(table: Table, avg_tokens_per_expert: float) -> GemmConfig:
    for bound, cfg in table:
        if avg_tokens_per_expert <= bound:
            return cfg
    return table[-1][1]


def all_configs() -> list[GemmConfig]:
    """Every distinct config the tables can return (the GPU tests check each one, on the checkpoint
    layout; pair-ordered weights are checked through the defaults; the 256-wide ones, which read
    pair-ordered weights only, by the wide-tile GPU test)."""
    seen: dict[GemmConfig, None] = {}
    for table in (GENERIC, *TUNED.values(), GENERIC_PAIR_ORDERED, *TUNED_PAIR_ORDERED.values(),
                  *TUNED_TILE_MAJOR.values()):
        for _, cfg in table:
            seen[cfg] = None
    return list(seen)


def wide_configs() -> list[GemmConfig]:
    """Every config of the 256-wide tables (they read weights pair-ordered over 256-wide tiles)."""
    return list(dict.fromkeys(cfg for tables in (TUNED_WIDE, TUNED_WIDE_TILE_MAJOR)
                              for table in tables.values() for _, cfg in table))
