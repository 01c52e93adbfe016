"""How quantizer scales become the BF16 scales both checkpoint formats store.

GSQ/GPTQ compute scales in float32. Humming stores them in the activation dtype (BF16 here), so a
float32 scale that BF16 cannot represent would change every dequantized value of its group at
repack time. The rule: round to BF16 exactly once, at export (:func:`round_scales_to_bf16`, round
to nearest even, the same as ``tensor.to(torch.bfloat16)``), and write that BF16 value into the
compressed-tensors checkpoint too. From then on every conversion is lossless and checked
(:func:`exact_bf16`): a scale that is not already BF16-representable is an error, not a rounding.
"""

from __future__ import annotations

import torch

from dedicated.quantize_job.qtensor import QuantizedWeight


class ScaleRoundingError(ValueError):
    """A scale would change value when stored as BF16."""


def exact_bf16(scales: torch.Tensor, name: str = "weight_scale") -> torch.Tensor:
    """``scales`` as BF16, or an error if any element is not exactly representable in BF16."""
    if scales.dtype == torch.bfloat16:
        return scales
    if not scales.dtype.is_floating_point:
        raise ScaleRoundingError(f"{name}: scales must be floating point, got {scales.dtype}")
    as_bf16 = scales.to(torch.bfloat16)
    exact = as_bf16.to(torch.float32) == scales.to(torch.float32)
    # NaN never equals itself; a NaN scale is broken input either way.
    if not bool(exact.all()):
        bad = int((~exact).sum())
        index = tuple(int(i) for i in (~exact).nonzero()[0])
        raise ScaleRoundingError(
            f"{name}: {bad} {scales.dtype} scale(s) are not exactly representable in bfloat16 "
            f"(first at {index}: {float(scales[index])!r}); storing them as bfloat16 would change "
            "dequantized values. Round scales to bfloat16 at export (round_scales_to_bf16) and "
            "choose codes against the rounded scale."
        )
    return as_bf16


def round_scales_to_bf16(weight: QuantizedWeight) -> QuantizedWeight:
    """The one deliberate rounding step: the same codes with BF16 (nearest-even) scales.

    Quantizers should call this before their final code assignment so the codes are optimal for
    the scale that is actually stored; exporters call it to make the stored scale well-defined.
    """
    return QuantizedWeight(
        codes=weight.codes,
        scales=weight.scales.to(torch.bfloat16),
        bits=weight.bits,
        group_size=weight.group_size,
    )
