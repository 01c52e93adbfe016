"""GPTQ (Frantar et al., 2022), group-wise symmetric, batched over the experts of a layer.

For one linear layer with calibration inputs ``X`` (tokens x in), GPTQ minimises
``||X (Wq - W)^T||^2 = tr(dW H dW^T)`` with ``H = X^T X`` by quantizing one input column at a time
and spreading each column's rounding error over the columns not yet quantized, in proportion to
``H^-1``. With ``U`` the upper Cholesky factor of ``H^-1``, column ``j`` is rounded to ``q_j`` and
the rest is updated by ``W[:, k] -= (w_j - q_j) / U_jj * U_jk`` for ``k > j``; blocks of columns
defer the far-field update to one matrix product (the "lazy batch" trick).

Choices kept from the reference algorithm: relative damping ``H += damp * mean(diag H) * I``;
inputs never seen (``H_jj == 0``) get ``H_jj = 1`` and their weights zeroed (no signal says
otherwise); a group's scale is searched when its first column is reached, on the error-updated
weights. ``act_order`` (columns in decreasing ``H_jj``) uses *static* groups: scales are searched
once on the original weights, so every group still covers 128 consecutive input features, which
is the only layout the serving formats store. Every tensor carries a leading expert dimension
``E``; the column loop runs once for all experts.

Bad input: NaN/Inf in ``W`` or ``H`` raises; a Hessian that is not positive definite after damping
is retried with 10x the damping (per expert, recorded in ``GPTQResult.damp``) up to ``max_damp``,
and raises beyond that instead of returning garbage.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from dedicated.quantize_job.qtensor import code_range
from dedicated.quantize_job.rtn import check_finite, check_group, round_scales, search_scales


class SingularHessianError(ValueError):
    """The Hessian stayed singular even with the largest allowed damping."""


@dataclass(frozen=True)
class GPTQConfig:
    damp: float = 0.01
    # On by default: on the tiny MoE at 2 bits it lowered held-out perplexity from 5.60 to 5.47
    # (BF16 5.33; benchmarks/bench_quality.py, CPU model), and static groups keep the layout.
    act_order: bool = True
    block_size: int = 128
    max_damp: float = 10.0
    # dedicated.kernels.gptq_block: one launch per block of columns instead of ~6 per column. None
    # (the default): used wherever it can run (CUDA, Triton importable); True insists, False never.
    # Default since it measured equal: held-out perplexity 2.2681 vs 2.2683 (torch loop) on the tiny
    # MoE, and 9.2 vs 11.8 s per Qwen3.6-35B-A3B MoE layer on an H100 (docs/benchmarks-quality.md).
    use_kernel: bool | None = None


@dataclass
class GPTQResult:
    codes: torch.Tensor  # int8 [E, O, I]
    scales: torch.Tensor  # float32 [E, O, G], bf16-representable
    damp: torch.Tensor  # float32 [E]: the relative damping each expert needed


def reconstruction_error(w: torch.Tensor, wq: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``tr((Wq - W) H (Wq - W)^T)`` per expert: the layer-wise objective, ``[E]``."""
    d = (wq.float() - w.float())
    return (torch.bmm(d, h.float()) * d).sum(dim=(-2, -1))


