"""GSQ Gumbel-Softmax kernels (forward, backward, loss) against the plain-torch reference."""

from __future__ import annotations

import math

import pytest
import torch

from dedicated.kernels import gsq_relax as gsq
from dedicated.kernels import reference as ref


def problem(bits, n=6, k=256, group=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    levels = 1 << bits
    logits = torch.randn(n, k, levels, generator=g).requires_grad_(True)
    scales = (torch.rand(n, k // group, generator=g) * 0.02 + 0.01).requires_grad_(True)
    weight = torch.randn(n, k, generator=g) * 0.02
    x = torch.randn(16, k, generator=g)
    return logits, scales, weight, x


def grads(out, inputs, grad=None):
    return torch.autograd.grad(out, inputs, grad)


def close(a, b, tol):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item() < tol


def test_gumbel_noise_is_seeded_and_gumbel_distributed():
    a = gsq.gumbel_noise((64, 64), seed=7, device="cpu")
    assert torch.equal(a, gsq.gumbel_noise((64, 64), seed=7, device="cpu"))
    assert not torch.equal(a, gsq.gumbel_noise((64, 64), seed=8, device="cpu"))
    euler_gamma = 0.5772
    assert abs(a.mean().item() - euler_gamma) < 0.06
    assert abs(a.var().item() - math.pi**2 / 6) < 0.15


@pytest.mark.parametrize("bits", [2, 4])
def test_soft_weight_seeded_matches_reference(bits):
    logits, scales, _, _ = problem(bits)
    tau, seed = 0.7, 1234
    noise = gsq.gumbel_noise(tuple(logits.shape), seed, device="cpu")
    got = gsq.gsq_soft_weight(logits, scales, tau, bits, seed=seed)
    want = ref.gsq_soft_weight_ref(logits, scales, noise, tau, bits)
    assert close(got, want, 1e-6)
    upstream = torch.randn_like(got)
    for a, b in zip(grads(got, (logits, scales), upstream), grads(want, (logits, scales), upstream)):
        assert close(a, b, 1e-5)


def test_soft_weight_with_given_noise_and_without_noise():
    bits, tau = 2, 0.3
    logits, scales, _, _ = problem(bits, seed=1)
    noise = torch.randn(logits.shape)
    for nz in (noise, None):
        got = gsq.gsq_soft_weight(logits, scales, tau, bits, noise=nz)
        want = ref.gsq_soft_weight_ref(logits, scales, nz, tau, bits)
        assert close(got, want, 1e-6)
        up = torch.randn_like(got)
        for a, b in zip(grads(got, (logits, scales), up), grads(want, (logits, scales), up)):
            assert close(a, b, 1e-5)


def test_soft_weight_is_a_convex_mix_of_grid_points():
    bits = 2
    logits, scales, _, _ = problem(bits, seed=2)
    w = gsq.gsq_soft_weight(logits, scales, 0.5, bits, seed=3)
    s = scales.detach().repeat_interleave(128, dim=1)
    assert (w >= -2 * s - 1e-6).all() and (w <= 1 * s + 1e-6).all()
    # a very low temperature without noise is the hard argmax assignment
    hard = gsq.gsq_soft_weight(logits * 100, scales, 1e-3, bits)
    assert torch.allclose(hard, gsq.hard_codes(logits).float() * s, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("form", ["x", "hessian"])
def test_loss_and_grads_match_reference(bits, form):
    logits, scales, weight, x = problem(bits, seed=4)
    tau, seed = 0.9, 99
    kwargs = {"x": x} if form == "x" else {"hessian": x.T @ x}
    noise = gsq.gumbel_noise(tuple(logits.shape), seed, device="cpu")
    got = gsq.gsq_loss(logits, scales, weight, tau, bits, seed=seed, **kwargs)
    want = ref.gsq_loss_ref(logits, scales, weight, noise, tau, bits, **kwargs)
    assert close(got, want, 1e-5)
    for a, b in zip(grads(got, (logits, scales)), grads(want, (logits, scales))):
        assert close(a, b, 1e-4)


def test_relaxed_codes_is_a_drop_in_for_the_quantizers_reference():
    """quantize_job.gsq calls ``relax(theta * alpha, gumbel, tau, grid)`` on ``[E, O, I, K]``."""
    from dedicated.quantize_job.gsq import relaxed_codes as quantizer_relaxed_codes

    g = torch.Generator().manual_seed(6)
    theta = (torch.randn(3, 5, 96, 4, generator=g) * 2).requires_grad_(True)  # I=96: ragged column block
    gumbel = torch.randn(theta.shape, generator=g)
    grid = torch.tensor([-2.0, -1.0, 0.0, 1.0])
    got = gsq.relaxed_codes(theta, gumbel, 0.4, grid)
    want = quantizer_relaxed_codes(theta, gumbel, 0.4, grid)
    assert got.shape == (3, 5, 96) and close(got, want, 1e-6)
    up = torch.randn_like(got)
    assert close(grads(got, (theta,), up)[0], grads(want, (theta,), up)[0], 1e-5)


def test_batched_experts_loss_matches_reference():
    bits, e = 2, 2
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(e, 4, 128, 4, generator=g).requires_grad_(True)
    scales = (torch.rand(e, 4, 1, generator=g) * 0.02 + 0.01).requires_grad_(True)
    weight = torch.randn(e, 4, 128, generator=g) * 0.02
    x = torch.randn(e, 8, 128, generator=g)
    h = x.transpose(-1, -2) @ x
    noise = gsq.gumbel_noise(tuple(logits.shape), 5, device="cpu")
    got = gsq.gsq_loss(logits, scales, weight, 0.6, bits, hessian=h, seed=5)
    want = ref.gsq_loss_ref(logits, scales, weight, noise, 0.6, bits, hessian=h)
    assert close(got, want, 1e-5)
    for a, b in zip(grads(got, (logits, scales)), grads(want, (logits, scales))):
        assert close(a, b, 1e-4)


def test_fused_and_reference_forms_agree_with_each_other():
    """X form and Hessian form are the same loss: a check on the reference itself."""
    logits, scales, weight, x = problem(2, seed=5)
    a = ref.gsq_loss_ref(logits, scales, weight, None, 1.0, 2, x=x)
    b = ref.gsq_loss_ref(logits, scales, weight, None, 1.0, 2, hessian=x.T @ x)
    assert close(a, b, 1e-5)


def test_bad_arguments_are_rejected():
    logits, scales, weight, x = problem(2)
    with pytest.raises(ValueError, match="tau"):
        gsq.gsq_soft_weight(logits, scales, 0.0, 2)
    with pytest.raises(ValueError, match="not both"):
        gsq.gsq_soft_weight(logits, scales, 1.0, 2, noise=torch.zeros(logits.shape), seed=1)
    with pytest.raises(ValueError, match=r"N, K, 16\]"):
        gsq.gsq_soft_weight(logits, scales, 1.0, 4)
    with pytest.raises(ValueError, match="exactly one"):
        gsq.gsq_loss(logits, scales, weight, 1.0, 2)
    with pytest.raises(ValueError, match="hessian must be"):
        gsq.gsq_loss(logits, scales, weight, 1.0, 2, hessian=torch.eye(3))
