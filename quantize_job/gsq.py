"""GSQ: Gumbel-Softmax refinement of a GPTQ grid assignment (arXiv 2604.18556), batched over experts.

Each weight ``w_ij`` of a group with scale ``s`` picks one level ``v_k`` of the symmetric grid
(``{-2, -1, 0, 1}`` at 2 bits). GSQ relaxes that discrete choice: every weight gets ``K`` logits
``theta_ijk`` and its soft value is ``s * sum_k softmax((alpha_t * theta + g) / tau_t)_k * v_k`` with
fresh Gumbel noise ``g`` each step. The logits (and, optionally, the scales) are trained with Lion on
the layer-wise reconstruction objective ``tr(dW H dW^T)`` = ``||X Wq^T - X W^T||^2`` summed over the
experts of a layer, with ``H`` the expert's own calibration Hessian (tokens routed to it only).
Temperature ``tau_t`` falls and the logit multiplier ``alpha_t`` rises over the run, so the
relaxation hardens into a single level per weight; the result is ``argmax_k theta``.

From the paper and the authors' public configuration: GPTQ initialisation; logits initialised from
the GPTQ code as a centred quadratic ``-strength * (c - v_k)^2 / 2`` plus Gaussian noise; Lion;
a linear temperature schedule 2 -> 0.05 with a logit multiplier rising 5x; learnable per-group
scales; decoupled weight decay on the logits; cosine learning-rate decay.

Chosen here, where the paper is silent or this setting differs (each is a ``GSQConfig`` field and
``benchmarks/bench_quality.py`` measures the ones that matter):

- The objective is the per-linear reconstruction in its exact Hessian form, evaluated full-batch
  (one ``bmm`` per step) instead of mini-batches of tokens through the whole MoE block: the only
  stochasticity is the Gumbel noise, and a step costs the same for 100 or 100k calibration tokens.
- Scales are parametrised multiplicatively, ``s = s_gptq * (1 + rho)``, so one Lion learning rate
  suits every group whatever its magnitude; ``rho`` is clamped to ``[-0.5, 1]`` so scales stay
  positive (the serving formats' codebooks assume it).
- Keep-best safeguard: every ``eval_every`` steps the hard assignment is scored, and each expert
  keeps the best hard solution seen, starting from GPTQ's. GSQ is therefore never worse than its
  GPTQ initialisation on the layer objective (the relaxation's soft loss is not the hard loss).
- Experts are processed in chunks sized to the device memory; each chunk is still one batched
  tensor program over all of its experts.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch

from dedicated.quantize_job.gptq import reconstruction_error
from dedicated.quantize_job.qtensor import code_range
from dedicated.quantize_job.rtn import check_finite, check_group, dequantize, round_scales


@dataclass(frozen=True)
class GSQConfig:
    steps: int = 400
    lr_logits: float = 0.02
    lr_scales: float = 3e-3
    learn_scales: bool = True
    weight_decay: float = 0.01  # decoupled: theta <- theta * (1 - lr * wd) each step
    betas: tuple[float, float] = (0.9, 0.95)
    min_lr_ratio: float = 0.1  # cosine decay of both learning rates down to this fraction
    tau: tuple[float, float] = (2.0, 0.05)  # temperature, start -> end
    tau_schedule: str = "linear"  # or "geometric"
    logit_mult: tuple[float, float] = (1.0, 5.0)  # alpha, start -> end (linear)
    init_strength: float = 6.0
    init_noise: float = 1.0
    eval_every: int = 25
    seed: int = 0
    expert_chunk: int | None = None  # None: as many experts per chunk as memory allows
    # dedicated.kernels.gsq_relax. None (the default): used wherever it can run (CUDA, a 2- or 4-bit
    # grid, Triton importable); True insists, False never. Default since it measured equal: held-out
    # perplexity 2.2333 / 2.2337 vs 2.2330 / 2.2334 (torch, two seeds each) on the tiny MoE, and with
    # GPTQ's kernel 101.1 vs 130.1 s per Qwen3.6-35B-A3B MoE layer on an H100 (docs/benchmarks-quality.md).
    use_kernel: bool | None = None
    kernel_noise: str = "seeded"  # with use_kernel: Philox noise drawn in-kernel ("seeded") or torch's ("torch")
    tf32: bool = True  # TF32 for the Hessian products on CUDA: the loss only steers the assignment

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class GSQResult:
    codes: torch.Tensor  # int8 [E, O, I]
    scales: torch.Tensor  # float32 [E, O, G], bf16-representable
    init_loss: torch.Tensor  # [E] reconstruction error of the initialisation
    final_loss: torch.Tensor  # [E] reconstruction error of the result (<= init_loss)
    stats: dict = field(default_factory=dict)


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al., 2023): the sign of an interpolated momentum, with decoupled weight decay.

    ``update = sign(b1 * m + (1 - b1) * g)``; ``p <- p * (1 - lr * wd) - lr * update``;
    ``m <- b2 * m + (1 - b2) * g``. torch ships no Lion; this is the whole rule.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"Lion learning rate must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                update = m.mul(b1).add_(p.grad, alpha=1 - b1).sign_()
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)


def grid_values(bits: int, device=None) -> torch.Tensor:
    lo, hi = code_range(bits)
    return torch.arange(lo, hi + 1, dtype=torch.float32, device=device)


def init_logits(codes: torch.Tensor, bits: int, strength: float, noise: float, gen: torch.Generator) -> torch.Tensor:
    """``[..., K]`` logits peaked at each weight's initial code, centred over the K levels."""
    v = grid_values(bits, codes.device)
    d = -0.5 * (codes.float().unsqueeze(-1) - v).square()
    d = d - d.mean(dim=-1, keepdim=True)
    eps = torch.randn(d.shape, generator=gen, device=codes.device, dtype=torch.float32)
    return strength * d + noise * eps


