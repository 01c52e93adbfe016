"""Crash-safe files on the output volume: fsync, rename-into-place, content digests.

A Job is killed at arbitrary points (preemption, eviction, OOM), and the next pod decides what to
keep by what it finds on the volume. These helpers make "the file exists under its final name"
mean "its bytes and its directory entry reached the disk", which every resumable state and the
publish step rely on.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 16 MiB chunks (checkpoint shards are gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes renames and new entries durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, final: Path) -> None:
    """Make ``tmp``'s bytes durable, rename it over ``final``, then make the rename durable."""
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(final.parent)
