"""Hypothesis strategies for QuantizedWeights, shared by the Humming tests."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from dedicated.quantize_job.qtensor import QuantizedWeight, code_range


@st.composite
def bf16_scales(draw: st.DrawFn, shape: tuple[int, int]) -> torch.Tensor:
    """BF16 scales over many magnitudes, both signs (Humming's quantizer uses negative scales)."""
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    exponent = torch.randint(-20, 8, shape, generator=gen).to(torch.float32)
    mantissa = 1 + torch.rand(shape, generator=gen)
    sign = torch.where(torch.rand(shape, generator=gen) < 0.2, -1.0, 1.0)
    return (sign * mantissa * torch.exp2(exponent)).to(torch.bfloat16)


@st.composite
def quantized_weights(
    draw: st.DrawFn, bits: tuple[int, ...] = (2, 3, 4, 8), max_out: int = 6, max_groups: int = 3
) -> QuantizedWeight:
    width = draw(st.sampled_from(bits))
    group = draw(st.sampled_from((32, 64, 128)))
    out_features = draw(st.integers(1, max_out))
    in_features = group * draw(st.integers(1, max_groups))
    lo, hi = code_range(width)
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(lo, hi + 1, (out_features, in_features), generator=gen)
    # Make sure both ends of the codebook appear: they are where offset mistakes show.
    codes.view(-1)[0] = lo
    codes.view(-1)[-1] = hi
    scales = draw(bf16_scales((out_features, in_features // group)))
    return QuantizedWeight(codes=codes.to(torch.int8), scales=scales, bits=width,
                           group_size=group)
