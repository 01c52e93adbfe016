import json

import pytest
import torch

from dedicated.quantize_job.autoround_runner import (
    FORMAT,
    add_in_proj_ba_entries,
    dequantize_autogptq,
    dequantize_autogptq_checkpoint,
    in_proj_ba_names,
    keep_bf16_modules,
    load_dense_weights,
    run_autoround,
)


def _meta_qwen35_moe():
    """The Qwen3.5/3.6-MoE class (hybrid Gated-DeltaNet + attention, shared expert, vision tower),
    tiny and on the meta device: only its module names matter here."""
    from transformers import Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration

    cfg = Qwen3_5MoeConfig(
        text_config=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                         num_experts=4, num_experts_per_tok=2, moe_intermediate_size=128,
                         shared_expert_intermediate_size=128, vocab_size=260, linear_num_value_heads=2,
                         linear_num_key_heads=1, linear_key_head_dim=32, linear_value_head_dim=32),
        vision_config=dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128),
    )
    with torch.device("meta"):
        return Qwen3_5MoeForConditionalGeneration(cfg)


def test_keep_list_and_in_proj_ba_on_the_qwen35_moe_layout(tmp_path):
    model = _meta_qwen35_moe()
    names = [n for n, _ in model.named_modules()]
    linear_attn_layers = sorted({n.rsplit(".linear_attn", 1)[0] for n in names if n.endswith(".linear_attn")})
    assert linear_attn_layers, "the tiny model must have Gated-DeltaNet layers"
    expected = [f"{p}.linear_attn.in_proj_ba" for p in linear_attn_layers]
    assert in_proj_ba_names(names) == sorted(expected)

    kept = set(keep_bf16_modules(model))
    assert "lm_head" in kept
    assert all(f"{p}.linear_attn.in_proj_a" in kept and f"{p}.linear_attn.in_proj_b" in kept for p in linear_attn_layers)
    assert "model.language_model.layers.0.mlp.gate" in kept
    assert "model.language_model.layers.0.mlp.shared_expert_gate" in kept
    assert "model.language_model.layers.0.mlp.shared_expert.down_proj" in kept
    assert any(n.startswith("model.visual.") for n in kept)
    assert not any(".experts." in n or "self_attn" in n or "in_proj_qkv" in n or "out_proj" in n for n in kept)

    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"bits": 4, "extra_config": {
        "x.shared_expert_gate": {"bits": 16, "data_type": "fp"}}}}))
    (tmp_path / "quantization_config.json").write_text(json.dumps({"bits": 4}))
    added = add_in_proj_ba_entries(tmp_path, names)
    assert added == sorted(expected)
    for fname, key in (("config.json", "quantization_config"), ("quantization_config.json", None)):
        cfg = json.loads((tmp_path / fname).read_text())
        extra = (cfg[key] if key else cfg)["extra_config"]
        for n in expected:
            assert extra[n] == {"bits": 16, "data_type": "fp"}
    assert "x.shared_expert_gate" in json.loads((tmp_path / "config.json").read_text())["quantization_config"]["extra_config"]
    assert add_in_proj_ba_entries(tmp_path, names) == added  # idempotent


def test_dequantizer_matches_the_auto_gptq_kernel_layout():
    ext = pytest.importorskip("auto_round_extension.torch.qlinear_torch_zp")
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 64, bias=False)
    scales = lin.weight.detach().abs().reshape(64, 2, 128).amax(-1) / 7
    ql = ext.QuantLinear(4, 128, 256, 64, bias=False)
    ql.pack(lin, scales, 8)
    ours = dequantize_autogptq(ql.qweight, ql.qzeros, ql.scales, 4)
    theirs = ql.forward(torch.eye(256, dtype=torch.float16)).float().T
    assert torch.allclose(ours, theirs, atol=1e-3)
    assert (ours - lin.weight).abs().max() <= scales.max() * 0.51 + 1e-3


@pytest.mark.slow
def test_autoround_runs_on_cpu_and_saves_auto_gptq(tiny_moe, tmp_path):
    from dedicated.quantize_job.tinymoe.tokenizer import build_tokenizer

    model = tiny_moe
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))
    import copy

    res = run_autoround(copy.deepcopy(model), build_tokenizer(), ids, tmp_path / "out", iters=1, batch_size=2)
    qc = json.loads((res.output_dir / "config.json").read_text())["quantization_config"]
    assert qc["packing_format"] == FORMAT and qc["bits"] == 4 and qc["group_size"] == 128 and qc["sym"] is True
    for name in ("model.layers.0.mlp.shared_expert.gate_proj", "model.layers.1.mlp.shared_expert_gate"):
        assert name in res.kept_bf16 and qc["extra_config"][name]["bits"] == 16
    assert res.in_proj_ba == []  # this architecture has no linear attention
    dense, _ = dequantize_autogptq_checkpoint(res.output_dir)
    assert "model.layers.1.mlp.experts.3.down_proj" in dense and not any("shared_expert" in n for n in dense)
    ref = original["model.layers.1.mlp.experts.down_proj"][3]
    err = (dense["model.layers.1.mlp.experts.3.down_proj"] - ref).norm() / ref.norm()
    assert err < 0.2
    restored = copy.deepcopy(model)
    assert load_dense_weights(restored, dense) == len(dense)
    assert torch.equal(restored.model.layers[1].mlp.experts.down_proj[3], dense["model.layers.1.mlp.experts.3.down_proj"])
    with pytest.raises(ValueError, match="samples, tokens"):
        run_autoround(model, build_tokenizer(), torch.zeros(5, dtype=torch.long), tmp_path / "bad")


def test_autoround_on_a_hybrid_gated_deltanet_model(tmp_path):
    """Qwen3.5/3.6-MoE mixes Gated-DeltaNet and full-attention layers. auto-round replays the first
    block's keyword arguments for every block, so a 2-D integer mask made for a linear-attention
    layer used to reach the full-attention layer's SDPA and crash; the runner passes no mask."""
    from transformers import Qwen3_5MoeForCausalLM

    from dedicated.quantize_job.tinymoe.tokenizer import build_tokenizer

    torch.manual_seed(0)
    text = _meta_qwen35_moe().config.text_config
    model = Qwen3_5MoeForCausalLM(text).float()
    kinds = {type(layer.linear_attn if hasattr(layer, "linear_attn") else layer.self_attn).__name__
             for layer in model.model.layers}
    assert len(kinds) == 2, f"the tiny model must mix both attention kinds: {kinds}"
    original = model.model.layers[3].mlp.experts.down_proj[1].detach().clone()
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    res = run_autoround(model, build_tokenizer(), ids, tmp_path / "out", iters=2, batch_size=2)
    assert res.in_proj_ba == [f"model.layers.{i}.linear_attn.in_proj_ba" for i in range(3)]
    dense, _ = dequantize_autogptq_checkpoint(res.output_dir)
    got = dense["model.layers.3.mlp.experts.1.down_proj"]  # the full-attention layer's experts
    assert (got - original).norm() / original.norm() < 0.2
