"""The pair-ordered weight layout: packed words re-laid once at load so unpack mode 2 reads
natural-order activations.

Unpack mode 2 (:func:`dedicated.kernels.gemm._pair_register_loop`) turns fields ``i`` and
``i + PW/2`` of each word into one MMA operand register. In the checkpoint's layout (LSB-first
along K) those fields are ``PW/2`` columns apart, so each pair MMA needs activation columns spread
``PW`` apart: on the GPU that is a 16-bit load, a shared-memory store, a fence and a barrier per
pair, serialised with the MMA. Re-laying the words once — the way Humming's ``transform()`` does for
its own kernel — so that within every 128-wide K tile pair ``i`` of word ``c`` holds K columns
``i * 2 * WC + 2 * c`` and ``+ 1`` makes every pair's activation slice contiguous, and the kernel
loads it with asynchronous copies and no per-pair fence.

Codes and scales are unchanged; only the bit positions of codes inside the tile's words move. The
layout is a property of the tensor: pass ``pair_ordered=True`` to the GEMMs along with such weights.

``tile_major=True`` also moves each 128-wide K tile's words of all N rows next to each other
(``[..., K/128, N, 128*bits/32]``), so a launch's weight tile is one contiguous read instead of
N short ones a row apart; :func:`n_major_scales` does the same for the scales.

``tile_k=256`` builds the same order over 256-wide K tiles, read by launches with ``block_k=256``.
At 2 bits that gives each pair MMA 32 K instead of 16 (half the per-pair work per weight byte),
and each pair's 32 columns still lie inside one 128-wide scale group, so a K tile covers two groups
without a pair ever straddling them.
"""

from __future__ import annotations

import torch

PAIR_TILE_K = 128  # the K tile the layout is built for; mode-2 launches on it use block_k == 128


def pair_positions(bits: int, device: torch.device, block_k: int = PAIR_TILE_K) -> torch.Tensor:
    """``pos[c * PW + f]``: where field ``f`` of word ``c`` sits in unpack mode 2's pair order of a
    ``block_k`` tile (pair ``f % (PW/2)``, slice position ``2 * c + f // (PW/2)``).

    Read one way it says which natural K column a pair-ordered word holds (:func:`to_pair_order`);
    read the other, where a natural activation column goes when the activations are reordered
    instead of the weights (``dedicated.kernels.gemm_operands.permute_pair_columns``).
    """
    pw = 32 // bits
    half, wc = pw // 2, block_k // pw
    c = torch.arange(wc, device=device).repeat_interleave(pw)
    f = torch.arange(pw, device=device).repeat(wc)
    return (f % half) * 2 * wc + 2 * c + f // half


def _unpack_fields(packed: torch.Tensor, bits: int) -> torch.Tensor:
    pw, mask = 32 // bits, (1 << bits) - 1
    shifts = torch.arange(pw, device=packed.device, dtype=torch.int64) * bits
    return (packed.to(torch.int64).unsqueeze(-1) >> shifts) & mask  # [..., W, PW]


def _pack_fields(fields: torch.Tensor, bits: int) -> torch.Tensor:
    pw = 32 // bits
    shifts = torch.arange(pw, device=fields.device, dtype=torch.int64) * bits
    words = (fields << shifts).sum(dim=-1)
    return (words - ((words >> 31) & 1) * (1 << 32)).to(torch.int32)  # wrap to signed int32


PAIR_TILES_K = (128, 256)  # the K tiles a pair-ordered layout can be built for


def _check(packed: torch.Tensor, bits: int, tile_k: int) -> None:
    if bits not in (2, 4):
        raise ValueError(f"the pair-ordered layout exists for 2- and 4-bit weights, not {bits}-bit")
    if tile_k not in PAIR_TILES_K:
        raise ValueError(f"the pair-ordered layout is built over K tiles of {PAIR_TILES_K}, not {tile_k}")
    if packed.dtype != torch.int32:
        raise TypeError(f"packed weights must be int32, got {packed.dtype}")
    k = packed.shape[-1] * (32 // bits)
    if k % tile_k:
        raise ValueError(f"K={k} is not a multiple of the layout's {tile_k}-wide tile")


def _relay(packed: torch.Tensor, bits: int, to_pairs: bool, tile_k: int) -> torch.Tensor:
    """Move codes within each K tile: gather into pair order, or scatter back to natural order."""
    _check(packed, bits, tile_k)
    pw = 32 // bits
    lead = packed.shape[:-1]
    tiles = packed.shape[-1] * pw // tile_k
    codes = _unpack_fields(packed, bits).reshape(*lead, tiles, tile_k)
    source = pair_positions(bits, packed.device, tile_k)  # pair-ordered word c field f <- natural column source
    if to_pairs:
        moved = codes[..., source]
    else:
        moved = torch.empty_like(codes)
        moved[..., source] = codes
    return _pack_fields(moved.reshape(*lead, tiles * tile_k // pw, pw), bits).reshape(packed.shape)


def to_pair_order(packed: torch.Tensor, bits: int, tile_major: bool = False,
                  tile_k: int = PAIR_TILE_K) -> torch.Tensor:
    """Checkpoint layout ``[..., N, K * bits / 32]`` -> pair-ordered words of the same shape, or
    with ``tile_major`` K-tile-major ``[..., K/tile_k, N, tile_k * bits / 32]`` (contiguous)."""
    words = _relay(packed, bits, to_pairs=True, tile_k=tile_k)
    if not tile_major:
        return words
    wc = tile_k * bits // 32
    return words.reshape(*packed.shape[:-1], -1, wc).transpose(-2, -3).contiguous()


def from_pair_order(packed: torch.Tensor, bits: int, tile_major: bool = False,
                    tile_k: int = PAIR_TILE_K) -> torch.Tensor:
    """The inverse of :func:`to_pair_order` (for checks and for writing a checkpoint back)."""
    if tile_major:
        packed = packed.transpose(-2, -3).reshape(*packed.shape[:-3], packed.shape[-2], -1)
    return _relay(packed.contiguous(), bits, to_pairs=False, tile_k=tile_k)


def n_major_scales(scales: torch.Tensor) -> torch.Tensor:
    """The same ``[..., N, K/group]`` scales stored N-contiguous, so the scales of one K tile are one
    contiguous read (the GEMMs take any strides)."""
    return scales.transpose(-1, -2).contiguous().transpose(-1, -2)
