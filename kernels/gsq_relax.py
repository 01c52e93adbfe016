"""GSQ's inner loop in Triton: Gumbel-Softmax soft assignment over the symmetric scalar grid.

For every weight element there are ``L = 2**bits`` logits, one per grid point
``grid = [-2**(bits-1), ..., 2**(bits-1) - 1]``. With Gumbel noise ``g`` and temperature ``tau``::

    p = softmax((logits + g) / tau)          over the L grid points
    W_soft[n, k] = scale[n, k // group] * sum_j p_j * grid_j
    loss = ||X W_soft^T - X W^T||^2 = sum((D H) * D),  D = W_soft - W,  H = X^T X

Why kernels: in plain torch every step of that chain is a pass over an ``[N, K, L]`` fp32 tensor
(noise, add, divide, softmax, multiply, reduce, ...) and autograd keeps several of them alive for
the backward. Here the forward reads the logits once and writes ``D`` (``[N, K]``); the backward
reads the logits once more, regenerates the noise from the seed and the softmax in registers,
and writes the logit gradient (and the scale gradient, reduced per group in-tile). The noise is
drawn in-kernel from ``(seed, element index)`` with Philox, so it is never stored; the same
numbers are available to torch code through :func:`gumbel_noise`.

The loss matmuls stay in cuBLAS: the X form costs two ``T x K x N`` products per step, the Hessian
form one ``N x K x K`` product (``G = D H`` serves the loss and, as ``2 G``, the gradient).

:mod:`dedicated.kernels.reference` holds the identical math in plain torch
(:func:`~dedicated.kernels.reference.gsq_soft_weight_ref`, :func:`~dedicated.kernels.reference.gsq_loss_ref`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dedicated.kernels.reference import _check_gsq_shapes, grid_points

U_MIN = 1e-10
U_MAX = 1.0 - 1e-7


@triton.jit
def _gumbel(seed, offs):
    u = tl.rand(seed, offs)
    u = tl.minimum(tl.maximum(u, 1e-10), 1.0 - 1e-7)
    return -tl.log(-tl.log(u))


@triton.jit
def _gumbel_kernel(out_ptr, numel, seed, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, _gumbel(seed, offs), mask=offs < numel)


def gumbel_noise(shape: tuple[int, ...], seed: int, device: torch.device | str = "cuda") -> torch.Tensor:
    """The exact Gumbel(0, 1) noise the fused kernels draw for ``seed`` (element i uses offset i)."""
    numel = 1
    for d in shape:
        numel *= int(d)
    _check_offsets(numel)
    out = torch.empty(shape, dtype=torch.float32, device=device)
    if numel:
        block = 1024
        _gumbel_kernel[(triton.cdiv(numel, block),)](out, numel, int(seed), BLOCK=block)
    return out


@triton.jit
def _softmax_tile(logit_ptr, noise_ptr, seed, n, k, N, K, tau,
                  L: tl.constexpr, HAS_NOISE: tl.constexpr, SEEDED: tl.constexpr):
    """Probabilities ``[R, C, L]`` and their grid mean ``[R, C]`` for rows n, columns k."""
    j = tl.arange(0, L)
    offs = (n[:, None, None] * K + k[None, :, None]) * L + j[None, None, :]
    mask = (n < N)[:, None, None]
    z = tl.load(logit_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_NOISE:
        z += tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if SEEDED:
        z += _gumbel(seed, offs)
    z = z / tau
    z = z - tl.max(z, axis=2)[:, :, None]
    e = tl.exp(z)
    p = e / tl.sum(e, axis=2)[:, :, None]
    grid = (j - L // 2).to(tl.float32)
    wbar = tl.sum(p * grid[None, None, :], axis=2)
    return p, wbar, offs, mask


@triton.jit
def _gsq_fwd_kernel(
    logit_ptr, noise_ptr, scale_ptr, w_ptr, out_ptr,
    N, K, seed, tau,
    L: tl.constexpr, GROUP: tl.constexpr, BLOCK_R: tl.constexpr,
    HAS_NOISE: tl.constexpr, SEEDED: tl.constexpr, SUB_W: tl.constexpr,
):
    n = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    g = tl.program_id(1)
    k = g * GROUP + tl.arange(0, GROUP)
    p, wbar, offs, mask = _softmax_tile(logit_ptr, noise_ptr, seed, n, k, N, K, tau, L, HAS_NOISE, SEEDED)
    row_ok = n < N
    s = tl.load(scale_ptr + n * (K // GROUP) + g, mask=row_ok, other=0.0).to(tl.float32)
    w_soft = wbar * s[:, None]
    off2 = n[:, None] * K + k[None, :]
    if SUB_W:
        w_soft -= tl.load(w_ptr + off2, mask=row_ok[:, None], other=0.0).to(tl.float32)
    tl.store(out_ptr + off2, w_soft, mask=row_ok[:, None])


@triton.jit
def _gsq_bwd_kernel(
    logit_ptr, noise_ptr, scale_ptr, dw_ptr, dlogit_ptr, dscale_ptr,
    N, K, seed, tau,
    L: tl.constexpr, GROUP: tl.constexpr, BLOCK_R: tl.constexpr,
    HAS_NOISE: tl.constexpr, SEEDED: tl.constexpr, NEED_DSCALE: tl.constexpr,
):
    n = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    g = tl.program_id(1)
    k = g * GROUP + tl.arange(0, GROUP)
    p, wbar, offs, mask = _softmax_tile(logit_ptr, noise_ptr, seed, n, k, N, K, tau, L, HAS_NOISE, SEEDED)
    row_ok = n < N
    s = tl.load(scale_ptr + n * (K // GROUP) + g, mask=row_ok, other=0.0).to(tl.float32)
    dw = tl.load(dw_ptr + n[:, None] * K + k[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    grid = (tl.arange(0, L) - L // 2).to(tl.float32)
    # d W_soft / d logit_j = scale * p_j * (grid_j - wbar) / tau
    coef = dw * s[:, None] / tau
    dlogit = coef[:, :, None] * p * (grid[None, None, :] - wbar[:, :, None])
    tl.store(dlogit_ptr + offs, dlogit.to(dlogit_ptr.dtype.element_ty), mask=mask)
    if NEED_DSCALE:
        ds = tl.sum(dw * wbar, axis=1)
        tl.store(dscale_ptr + n * (K // GROUP) + g, ds, mask=row_ok)


def _check_offsets(numel: int) -> None:
    if numel >= 2**31:
        raise ValueError(f"{numel} noise elements exceed the int32 Philox offset range; split the layer")


def _block_rows(levels: int, group: int) -> int:
    return max(1, 8192 // (levels * group))


def _launch_fwd(logits, scales, weight, noise, seed, tau, bits, group):
    n, k, levels = logits.shape
    out = torch.empty((n, k), dtype=torch.float32, device=logits.device)
    if out.numel() == 0:
        return out
    br = _block_rows(levels, group)
    _gsq_fwd_kernel[(triton.cdiv(n, br), k // group)](
        logits, noise if noise is not None else logits, scales, weight if weight is not None else logits, out,
        n, k, int(seed or 0), float(tau),
        L=levels, GROUP=group, BLOCK_R=br,
        HAS_NOISE=noise is not None, SEEDED=seed is not None, SUB_W=weight is not None,
    )
    return out


def _launch_bwd(logits, scales, dw, noise, seed, tau, bits, group, need_dscale):
    n, k, levels = logits.shape
    dlogits = torch.empty_like(logits)
    dscales = torch.empty((n, k // group), dtype=torch.float32, device=logits.device) if need_dscale else None
    if dlogits.numel() == 0:
        return dlogits, dscales
    br = _block_rows(levels, group)
    _gsq_bwd_kernel[(triton.cdiv(n, br), k // group)](
        logits, noise if noise is not None else logits, scales, dw.contiguous(), dlogits,
        dscales if dscales is not None else dlogits,
        n, k, int(seed or 0), float(tau),
        L=levels, GROUP=group, BLOCK_R=br,
        HAS_NOISE=noise is not None, SEEDED=seed is not None, NEED_DSCALE=need_dscale,
    )
    return dlogits, dscales


def _prepare(logits, scales, noise, seed, bits, group, tau):
    _check_gsq_shapes(logits, scales, bits, group, noise)
    if noise is not None and seed is not None:
        raise ValueError("pass noise or seed, not both")
    if tau <= 0:
        raise ValueError(f"temperature tau must be positive, got {tau}")
    if group & (group - 1) or group < 16:
        raise ValueError(f"group_size must be a power of two >= 16, got {group}")
    if seed is not None:
        _check_offsets(logits.numel())
    return logits.contiguous(), scales.contiguous(), None if noise is None else noise.contiguous()


class GumbelSoftWeight(torch.autograd.Function):
    """``W_soft`` (fp32 ``[N, K]``) from logits ``[N, K, L]`` and scales; grads to both."""

    @staticmethod
    def forward(ctx, logits, scales, tau, bits, group_size, noise, seed):
        logits, scales, noise = _prepare(logits, scales, noise, seed, bits, group_size, tau)
        ctx.save_for_backward(logits, scales, noise)
        ctx.cfg = (tau, bits, group_size, seed)
        return _launch_fwd(logits, scales, None, noise, seed, tau, bits, group_size)

    @staticmethod
    def backward(ctx, grad_w):
        logits, scales, noise = ctx.saved_tensors
        tau, bits, group, seed = ctx.cfg
        dlogits, dscales = _launch_bwd(logits, scales, grad_w.float(), noise, seed, tau, bits, group, ctx.needs_input_grad[1])
        return dlogits, None if dscales is None else dscales.to(scales.dtype), None, None, None, None, None


class GSQReconstructionLoss(torch.autograd.Function):
    """``||X W_soft^T - X W^T||^2`` (or ``sum((D H) * D)``) with the fused soft assignment."""

    @staticmethod
    def forward(ctx, logits, scales, weight, x, hessian, tau, bits, group_size, noise, seed):
        logits, scales, noise = _prepare(logits, scales, noise, seed, bits, group_size, tau)
        d = _launch_fwd(logits, scales, weight.contiguous(), noise, seed, tau, bits, group_size)
        if x is not None:
            xf = x.float()
            e = xf @ d.T
            loss = (e * e).sum()
            ctx.save_for_backward(logits, scales, noise, xf, e)
        else:
            gd = d @ hessian.float()
            loss = (gd * d).sum()
            ctx.save_for_backward(logits, scales, noise, None, gd)
        ctx.cfg = (tau, bits, group_size, seed)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits, scales, noise, xf, saved = ctx.saved_tensors
        tau, bits, group, seed = ctx.cfg
        # X form: dL/dD = 2 E^T X; Hessian form (H symmetric): dL/dD = 2 D H.
        dd = (saved.T @ xf) if xf is not None else saved
        dd = dd * (2.0 * grad_loss.float())
        dlogits, dscales = _launch_bwd(logits, scales, dd, noise, seed, tau, bits, group, ctx.needs_input_grad[1])
        ds = None if dscales is None else dscales.to(scales.dtype)
        return dlogits, ds, None, None, None, None, None, None, None, None


def gsq_soft_weight(
    logits: torch.Tensor,
    scales: torch.Tensor,
    tau: float,
    bits: int,
    group_size: int = 128,
    noise: torch.Tensor | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """Fused ``W_soft``; noise from ``seed`` (in-kernel), from ``noise``, or none if both are None."""
    return GumbelSoftWeight.apply(logits, scales, tau, bits, group_size, noise, seed)


def gsq_loss(
    logits: torch.Tensor,
    scales: torch.Tensor,
    weight: torch.Tensor,
    tau: float,
    bits: int,
    group_size: int = 128,
    x: torch.Tensor | None = None,
    hessian: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """Fused reconstruction loss; pass calibration activations ``x`` or ``hessian = X^T X``."""
    if (x is None) == (hessian is None):
        raise ValueError("pass exactly one of x (calibration activations) or hessian (X^T X)")
    if tuple(weight.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"weight must be {tuple(logits.shape[:2])}, got {tuple(weight.shape)}")
    if hessian is not None and tuple(hessian.shape) != (logits.shape[1], logits.shape[1]):
        raise ValueError(f"hessian must be [K, K] = {(logits.shape[1],) * 2}, got {tuple(hessian.shape)}")
    if x is not None and (x.dim() != 2 or x.shape[1] != logits.shape[1]):
        raise ValueError(f"x must be [T, {logits.shape[1]}], got {tuple(x.shape)}")
    return GSQReconstructionLoss.apply(logits, scales, weight, x, hessian, tau, bits, group_size, noise, seed)


def hard_codes(logits: torch.Tensor) -> torch.Tensor:
    """The discrete assignment GSQ finally exports: signed codes (argmax of the logits), int8."""
    levels = logits.shape[-1]
    return (logits.argmax(dim=-1) - levels // 2).to(torch.int8)


__all__ = [
    "GSQReconstructionLoss",
    "GumbelSoftWeight",
    "grid_points",
    "gsq_loss",
    "gsq_soft_weight",
    "gumbel_noise",
    "hard_codes",
]
