"""Export: the streamed compressed-tensors writer + Humming repack + the dequantizing loader are exact,
the ignore list covers every BF16 Linear and no quantized one, and manifest components classify right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dedicated.quantize_job.config import parse_config
from dedicated.quantize_job.export import humming_ignore, repack_to_humming, write_compressed_tensors
from dedicated.quantize_job.manifest import component_of, components
from dedicated.quantize_job.preflight import read_layout, selected_modules
from dedicated.quantize_job.rtn import rtn_quantize
from dedicated.quantize_job.validate import dequantize_humming_checkpoint

H, I, E = 128, 256, 2


def _fake_moe(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint with Qwen-MoE tensor names (no model class needed for the export path)."""
    g = torch.Generator().manual_seed(0)
    t: dict[str, torch.Tensor] = {"model.embed_tokens.weight": torch.randn(64, H, generator=g),
                                  "lm_head.weight": torch.randn(64, H, generator=g),
                                  "model.norm.weight": torch.ones(H)}
    for layer in range(2):
        p = f"model.layers.{layer}"
        t[f"{p}.self_attn.q_proj.weight"] = torch.randn(H, H, generator=g)
        t[f"{p}.mlp.gate.weight"] = torch.randn(E, H, generator=g)
        t[f"{p}.mlp.shared_expert.up_proj.weight"] = torch.randn(I, H, generator=g)
        t[f"{p}.input_layernorm.weight"] = torch.ones(H)
        for e in range(E):
            t[f"{p}.mlp.experts.{e}.gate_proj.weight"] = torch.randn(I, H, generator=g) * 0.02
            t[f"{p}.mlp.experts.{e}.up_proj.weight"] = torch.randn(I, H, generator=g) * 0.02
            t[f"{p}.mlp.experts.{e}.down_proj.weight"] = torch.randn(H, I, generator=g) * 0.02
    t = {k: v.to(torch.bfloat16) for k, v in t.items()}
    path.mkdir()
    names = sorted(t)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:]), start=1):
        file = f"model-{i:05d}-of-00002.safetensors"
        save_file({k: t[k] for k in part}, str(path / file))
        weight_map.update({k: file for k in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2_moe", "hidden_size": H}))
    (path / "tokenizer.json").write_text("{}")
    return t


def test_export_repack_and_dequantizing_loader_are_exact(tmp_path: Path) -> None:
    base = tmp_path / "base"
    tensors = _fake_moe(base)
    cfg = parse_config({"model": {"path": str(base)}, "method": "gsq", "bits": 2,
                        "output": {"dir": str(tmp_path / "o"), "volume": {}}})
    layout = read_layout(base)
    modules = selected_modules(cfg, layout)
    assert len(modules) == 2 * E * 3
    expected = {m: rtn_quantize(tensors[f"{m}.weight"].float(), 2, 128) for m in modules}
    calls: list[list[str]] = []

    def load(ms: list[str]):
        calls.append(ms)
        return {m: expected[m] for m in ms}

    ignore = humming_ignore(layout.linear_modules, modules)
    write_compressed_tensors(base, layout, modules, load, tmp_path / "ct", bits=2, group_size=128, ignore=ignore)
    assert len(calls) == 2 and all(len(c) == E * 3 for c in calls)  # one decoder layer at a time
    report = repack_to_humming(tmp_path / "ct", tmp_path / "hm", bits=2, ignore=ignore)
    assert report["quantizedModules"] == len(modules) and report["bitsPerWeight"] == pytest.approx(2 + 16 / 128)
    deq = dequantize_humming_checkpoint(tmp_path / "hm", tmp_path / "deq")
    got: dict[str, torch.Tensor] = {}
    for f in sorted(deq.glob("*.safetensors")):
        got.update(load_file(str(f)))
    assert set(got) == set(tensors)
    for name, value in tensors.items():
        module = name[: -len(".weight")]
        if module in expected:  # quantized: exactly the quantizer's values, as bf16
            assert torch.equal(got[name], expected[module].dequantize().to(torch.bfloat16)), name
        else:  # everything else: untouched
            assert torch.equal(got[name], value), name
    assert "quantization_config" not in json.loads((deq / "config.json").read_text())
    assert (tmp_path / "hm" / "tokenizer.json").exists() and (deq / "tokenizer.json").exists()


def test_humming_ignore_covers_bf16_linears_and_spares_quantized_ones() -> None:
    linear = ["lm_head", "model.layers.0.self_attn.q_proj", "model.layers.0.mlp.gate",
              "model.layers.0.mlp.experts.0.up_proj", "model.layers.0.mlp.shared_expert.up_proj",
              "model.layers.0.custom.proj"]
    ignore = humming_ignore(linear, ["model.layers.0.mlp.experts.0.up_proj"])
    assert ignore[:8] == ["lm_head", r"re:.*self_attn.*", r"re:.*linear_attn.*", r"re:.*visual.*", r"re:mtp.*",
                          r"re:.*mlp\.gate$", r"re:.*mlp\.shared_expert_gate$", r"re:.*shared_expert.*"]
    assert ignore[8:] == [r"re:model\.layers\.0\.custom\.proj$"]
    # Quantizing attention too drops the reference pattern that would skip it.
    ignore = humming_ignore(linear, ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.experts.0.up_proj"])
    assert r"re:.*self_attn.*" not in ignore


@pytest.mark.parametrize("name, component", [
    ("model.layers.3.mlp.experts.7.up_proj.weight", "quantizedExperts"),
    ("model.layers.3.mlp.experts.7.up_proj.weight_scale", "quantizedExperts"),
    ("model.layers.3.self_attn.q_proj.qweight", "quantizedOther"),
    ("model.layers.3.self_attn.k_proj.weight", "bf16Text"),
    ("model.layers.3.mlp.shared_expert.up_proj.weight", "bf16Text"),
    ("model.visual.blocks.0.attn.qkv.weight", "vision"),
    ("mtp.layers.0.mlp.experts.1.up_proj.weight", "mtp"),
    ("model.language_model.embed_tokens.weight", "embeddingsLmHead"),
    ("lm_head.weight", "embeddingsLmHead"),
])
def test_component_classification(name: str, component: str) -> None:
    quantized = {"model.layers.3.mlp.experts.7.up_proj", "model.layers.3.self_attn.q_proj"}
    assert component_of(name, quantized) == component


def test_components_sum_to_the_shard_bytes(tmp_path: Path) -> None:
    _fake_moe(tmp_path / "m")
    comp = components(tmp_path / "m", [])
    assert comp["quantizedExperts"]["bytes"] == 0
    assert comp["embeddingsLmHead"]["parameters"] == 2 * 64 * H
    data_bytes = sum(v["bytes"] for v in comp.values())
    assert data_bytes == sum(t.numel() * 2 for t in load_file(str(next((tmp_path / "m").glob("*1-of*")))).values()) + \
        sum(t.numel() * 2 for t in load_file(str(next((tmp_path / "m").glob("*2-of*")))).values())
