"""QuantizedWeight <-> Humming tensors, and the reference dequantization the kernels must match."""

from __future__ import annotations

import torch

from dedicated.quantize_job import bitpack
from dedicated.quantize_job.humming.format import HummingFormatError, HummingSpec
from dedicated.quantize_job.humming.scales import exact_bf16
from dedicated.quantize_job.qtensor import QuantizedWeight


def to_humming(weight: QuantizedWeight, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """Pack ``weight`` as Humming's (``weight`` int32 ``[out, in*bits/32]``, ``weight_scale`` bf16).

    Scales must already be BF16-representable (see :mod:`.scales`); nothing here rounds.
    """
    spec = HummingSpec(bits=weight.bits, group_size=weight.group_size)
    out_features, in_features = weight.shape
    spec.check_shape(out_features, in_features, name)
    unsigned = weight.codes.to(torch.int32) + spec.offset
    packed = bitpack.pack(unsigned, spec.bits)
    scale = exact_bf16(weight.scales, f"{name} scale").contiguous()
    return packed, scale


def from_humming(
    packed: torch.Tensor, scale: torch.Tensor, spec: HummingSpec, name: str = "weight"
) -> QuantizedWeight:
    """Inverse of :func:`to_humming`: signed int8 codes and the stored scales."""
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise HummingFormatError(
            f"{name}: Humming weight must be a 2-D int32 tensor, got {packed.dtype} "
            f"{tuple(packed.shape)}"
        )
    out_features, words = packed.shape
    if (words * 32) % spec.bits:
        raise HummingFormatError(f"{name}: {words} words do not hold whole {spec.bits}-bit values")
    in_features = words * 32 // spec.bits
    spec.check_shape(out_features, in_features, name)
    expected_scale = spec.scale_shape(out_features, in_features)
    if tuple(scale.shape) != expected_scale:
        raise HummingFormatError(
            f"{name}: weight_scale shape {tuple(scale.shape)} does not match {expected_scale} "
            f"for weight [{out_features}, {in_features}] and group size {spec.group_size}"
        )
    unsigned = bitpack.unpack(packed, spec.bits, in_features)
    codes = (unsigned - spec.offset).to(torch.int8)
    return QuantizedWeight(codes=codes, scales=scale, bits=spec.bits, group_size=spec.group_size)


def dequantize(packed: torch.Tensor, scale: torch.Tensor, spec: HummingSpec) -> torch.Tensor:
    """Float32 weight exactly as Humming's reference dequantizer computes it.

    `humming.utils.weight.dequantize_weight` unpacks, subtracts ``2**(bits-1)`` in float32 and
    multiplies by the float32 group scale; small integers times a BF16 scale are exact in float32,
    so this value is unique and comparisons against it can be bit-exact.
    """
    weight = from_humming(packed, scale, spec)
    return weight.codes.to(torch.float32) * weight.scales.to(torch.float32).repeat_interleave(
        spec.group_size, dim=1
    )
