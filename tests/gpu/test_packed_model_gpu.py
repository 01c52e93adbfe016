"""The packed-experts validation path on CUDA: the compiled Triton MoE GEMM inside a transformers
model gives the dequantized model's outputs, and a GSQ Job on a GPU validates through it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from dedicated.quantize_job.packed_model import load_packed_model
from dedicated.quantize_job.validate import dequantize_humming_checkpoint, load_model, perplexity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.humming_checkpoint import tiny_humming_checkpoint, tiny_qwen3_5_moe  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("bits,arch", [(2, "qwen2_moe"), (4, "qwen2_moe"), (2, "qwen3_5_moe")])
def test_packed_model_on_cuda_matches_the_dequantized_model(bits: int, arch: str, tmp_path: Path) -> None:
    """Qwen2-MoE, and the reference architecture with the multimodal release's checkpoint names."""
    if arch == "qwen3_5_moe":
        checkpoint = tiny_humming_checkpoint(tmp_path, bits, model=tiny_qwen3_5_moe(), language_model_prefix=True)
    else:
        checkpoint = tiny_humming_checkpoint(tmp_path, bits)
    cuda = torch.device("cuda")
    packed = load_packed_model(checkpoint, cuda)
    reference = load_model(dequantize_humming_checkpoint(checkpoint, tmp_path / "deq"), cuda)
    ids = torch.randint(0, 256, (4, 128), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = packed(input_ids=ids.cuda()).logits.float()
        want = reference(input_ids=ids.cuda()).logits.float()
    assert ((got - want).norm() / want.norm()).item() < 2e-2
    assert perplexity(packed, ids) == pytest.approx(perplexity(reference, ids), rel=1e-2)


def test_gsq_job_on_cuda_validates_with_packed_experts(tmp_path_factory, tmp_path: Path) -> None:
    from dedicated.quantize_job.config import parse_config
    from dedicated.quantize_job.pipeline import run_job
    from dedicated.quantize_job.tiny_checkpoint import cached_tiny_moe_checkpoint

    model = cached_tiny_moe_checkpoint(tmp_path_factory.getbasetemp(), layers=2, train_steps=40)
    out = tmp_path / "tiny"
    cfg = {"model": {"path": str(model)}, "method": "gsq", "bits": 2,
           "calibration": {"numSamples": 16, "sequenceLength": 64},
           "validation": {"heldoutSamples": 4, "heldoutSequenceLength": 64, "maxPerplexityRatio": 1.5},
           "output": {"dir": str(out), "volume": {"claimName": "models", "path": "tiny"}},
           "runtime": {"device": "cuda", "progressIntervalSeconds": 0,
                       "methodOptions": {"gsq.steps": 10, "calibration.min_tokens": 16}}}
    result = run_job(parse_config(cfg))
    assert result["quality"]["loadTestPassed"] is True
    quality = json.loads((out / "manifest.json").read_text())["quality"]
    assert quality["engine"] == "packed-experts" and quality["engineNote"] is None
    assert 0.9 <= quality["perplexityRatio"] <= 1.5
