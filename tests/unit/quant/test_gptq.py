import pytest
import torch

from dedicated.quantize_job.gptq import GPTQConfig, SingularHessianError, gptq, reconstruction_error
from dedicated.quantize_job.qtensor import code_range
from dedicated.quantize_job.rtn import dequantize, rtn

from .conftest import correlated_problem


def _err(w, h, codes, scales):
    return float(reconstruction_error(w, dequantize(codes, scales, 128), h).sum())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_beats_rtn_on_the_layer_objective(bits):
    w, h = correlated_problem()
    r = gptq(w, h, bits, 128)
    lo, hi = code_range(bits)
    assert int(r.codes.min()) >= lo and int(r.codes.max()) <= hi
    assert _err(w, h, r.codes, r.scales) < 0.8 * _err(w, h, *rtn(w, bits, 128))


def test_act_order_keeps_group_layout_and_helps():
    w, h = correlated_problem(seed=3)
    plain = gptq(w, h, 2, 128, GPTQConfig(act_order=False))
    ordered = gptq(w, h, 2, 128, GPTQConfig(act_order=True))
    assert ordered.scales.shape == plain.scales.shape == (3, 32, 2)
    assert _err(w, h, ordered.codes, ordered.scales) < 1.05 * _err(w, h, plain.codes, plain.scales)


def test_identity_hessian_reduces_to_rtn():
    # With uncorrelated inputs there is no error to spread: GPTQ is exactly round-to-nearest.
    w = torch.randn(2, 16, 256)
    h = torch.eye(256).expand(2, 256, 256).clone()
    codes, scales = rtn(w, 3, 128)
    for act_order in (False, True):
        r = gptq(w, h, 3, 128, GPTQConfig(act_order=act_order))
        assert torch.equal(r.codes, codes) and torch.equal(r.scales, scales)


@pytest.mark.parametrize("act_order", [False, True])
def test_batched_equals_one_expert_at_a_time(act_order):
    w, h = correlated_problem(experts=3)
    cfg = GPTQConfig(act_order=act_order)
    both = gptq(w, h, 2, 128, cfg)
    for e in range(3):
        one = gptq(w[e], h[e], 2, 128, cfg)
        assert torch.equal(both.codes[e], one.codes) and torch.allclose(both.scales[e], one.scales)


def test_dead_inputs_and_rank_deficient_hessian():
    w, _ = correlated_problem(experts=1)
    x = torch.randn(40, 256)  # 40 tokens: rank 40 of 256
    x[:, :10] = 0  # ten inputs never active
    h = (2 * x.T @ x / 40).unsqueeze(0)
    r = gptq(w, h, 2, 128)
    assert (r.codes[0][:, :10] == 0).all()  # dead inputs: weights do not matter, zeroed
    assert torch.isfinite(r.scales).all()


def test_indefinite_hessian_gets_more_damping_or_a_clear_error():
    w, h = correlated_problem(experts=2)
    bad = h.clone()
    bad[1] -= 0.5 * torch.diagonal(h[1]).mean() * torch.eye(256)  # not positive definite
    r = gptq(w, bad, 2, 128)
    assert float(r.damp[0]) == pytest.approx(0.01) and float(r.damp[1]) > 0.02
    with pytest.raises(SingularHessianError, match="not positive definite"):
        gptq(w, bad, 2, 128, GPTQConfig(max_damp=0.05))


def test_nan_inputs_are_refused():
    w, h = correlated_problem(experts=1)
    h[0, 3, 4] = float("inf")
    with pytest.raises(ValueError, match="Hessian has 1 NaN/Inf"):
        gptq(w, h, 2, 128)
    w2, h2 = correlated_problem(experts=1)
    w2[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight has 1 NaN/Inf"):
        gptq(w2, h2, 2, 128)
    w3, h3 = correlated_problem(experts=1)
    with pytest.raises(ValueError, match="block size"):
        gptq(w3, h3, 2, 128, GPTQConfig(block_size=64))