def relaxed_codes(logits: torch.Tensor, gumbel: torch.Tensor, tau: float, grid: torch.Tensor) -> torch.Tensor:
    """``sum_k softmax((logits + gumbel) / tau)_k * grid_k``: the plain-torch reference relaxation."""
    return (torch.softmax((logits + gumbel) / tau, dim=-1) * grid).sum(-1)


def _schedule(cfg: GSQConfig, step: int) -> tuple[float, float, float]:
    t = step / max(1, cfg.steps - 1)
    t0, t1 = cfg.tau
    tau = t0 * (t1 / t0) ** t if cfg.tau_schedule == "geometric" else t0 + (t1 - t0) * t
    if cfg.tau_schedule not in ("linear", "geometric"):
        raise ValueError(f"unknown temperature schedule {cfg.tau_schedule!r}")
    a0, a1 = cfg.logit_mult
    alpha = a0 + (a1 - a0) * t
    lr_frac = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return tau, alpha, lr_frac


def _gumbel(shape, gen: torch.Generator, device) -> torch.Tensor:
    u = torch.rand(shape, generator=gen, device=device, dtype=torch.float32)
    return -torch.log(-torch.log(u.clamp_(1e-10, 1.0 - 1e-7)))


def _relax_kernel_importable() -> bool:
    try:
        import dedicated.kernels.gsq_relax  # noqa: F401
    except ImportError:
        return False
    return True


def _soft_weight_fn(cfg: GSQConfig, device: torch.device, bits: int, group_size: int):
    """``(logits, noise, tau, scales, gen) -> W_soft``: plain torch, or the fused Triton kernel."""
    grid = grid_values(bits, device)
    use_kernel = cfg.use_kernel
    if use_kernel is None:
        use_kernel = device.type == "cuda" and bits in (2, 4) and _relax_kernel_importable()
    if not use_kernel:
        def torch_soft(logits, scales, tau, gen):
            noise = _gumbel(logits.shape, gen, device)
            return relaxed_codes(logits, noise, tau, grid) * scales.repeat_interleave(group_size, dim=-1)
        return torch_soft
    if device.type != "cuda":
        raise ValueError("use_kernel=True needs a CUDA device; the Triton relaxation kernel does not run on CPU")
    if bits not in (2, 4):
        raise ValueError(f"use_kernel=True supports 2- and 4-bit grids (the Triton kernels' widths), not {bits}-bit")
    if cfg.kernel_noise not in ("seeded", "torch"):
        raise ValueError(f"kernel_noise must be 'seeded' or 'torch', got {cfg.kernel_noise!r}")
    try:
        from dedicated.kernels.gsq_relax import gsq_soft_weight
    except ImportError as exc:  # the kernel is another module's deliverable
        raise ImportError("use_kernel=True but dedicated.kernels.gsq_relax is not importable") from exc

    def kernel_soft(logits, scales, tau, gen):
        if cfg.kernel_noise == "torch":
            return gsq_soft_weight(logits, scales, tau, bits, group_size, noise=_gumbel(logits.shape, gen, device))
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=device))
        return gsq_soft_weight(logits, scales, tau, bits, group_size, seed=seed)
    return kernel_soft


