"""Publish stage: the finished checkpoint appears at its destination whole, or not at all.

Volume: the checkpoint is built in a sibling ``<dir>.tmp-<id>`` (same filesystem) and swapped in by
renames. ``<dir>`` already exists during the run (it holds ``progress.json`` and the resume state),
and a directory cannot be renamed over a non-empty one, so the swap is: ``<dir>`` -> ``<dir>.old-<id>``,
staging -> ``<dir>``, then the state is moved back in (if kept) and the old directory removed.
:func:`recover` runs at start-up and finishes or undoes a swap that a killed pod left half done, so
readers only ever see the old directory or the complete new one under ``<dir>``.

Hub: ``HfApi.upload_folder`` of the published directory (without the state and progress files) in
one commit, whose sha becomes the artifact's revision.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from dedicated.quantize_job.config import STATE_DIR_NAME, OutputConfig
from dedicated.quantize_job.durable import fsync_path
from dedicated.quantize_job.errors import ModelUnreachable, PublishFailed
from dedicated.quantize_job.fetch import read_token

log = logging.getLogger("dedicated.quantize_job")

#: Files in the output dir that are about the run, not part of the checkpoint.
RUN_FILES = ("progress.json",)


@dataclass(frozen=True)
class Published:
    location: str
    revision: str | None
    path: Path


def staging_dir(out_dir: Path) -> Path:
    return out_dir.with_name(f"{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")


def _siblings(out_dir: Path, tag: str) -> list[Path]:
    if not out_dir.parent.is_dir():
        return []
    return sorted(p for p in out_dir.parent.iterdir() if p.name.startswith(f"{out_dir.name}.{tag}-"))


def recover(out_dir: Path, *, keep_state: bool) -> None:
    """Undo or finish a swap interrupted by a kill; remove abandoned staging directories."""
    for old in _siblings(out_dir, "old"):
        if not out_dir.exists():
            log.warning("restoring %s from an interrupted publish (%s)", out_dir, old.name)
            os.rename(old, out_dir)
        else:
            log.info("finishing an interrupted publish of %s", out_dir)
            _move_state(old, out_dir, keep=keep_state)
            shutil.rmtree(old, ignore_errors=True)
    for tmp in _siblings(out_dir, "tmp"):
        log.info("removing abandoned staging directory %s", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _move_state(src_dir: Path, dst_dir: Path, *, keep: bool) -> None:
    state = src_dir / STATE_DIR_NAME
    if keep and state.exists() and not (dst_dir / STATE_DIR_NAME).exists():
        os.rename(state, dst_dir / STATE_DIR_NAME)


def swap_into_place(staging: Path, out_dir: Path, *, keep_state: bool) -> None:
    """Make ``staging`` the new ``out_dir`` by renames; the resume state survives only if kept."""
    for run_file in RUN_FILES:
        src = out_dir / run_file
        if src.exists() and not (staging / run_file).exists():
            shutil.copy2(src, staging / run_file)
    fsync_path(staging)
    old = out_dir.with_name(f"{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    if out_dir.exists():
        os.rename(out_dir, old)
    os.rename(staging, out_dir)
    fsync_path(out_dir.parent)
    if old.exists():
        _move_state(old, out_dir, keep=keep_state)
        shutil.rmtree(old, ignore_errors=True)


def publish(staging: Path, output: OutputConfig) -> Published:
    """Move the staged checkpoint into ``output.dir`` and, for a Hub output, upload it."""
    out_dir = Path(output.dir)
    try:
        # The state comes along when anything in it is still wanted; the pipeline prunes it after.
        keep = output.keep_state or output.keep_intermediate or output.hub is not None
        swap_into_place(staging, out_dir, keep_state=keep)
    except OSError as exc:
        raise PublishFailed(f"could not move the checkpoint into {out_dir}: {exc}") from None
    log.info("checkpoint in place at %s", out_dir)
    if output.hub is None:
        return Published(location=output.location(), revision=None, path=out_dir)
    revision = upload_to_hub(out_dir, output)
    return Published(location=output.location(revision), revision=revision, path=out_dir)


def upload_to_hub(folder: Path, output: OutputConfig) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    hub = output.hub
    assert hub is not None
    token = read_token(hub.token_env, f"output repository {hub.repo}")
    api = HfApi(token=token)
    try:
        api.create_repo(hub.repo, private=hub.private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=hub.repo, folder_path=str(folder), repo_type="model",
                                 commit_message=hub.commit_message or "Upload quantized checkpoint",
                                 ignore_patterns=[f"{STATE_DIR_NAME}/**", *RUN_FILES])
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if status in (401, 403):
            raise ModelUnreachable(f"hf://{hub.repo}: the token in {hub.token_env} may not write to this "
                                   f"repository ({status})") from None
        raise PublishFailed(f"uploading to hf://{hub.repo} failed: {first}") from None
    except Exception as exc:
        raise PublishFailed(f"uploading to hf://{hub.repo} failed: {exc}") from None
    revision = getattr(info, "oid", None) or getattr(info, "commit_id", None)
    if not revision:
        raise PublishFailed(f"uploading to hf://{hub.repo} returned no commit id")
    log.info("uploaded to hf://%s@%s", hub.repo, revision)
    return str(revision)
