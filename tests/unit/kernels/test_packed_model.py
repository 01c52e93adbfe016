"""A Humming checkpoint run with its routed experts packed (Triton interpreter) gives the dequantized
model's outputs, and checkpoints the packed loader cannot run are refused before any measurement."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dedicated.quantize_job.packed_model import PackedExperts, PackedModelUnsupported, load_packed_model
from dedicated.quantize_job.validate import dequantize_humming_checkpoint, load_model, measure_model, perplexity

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from support.humming_checkpoint import tiny_humming_checkpoint, tiny_qwen3_5_moe  # noqa: E402


@pytest.fixture(scope="module", params=[2, 4])
def humming(request, tmp_path_factory) -> Path:
    return tiny_humming_checkpoint(tmp_path_factory.mktemp(f"hm{request.param}"), request.param)


@pytest.fixture(scope="module")
def humming_2bit(tmp_path_factory) -> Path:
    return tiny_humming_checkpoint(tmp_path_factory.mktemp("hm2"), 2)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_packed_model_gives_the_dequantized_models_outputs(humming: Path, tmp_path: Path) -> None:
    packed = load_packed_model(humming, torch.device("cpu"))
    experts = [m for m in packed.modules() if isinstance(m, PackedExperts)]
    assert len(experts) == 2 and all(m.w13.dtype == torch.int32 for m in experts)
    # No BF16 copy of an expert weight anywhere in the packed model.
    assert not any("experts" in name for name, _ in packed.named_parameters())
    reference = load_model(dequantize_humming_checkpoint(humming, tmp_path / "deq"), torch.device("cpu"))
    ids = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = packed(input_ids=ids).logits
        want = reference(input_ids=ids).logits
    assert _rel(got, want) < 2e-2  # bf16 activations, different summation order
    assert perplexity(packed, ids) == pytest.approx(perplexity(reference, ids), rel=1e-2)
    # Rotary tables are recomputed (not checkpoint tensors) and must match from_pretrained's.
    ref_buffers = dict(reference.named_buffers())
    for name, buf in packed.named_buffers():
        if "rotary" in name:
            assert torch.equal(buf, ref_buffers[name]), name


def test_packed_model_generates(humming_2bit: Path) -> None:
    class _Bytes:
        pad_token_id = 0

        def decode(self, ids, skip_special_tokens=False):
            return bytes(i % 256 for i in ids).decode("latin-1")

    model = load_packed_model(humming_2bit, torch.device("cpu"))
    ppl, ok, text = measure_model(model, torch.randint(0, 200, (1, 16)), tokenizer=_Bytes(), new_tokens=2)
    assert ok and len(text) == 2 and ppl > 1


def test_packed_linear_outside_the_experts_is_refused(tmp_path: Path) -> None:
    checkpoint = tiny_humming_checkpoint(tmp_path, 2, extra_modules=("model.layers.0.self_attn.o_proj",))
    with pytest.raises(PackedModelUnsupported, match="o_proj.weight is packed.*only routed experts"):
        load_packed_model(checkpoint, torch.device("cpu"))


def test_not_a_humming_checkpoint_is_refused(humming_2bit: Path, tmp_path: Path) -> None:
    deq = dequantize_humming_checkpoint(humming_2bit, tmp_path / "deq")
    with pytest.raises(PackedModelUnsupported, match="not a Humming checkpoint"):
        load_packed_model(deq, torch.device("cpu"))
    config = json.loads((humming_2bit / "config.json").read_text())
    config["quantization_config"]["has_zero_point"] = True
    (deq / "config.json").write_text(json.dumps(config))
    with pytest.raises(PackedModelUnsupported, match="has_zero_point"):
        load_packed_model(deq, torch.device("cpu"))


def test_bf16_experts_are_refused(humming_2bit: Path, tmp_path: Path) -> None:
    """A checkpoint whose experts are BF16 (nothing quantized under the Humming config) is no packed model."""
    deq = dequantize_humming_checkpoint(humming_2bit, tmp_path / "deq")
    (deq / "config.json").write_text((humming_2bit / "config.json").read_text())
    with pytest.raises(PackedModelUnsupported, match="expected packed int32"):
        load_packed_model(deq, torch.device("cpu"))


def test_reference_architecture_with_multimodal_checkpoint_names(tmp_path: Path) -> None:
    """The Qwen3.5/3.6-MoE text model (gated DeltaNet and gated attention layers, a shared expert),
    its checkpoint naming the decoder ``model.language_model.*`` as the multimodal release does:
    transformers' own renames map the names, the experts run packed."""
    checkpoint = tiny_humming_checkpoint(tmp_path, 2, model=tiny_qwen3_5_moe(), language_model_prefix=True)
    names = set()
    for shard in checkpoint.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as f:
            names.update(f.keys())
    assert "model.language_model.layers.0.mlp.experts.0.gate_proj.weight_scale" in names
    packed = load_packed_model(checkpoint, torch.device("cpu"))
    assert sum(isinstance(m, PackedExperts) for m in packed.modules()) == 2
    reference = load_model(dequantize_humming_checkpoint(checkpoint, tmp_path / "deq"), torch.device("cpu"))
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert _rel(packed(input_ids=ids).logits, reference(input_ids=ids).logits) < 2e-2
