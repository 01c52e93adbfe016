"""The quantize Job end to end on a tiny trained MoE (CPU): GSQ -> compressed-tensors -> Humming,
validated on held-out text, published atomically with a manifest; reruns are idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dedicated.quantize_job.config import parse_config
from dedicated.quantize_job.errors import ValidationFailed
from dedicated.quantize_job.humming import HummingSpec, dequantize
from dedicated.quantize_job.manifest import COMPONENTS
from dedicated.quantize_job.pipeline import run_job
from dedicated.quantize_job.tiny_checkpoint import cached_tiny_moe_checkpoint, training_bytes

FAST = {"gsq.steps": 10, "calibration.min_tokens": 16}


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory) -> Path:
    torch.set_num_threads(1)  # tiny matrices: threads only contend on a shared CI box
    return cached_tiny_moe_checkpoint(tmp_path_factory.getbasetemp(), layers=2, train_steps=40)


def _config(model: Path, out: Path, **over) -> dict:
    cfg = {"model": {"path": str(model)}, "method": "gsq", "bits": 2,
           "calibration": {"numSamples": 16, "sequenceLength": 64},
           "validation": {"heldoutSamples": 4, "heldoutSequenceLength": 64, "maxPerplexityRatio": 1.5},
           "output": {"dir": str(out), "volume": {"claimName": "models", "path": "tiny"}},
           "runtime": {"device": "cpu", "progressIntervalSeconds": 0, "methodOptions": FAST}}
    for key, value in over.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and key in cfg else value
    return cfg


def test_gsq_job_publishes_a_validated_humming_checkpoint(tiny_moe: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    result = run_job(parse_config(_config(tiny_moe, out, output={"keepIntermediate": True})))

    # The result the operator copies into status.
    assert result["artifact"] == {"location": "pvc://models/tiny", "format": "humming",
                                  "totalBytes": result["artifact"]["totalBytes"], "revision": None}
    q = result["quality"]
    assert q["loadTestPassed"] is True and 0 < q["perplexityRatio"] <= 1.5
    assert q["perplexityQuantized"] == pytest.approx(q["perplexityOriginal"] * q["perplexityRatio"], rel=1e-4)

    # The Humming config, exactly.
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert {k: qc[k] for k in ("quant_method", "b_dtype", "weight_scale_group_size", "weight_scale_type",
                               "has_zero_point")} == {"quant_method": "humming", "b_dtype": "uint2",
                                                      "weight_scale_group_size": 128, "weight_scale_type": "group",
                                                      "has_zero_point": False}
    assert qc["ignore"][:8] == ["lm_head", r"re:.*self_attn.*", r"re:.*linear_attn.*", r"re:.*visual.*",
                                r"re:mtp.*", r"re:.*mlp\.gate$", r"re:.*mlp\.shared_expert_gate$",
                                r"re:.*shared_expert.*"]

    # Quantized experts are exact-width 2-bit with bf16 group scales; BF16 tensors are untouched.
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    base_index = json.loads((tiny_moe / "model.safetensors.index.json").read_text())["weight_map"]
    expert = "model.layers.1.mlp.experts.2.down_proj"
    with safe_open(str(out / index[f"{expert}.weight"]), "pt") as f:
        packed, scale = f.get_tensor(f"{expert}.weight"), f.get_tensor(f"{expert}.weight_scale")
    assert packed.dtype == torch.int32 and tuple(packed.shape) == (128, 128 * 2 // 32)
    assert scale.dtype == torch.bfloat16 and tuple(scale.shape) == (128, 1)
    with safe_open(str(tiny_moe / base_index[f"{expert}.weight"]), "pt") as f:
        original = f.get_tensor(f"{expert}.weight").float()
    deq = dequantize(packed, scale, HummingSpec(2, 128))
    assert 0 < (deq - original).norm() / original.norm() < 0.8
    for kept in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.shared_expert.up_proj.weight",
                 "model.layers.0.mlp.gate.weight", "lm_head.weight"):
        with safe_open(str(out / index[kept]), "pt") as a, safe_open(str(tiny_moe / base_index[kept]), "pt") as b:
            assert torch.equal(a.get_tensor(kept), b.get_tensor(kept)), kept

    # Manifest: files, bytes per component, quality, the exact quantization_config.
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantizationConfig"] == qc
    assert manifest["format"] == "humming" and manifest["method"] == "gsq"
    files = {f["path"]: f for f in manifest["files"]}
    assert set(files) == {p.name for p in out.iterdir() if p.is_file()} - {"manifest.json", "progress.json"}
    assert manifest["totalBytes"] == sum(f["bytes"] for f in files.values()) == result["artifact"]["totalBytes"]
    comp = manifest["components"]
    assert set(comp) == set(COMPONENTS)
    assert comp["quantizedExperts"]["parameters"] == 2 * 4 * 3 * 128 * 128 // 16 + 2 * 4 * 3 * 128
    assert comp["bf16Text"]["bytes"] > 0 and comp["embeddingsLmHead"]["tensors"] == 2
    assert comp["vision"]["bytes"] == comp["mtp"]["bytes"] == 0
    assert manifest["modules"] == {"quantized": 24, "experts": 24, "keptBF16": 19}
    assert manifest["layers"]["total"] == 2 and manifest["layers"]["computed"] == 2
    assert manifest["quality"]["perplexityRatio"] == q["perplexityRatio"]
    # On the CPU the packed experts cannot run (CUDA only), so the dequantized copy was measured.
    assert manifest["quality"]["engine"] == "dequantized-bf16"
    assert "CUDA only" in manifest["quality"]["engineNote"]
    assert manifest["calibration"]["source"] == "builtin:stdlib-docstrings"
    assert manifest["result"] == result

    # Progress file: finished, readable.
    progress = json.loads((out / "progress.json").read_text())
    assert progress["percent"] == 100 and progress["summary"] == "published (100%)"
    assert progress["layer"] == progress["totalLayers"] == 2

    # State: pruned to the kept intermediate; no staging dirs left beside the output.
    state = out / ".quantize-state"
    assert sorted(p.name for p in state.iterdir()) == ["compressed-tensors"]
    ct = json.loads((state / "compressed-tensors" / "config.json").read_text())["quantization_config"]
    assert ct["quant_method"] == "compressed-tensors" and ct["format"] == "pack-quantized"
    assert ct["config_groups"]["group_0"]["weights"]["num_bits"] == 4  # 2-bit codes, 4-bit container
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]

    # A rerun of the same config (a retried pod after success) reports the same result, does nothing.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file() and p.suffix == ".safetensors"}
    again = run_job(parse_config(_config(tiny_moe, out, output={"keepIntermediate": True})))
    assert again == result
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file() and p.suffix == ".safetensors"}


def test_validation_over_the_ratio_publishes_nothing(tmp_path_factory, tmp_path: Path) -> None:
    """A model that learnt the held-out text loses some of it at 2 bits; a 1.0x ceiling must refuse it."""
    torch.set_num_threads(1)
    text = training_bytes()[:6000]
    model = cached_tiny_moe_checkpoint(tmp_path_factory.getbasetemp(), layers=2, train_steps=80, train_text=text)
    calib = tmp_path / "calib.txt"
    calib.write_bytes(text)
    out = tmp_path / "out"
    cfg = _config(model, out, calibration={"file": str(calib)},
                  validation={"heldoutSamples": 8, "maxPerplexityRatio": 1.0})
    with pytest.raises(ValidationFailed, match=r"held-out perplexity .* is 1\.\d+x the original's .* allowed 1x"):
        run_job(parse_config(cfg))
    assert not any(p.suffix == ".safetensors" for p in out.iterdir())  # nothing published
    assert not (out / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.txt", "out"]  # staging removed
    assert (out / ".quantize-state" / "layers" / "state.json").exists()  # the work is kept


@pytest.mark.slow
def test_autoround_job_publishes_auto_gptq_with_the_reference_keep_list(tiny_moe: Path, tmp_path: Path) -> None:
    out = tmp_path / "ar"
    cfg = _config(tiny_moe, out, method="autoround", bits=4,
                  runtime={"methodOptions": {"autoround.iters": 2, "autoround.batch_size": 4}})
    result = run_job(parse_config(cfg))
    assert result["artifact"]["format"] == "auto_round" and result["quality"]["loadTestPassed"] is True
    assert json.loads((out / "manifest.json").read_text())["quality"]["engine"] == "checkpoint"
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["packing_format"], qc["bits"], qc["group_size"], qc["sym"]) == \
        ("auto-round", "auto_round:auto_gptq", 4, 128, True)
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"] \
        if (out / "model.safetensors.index.json").exists() else None
    names = set(index) if index else set()
    if not names:
        with safe_open(str(next(out.glob("*.safetensors"))), "pt") as f:
            names = set(f.keys())
    quantized = {n[: -len(".qweight")] for n in names if n.endswith(".qweight")}
    # Attention and routed experts are W4; shared experts, their gate, the router and lm_head stay BF16.
    assert "model.layers.0.self_attn.q_proj" in quantized and "model.layers.1.mlp.experts.3.down_proj" in quantized
    assert len(quantized) == 2 * (4 + 4 * 3)
    for kept in ("model.layers.0.mlp.shared_expert.up_proj", "model.layers.0.mlp.shared_expert_gate",
                 "model.layers.1.mlp.gate", "lm_head"):
        assert f"{kept}.weight" in names and kept not in quantized, kept
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantizationConfig"] == qc
    assert manifest["components"]["quantizedExperts"]["tensors"] > 0
    assert manifest["components"]["quantizedOther"]["tensors"] > 0  # attention is W4 too
    assert manifest["modules"]["quantized"] == 32
    # Validating loaded the AutoRound result through auto-round, which drops the model type's
    # expert-fusion conversion process-wide; the loader must have put it back, or every later load
    # of a BF16 checkpoint in this process would leave its experts randomly initialised.
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    assert any(type(c).__name__ == "WeightConverter" for c in get_checkpoint_conversion_mapping("qwen2_moe") or [])
