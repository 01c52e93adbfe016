import json

import pytest
import torch

from dedicated.quantize_job.calibration import InsufficientCalibrationError
from dedicated.quantize_job.gsq import GSQConfig
from dedicated.quantize_job.layerwise import (
    CalibrationConfig,
    NoExpertsError,
    StateMismatchError,
    discover_targets,
    load_quantized,
    quantize_model,
    target_names,
)

CAL = CalibrationConfig(batch_size=4, min_tokens=32, min_total_tokens=64)


def _clone(model):
    import copy

    return copy.deepcopy(model)


def test_fused_experts_are_named_like_the_checkpoint(tiny_moe):
    names = target_names(tiny_moe)
    assert len(names) == 2 * 4 * 3
    assert "model.layers.1.mlp.experts.3.down_proj" in names
    assert not any("shared_expert" in n or "self_attn" in n for n in names)


def test_gptq_run_writes_state_and_fake_quantizes_the_model(tiny_moe, calib_ids, tmp_path):
    model = _clone(tiny_moe)
    res = quantize_model(model, calib_ids, method="gptq", bits=3, state_dir=tmp_path, device="cpu", calibration=CAL)
    assert res.layers_computed == 2 and res.num_layers == 2
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["completed"] == 2 and [e["file"] for e in state["layers"]] == ["layer_0000.safetensors", "layer_0001.safetensors"]
    q = load_quantized(tmp_path)
    assert set(q) == set(target_names(tiny_moe))
    gate = q["model.layers.0.mlp.experts.2.gate_proj"]
    up = q["model.layers.0.mlp.experts.2.up_proj"]
    assert gate.shape == (128, 128) and gate.bits == 3 and gate.scales.shape == (128, 1)
    fused = model.model.layers[0].mlp.experts.gate_up_proj[2]
    assert torch.equal(fused[:128], gate.dequantize()) and torch.equal(fused[128:], up.dequantize())
    # Everything else is untouched.
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, tiny_moe.model.layers[0].self_attn.q_proj.weight)
    stats = res.stats[0]["units"]["model.layers.0.mlp.experts"]
    assert sum(stats["tokens_per_expert"]) == calib_ids.numel() * 2
    assert 0 < stats["gate_up"]["rel_error"] < 1 and 0 < stats["down"]["rel_error"] < 1


def test_interrupted_run_resumes_bit_identically_with_less_work(tiny_moe, calib_ids, tmp_path):
    cfg = GSQConfig(steps=8, eval_every=4)
    ref_model = _clone(tiny_moe)
    quantize_model(ref_model, calib_ids, method="gsq", bits=2, state_dir=tmp_path / "ref", device="cpu",
                   gsq_config=cfg, calibration=CAL)
    ref = load_quantized(tmp_path / "ref")

    class Preempted(Exception):
        pass

    def stop_after_first(ev):
        if ev.computed and ev.layer == 0:
            raise Preempted

    model = _clone(tiny_moe)
    with pytest.raises(Preempted):
        quantize_model(model, calib_ids, method="gsq", bits=2, state_dir=tmp_path / "run", device="cpu",
                       gsq_config=cfg, calibration=CAL, progress=stop_after_first)
    assert json.loads((tmp_path / "run" / "state.json").read_text())["completed"] == 1
    events = []
    model = _clone(tiny_moe)  # a fresh process: original weights again
    res = quantize_model(model, calib_ids, method="gsq", bits=2, state_dir=tmp_path / "run", device="cpu",
                         gsq_config=cfg, calibration=CAL, progress=events.append)
    assert res.layers_computed == 1
    assert [(e.layer, e.computed) for e in events] == [(0, False), (1, True)]
    got = load_quantized(tmp_path / "run")
    assert set(got) == set(ref)
    for name in ref:
        assert torch.equal(got[name].codes, ref[name].codes), name
        assert torch.equal(got[name].scales, ref[name].scales), name
    for a, b in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)
    # A third run has nothing left to compute.
    again = quantize_model(_clone(tiny_moe), calib_ids, method="gsq", bits=2, state_dir=tmp_path / "run",
                           device="cpu", gsq_config=cfg, calibration=CAL)
    assert again.layers_computed == 0


