"""Plain-torch references for every kernel in this package: the same math, no Triton.

They are the specification the tests hold the kernels to, and a drop-in fallback for a quantizer
that runs where Triton cannot (the GSQ functions are differentiable through torch autograd).
"""

from __future__ import annotations

import torch

from dedicated.kernels.dequant import check_bits, resolve_offset
from dedicated.quantize_job.bitpack import unpack


def dequantize_ref(
    packed: torch.Tensor,
    scales: torch.Tensor,
    bits: int,
    group_size: int = 128,
    offset: int | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    off = resolve_offset(bits, offset)
    k = packed.shape[-1] * 32 // bits
    codes = unpack(packed, bits, k).to(torch.float32) - off
    return (codes * scales.to(torch.float32).repeat_interleave(group_size, dim=-1)).to(out_dtype)


def dequant_gemm_ref(
    x, packed, scales, bits, group_size=128, offset=None, out_dtype=None, weight_dtype=torch.float32
) -> torch.Tensor:
    """fp32 product of the activations with the dequantized weight, rounded to ``out_dtype``
    (default: the activations' dtype). ``weight_dtype=torch.bfloat16`` rounds the weight to bf16
    first: the semantics of the ``scale_b`` kernels and of a bf16 torch baseline."""
    w = dequantize_ref(packed, scales, bits, group_size, offset, weight_dtype).float()
    return (x.float() @ w.T).to(out_dtype or x.dtype)


def moe_gemm_ref(
    x, packed, scales, topk_ids, bits, group_size=128, offset=None, topk_weights=None, out_dtype=None,
    weight_dtype=torch.float32,
) -> torch.Tensor:
    """Output ``[M * top_k, N]``: row ``t * top_k + j`` is token t through expert ``topk_ids[t, j]``.

    One fp32 matmul per expert that has tokens, so it also runs at real MoE sizes on a GPU.
    """
    m, top_k = topk_ids.shape
    rows = x.float() if x.shape[0] == m * top_k else x.float().repeat_interleave(top_k, dim=0)
    experts = topk_ids.reshape(-1).long()
    out = torch.zeros(m * top_k, packed.shape[1], dtype=torch.float32, device=x.device)
    for e in torch.unique(experts).tolist():
        idx = (experts == e).nonzero().squeeze(1)
        w = dequantize_ref(packed[e], scales[e], bits, group_size, offset, weight_dtype).float()
        out[idx] = rows[idx] @ w.T
    if topk_weights is not None:
        out = out * topk_weights.reshape(-1, 1).float()
    return out.to(out_dtype or x.dtype)


def fused_moe_ref(x, w13, s13, w2, s2, topk_ids, topk_weights, bits, group_size=128, offset=None) -> torch.Tensor:
    m, top_k = topk_ids.shape
    h = moe_gemm_ref(x, w13, s13, topk_ids, bits, group_size, offset)
    gate, up = h.chunk(2, dim=-1)
    a = (torch.nn.functional.silu(gate.float()) * up.float()).to(x.dtype)
    y = moe_gemm_ref(a, w2, s2, topk_ids, bits, group_size, offset, topk_weights)
    return y.view(m, top_k, -1).sum(dim=1, dtype=torch.float32).to(x.dtype)


# ----------------------------------------------------------------------------- GSQ (Gumbel-Softmax)


def grid_points(bits: int, device=None) -> torch.Tensor:
    """The symmetric scalar grid ``[-2**(bits-1), ..., 2**(bits-1) - 1]`` (2-bit: -2, -1, 0, 1)."""
    check_bits(bits)
    half = 1 << (bits - 1)
    return torch.arange(-half, half, dtype=torch.float32, device=device)


def gumbel_from_uniform(u: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Gumbel(0, 1) noise from uniforms in [0, 1), clamped away from 0 and 1 exactly as the kernel."""
    u = u.clamp(eps, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def relaxed_codes_ref(logits: torch.Tensor, gumbel: torch.Tensor | None, tau: float, grid: torch.Tensor) -> torch.Tensor:
    """``sum_j softmax((logits + gumbel) / tau)_j * grid_j`` over the last dim (any leading dims)."""
    z = logits.float() if gumbel is None else logits.float() + gumbel.float()
    return (torch.softmax(z / tau, dim=-1) * grid.float()).sum(dim=-1)


def gsq_soft_weight_ref(
    logits: torch.Tensor,
    scales: torch.Tensor,
    noise: torch.Tensor | None,
    tau: float,
    bits: int,
    group_size: int = 128,
) -> torch.Tensor:
    """``W_soft[..., n, k] = scale[..., n, k // group] * sum_j softmax((logits + g) / tau)_j * grid_j``.

    ``logits``/``noise`` are ``[..., N, K, 2**bits]``; ``noise=None`` means no noise (deterministic
    relaxation, e.g. for evaluation). Differentiable in ``logits`` and ``scales`` by autograd.
    """
    _check_gsq_shapes(logits, scales, bits, group_size, noise)
    w = relaxed_codes_ref(logits, noise, tau, grid_points(bits, logits.device))
    return w * scales.float().repeat_interleave(group_size, dim=-1)


def gsq_loss_ref(
    logits: torch.Tensor,
    scales: torch.Tensor,
    weight: torch.Tensor,
    noise: torch.Tensor | None,
    tau: float,
    bits: int,
    group_size: int = 128,
    x: torch.Tensor | None = None,
    hessian: torch.Tensor | None = None,
) -> torch.Tensor:
    """``||X W_soft^T - X W^T||_F^2`` summed over any leading (expert) dims; with
    ``hessian = X^T X`` the identical ``sum((D H) * D)``, ``D = W_soft - W``."""
    if (x is None) == (hessian is None):
        raise ValueError("pass exactly one of x (calibration activations) or hessian (X^T X)")
    w_soft = gsq_soft_weight_ref(logits, scales, noise, tau, bits, group_size)
    if x is not None:
        xf = x.float()
        return ((xf @ w_soft.transpose(-1, -2) - xf @ weight.float().transpose(-1, -2)) ** 2).sum()
    d = w_soft - weight.float()
    return ((d @ hessian.float()) * d).sum()


def _check_gsq_shapes(logits, scales, bits, group_size, noise) -> None:
    levels = 1 << bits
    if logits.dim() < 3 or logits.shape[-1] != levels:
        raise ValueError(f"logits must be [..., N, K, {levels}] for {bits}-bit, got {tuple(logits.shape)}")
    k = logits.shape[-2]
    if k % group_size:
        raise ValueError(f"K={k} is not a multiple of group_size {group_size}")
    want = (*logits.shape[:-2], k // group_size)
    if tuple(scales.shape) != want:
        raise ValueError(f"scales must be {want}, got {tuple(scales.shape)}")
    if noise is not None and noise.shape != logits.shape:
        raise ValueError(f"noise must match logits {tuple(logits.shape)}, got {tuple(noise.shape)}")
