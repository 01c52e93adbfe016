"""GSQ's inner loop in Triton: Gumbel-Softmax soft assignment over a scalar grid, fwd and bwd.

For every weight element there are ``L = 2**bits`` logits, one per grid point (the symmetric grid
``[-2**(bits-1), ..., 2**(bits-1) - 1]`` unless another is given). With Gumbel noise ``g`` and
temperature ``tau``::

    p = softmax((logits + g) / tau)          over the L grid points
    W_soft[n, k] = scale[n, k // group] * sum_j p_j * grid_j
    loss = ||X W_soft^T - X W^T||^2 = sum((D H) * D),  D = W_soft - W,  H = X^T X

Why kernels: in plain torch every step of that chain is a pass over an ``[..., N, K, L]`` fp32
tensor (noise, add, divide, softmax, multiply, reduce, ...) and autograd keeps several of them
alive for the backward. Here the forward reads the logits once and writes ``W_soft`` or directly
``D`` (``[..., N, K]``); the backward reads the logits again, recomputes the softmax in registers
(and the noise, when it comes from a seed) and writes the logit gradient, with the scale gradient
reduced per group inside the tile. Seeded noise is drawn in-kernel with Philox from
``(seed, element index)``, so it is never stored; :func:`gumbel_noise` returns the same numbers.

The loss matmuls stay in cuBLAS: the X form costs ``T x K x N`` products per step, the Hessian
form one ``N x K x K`` product (``G = D H`` serves the loss and, as ``2 G``, the gradient).

Three entry points, all autograd Functions with a plain-torch twin in
:mod:`dedicated.kernels.reference`:

* :func:`relaxed_codes` -- drop-in for ``quantize_job.gsq.relaxed_codes(logits, gumbel, tau, grid)``
  (noise given, no scale, any leading dims);
* :func:`gsq_soft_weight` -- scaled soft weight, noise given, seeded, or none;
* :func:`gsq_loss` -- the whole reconstruction loss, X or Hessian form, any leading (expert) dims.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dedicated.kernels.reference import _check_gsq_shapes, grid_points

BLOCK_COLS = 128  # columns per program when there are no group scales to align with


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
def _softmax_tile(logit_ptr, noise_ptr, grid_ptr, seed, r, k, R, K, tau,
                  L: tl.constexpr, HAS_NOISE: tl.constexpr, SEEDED: tl.constexpr):
    """Probabilities ``[BR, BC, L]`` and their grid mean ``[BR, BC]`` for rows r, columns k."""
    j = tl.arange(0, L)
    offs = (r.to(tl.int64)[:, None, None] * K + k[None, :, None]) * L + j[None, None, :]
    ok2 = (r < R)[:, None] & (k < K)[None, :]
    mask = ok2[:, :, None]
    z = tl.load(logit_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_NOISE:
        z += tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if SEEDED:
        z += _gumbel(seed, offs.to(tl.int32))
    z = z / tau
    z = z - tl.max(z, axis=2)[:, :, None]
    e = tl.exp(z)
    p = e / tl.sum(e, axis=2)[:, :, None]
    grid = tl.load(grid_ptr + j)
    wbar = tl.sum(p * grid[None, None, :], axis=2)
    return p, wbar, grid, offs, mask, ok2


@triton.jit
def _gsq_fwd_kernel(
    logit_ptr, noise_ptr, grid_ptr, scale_ptr, w_ptr, out_ptr,
    R, K, NG, seed, tau,
    L: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
    HAS_NOISE: tl.constexpr, SEEDED: tl.constexpr, HAS_SCALE: tl.constexpr, SUB_W: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1)
    k = c * BLOCK_C + tl.arange(0, BLOCK_C)
    p, wbar, grid, offs, mask, ok2 = _softmax_tile(
        logit_ptr, noise_ptr, grid_ptr, seed, r, k, R, K, tau, L, HAS_NOISE, SEEDED)
    out = wbar
    if HAS_SCALE:  # one program column == one scale group
        s = tl.load(scale_ptr + r.to(tl.int64) * NG + c, mask=r < R, other=0.0).to(tl.float32)
        out = out * s[:, None]
    off2 = r.to(tl.int64)[:, None] * K + k[None, :]
    if SUB_W:
        out -= tl.load(w_ptr + off2, mask=ok2, other=0.0).to(tl.float32)
    tl.store(out_ptr + off2, out, mask=ok2)


@triton.jit
def _gsq_bwd_kernel(
    logit_ptr, noise_ptr, grid_ptr, scale_ptr, dw_ptr, dlogit_ptr, dscale_ptr,
    R, K, NG, seed, tau,
    L: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
    HAS_NOISE: tl.constexpr, SEEDED: tl.constexpr, HAS_SCALE: tl.constexpr, NEED_DSCALE: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1)
    k = c * BLOCK_C + tl.arange(0, BLOCK_C)
    p, wbar, grid, offs, mask, ok2 = _softmax_tile(
        logit_ptr, noise_ptr, grid_ptr, seed, r, k, R, K, tau, L, HAS_NOISE, SEEDED)
    dw = tl.load(dw_ptr + r.to(tl.int64)[:, None] * K + k[None, :], mask=ok2, other=0.0).to(tl.float32)
    coef = dw / tau
    if HAS_SCALE:
        s = tl.load(scale_ptr + r.to(tl.int64) * NG + c, mask=r < R, other=0.0).to(tl.float32)
        coef = coef * s[:, None]
    # d W_soft / d logit_j = scale * p_j * (grid_j - wbar) / tau
    dlogit = coef[:, :, None] * p * (grid[None, None, :] - wbar[:, :, None])
    tl.store(dlogit_ptr + offs, dlogit.to(dlogit_ptr.dtype.element_ty), mask=mask)
    if NEED_DSCALE:
        ds = tl.sum(dw * wbar, axis=1)
        tl.store(dscale_ptr + r.to(tl.int64) * NG + c, ds, mask=r < R)


def _check_offsets(numel: int) -> None:
    if numel >= 2**31:
        raise ValueError(f"{numel} noise elements exceed the int32 Philox offset range; split the layer")


class _Problem:
    """Flattened view of one relaxation: rows ``R`` x columns ``K`` x levels ``L``."""

    def __init__(self, logits, grid, scales, group, noise, seed, tau):
        if tau <= 0:
            raise ValueError(f"temperature tau must be positive, got {tau}")
        if noise is not None and seed is not None:
            raise ValueError("pass noise or seed, not both")
        levels = logits.shape[-1]
        if levels & (levels - 1) or levels < 2:
            raise ValueError(f"the number of grid points must be a power of two >= 2, got {levels}")
        if grid.numel() != levels:
            raise ValueError(f"grid has {grid.numel()} points but logits have {levels} per element")
        if noise is not None and noise.shape != logits.shape:
            raise ValueError(f"noise must match logits {tuple(logits.shape)}, got {tuple(noise.shape)}")
        if seed is not None:
            _check_offsets(logits.numel())
        self.shape = tuple(logits.shape[:-1])
        self.K = int(logits.shape[-1 - 1]) if logits.dim() >= 2 else 1
        self.L = levels
        self.R = logits.numel() // max(self.K * levels, 1)
        self.logits = logits.contiguous()
        self.noise = None if noise is None else noise.contiguous()
        self.grid = grid.to(device=logits.device, dtype=torch.float32).contiguous()
        self.scales = None if scales is None else scales.contiguous()
        self.seed = seed
        self.tau = float(tau)
        if scales is not None:
            if group & (group - 1) or group < 16:
                raise ValueError(f"group_size must be a power of two >= 16, got {group}")
            self.block_c, self.ng = group, self.K // group
        else:
            self.block_c, self.ng = min(BLOCK_COLS, triton.next_power_of_2(max(self.K, 1))), 1
        self.block_r = max(1, 8192 // (levels * self.block_c))

    def grid_dims(self):
        return (triton.cdiv(self.R, self.block_r), triton.cdiv(self.K, self.block_c))

    def _common(self):
        return dict(L=self.L, BLOCK_C=self.block_c, BLOCK_R=self.block_r,
                    HAS_NOISE=self.noise is not None, SEEDED=self.seed is not None,
                    HAS_SCALE=self.scales is not None)

    def forward(self, weight=None):
        out = torch.empty(self.shape, dtype=torch.float32, device=self.logits.device)
        if out.numel():
            lg = self.logits
            _gsq_fwd_kernel[self.grid_dims()](
                lg, self.noise if self.noise is not None else lg, self.grid,
                self.scales if self.scales is not None else lg,
                weight.contiguous() if weight is not None else lg, out,
                self.R, self.K, self.ng, int(self.seed or 0), self.tau,
                SUB_W=weight is not None, **self._common(),
            )
        return out

    def backward(self, dw, need_dscale):
        dlogits = torch.empty_like(self.logits)
        dscales = None
        if need_dscale:
            dscales = torch.empty(self.scales.shape, dtype=torch.float32, device=self.logits.device)
        if dlogits.numel():
            lg = self.logits
            _gsq_bwd_kernel[self.grid_dims()](
                lg, self.noise if self.noise is not None else lg, self.grid,
                self.scales if self.scales is not None else lg,
                dw.float().contiguous(), dlogits, dscales if dscales is not None else dlogits,
                self.R, self.K, self.ng, int(self.seed or 0), self.tau,
                NEED_DSCALE=need_dscale, **self._common(),
            )
        return dlogits, dscales


class RelaxedCodes(torch.autograd.Function):
    """``sum_j softmax((logits + gumbel) / tau)_j * grid_j``; gradient to the logits."""

    @staticmethod
    def forward(ctx, logits, gumbel, tau, grid):
        prob = _Problem(logits, grid, None, 0, gumbel, None, tau)
        ctx.save_for_backward(prob.logits, prob.noise, prob.grid)
        ctx.tau = tau
        return prob.forward()

    @staticmethod
    def backward(ctx, grad):
        logits, noise, grid = ctx.saved_tensors
        prob = _Problem(logits, grid, None, 0, noise, None, ctx.tau)
        dlogits, _ = prob.backward(grad, False)
        return dlogits, None, None, None


class GumbelSoftWeight(torch.autograd.Function):
    """Scaled ``W_soft`` (fp32 ``[..., N, K]``); gradients to the logits and the scales."""

    @staticmethod
    def forward(ctx, logits, scales, tau, grid, group_size, noise, seed):
        prob = _Problem(logits, grid, scales, group_size, noise, seed, tau)
        ctx.save_for_backward(prob.logits, prob.noise, prob.grid, prob.scales)
        ctx.cfg = (tau, group_size, seed)
        return prob.forward()

    @staticmethod
    def backward(ctx, grad_w):
        logits, noise, grid, scales = ctx.saved_tensors
        tau, group, seed = ctx.cfg
        prob = _Problem(logits, grid, scales, group, noise, seed, tau)
        dlogits, dscales = prob.backward(grad_w, ctx.needs_input_grad[1])
        ds = None if dscales is None else dscales.to(scales.dtype)
        return dlogits, ds, None, None, None, None, None


class GSQReconstructionLoss(torch.autograd.Function):
    """``||X W_soft^T - X W^T||^2`` (or ``sum((D H) * D)``) with the fused soft assignment."""

    @staticmethod
    def forward(ctx, logits, scales, weight, x, hessian, tau, grid, group_size, noise, seed):
        prob = _Problem(logits, grid, scales, group_size, noise, seed, tau)
        d = prob.forward(weight)  # D = W_soft - W, never materialising W_soft on its own
        if x is not None:
            xf = x.float()
            e = xf @ d.transpose(-1, -2)
            loss = (e * e).sum()
            ctx.save_for_backward(prob.logits, prob.noise, prob.grid, prob.scales, xf, e)
        else:
            gd = d @ hessian.float()
            loss = (gd * d).sum()
            ctx.save_for_backward(prob.logits, prob.noise, prob.grid, prob.scales, None, gd)
        ctx.cfg = (tau, group_size, seed)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits, noise, grid, scales, xf, saved = ctx.saved_tensors
        tau, group, seed = ctx.cfg
        # X form: dL/dD = 2 E^T X; Hessian form (H symmetric): dL/dD = 2 D H.
        dd = (saved.transpose(-1, -2) @ xf) if xf is not None else saved
        dd = dd * (2.0 * grad_loss.float())
        prob = _Problem(logits, grid, scales, group, noise, seed, tau)
        dlogits, dscales = prob.backward(dd, ctx.needs_input_grad[1])
        ds = None if dscales is None else dscales.to(scales.dtype)
        return dlogits, ds, None, None, None, None, None, None, None, None


def relaxed_codes(logits: torch.Tensor, gumbel: torch.Tensor | None, tau: float, grid: torch.Tensor) -> torch.Tensor:
    """Fused drop-in for ``quantize_job.gsq.relaxed_codes``: soft codes ``[...]`` from ``[..., L]``."""
    if logits.dim() < 1:
        raise ValueError("logits need a trailing grid-point dimension")
    return RelaxedCodes.apply(logits, gumbel, tau, grid)


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
    _check_gsq_shapes(logits, scales, bits, group_size, noise)
    return GumbelSoftWeight.apply(logits, scales, tau, grid_points(bits, logits.device), group_size, noise, seed)


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
    """Fused reconstruction loss; pass calibration activations ``x`` ``[..., T, K]`` or
    ``hessian = X^T X`` ``[..., K, K]`` (leading dims: experts, broadcast like ``torch.matmul``)."""
    _check_gsq_shapes(logits, scales, bits, group_size, noise)
    if (x is None) == (hessian is None):
        raise ValueError("pass exactly one of x (calibration activations) or hessian (X^T X)")
    k = logits.shape[-2]
    if tuple(weight.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"weight must be {tuple(logits.shape[:-1])}, got {tuple(weight.shape)}")
    if hessian is not None and tuple(hessian.shape[-2:]) != (k, k):
        raise ValueError(f"hessian must be [..., {k}, {k}], got {tuple(hessian.shape)}")
    if x is not None and (x.dim() < 2 or x.shape[-1] != k):
        raise ValueError(f"x must be [..., T, {k}], got {tuple(x.shape)}")
    return GSQReconstructionLoss.apply(
        logits, scales, weight, x, hessian, tau, grid_points(bits, logits.device), group_size, noise, seed)


def hard_codes(logits: torch.Tensor) -> torch.Tensor:
    """The discrete assignment GSQ finally exports: signed codes (argmax of the logits), int8."""
    levels = logits.shape[-1]
    return (logits.argmax(dim=-1) - levels // 2).to(torch.int8)


__all__ = [
    "GSQReconstructionLoss",
    "GumbelSoftWeight",
    "RelaxedCodes",
    "gsq_loss",
    "gsq_soft_weight",
    "gumbel_noise",
    "hard_codes",
    "relaxed_codes",
]