def test_state_of_another_job_is_not_reused(tiny_moe, calib_ids, tmp_path):
    quantize_model(_clone(tiny_moe), calib_ids, method="rtn", bits=4, state_dir=tmp_path, device="cpu", calibration=CAL)
    with pytest.raises(StateMismatchError, match="bits"):
        quantize_model(_clone(tiny_moe), calib_ids, method="rtn", bits=2, state_dir=tmp_path, device="cpu", calibration=CAL)
    (tmp_path / "layer_0000.safetensors").write_bytes(b"corrupt")
    with pytest.raises(StateMismatchError, match="checksum"):
        quantize_model(_clone(tiny_moe), calib_ids, method="rtn", bits=4, state_dir=tmp_path, device="cpu", calibration=CAL)


def _tiny_dense():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=260, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    return Qwen2ForCausalLM(cfg).eval()


def test_dense_model_with_expert_targets_is_a_specific_error(calib_ids, tmp_path):
    with pytest.raises(NoExpertsError, match="not a mixture-of-experts"):
        quantize_model(_tiny_dense(), calib_ids, method="gptq", bits=4, state_dir=tmp_path, device="cpu", calibration=CAL)
    assert not (tmp_path / "state.json").exists()


def test_dense_linears_can_be_targeted(calib_ids, tmp_path):
    model = _tiny_dense()
    res = quantize_model(model, calib_ids, method="gptq", bits=4, state_dir=tmp_path, device="cpu",
                         targets=("*.mlp.down_proj", "*.mlp.up_proj"), calibration=CAL)
    q = load_quantized(tmp_path)
    assert sorted(q) == sorted(res.names) and len(q) == 4
    assert q["model.layers.1.mlp.down_proj"].shape == (128, 256)
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight, q["model.layers.1.mlp.down_proj"].dequantize())


def test_one_module_per_expert_layout_is_stacked():
    from torch import nn

    class Expert(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(4, 8)

    layer = nn.Module()
    layer.mlp = nn.Module()
    layer.mlp.experts = nn.ModuleList([Expert() for _ in range(3)])
    fused, groups = discover_targets(layer, "model.layers.0", ("*.mlp.experts.*.gate_proj", "*.mlp.experts.*.down_proj"))
    assert not fused
    assert [g.names for g in groups] == [
        [f"model.layers.0.mlp.experts.{e}.down_proj" for e in range(3)],
        [f"model.layers.0.mlp.experts.{e}.gate_proj" for e in range(3)],
    ]


def test_bad_inputs_fail_before_any_work(tiny_moe, calib_ids, tmp_path):
    with pytest.raises(ValueError, match="does not divide"):
        quantize_model(_clone(tiny_moe), calib_ids, method="gptq", bits=2, group_size=96, state_dir=tmp_path / "a", device="cpu")
    with pytest.raises(ValueError, match="gsq does not support 8-bit"):
        quantize_model(_clone(tiny_moe), calib_ids, method="gsq", bits=8, state_dir=tmp_path / "b", device="cpu")
    with pytest.raises(ValueError, match="unknown method"):
        quantize_model(_clone(tiny_moe), calib_ids, method="awq", bits=4, state_dir=tmp_path / "c", device="cpu")
    with pytest.raises(InsufficientCalibrationError, match="too little"):
        quantize_model(_clone(tiny_moe), calib_ids[:1, :8], method="gptq", bits=4, state_dir=tmp_path / "d", device="cpu")
    broken = _clone(tiny_moe)
    with torch.no_grad():
        broken.model.layers[0].mlp.experts.down_proj[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        quantize_model(broken, calib_ids, method="gptq", bits=4, state_dir=tmp_path / "e", device="cpu", calibration=CAL)
