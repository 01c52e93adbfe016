"""Round-to-nearest, group-wise symmetric quantization, and the scale search the others share.

A weight ``[..., out, in]`` is cut into groups of ``group_size`` consecutive input features per
output row; each group gets one scale ``s`` and codes ``c = clamp(round(w / s), lo, hi)`` with
``[lo, hi] = [-2**(b-1), 2**(b-1) - 1]`` (the grid of :mod:`qtensor`). Leading dimensions are batch
dimensions (experts), so one call quantizes every expert of a layer at once.

The scale of a group is not simply ``absmax / 2**(b-1)``: at 2 bits that wastes half the grid on
whichever sign the group's extreme lacks. :func:`search_scales` tries a fixed ladder of candidates
``absmax * f / 2**(b-1)`` and keeps, per group, the one with the least squared rounding error,
weighted per input feature by the Hessian diagonal when one is given (the error that matters is
``E[(x . dw)^2]``, not ``|dw|^2``). Scales are rounded to bf16 before the codes are chosen, so the
exported bf16 scales reproduce exactly the values the quantizer optimised.
"""

from __future__ import annotations

import torch

from dedicated.quantize_job.qtensor import QuantizedWeight, code_range

SCALE_DTYPE = torch.bfloat16


def check_finite(name: str, t: torch.Tensor) -> None:
    """Refuse NaN/Inf early, naming the tensor: a quantizer would turn them into garbage codes."""
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} has {bad} NaN/Inf value(s); refusing to quantize it")


def check_group(in_features: int, group_size: int) -> int:
    if group_size <= 0 or in_features % group_size:
        raise ValueError(f"group size {group_size} does not divide the input dimension {in_features}")
    return in_features // group_size


def _grouped(t: torch.Tensor, group_size: int) -> torch.Tensor:
    return t.reshape(*t.shape[:-1], t.shape[-1] // group_size, group_size)


def round_scales(scales: torch.Tensor, dtype: torch.dtype = SCALE_DTYPE) -> torch.Tensor:
    """Scales as float32 holding exactly-representable ``dtype`` values, never zero."""
    s = scales.to(dtype).float()
    tiny = torch.finfo(dtype).tiny
    return torch.where(s.abs() < tiny, torch.ones_like(s), s)


def search_scales(
    w: torch.Tensor,
    bits: int,
    group_size: int,
    *,
    col_weight: torch.Tensor | None = None,
    grid: int = 48,
    lo_factor: float = 0.3,
    hi_factor: float = 2.0,
) -> torch.Tensor:
    """Per-group scales ``[..., out, in // group_size]`` minimising the (weighted) rounding error.

    ``col_weight`` ``[..., in]`` weights each input feature's squared error (use ``diag(H)``).
    """
    check_finite("weight", w)
    check_group(w.shape[-1], group_size)
    lo, hi = code_range(bits)
    wg = _grouped(w.float(), group_size)  # [..., O, G, g]
    absmax = wg.abs().amax(dim=-1)  # [..., O, G]
    if col_weight is None:
        cw = None
    else:
        cw = _grouped(col_weight.float().clamp_min(0), group_size).unsqueeze(-3)  # [..., 1, G, g]
    best_err = torch.full_like(absmax, float("inf"))
    best = torch.ones_like(absmax)
    for f in torch.linspace(lo_factor, hi_factor, grid).tolist():
        s = round_scales(absmax * (f / -lo))
        q = torch.clamp(torch.round(wg / s.unsqueeze(-1)), lo, hi) * s.unsqueeze(-1)
        d2 = (q - wg).square()
        err = (d2 * cw).sum(-1) if cw is not None else d2.sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best


def quantize_codes(w: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Nearest codes (int8, ``[..., out, in]``) of ``w`` on the grid given by ``scales``."""
    lo, hi = code_range(bits)
    s = scales.float().repeat_interleave(group_size, dim=-1)
    return torch.clamp(torch.round(w.float() / s), lo, hi).to(torch.int8)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """``codes * scale`` in float32, batched over leading dimensions."""
    return codes.float() * scales.float().repeat_interleave(group_size, dim=-1)


def rtn(
    w: torch.Tensor, bits: int, group_size: int = 128, *, col_weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched RTN: ``(codes int8 [..., O, I], scales float32 [..., O, G])``."""
    scales = search_scales(w, bits, group_size, col_weight=col_weight)
    return quantize_codes(w, scales, bits, group_size), scales


def rtn_quantize(
    w: torch.Tensor, bits: int, group_size: int = 128, *, col_weight: torch.Tensor | None = None
) -> QuantizedWeight:
    """RTN of one ``[out, in]`` weight as the shared :class:`QuantizedWeight`."""
    if w.dim() != 2:
        raise ValueError(f"rtn_quantize takes one [out, in] weight, got shape {tuple(w.shape)}")
    codes, scales = rtn(w, bits, group_size, col_weight=col_weight)
    return QuantizedWeight(codes=codes, scales=scales, bits=bits, group_size=group_size)


def to_quantized_weights(
    codes: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int
) -> list[QuantizedWeight]:
    """Split a batched ``[E, O, I]`` result into one :class:`QuantizedWeight` per expert (on CPU)."""
    return [
        QuantizedWeight(codes=codes[e].cpu().contiguous(), scales=scales[e].cpu().contiguous(), bits=bits,
                        group_size=group_size)
        for e in range(codes.shape[0])
    ]
