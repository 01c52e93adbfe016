"""Calibration and held-out text, tokenized into fixed-length windows that never overlap.

Three sources: a Hub dataset (``datasets``, streamed, only as many rows as needed), a local text or
JSONL file (one ``{"text": ...}`` object per line, or plain text split on blank lines), or the
built-in corpus: the documentation strings of the Python standard library that ships with the
program, read with ``ast`` (nothing is imported or executed), in sorted file order, so the same
image always yields the same text.

Held-out text for validation is cut from the *end* of the same token stream and calibration windows
from the start, so the perplexity check never scores text the quantizer was calibrated on. Both
carry a digest that the manifest records.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dedicated.quantize_job.config import CalibrationConfig, ValidationConfig
from dedicated.quantize_job.errors import CalibrationDataError, ModelUnreachable
from dedicated.quantize_job.fetch import read_token

log = logging.getLogger("dedicated.quantize_job")

_EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
                            "lib2to3", "turtledemo"})
#: The held-out share may take at most this fraction of a short stream; calibration keeps the rest.
MAX_HELDOUT_FRACTION = 0.25


@dataclass(frozen=True)
class TextData:
    """Token windows: ``calibration`` ``[n, L]`` and ``heldout`` ``[m, L_h]`` (int64)."""

    calibration: torch.Tensor
    heldout: torch.Tensor
    source: str
    digest: str
    stream_tokens: int
    notes: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "digest": self.digest, "streamTokens": self.stream_tokens,
                "calibrationSamples": int(self.calibration.shape[0]),
                "calibrationSequenceLength": int(self.calibration.shape[1]),
                "heldoutSamples": int(self.heldout.shape[0]),
                "heldoutSequenceLength": int(self.heldout.shape[1]) if self.heldout.numel() else 0,
                "notes": list(self.notes)}


# --- documents ----------------------------------------------------------------------------------


def builtin_documents(root: Path | None = None) -> Iterator[str]:
    """Docstrings of the stdlib (module, class, function), file by file in sorted path order."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if not any(part in _EXCLUDED_DIRS or part.startswith(".") for part in p.relative_to(root).parts[:-1]))
    for path in files:
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue
        docs = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc and len(doc) >= 40:
                    docs.append(doc)
        if docs:
            yield "\n\n".join(docs)


def file_documents(path: Path, column: str = "text") -> Iterator[str]:
    """A ``.jsonl`` file's ``column`` per line, or a text file split on blank lines."""
    if not path.is_file():
        raise CalibrationDataError(f"calibration file {path} does not exist (is the volume mounted?)")
    try:
        if path.suffix in (".jsonl", ".json"):
            with path.open(encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise CalibrationDataError(f"{path}:{lineno} is not JSON: {exc}") from None
                    text = row.get(column) if isinstance(row, dict) else None
                    if not isinstance(text, str):
                        raise CalibrationDataError(f"{path}:{lineno} has no string field {column!r}")
                    if text.strip():
                        yield text
        else:
            text = path.read_text(encoding="utf-8")
            for block in text.split("\n\n"):
                if block.strip():
                    yield block
    except UnicodeDecodeError as exc:
        raise CalibrationDataError(f"calibration file {path} is not UTF-8 text: {exc}") from None


def dataset_documents(cal: CalibrationConfig) -> Iterator[str]:
    ds = cal.dataset
    assert ds is not None
    token = read_token(ds.token_env, f"calibration dataset {ds.repo}")
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets ships with auto-round
        raise CalibrationDataError("calibration from a Hub dataset needs the `datasets` package") from exc
    try:
        stream = datasets.load_dataset(ds.repo, ds.config, split=ds.split, streaming=True, token=token,
                                       revision=ds.revision)
        for row in stream:
            text = row.get(ds.column)
            if not isinstance(text, str):
                raise CalibrationDataError(f"dataset {ds.repo} split {ds.split}: column {ds.column!r} "
                                           "is missing or not text")
            if text.strip():
                yield text
    except CalibrationDataError:
        raise
    except Exception as exc:
        raise ModelUnreachable(f"calibration dataset {ds.repo} (split {ds.split}) cannot be read: "
                               f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}") from None


def documents(cal: CalibrationConfig) -> tuple[str, Iterator[str]]:
    if cal.dataset is not None:
        return f"dataset:{cal.dataset.repo}/{cal.dataset.split}", dataset_documents(cal)
    if cal.file is not None:
        return f"file:{cal.file}", file_documents(Path(cal.file), "text")
    return "builtin:stdlib-docstrings", builtin_documents()


# --- token windows ------------------------------------------------------------------------------


def token_stream(docs: Iterator[str], tokenizer: Any, needed: int) -> torch.Tensor:
    """Documents tokenized without specials, joined by EOS, stopping once ``needed`` tokens exist."""
    eos = getattr(tokenizer, "eos_token_id", None)
    parts: list[torch.Tensor] = []
    count = 0
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        if eos is not None:
            ids = list(ids) + [int(eos)]
        parts.append(torch.tensor(ids, dtype=torch.int64))
        count += len(ids)
        if count >= needed:
            break
    if not parts:
        return torch.zeros(0, dtype=torch.int64)
    return torch.cat(parts)


def build_text_data(cal: CalibrationConfig, val: ValidationConfig | None, tokenizer: Any) -> TextData:
    """Calibration windows from the start of the stream, held-out windows from its end."""
    source, docs = documents(cal)
    seq, n = cal.sequence_length, cal.num_samples
    h_seq = val.heldout_sequence_length if val and val.enabled else 0
    h_n = val.heldout_samples if val and val.enabled else 0
    needed = n * seq + h_n * h_seq
    stream = token_stream(docs, tokenizer, needed)
    notes: list[str] = []
    if stream.numel() < seq + h_seq:
        raise CalibrationDataError(
            f"calibration text from {source} has {stream.numel()} tokens; at least {seq + h_seq} are "
            f"needed for one calibration window of {seq} tokens" + (f" and one held-out window of {h_seq}" if h_seq else ""))
    heldout = torch.zeros(0, max(h_seq, 1), dtype=torch.int64)
    body = stream
    if h_n:
        room = max(h_seq, int(stream.numel() * MAX_HELDOUT_FRACTION) // h_seq * h_seq)
        h_take = min(h_n, room // h_seq, (stream.numel() - seq) // h_seq)
        if h_take < h_n:
            notes.append(f"held-out text: {h_take} of {h_n} windows available")
        tail = stream[stream.numel() - h_take * h_seq:]
        heldout = tail.view(h_take, h_seq)
        body = stream[: stream.numel() - h_take * h_seq]
    c_take = min(n, body.numel() // seq)
    if c_take < n:
        notes.append(f"calibration: {c_take} of {n} windows of {seq} tokens available")
    calibration = body[: c_take * seq].view(c_take, seq)
    for note in notes:
        log.warning("%s (source %s)", note, source)
    h = hashlib.sha256()
    h.update(calibration.numpy().tobytes())
    h.update(b"\0heldout\0")
    h.update(heldout.numpy().tobytes())
    return TextData(calibration=calibration, heldout=heldout, source=source, digest=h.hexdigest(),
                    stream_tokens=int(stream.numel()), notes=tuple(notes))
