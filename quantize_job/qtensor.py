"""The one in-memory form of a quantized weight that every stage hands to the next.

Quantizers (RTN, GPTQ, GSQ) produce it, exporters (compressed-tensors, Humming) and kernels consume
it. Keeping codes signed and unpacked here means no stage needs to know another's storage offset:
each storage format applies its own offset when it packs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuantizedWeight:
    """A symmetric, group-wise quantized ``[out, in]`` weight.

    ``codes`` are signed integers in ``[-2**(bits-1), 2**(bits-1) - 1]`` stored as int8 ``[out, in]``;
    ``scales`` are ``[out, in // group_size]``; the dequantized weight is ``codes * scale`` of the
    code's group. For 2-bit that is the symmetric codebook ``{-2, -1, 0, +1} x scale``.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    bits: int
    group_size: int

    def __post_init__(self) -> None:
        if self.codes.dim() != 2:
            raise ValueError(f"codes must be [out, in], got shape {tuple(self.codes.shape)}")
        out_features, in_features = self.codes.shape
        if in_features % self.group_size:
            raise ValueError(
                f"group size {self.group_size} does not divide the input dimension {in_features}"
            )
        expected = (out_features, in_features // self.group_size)
        if tuple(self.scales.shape) != expected:
            raise ValueError(f"scales must be {expected}, got {tuple(self.scales.shape)}")
        lo, hi = code_range(self.bits)
        if self.codes.numel() and (int(self.codes.min()) < lo or int(self.codes.max()) > hi):
            raise ValueError(f"codes outside [{lo}, {hi}] for {self.bits}-bit")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        scales = self.scales.to(dtype).repeat_interleave(self.group_size, dim=1)
        return self.codes.to(dtype) * scales


def code_range(bits: int) -> tuple[int, int]:
    """Inclusive signed range of a symmetric ``bits``-bit code."""
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"unsupported bit width {bits}; expected 2, 3, 4 or 8")
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
