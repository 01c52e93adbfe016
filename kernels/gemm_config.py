"""What one dequant-GEMM launch does: its tile shape and schedule (:class:`GemmConfig`), whether that
fits shared memory, and how a requested config is adjusted to the weights it reads.

The kernels themselves are in :mod:`dedicated.kernels.gemm`; the tuned configs per shape in
:mod:`dedicated.kernels.configs`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dedicated.kernels.pair_order import PAIR_TILE_K


@dataclass(frozen=True)
class GemmConfig:
    """Tile shape and schedule of one launch (the benchmark sweeps these on the GPU)."""

    block_m: int = 16
    block_n: int = 64
    block_k: int = 128
    swap_ab: bool = True
    mode: int = 0  # unpack: 0 interleave, 1 pairs into one tile (unpack.py), 2 pairs in MMA registers
    num_warps: int = 4
    num_stages: int = 4
    scale_b: bool = False  # fold the scale into bf16 weights and chain the accumulator (mma only)
    kernel: str = "mma"  # "mma": tensor cores; "fma": CUDA-core GEMV for a few tokens per block
    permute_a: bool = False  # mode 2: reorder activation columns once per call so each pair's are contiguous
    split_k: int = 1  # programs per output tile, each over 1/split_k of K, summed by bf16 atomic adds
    max_regs: int | None = None  # cap on registers per thread (ptx .maxnreg): more CTAs per SM, or spills
    tma: bool = False  # mode 2: weight tiles by the tensor memory accelerator (one bulk copy per tile)
    tiles_n: int = 1  # output tiles per program along N, one pipelined loop over all their K steps

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if v <= 0 or v & (v - 1):
                raise ValueError(f"{name} must be a positive power of two, got {v}")
        if self.kernel not in ("mma", "fma"):
            raise ValueError(f"kernel must be 'mma' or 'fma', got {self.kernel!r}")
        if self.kernel == "mma" and (self.block_m < 16 or self.block_n < 16 or self.block_k < 16):
            raise ValueError("tensor-core tiles need block_m, block_n, block_k >= 16")
        if self.mode not in (0, 1, 2):
            raise ValueError(f"unpack mode must be 0, 1 or 2, got {self.mode}")
        if self.permute_a and (self.mode != 2 or self.kernel != "mma"):
            raise ValueError("permute_a only applies to unpack mode 2")
        if self.split_k < 1 or self.split_k & (self.split_k - 1):
            raise ValueError(f"split_k must be a positive power of two, got {self.split_k}")
        if self.kernel == "fma" and self.split_k > 1:
            raise ValueError("split_k applies to the tensor-core kernel only")
        if self.tma and (self.kernel != "mma" or self.mode != 2):
            raise ValueError("tma loads the weights of unpack mode 2 only")
        if self.tiles_n < 1 or self.tiles_n & (self.tiles_n - 1):
            raise ValueError(f"tiles_n must be a positive power of two, got {self.tiles_n}")
        if self.tiles_n > 1 and self.kernel != "mma":
            raise ValueError("tiles_n applies to the tensor-core kernel only")
        if self.max_regs is not None and not 24 <= self.max_regs <= 255:
            raise ValueError(f"max_regs must lie in [24, 255], got {self.max_regs}")

    def pair_mma_too_short(self, bits: int) -> bool:
        """A pair-register (mode 2) tile gives each pair MMA ``2 * block_k * bits / 32`` K: under 16,
        too shallow for a bf16 tensor-core MMA."""
        return self.kernel == "mma" and self.mode == 2 and 2 * self.block_k * bits // 32 < 16

    def spans_two_groups(self, group_size: int, bits: int, pair_ordered: bool) -> bool:
        """A pair-register tile over pair-ordered weights may cover two scale groups: each pair MMA
        reads ``2 * block_k * bits / 32`` contiguous K columns, which then lie inside one group, and
        the kernel switches scale half-way through the pairs. Weights in the checkpoint layout cannot
        (``permute_a`` included): each pair takes a field of every word of the tile, so of both groups."""
        pair_k = 2 * self.block_k * bits // 32
        return (self.kernel == "mma" and self.mode == 2 and pair_ordered
                and self.block_k == 2 * group_size and group_size % pair_k == 0)

    def for_group(self, group_size: int, bits: int, pair_ordered: bool = False) -> "GemmConfig":
        """Clamp the K tile so that no MMA straddles a scale group; a pair-register config (mode 2)
        whose clamped tile is too short for a pair MMA falls back to the interleave unpack."""
        wide = self.spans_two_groups(group_size, bits, pair_ordered)
        cfg = self if self.block_k <= group_size or wide else replace(self, block_k=group_size)
        if cfg.pair_mma_too_short(bits):
            cfg = replace(cfg, mode=0, permute_a=False, tma=False)
        return cfg

    def for_pair_tile(self, tile_k: int, bits: int) -> "GemmConfig":
        """This config reading weights pair-ordered over ``tile_k``-wide K tiles: ``block_k`` set to
        the tile, and fewer pipeline stages where the deeper tile would not fit shared memory."""
        if self.block_k == tile_k:
            return self
        cfg = replace(self, block_k=tile_k)
        while cfg.num_stages > 2 and pipeline_bytes(cfg, bits) > SHARED_MEMORY_BUDGET:
            cfg = replace(cfg, num_stages=cfg.num_stages - 1)
        return cfg

    def short(self) -> str:
        if self.kernel == "fma":
            return f"fma-m{self.block_m}n{self.block_n}k{self.block_k}w{self.num_warps}p{self.num_stages}"
        return (
            f"m{self.block_m}n{self.block_n}k{self.block_k}{'s' if self.swap_ab else ''}"
            f"u{self.mode}{'b' if self.scale_b else ''}{'a' if self.permute_a else ''}w{self.num_warps}p{self.num_stages}"
            f"{f'-sk{self.split_k}' if self.split_k > 1 else ''}{f'-r{self.max_regs}' if self.max_regs else ''}{'-tma' if self.tma else ''}"
            f"{f'-t{self.tiles_n}' if self.tiles_n > 1 else ''}"
        )


SHARED_MEMORY_BUDGET = 200 * 1024  # of an H100 SM's 227 KB per block, with room for the epilogue


def pipeline_bytes(cfg: GemmConfig, bits: int) -> int:
    """Shared memory the software pipeline's buffers take: per stage one activation tile (bf16) and
    one packed weight tile (an estimate: Triton adds a little for barriers and the epilogue)."""
    return cfg.num_stages * (cfg.block_m * cfg.block_k * 2 + cfg.block_n * cfg.block_k * bits // 8)


def resolve_config(cfg: GemmConfig, group_size: int, bits: int, pair_ordered: bool,
                   pair_tile_k: int = PAIR_TILE_K) -> GemmConfig:
    """The config a launch really uses, and a clear error where it cannot read the weights' layout
    (``pair_tile_k``: the K tile the pair-ordered weights were laid out over)."""
    cfg = cfg.for_group(group_size, bits, pair_ordered)
    if pair_ordered:
        if group_size % PAIR_TILE_K:
            raise ValueError(f"pair-ordered weights need a scale group that is a multiple of {PAIR_TILE_K}, "
                             f"got {group_size}")
        if cfg.kernel != "mma" or cfg.mode != 2 or cfg.block_k != pair_tile_k:
            raise ValueError(f"pair-ordered weights are read by unpack mode 2 with block_k equal to their layout's "
                             f"K tile ({pair_tile_k}), got {cfg.short()}")
        cfg = replace(cfg, permute_a=False)  # the weights' layout already matches natural activations
    return cfg


def default_dense_config(m: int, n: int, k: int, bits: int) -> GemmConfig:
    """Swapped pair-register tiles at every size (the MoE sweep's winners, kernels/configs.py):
    16 tokens per tile for decode, 64-128 with reordered activation columns for prefill (dropped
    by :func:`resolve_config` for pair-ordered weights, which need no reordering)."""
    if m <= 32:
        return GemmConfig(block_m=16, block_n=128, block_k=128, swap_ab=True, mode=2, num_warps=4, num_stages=3,
                          scale_b=True)
    return GemmConfig(block_m=64 if m <= 2048 else 128, block_n=128, block_k=128, swap_ab=True, mode=2,
                      num_warps=4 if m <= 2048 else 8, num_stages=3, scale_b=True, permute_a=True)
