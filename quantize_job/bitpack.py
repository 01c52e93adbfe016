"""Exact-width bit packing of unsigned integers into int32 words along the last dimension.

Humming stores ``bits``-bit values LSB-first: value ``j`` of a word sits at bits
``bits*j .. bits*j + bits - 1``, so a 2-bit word holds 16 values. Widths that do not divide 32
(3-bit) run across word boundaries: the tensor's last dimension is treated as one little-endian
bit stream, and the packed length is ``ceil(n * bits / 32)``.
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (2, 3, 4, 8)


def packed_length(n_values: int, bits: int) -> int:
    """Number of int32 words that ``n_values`` values of ``bits`` bits occupy."""
    _check_bits(bits)
    return (n_values * bits + 31) // 32


def pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``values`` (any integer dtype, each in ``[0, 2**bits)``) along the last dim."""
    _check_bits(bits)
    if values.dtype.is_floating_point:
        raise TypeError("pack expects an integer tensor")
    v = values.to(torch.int64)
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= (1 << bits)):
        raise ValueError(f"values outside [0, {1 << bits}) cannot be packed in {bits} bits")
    *lead, n = v.shape
    words = packed_length(n, bits)
    if 32 % bits == 0:
        per_word = 32 // bits
        pad = words * per_word - n
        v = torch.nn.functional.pad(v, (0, pad)).reshape(*lead, words, per_word)
        shifts = torch.arange(per_word, dtype=torch.int64, device=v.device) * bits
        packed = (v << shifts).sum(dim=-1)
    else:
        bit_pos = torch.arange(n, dtype=torch.int64, device=v.device) * bits
        bit_index = bit_pos.unsqueeze(-1) + torch.arange(bits, device=v.device)  # [n, bits]
        bit_values = (v.unsqueeze(-1) >> torch.arange(bits, device=v.device)) & 1  # [..., n, bits]
        flat_bits = torch.zeros(*lead, words * 32, dtype=torch.int64, device=v.device)
        flat_bits[..., bit_index.reshape(-1)] = bit_values.reshape(*lead, -1)
        weights = (1 << torch.arange(32, dtype=torch.int64, device=v.device))
        packed = (flat_bits.reshape(*lead, words, 32) * weights).sum(dim=-1)
    # Fold the uint32 bit pattern into int32 two's complement without overflow.
    packed = torch.where(packed >= (1 << 31), packed - (1 << 32), packed)
    return packed.to(torch.int32)


def unpack(packed: torch.Tensor, bits: int, n_values: int) -> torch.Tensor:
    """Inverse of :func:`pack`: the first ``n_values`` unsigned values as int32."""
    _check_bits(bits)
    if packed.dtype != torch.int32:
        raise TypeError(f"packed words must be int32, got {packed.dtype}")
    *lead, words = packed.shape
    if words != packed_length(n_values, bits):
        raise ValueError(f"{words} words cannot hold exactly {n_values} values of {bits} bits")
    w = packed.to(torch.int64) & 0xFFFFFFFF
    mask = (1 << bits) - 1
    if 32 % bits == 0:
        per_word = 32 // bits
        shifts = torch.arange(per_word, dtype=torch.int64, device=w.device) * bits
        v = (w.unsqueeze(-1) >> shifts) & mask
        v = v.reshape(*lead, words * per_word)[..., :n_values]
    else:
        bits_flat = (w.unsqueeze(-1) >> torch.arange(32, device=w.device)) & 1
        bits_flat = bits_flat.reshape(*lead, words * 32)[..., : n_values * bits]
        weights = 1 << torch.arange(bits, dtype=torch.int64, device=w.device)
        v = (bits_flat.reshape(*lead, n_values, bits) * weights).sum(dim=-1)
    return v.to(torch.int32)


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"unsupported bit width {bits}; expected one of {SUPPORTED_BITS}")
