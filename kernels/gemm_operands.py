"""The dequant-GEMM's operands as a launch reads them: shape and layout checks with errors that name
the expected layout, the weights' strides, their TMA descriptor, and the activation column order.
"""

from __future__ import annotations

import torch
from triton.tools.tensor_descriptor import TensorDescriptor

from dedicated.kernels.dequant import check_packed
from dedicated.kernels.gemm_config import GemmConfig
from dedicated.kernels.pair_order import PAIR_TILE_K, pair_positions


def weight_descriptor(packed: torch.Tensor, cfg: GemmConfig, bits: int, is_moe: bool, tiled: bool) -> TensorDescriptor:
    """A TMA descriptor whose box is one launch's weight tile: ``[1, BLOCK_N, words]`` of
    ``[E, N, K*bits/32]`` or ``[1, 1, BLOCK_N, words]`` of K-tile-major ``[E, K/BLOCK_K, N, words]``
    (a dense weight gets a leading expert dimension of one)."""
    w = packed if is_moe else packed.unsqueeze(0)
    box = weight_tile_box(cfg, bits, tiled)
    if box[-1] * 4 % 16 or any(st * 4 % 16 for st in w.stride()[:-1]) or w.data_ptr() % 16:
        raise ValueError(f"tma needs 16-byte aligned weight rows and tiles ({box[-1]} words per tile, strides "
                         f"{tuple(w.stride())} words); use a config without tma for these weights")
    return TensorDescriptor(w, list(w.shape), list(w.stride()), box)


def weight_tile_box(cfg: GemmConfig, bits: int, tiled: bool) -> list[int]:
    """The TMA box of one launch's weight tile, in words (the AOT compile names the same type)."""
    words = cfg.block_k * bits // 32
    return [1, 1, cfg.block_n, words] if tiled else [1, cfg.block_n, words]


def check_gemm_weights(packed: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int, experts: bool,
                       pair_ordered: bool, pair_tile_k: int = PAIR_TILE_K) -> tuple[int, int, bool]:
    """``(N, K, tiled)`` of a GEMM's weights: row-major words, or (pair-ordered only) K-tile-major,
    told apart by their rank."""
    lead, lead_shape = (1, "E, ") if experts else (0, "")
    tiled = packed.dim() == lead + 3
    if packed.dim() != lead + 2 and not (tiled and pair_ordered):
        raise ValueError(f"packed weights must be [{lead_shape}N, K*bits/32] (or K-tile-major pair-ordered "
                         f"[{lead_shape}K/tile_k, N, tile_k*bits/32]), got {tuple(packed.shape)}")
    if tiled and packed.stride(-2) != packed.shape[-1]:
        raise ValueError("K-tile-major weights must have contiguous rows (use to_pair_order(..., tile_major=True))")
    if tiled and packed.shape[-1] * 32 // bits != pair_tile_k:
        raise ValueError(f"K-tile-major weights hold {packed.shape[-1] * 32 // bits}-wide K tiles but "
                         f"pair_tile_k={pair_tile_k} was given")
    n, k = check_packed(packed, scales, bits, group_size, tiled)
    return n, k, tiled


def weight_strides(packed: torch.Tensor, tiled: bool) -> tuple[int, int]:
    """(row stride, K-tile stride) in words, for one matrix. The kernel reads the row stride only for
    row-major ``[..., N, K*bits/32]`` words (their K tiles follow each other: a constexpr step) and
    the K-tile stride only for K-tile-major ``[..., K/128, N, 128*bits/32]`` ones (their rows are
    one tile apart: a constexpr step, see :func:`check_gemm_weights`)."""
    return packed.stride(-2), packed.stride(-3) if tiled else 0


def check_activations(x: torch.Tensor, k: int, packed: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"activations must be [M, K], got {tuple(x.shape)}")
    if x.shape[1] != k:
        raise ValueError(f"activations have K={x.shape[1]} but the packed weight holds K={k}")
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"activations must be bf16 or fp16, got {x.dtype}")
    if x.device != packed.device:
        raise ValueError(f"activations are on {x.device} but weights on {packed.device}")


def prepare_activations(x: torch.Tensor, cfg: GemmConfig, bits: int) -> torch.Tensor:
    """The activations as the launch reads them: column-reordered if the (resolved) config says so."""
    return permute_pair_columns(x, bits, cfg.block_k) if cfg.permute_a else x


def permute_pair_columns(x: torch.Tensor, bits: int, block_k: int) -> torch.Tensor:
    """Reorder ``x``'s columns within each ``block_k`` tile into unpack mode 2's pair order.

    Tile column ``k = c * PW + f`` (word ``c``, field ``f``) moves to
    :func:`dedicated.kernels.pair_order.pair_positions` ``[k]``. One gather over the activations per
    call, so the kernel's loads are contiguous.
    """
    new_pos = pair_positions(bits, x.device, block_k)  # natural column r goes to new_pos[r]
    source = torch.empty_like(new_pos)
    source[new_pos] = torch.arange(block_k, device=x.device)
    tiles = torch.arange(0, x.shape[1], block_k, device=x.device)
    index = (tiles[:, None] + source[None, :]).reshape(-1)
    return x.index_select(1, index)
