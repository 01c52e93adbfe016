"""Atomic publish to a volume: old or new, never half; interrupted swaps recover."""

from __future__ import annotations

import os

import pytest

from dedicated.quantize_job.config import STATE_DIR_NAME, OutputConfig, VolumeOutput
from dedicated.quantize_job.publish import publish, recover, staging_dir, swap_into_place


def _out(tmp_path, **kw) -> OutputConfig:
    return OutputConfig(dir=str(tmp_path / "ckpt"), volume=VolumeOutput(claim_name="c", path="ckpt"), **kw)


def _stage(out_dir) -> os.PathLike:
    staging = staging_dir(out_dir)
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"new")
    (staging / "config.json").write_text("{}")
    return staging


@pytest.mark.parametrize("keep_state", [False, True])
def test_publish_swaps_in_the_staged_checkpoint(tmp_path, keep_state: bool) -> None:
    out = _out(tmp_path, keep_state=keep_state)
    out_dir = tmp_path / "ckpt"
    (out_dir / STATE_DIR_NAME).mkdir(parents=True)
    (out_dir / STATE_DIR_NAME / "layer-0000.safetensors").write_bytes(b"state")
    (out_dir / "progress.json").write_text('{"stage": "publish"}')
    result = publish(_stage(out_dir), out)
    assert result.location == "pvc://c/ckpt" and result.revision is None
    assert (out_dir / "model.safetensors").read_bytes() == b"new"
    assert (out_dir / "progress.json").exists()
    assert (out_dir / STATE_DIR_NAME).exists() == keep_state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging or old dirs left


def test_recover_restores_the_old_dir_after_a_kill_between_renames(tmp_path) -> None:
    out_dir = tmp_path / "ckpt"
    (out_dir / STATE_DIR_NAME).mkdir(parents=True)
    staging = _stage(out_dir)
    os.rename(out_dir, tmp_path / "ckpt.old-deadbeef")  # the kill came right after the first rename
    recover(out_dir, keep_state=False)
    assert (out_dir / STATE_DIR_NAME).is_dir()  # the resume state is back where the rerun looks
    assert not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_recover_finishes_a_swap_killed_after_the_second_rename(tmp_path) -> None:
    out_dir = tmp_path / "ckpt"
    old = tmp_path / "ckpt.old-cafe0000"
    (old / STATE_DIR_NAME).mkdir(parents=True)
    staging = _stage(out_dir)
    os.rename(staging, out_dir)
    recover(out_dir, keep_state=True)
    assert (out_dir / "model.safetensors").read_bytes() == b"new"
    assert (out_dir / STATE_DIR_NAME).is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_swap_into_a_fresh_destination(tmp_path) -> None:
    out_dir = tmp_path / "fresh"
    staging = _stage(out_dir)
    swap_into_place(staging, out_dir, keep_state=False)
    assert (out_dir / "config.json").exists() and not staging.exists()
