"""Training and held-out text: the Python standard library's own sources.

The selection is a pure function of the files: every ``*.py`` under the stdlib root except test
suites and third-party ``site-packages``, sorted by relative path, and a file goes to the held-out
set when the SHA-256 of its relative path falls in 1 of 20 buckets (so the split does not depend on
file order, sizes or the machine). ``pack_corpus`` writes the selection to a deterministic
``.tar.xz`` so that a second machine (whose Python may be another version) trains and evaluates on
byte-identical text; ``Corpus.digest`` names the exact text used in every result.
"""

from __future__ import annotations

import hashlib
import io
import sysconfig
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch

from dedicated.quantize_job.tinymoe.tokenizer import special_token_ids

EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__", "dist-packages"})
HELDOUT_BUCKETS = 20
MAX_FILE_BYTES = 1 << 20  # generated tables (e.g. pydoc topics) are not prose or code worth learning


@dataclass(frozen=True)
class Corpus:
    """Two disjoint sets of files, each a tuple of ``(relative path, bytes)`` in path order."""

    train: tuple[tuple[str, bytes], ...]
    heldout: tuple[tuple[str, bytes], ...]

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for split, files in (("train", self.train), ("heldout", self.heldout)):
            for rel, data in files:
                h.update(f"{split}\0{rel}\0{len(data)}\0".encode())
                h.update(data)
        return h.hexdigest()

    def token_ids(self, split: str) -> torch.Tensor:
        """The split as one int64 stream: bytes as ids, an end-of-text id between files."""
        files = {"train": self.train, "heldout": self.heldout}[split]
        eos = special_token_ids()["eos"]
        parts = []
        for _, data in files:
            if not data:
                continue
            parts.append(torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64))
            parts.append(torch.tensor([eos], dtype=torch.int64))
        if not parts:
            raise ValueError(f"the corpus has no {split} files")
        return torch.cat(parts)

    def summary(self) -> dict[str, object]:
        return {
            "digest": self.digest,
            "train_files": len(self.train),
            "train_bytes": sum(len(d) for _, d in self.train),
            "heldout_files": len(self.heldout),
            "heldout_bytes": sum(len(d) for _, d in self.heldout),
        }


def default_stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_heldout(relpath: str) -> bool:
    return int(hashlib.sha256(relpath.encode()).hexdigest()[:8], 16) % HELDOUT_BUCKETS == 0


def _selected(root: Path) -> list[tuple[str, Path]]:
    chosen = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if any(part in EXCLUDED_DIRS for part in rel.parts[:-1]):
            continue
        if not path.is_file() or not 0 < path.stat().st_size <= MAX_FILE_BYTES:
            continue
        chosen.append((rel.as_posix(), path))
    chosen.sort()
    return chosen


def build_corpus(root: Path | str | None = None) -> Corpus:
    """Select and read the corpus from a stdlib directory (default: this interpreter's)."""
    root = Path(root) if root is not None else default_stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(f"stdlib directory {root} does not exist")
    train, heldout = [], []
    for rel, path in _selected(root):
        (heldout if is_heldout(rel) else train).append((rel, path.read_bytes()))
    if not train or not heldout:
        raise ValueError(f"{root} yields no usable corpus ({len(train)} train / {len(heldout)} held-out files)")
    return Corpus(tuple(train), tuple(heldout))


def pack_corpus(corpus: Corpus, archive: Path | str) -> Path:
    """Write the corpus as a deterministic ``.tar.xz`` (sorted members, zero mtimes and owners)."""
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:xz") as tar:
        for split, files in (("train", corpus.train), ("heldout", corpus.heldout)):
            for rel, data in files:
                info = tarfile.TarInfo(f"{split}/{rel}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    return archive


def load_corpus(source: Path | str | None = None) -> Corpus:
    """A corpus from a stdlib directory or from an archive written by :func:`pack_corpus`."""
    if source is None or Path(source).is_dir():
        return build_corpus(source)
    train, heldout = [], []
    with tarfile.open(source, "r:*") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            split, _, rel = member.name.partition("/")
            if split not in ("train", "heldout"):
                raise ValueError(f"unexpected member {member.name!r} in corpus archive {source}")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            (train if split == "train" else heldout).append((rel, data))
    train.sort()
    heldout.sort()
    return Corpus(tuple(train), tuple(heldout))