def _batch(w: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    squeeze = w.dim() == 2
    if squeeze:
        w, h = w.unsqueeze(0), h.unsqueeze(0)
    if w.dim() != 3 or h.dim() != 3:
        raise ValueError(f"expected W [E, O, I] and H [E, I, I], got {tuple(w.shape)} and {tuple(h.shape)}")
    e, _, i = w.shape
    if tuple(h.shape) != (e, i, i):
        raise ValueError(f"Hessian shape {tuple(h.shape)} does not match weights {tuple(w.shape)}")
    return w, h, squeeze


def upper_cholesky_of_inverse(h: torch.Tensor, damp: float, max_damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``U`` with ``U^T U = (H + d * mean(diag H) * I)^-1`` per expert, raising damping where needed."""
    e, n, _ = h.shape
    eye = torch.eye(n, dtype=h.dtype, device=h.device)
    mean_diag = torch.diagonal(h, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)  # [E]
    damps = torch.full((e,), float(damp), dtype=torch.float32, device=h.device)
    u = torch.empty_like(h)
    todo = torch.ones(e, dtype=torch.bool, device=h.device)
    while bool(todo.any()):
        idx = todo.nonzero().squeeze(-1)
        hd = h[idx] + (damps[idx] * mean_diag[idx]).view(-1, 1, 1) * eye
        chol, info = torch.linalg.cholesky_ex(hd)
        hinv = torch.cholesky_inverse(chol)
        uu, info2 = torch.linalg.cholesky_ex(hinv, upper=True)
        ok = (info == 0) & (info2 == 0) & torch.isfinite(uu).flatten(1).all(-1)
        u[idx[ok]] = uu[ok]
        todo[idx[ok]] = False
        failed = idx[~ok]
        if failed.numel():
            damps[failed] *= 10
            if bool((damps[failed] > max_damp).any()):
                raise SingularHessianError(
                    f"Hessian of expert(s) {failed.tolist()[:8]} is not positive definite even with relative "
                    f"damping {max_damp}; the calibration inputs are degenerate (NaN-free but rank-deficient "
                    f"beyond repair)"
                )
    return u, damps


def _search_group_scale(W1: torch.Tensor, U1: torch.Tensor, scales: torch.Tensor, c0: int, i1: int, bits: int,
                        group_size: int) -> int:
    """Search the scale of the group starting at block column ``c0`` on the weights as the earlier
    columns' errors left them, each column weighted by ``1 / U_jj^2``; returns the group's index."""
    g = (i1 + c0) // group_size
    u_diag = torch.diagonal(U1, dim1=-2, dim2=-1)[..., c0:c0 + group_size]
    scales[..., g] = search_scales(W1[..., c0:c0 + group_size], bits, group_size,
                                   col_weight=u_diag.reciprocal().square()).squeeze(-1)
    return g


def _quantize_block_torch(W1: torch.Tensor, U1: torch.Tensor, Err1: torch.Tensor, Q1: torch.Tensor,
                          scales: torch.Tensor, col_scales: torch.Tensor | None, i1: int, bits: int,
                          group_size: int) -> None:
    """One block's columns in order, in torch: round, record the scaled error, push it onto the
    block's later columns. A group's scale is searched when its first column is reached (unless
    ``act_order`` fixed the scales up front). Fills ``Q1``/``Err1`` and updates ``W1`` in place."""
    lo, hi = code_range(bits)
    for i in range(W1.shape[-1]):
        col = i1 + i
        if col_scales is None:
            if col % group_size == 0:
                _search_group_scale(W1, U1, scales, i, i1, bits, group_size)
            s = scales[..., col // group_size]  # [E, O]
        else:
            s = col_scales[..., col]
        wcol = W1[..., i]
        q = torch.clamp(torch.round(wcol / s), lo, hi)
        Q1[..., i] = q.to(torch.int8)
        err = (wcol - q * s) / U1[..., i, i].unsqueeze(-1)  # [E, O]
        W1[..., i:] -= err.unsqueeze(-1) * U1[..., i, i:].unsqueeze(1)
        Err1[..., i] = err


def _block_loop(device: torch.device, use_kernel: bool | None):
    """The in-block column loop ``GPTQConfig.use_kernel`` asks for (None: the kernel where it runs)."""
    if use_kernel is False:
        return _quantize_block_torch
    if use_kernel is None:
        try:
            return _fused_block(device)
        except (ValueError, ImportError):  # no CUDA device or no Triton: the reference torch loop
            return _quantize_block_torch
    return _fused_block(device)


def _fused_block(device: torch.device):
    """The fused in-block loop (:mod:`dedicated.kernels.gptq_block`), or a clear error where it cannot run."""
    if device.type != "cuda":
        raise ValueError("use_kernel=True needs a CUDA device; the Triton GPTQ block kernel does not run on CPU")
    try:
        from dedicated.kernels.gptq_block import gptq_block
    except ImportError as exc:  # the kernel is another module's deliverable
        raise ImportError("use_kernel=True but dedicated.kernels.gptq_block is not importable") from exc
    return functools.partial(_quantize_block_fused, gptq_block)


def _quantize_block_fused(gptq_block, W1: torch.Tensor, U1: torch.Tensor, Err1: torch.Tensor, Q1: torch.Tensor,
                          scales: torch.Tensor, col_scales: torch.Tensor | None, i1: int, bits: int,
                          group_size: int) -> None:
    """The torch column loop's work for one block, one launch per block (``act_order``: the column
    scales are known up front) or per group (a group's scale is searched on the weights as the
    previous columns' errors left them, as the torch loop does)."""
    lo, hi = code_range(bits)
    E, O, b = W1.shape
    if col_scales is not None:
        gptq_block(W1, U1, col_scales[..., i1:i1 + b], Q1, Err1, 0, b, lo, hi)
        return
    for c0 in range(0, b, group_size):
        g = _search_group_scale(W1, U1, scales, c0, i1, bits, group_size)
        per_row = scales[..., g].unsqueeze(-1).expand(E, O, b)  # one scale for the group's columns
        gptq_block(W1, U1, per_row, Q1, Err1, c0, c0 + group_size, lo, hi)


@torch.no_grad()
def gptq(
    w: torch.Tensor,
    h: torch.Tensor,
    bits: int,
    group_size: int = 128,
    config: GPTQConfig = GPTQConfig(),
) -> GPTQResult:
    """Quantize ``w`` ``[E, O, I]`` (or ``[O, I]``) against Hessians ``h`` ``[E, I, I]`` (or ``[I, I]``)."""
    w, h, squeeze = _batch(w, h)
    check_finite("weight", w)
    check_finite("Hessian", h)
    n_groups = check_group(w.shape[-1], group_size)
    if config.block_size % group_size:
        raise ValueError(f"block size {config.block_size} must be a multiple of the group size {group_size}")
    W = w.float().clone()
    H = h.float().clone()
    E, O, I = W.shape
    diag = torch.diagonal(H, dim1=-2, dim2=-1)
    dead = diag == 0
    if bool(dead.any()):
        diag.masked_fill_(dead, 1.0)  # diagonal() is a view: this writes into H
        W.masked_fill_(dead.unsqueeze(1), 0.0)

    if config.act_order:
        scales = search_scales(W, bits, group_size, col_weight=torch.diagonal(H, dim1=-2, dim2=-1))
        perm = torch.argsort(torch.diagonal(H, dim1=-2, dim2=-1), dim=-1, descending=True)  # [E, I]
        W = W.gather(-1, perm.unsqueeze(1).expand(E, O, I))
        H = H.gather(-1, perm.unsqueeze(1).expand(E, I, I)).gather(-2, perm.unsqueeze(-1).expand(E, I, I))
        col_scales = scales.repeat_interleave(group_size, dim=-1).gather(-1, perm.unsqueeze(1).expand(E, O, I))
    else:
        scales = torch.empty(E, O, n_groups, dtype=torch.float32, device=W.device)
        col_scales = None

    U, damps = upper_cholesky_of_inverse(H, config.damp, config.max_damp)
    Q = torch.empty(E, O, I, dtype=torch.int8, device=W.device)
    B = config.block_size
    quantize_block = _block_loop(W.device, config.use_kernel)
    for i1 in range(0, I, B):
        i2 = min(i1 + B, I)
        W1 = W[..., i1:i2].clone()
        Err1 = torch.empty_like(W1)
        U1 = U[..., i1:i2, i1:i2]
        quantize_block(W1, U1, Err1, Q[..., i1:i2], scales, col_scales, i1, bits, group_size)
        if i2 < I:
            W[..., i2:] -= torch.bmm(Err1, U[..., i1:i2, i2:])

    if config.act_order:
        inv = torch.argsort(perm, dim=-1)
        Q = Q.gather(-1, inv.unsqueeze(1).expand(E, O, I))
    scales = round_scales(scales)
    result = GPTQResult(codes=Q, scales=scales, damp=damps)
    if squeeze:
        result = GPTQResult(codes=Q[0], scales=scales[0], damp=damps)
    return result
