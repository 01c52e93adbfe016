"""Calibration text: deterministic built-in corpus, files, and held-out windows disjoint from calibration."""

from __future__ import annotations

import json

import pytest
import torch

from dedicated.quantize_job.calibration_data import build_text_data, builtin_documents, token_stream
from dedicated.quantize_job.config import CalibrationConfig, ValidationConfig
from dedicated.quantize_job.errors import CalibrationDataError


class ByteTokenizer:
    """Token id == byte value, EOS 256 (the tiny MoE's tokenizer without loading transformers)."""

    eos_token_id = 256

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": list(text.encode())}


def test_builtin_corpus_is_deterministic_and_heldout_is_disjoint() -> None:
    cal, val = CalibrationConfig(num_samples=8, sequence_length=128), ValidationConfig(heldout_samples=4,
                                                                                       heldout_sequence_length=64)
    a = build_text_data(cal, val, ByteTokenizer())
    b = build_text_data(cal, val, ByteTokenizer())
    assert a.digest == b.digest and torch.equal(a.calibration, b.calibration)
    assert tuple(a.calibration.shape) == (8, 128) and tuple(a.heldout.shape) == (4, 64)
    assert a.source == "builtin:stdlib-docstrings" and not a.notes
    # Calibration is the start of the token stream, held-out its end, and they never meet.
    stream = token_stream(builtin_documents(), ByteTokenizer(), 8 * 128 + 4 * 64)
    assert a.stream_tokens == stream.numel() >= 8 * 128 + 4 * 64
    assert torch.equal(a.calibration.reshape(-1), stream[: 8 * 128])
    assert torch.equal(a.heldout.reshape(-1), stream[stream.numel() - 4 * 64:])
    first = next(builtin_documents())
    assert len(first) > 40 and first == next(builtin_documents())


def test_jsonl_file_and_short_text(tmp_path) -> None:
    path = tmp_path / "calib.jsonl"
    rows = [{"text": f"document {i}: " + "lorem ipsum dolor sit amet " * 8} for i in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = build_text_data(CalibrationConfig(file=str(path), num_samples=100, sequence_length=64),
                           ValidationConfig(heldout_samples=4, heldout_sequence_length=64), ByteTokenizer())
    assert data.source == f"file:{path}"
    assert data.heldout.shape[0] == 4 and 0 < data.calibration.shape[0] < 100
    assert any("calibration:" in n for n in data.notes)  # fewer windows than asked, said so
    assert data.heldout.reshape(-1)[-1].item() == 256  # cut from the end of the stream

    tiny = tmp_path / "tiny.txt"
    tiny.write_text("too short")
    with pytest.raises(CalibrationDataError, match="has 10 tokens; at least 128 are needed"):
        build_text_data(CalibrationConfig(file=str(tiny), sequence_length=64),
                        ValidationConfig(heldout_sequence_length=64), ByteTokenizer())


def test_bad_jsonl_names_the_line(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"content": "no text field"}\n')
    with pytest.raises(CalibrationDataError, match=r"bad.jsonl:2 has no string field 'text'"):
        build_text_data(CalibrationConfig(file=str(path), sequence_length=16), None, ByteTokenizer())
