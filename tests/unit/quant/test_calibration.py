import pytest
import torch

from dedicated.quantize_job.calibration import (
    FusedExpertsCapture,
    InsufficientCalibrationError,
    apply_fallback,
    capture_decoder_inputs,
    expert_hessians,
    find_decoder_layers,
    run_layer,
    token_counts,
)


def test_layer_by_layer_reproduces_the_full_forward(tiny_moe, calib_ids):
    with torch.no_grad():
        ref = tiny_moe.model(input_ids=calib_ids).last_hidden_state
        inputs = capture_decoder_inputs(tiny_moe, calib_ids, device="cpu", batch_size=3)
        assert [h.shape[0] for h in inputs.hidden] == [3, 3, 2]
        _, layers = find_decoder_layers(tiny_moe)
        for layer in layers:
            inputs.hidden = run_layer(layer, inputs, device=torch.device("cpu"))
        got = tiny_moe.model.norm(torch.cat(inputs.hidden))
    assert torch.allclose(ref, got, atol=1e-5)


def test_each_expert_sees_exactly_the_tokens_its_router_chose(tiny_moe, calib_ids):
    inputs = capture_decoder_inputs(tiny_moe, calib_ids, device="cpu", batch_size=4)
    layer = tiny_moe.model.layers[0]
    with FusedExpertsCapture(layer.mlp.experts) as cap:
        run_layer(layer, inputs, device=torch.device("cpu"))
    k, E = tiny_moe.config.num_experts_per_tok, tiny_moe.config.num_experts
    x = torch.cat([b.x for b in cap.batches])
    idx = torch.cat([b.index for b in cap.batches])
    # The model's own router, called independently, picks the same experts.
    _, _, ref_idx = layer.mlp.gate(x)
    assert torch.equal(idx, ref_idx)
    counts = token_counts(cap.batches, E)
    assert int(counts.sum()) == calib_ids.numel() * k
    S, c = expert_hessians(cap.batches, E)
    for e in range(E):
        mine = x[(idx == e).any(-1)]
        assert torch.allclose(S[e], mine.T @ mine, rtol=1e-4, atol=1e-3)
        assert int(c[e]) == mine.shape[0] == int(counts[e])


def test_routing_weighted_hessian_uses_squared_weights(tiny_moe, calib_ids):
    inputs = capture_decoder_inputs(tiny_moe, calib_ids, device="cpu", batch_size=8)
    layer = tiny_moe.model.layers[1]
    with FusedExpertsCapture(layer.mlp.experts) as cap:
        run_layer(layer, inputs, device=torch.device("cpu"))
    b = cap.batches[0]
    S, c = expert_hessians(cap.batches, 4, routing_weighted=True)
    tok, slot = torch.where(b.index == 2)
    r2 = b.weight[tok, slot].square()
    assert torch.allclose(S[2], (b.x[tok] * r2[:, None]).T @ b.x[tok], rtol=1e-4, atol=1e-4)
    assert float(c[2]) == pytest.approx(float(r2.sum()), rel=1e-5)


def test_starved_experts_fall_back_as_documented():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, 8, generator=g) for n in (100, 10, 0)]
    S = torch.stack([x.T @ x if len(x) else torch.zeros(8, 8) for x in xs])
    counts = torch.tensor([100.0, 10.0, 0.0])
    pooled = S.sum(0) / 110
    H, rep = apply_fallback(S, counts, min_tokens=50, mode="pooled")
    assert rep.starved == [1, 2] and rep.empty == [2]
    assert torch.allclose(H[0], 2 * S[0] / 100, atol=1e-5)
    assert torch.allclose(H[2], 2 * pooled, atol=1e-5)  # no tokens: the layer's pooled statistics
    assert torch.allclose(H[1], 2 * (0.2 * S[1] / 10 + 0.8 * pooled), atol=1e-5)
    H_id, _ = apply_fallback(S, counts, min_tokens=50, mode="identity")
    assert torch.allclose(H_id[2], 2 * torch.diagonal(pooled).mean() * torch.eye(8), atol=1e-5)
    with pytest.raises(InsufficientCalibrationError):
        apply_fallback(torch.zeros(2, 8, 8), torch.zeros(2), min_tokens=1)
    with pytest.raises(ValueError, match="fallback"):
        apply_fallback(S, counts, min_tokens=1, mode="zeros")


def test_empty_calibration_is_refused(tiny_moe):
    with pytest.raises(InsufficientCalibrationError):
        capture_decoder_inputs(tiny_moe, torch.zeros(0, 5, dtype=torch.long), device="cpu")