def _auto_chunk(cfg: GSQConfig, e: int, o: int, i: int, k: int, device: torch.device) -> int:
    if cfg.expert_chunk is not None:
        return max(1, min(e, cfg.expert_chunk))
    if device.type != "cuda":
        return e
    free, _ = torch.cuda.mem_get_info(device)
    per_expert = o * i * k * 4 * 8 + i * i * 4 * 2 + o * i * 4 * 8  # logits+grad+momentum+noise+softmax, H, W-sized
    return max(1, min(e, int(0.7 * free) // per_expert))


def gsq(
    w: torch.Tensor,
    h: torch.Tensor,
    init_codes: torch.Tensor,
    init_scales: torch.Tensor,
    bits: int,
    group_size: int = 128,
    config: GSQConfig = GSQConfig(),
) -> GSQResult:
    """Refine ``init_codes``/``init_scales`` (``[E, O, I]``/``[E, O, G]``, from GPTQ) for weights ``w``."""
    if w.dim() != 3:
        raise ValueError(f"gsq expects batched weights [E, O, I], got {tuple(w.shape)}")
    E, O, I = w.shape
    check_group(I, group_size)
    check_finite("weight", w)
    check_finite("Hessian", h)
    if tuple(h.shape) != (E, I, I) or tuple(init_codes.shape) != (E, O, I):
        raise ValueError("Hessian/initial codes do not match the weights' shape")
    if config.steps < 1:
        raise ValueError("GSQ needs at least one step")
    device = w.device
    K = 1 << bits
    soft_weight = _soft_weight_fn(config, device, bits, group_size)
    chunk = _auto_chunk(config, E, O, I, K, device)
    codes_out = torch.empty(E, O, I, dtype=torch.int8, device=device)
    scales_out = torch.empty(E, O, I // group_size, dtype=torch.float32, device=device)
    init_loss = torch.empty(E, dtype=torch.float32, device=device)
    final_loss = torch.empty(E, dtype=torch.float32, device=device)
    start = time.time()
    precision = torch.get_float32_matmul_precision()
    if config.tf32 and device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    try:
        for c0 in range(0, E, chunk):
            c1 = min(E, c0 + chunk)
            res = _gsq_chunk(
                w[c0:c1].float(), h[c0:c1].float(), init_codes[c0:c1], init_scales[c0:c1].float(), bits, group_size,
                config, soft_weight, seed=config.seed * 1_000_003 + c0,
            )
            codes_out[c0:c1], scales_out[c0:c1], init_loss[c0:c1], final_loss[c0:c1] = res
    finally:
        torch.set_float32_matmul_precision(precision)
    if config.tf32 and device.type == "cuda":  # report the exact objective, not the TF32 estimate
        init_loss = reconstruction_error(w, dequantize(init_codes, round_scales(init_scales), group_size), h)
        final_loss = reconstruction_error(w, dequantize(codes_out, scales_out, group_size), h)
        worse = final_loss > init_loss  # a TF32 misjudgement: keep the initialisation there
        if bool(worse.any()):
            codes_out[worse] = init_codes[worse].to(torch.int8)
            scales_out[worse] = round_scales(init_scales[worse].float())
            final_loss = torch.where(worse, init_loss, final_loss)
    improved = (final_loss < init_loss).float().mean().item()
    stats = {
        "seconds": round(time.time() - start, 3),
        "experts": E,
        "expert_chunk": chunk,
        "init_loss": float(init_loss.sum()),
        "final_loss": float(final_loss.sum()),
        "experts_improved": improved,
    }
    return GSQResult(codes_out, scales_out, init_loss, final_loss, stats)


def _gsq_chunk(w, h, codes0, scales0, bits, group_size, cfg: GSQConfig, soft_weight, seed: int):
    device = w.device
    gen = torch.Generator(device=device).manual_seed(seed)
    lo, hi = code_range(bits)
    scales0 = round_scales(scales0)
    theta = init_logits(codes0, bits, cfg.init_strength, cfg.init_noise, gen).requires_grad_(True)
    rho = torch.zeros_like(scales0, requires_grad=True)
    groups = [{"params": [theta], "lr": cfg.lr_logits, "weight_decay": cfg.weight_decay}]
    if cfg.learn_scales:
        groups.append({"params": [rho], "lr": cfg.lr_scales, "weight_decay": 0.0})
    opt = Lion(groups, lr=cfg.lr_logits, betas=cfg.betas)
    base_lrs = [g["lr"] for g in opt.param_groups]

    def dequant(codes_f: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return codes_f * scales.repeat_interleave(group_size, dim=-1)

    best_codes = codes0.clone()
    best_scales = scales0.clone()
    best_loss = reconstruction_error(w, dequant(codes0.float(), scales0), h)
    init_loss = best_loss.clone()
    norm = reconstruction_error(torch.zeros_like(w), w, h).sum().clamp_min(1e-30)

    def consider_hard() -> None:
        nonlocal best_codes, best_scales, best_loss
        with torch.no_grad():
            codes = (theta.argmax(dim=-1) + lo).to(torch.int8)
            scales = round_scales(scales0 * (1 + rho)) if cfg.learn_scales else scales0
            loss = reconstruction_error(w, dequant(codes.float(), scales), h)
            better = loss < best_loss
            best_codes = torch.where(better.view(-1, 1, 1), codes, best_codes)
            best_scales = torch.where(better.view(-1, 1, 1), scales, best_scales)
            best_loss = torch.where(better, loss, best_loss)

    for step in range(cfg.steps):
        tau, alpha, lr_frac = _schedule(cfg, step)
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = base * lr_frac
        scales = scales0 * (1 + rho) if cfg.learn_scales else scales0
        d = soft_weight(theta * alpha, scales, tau, gen) - w
        loss = (torch.bmm(d, h) * d).sum() / norm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            rho.clamp_(-0.5, 1.0)  # scales stay positive and within a factor of two of GPTQ's
        del d, loss
        if (step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1:
            consider_hard()
    assert int(best_codes.min()) >= lo and int(best_codes.max()) <= hi
    return best_codes, best_scales, init_loss, best_loss
