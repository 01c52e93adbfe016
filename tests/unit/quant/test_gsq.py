import pytest
import torch

from dedicated.quantize_job.gptq import gptq, reconstruction_error
from dedicated.quantize_job.gsq import GSQConfig, Lion, _schedule, grid_values, gsq, init_logits, relaxed_codes
from dedicated.quantize_job.qtensor import code_range
from dedicated.quantize_job.rtn import dequantize

from .conftest import correlated_problem

FAST = GSQConfig(steps=120, eval_every=20)


@pytest.mark.parametrize("bits", [2, 3])
def test_gsq_improves_on_its_gptq_initialisation(bits):
    w, h = correlated_problem(experts=2, out=16)
    init = gptq(w, h, bits, 128)
    res = gsq(w, h, init.codes, init.scales, bits, 128, FAST)
    lo, hi = code_range(bits)
    assert int(res.codes.min()) >= lo and int(res.codes.max()) <= hi
    assert torch.equal(res.scales, res.scales.to(torch.bfloat16).float())
    final = reconstruction_error(w, dequantize(res.codes, res.scales, 128), h)
    assert torch.allclose(final, res.final_loss, rtol=1e-4)
    assert (res.final_loss <= res.init_loss).all()
    assert float(res.final_loss.sum()) < 0.97 * float(res.init_loss.sum())


def test_never_worse_than_the_initialisation():
    # One step at a temperature that scrambles the assignment: the keep-best guard must hold.
    w, h = correlated_problem(experts=2, out=8)
    init = gptq(w, h, 2, 128)
    res = gsq(w, h, init.codes, init.scales, 2, 128, GSQConfig(steps=1, tau=(50.0, 50.0), init_strength=0.0))
    assert (res.final_loss <= res.init_loss + 1e-6).all()


def test_deterministic_for_a_seed():
    w, h = correlated_problem(experts=2, out=8)
    init = gptq(w, h, 2, 128)
    cfg = GSQConfig(steps=30, eval_every=10, seed=7)
    a = gsq(w, h, init.codes, init.scales, 2, 128, cfg)
    b = gsq(w, h, init.codes, init.scales, 2, 128, cfg)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)


def test_fixed_scales_stay_at_gptq_values():
    w, h = correlated_problem(experts=1, out=8)
    init = gptq(w, h, 2, 128)
    res = gsq(w, h, init.codes, init.scales, 2, 128, GSQConfig(steps=20, learn_scales=False))
    assert torch.equal(res.scales, init.scales)


def test_relaxation_hardens_to_the_argmax_level():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-2, 2, (4, 128), generator=g).to(torch.int8)
    logits = init_logits(codes, 2, strength=6.0, noise=0.0, gen=g)
    soft = relaxed_codes(logits, torch.zeros_like(logits), 1e-3, grid_values(2))
    assert torch.allclose(soft, codes.float())


def test_schedules_run_from_start_to_end():
    cfg = GSQConfig(steps=11, tau=(2.0, 0.05), logit_mult=(1.0, 5.0))
    assert _schedule(cfg, 0)[:2] == (2.0, 1.0)
    tau, alpha, lr = _schedule(cfg, 10)
    assert abs(tau - 0.05) < 1e-9 and abs(alpha - 5.0) < 1e-9 and abs(lr - cfg.min_lr_ratio) < 1e-9
    geo = GSQConfig(steps=11, tau_schedule="geometric")
    assert abs(_schedule(geo, 5)[0] - (2.0 * 0.05) ** 0.5) < 1e-9


def test_lion_update_rule():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    p.grad = torch.tensor([0.3, -0.1, 0.0])
    opt.step()
    expected = torch.tensor([1.0, -2.0, 0.5]) * (1 - 0.1 * 0.5) - 0.1 * torch.tensor([1.0, -1.0, 0.0])
    assert torch.allclose(p.detach(), expected)
    assert torch.allclose(opt.state[p]["exp_avg"], 0.01 * torch.tensor([0.3, -0.1, 0.0]))


def test_kernel_flag_needs_cuda():
    w, h = correlated_problem(experts=1, out=8)
    init = gptq(w, h, 2, 128)
    with pytest.raises(ValueError, match="CUDA"):
        gsq(w, h, init.codes, init.scales, 2, 128, GSQConfig(steps=2, use_kernel=True))


def test_default_kernel_setting_is_the_torch_path_on_the_cpu():
    """``use_kernel=None`` (the default) means the kernel on CUDA only: on the CPU, the torch path."""
    assert GSQConfig().use_kernel is None
    w, h = correlated_problem(experts=1, out=8)
    init = gptq(w, h, 2, 128)
    auto = gsq(w, h, init.codes, init.scales, 2, 128, GSQConfig(steps=4, eval_every=2))
    torch_path = gsq(w, h, init.codes, init.scales, 2, 128, GSQConfig(steps=4, eval_every=2, use_kernel=False))
    assert torch.equal(auto.codes, torch_path.codes) and torch.equal(auto.scales, torch_path.scales)
