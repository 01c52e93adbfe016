"""Which engine the validate stage measures a Humming checkpoint with, and its fallback.

On a GPU the packed-experts path runs first; when its loader refuses the model or the run fails,
the dequantized BF16 copy is measured instead and the manifest says why. This machine has no GPU,
so the two measurement functions are replaced by recorders (the only stand-ins here: both paths
are tested for real elsewhere, on the CPU in tests/unit/kernels/test_packed_model.py and on CUDA in
tests/gpu/test_packed_model_gpu.py); the checkpoint, the dequantized copy and the decision are real.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dedicated.quantize_job import validate
from dedicated.quantize_job.errors import ValidationFailed
from dedicated.quantize_job.packed_model import PackedModelUnsupported
from dedicated.quantize_job.pipeline import _measure_humming

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from support.humming_checkpoint import tiny_humming_checkpoint  # noqa: E402

CUDA = torch.device("cuda")  # never touched: both measurements are recorders


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_humming_checkpoint(tmp_path_factory.mktemp("hm"), 2)


def _run(tmp_path: Path):
    notes: list[str] = []
    run = SimpleNamespace(config=SimpleNamespace(validation=SimpleNamespace(generate_tokens=2)),
                          progress=SimpleNamespace(note=notes.append))
    state = SimpleNamespace(validate_dir=tmp_path / "validate-bf16")
    text = SimpleNamespace(heldout=torch.zeros(1, 8, dtype=torch.long))
    return run, state, text, notes


def _dequantized_recorder(seen: list[Path]):
    def measure(model_dir: Path, windows, device, *, tokenizer=None, new_tokens=0):
        config = json.loads((model_dir / "config.json").read_text())
        assert "quantization_config" not in config  # a real BF16 copy was written
        seen.append(model_dir)
        return 3.0, True, "bf16"
    return measure


def test_gpu_measures_packed_and_writes_no_copy(checkpoint, tmp_path, monkeypatch) -> None:
    seen: list[Path] = []
    monkeypatch.setattr(validate, "measure_packed", lambda *a, **k: (2.5, True, "packed"))
    monkeypatch.setattr(validate, "measure", _dequantized_recorder(seen))
    run, state, text, notes = _run(tmp_path)
    result, engine, note = _measure_humming(run, state, checkpoint, text, None, CUDA)
    assert (result, engine, note) == ((2.5, True, "packed"), validate.ENGINE_PACKED, None)
    assert not seen and not state.validate_dir.exists()
    assert notes == ["loading the Humming checkpoint with its experts packed for the load test"]


@pytest.mark.parametrize("failure,reason", [
    (PackedModelUnsupported("experts with has_bias=True are not supported"), "the packed loader cannot run this model"),
    (RuntimeError("CUDA error: an illegal memory access"), "the packed run failed (RuntimeError"),
])
def test_gpu_falls_back_to_the_dequantized_copy(checkpoint, tmp_path, monkeypatch, failure, reason) -> None:
    def refuse(*a, **k):
        raise failure

    seen: list[Path] = []
    monkeypatch.setattr(validate, "measure_packed", refuse)
    monkeypatch.setattr(validate, "measure", _dequantized_recorder(seen))
    run, state, text, notes = _run(tmp_path)
    result, engine, note = _measure_humming(run, state, checkpoint, text, None, CUDA)
    assert result == (3.0, True, "bf16") and engine == validate.ENGINE_DEQUANTIZED
    assert note.startswith(reason) and str(failure) in note
    assert seen == [state.validate_dir] and not state.validate_dir.exists()  # measured, then removed
    assert notes[-1] == "dequantizing the Humming checkpoint for the load test"


def test_a_job_error_from_the_packed_path_is_not_hidden(checkpoint, tmp_path, monkeypatch) -> None:
    def fail(*a, **k):
        raise ValidationFailed("non-finite logits")

    monkeypatch.setattr(validate, "measure_packed", fail)
    run, state, text, _ = _run(tmp_path)
    with pytest.raises(ValidationFailed, match="non-finite"):
        _measure_humming(run, state, checkpoint, text, None, CUDA)


def test_cpu_measures_the_dequantized_copy(checkpoint, tmp_path, monkeypatch) -> None:
    seen: list[Path] = []
    monkeypatch.setattr(validate, "measure_packed", lambda *a, **k: pytest.fail("packed path on the CPU"))
    monkeypatch.setattr(validate, "measure", _dequantized_recorder(seen))
    run, state, text, _ = _run(tmp_path)
    _, engine, note = _measure_humming(run, state, checkpoint, text, None, torch.device("cpu"))
    assert engine == validate.ENGINE_DEQUANTIZED and "CUDA only" in note and len(seen) == 1
