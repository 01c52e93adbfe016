"""Fetch stage: the base model as a local directory of safetensors shards, pinned to one revision.

Hub models are resolved to a commit sha first, then downloaded at that sha into the state dir, so
a preempted Job neither downloads twice (huggingface_hub skips finished files in ``local_dir``) nor
resumes onto a revision that moved meanwhile (the sha is part of the resume fingerprint). Only
what loading needs is downloaded: configs, tokenizer files and safetensors shards.

Errors say what to fix: a token variable that is empty means the Secret or its key is missing
(``SecretNotFound``); a 401/403/404 without a token means the repo is private, gated or misspelled
(``ModelUnreachable`` with a hint); connection failures are retried a few times before
``ModelUnreachable``. The token is passed to the library and never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from dedicated.quantize_job.config import HubSource, ModelSource
from dedicated.quantize_job.errors import InvalidConfig, ModelUnreachable, SecretNotFound

log = logging.getLogger("dedicated.quantize_job")

ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*",
                  "*.py"]


@dataclass(frozen=True)
class FetchedModel:
    path: Path
    revision: str  # Hub commit sha, or ``local:<digest of config and shard listing>``
    source: str  # hf://owner/name@sha or the local path

    @property
    def config(self) -> dict:
        return json.loads((self.path / "config.json").read_text())


def read_token(env_name: str | None, what: str) -> str | None:
    """The token from ``env_name``; an empty or missing variable is a missing Secret, not anonymous."""
    if env_name is None:
        return None
    value = os.environ.get(env_name, "").strip()
    if not value:
        raise SecretNotFound(
            f"{what} needs a Hub token, but the environment variable {env_name} is empty: the "
            f"Secret named by its tokenSecretRef, or the key inside it, does not exist")
    return value


def resolve_revision(source: ModelSource, *, attempts: int = 3, backoff: float = 2.0) -> str:
    """The exact revision the run will use: a Hub commit sha, or a digest of a local directory.

    Cheap (one API call, or file sizes), so a rerun can recognise an already published result
    without downloading the model again.
    """
    if source.path is not None:
        return _local(Path(source.path)).revision
    assert source.hub is not None
    hub = source.hub
    token = read_token(hub.token_env, f"hf://{hub.repo}")

    def call() -> str:
        from huggingface_hub import HfApi

        sha = HfApi(token=token).model_info(hub.repo, revision=hub.revision).sha
        if not sha:
            raise ModelUnreachable(f"hf://{hub.repo}: the Hub returned no commit for revision {hub.revision or 'main'}")
        return sha

    return _with_retries(call, hub, token, attempts=attempts, backoff=backoff)


def fetch_model(source: ModelSource, download_dir: Path, revision: str, *, attempts: int = 3,
                backoff: float = 2.0) -> FetchedModel:
    """The model at ``revision`` (from :func:`resolve_revision`) as a local directory."""
    if source.path is not None:
        fetched = _local(Path(source.path))
        if fetched.revision != revision:
            raise ModelUnreachable(f"base model {source.path} changed while the job ran "
                                   f"({revision} -> {fetched.revision})")
        return fetched
    assert source.hub is not None
    hub = source.hub
    token = read_token(hub.token_env, f"hf://{hub.repo}")

    def call() -> FetchedModel:
        from huggingface_hub import snapshot_download

        log.info("fetching hf://%s@%s (commit %s) into %s", hub.repo, hub.revision or "main", revision, download_dir)
        path = Path(snapshot_download(hub.repo, revision=revision, token=token, local_dir=download_dir,
                                      allow_patterns=ALLOW_PATTERNS))
        check_checkpoint_dir(path, f"hf://{hub.repo}@{revision}")
        return FetchedModel(path=path, revision=revision, source=f"hf://{hub.repo}@{revision}")

    return _with_retries(call, hub, token, attempts=attempts, backoff=backoff)


def check_checkpoint_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise ModelUnreachable(f"{what} {path} does not exist or is not a directory (is the volume "
                               "mounted, and is the path relative to the claim's root?)")
    if not (path / "config.json").is_file():
        raise ModelUnreachable(f"{what} {path} has no config.json: not a Hugging Face model directory")
    if not any(path.glob("*.safetensors")):
        raise InvalidConfig(f"{what} {path} has no *.safetensors weights (only safetensors checkpoints "
                            "are supported; convert .bin/.pt weights first)")


def _local(path: Path) -> FetchedModel:
    check_checkpoint_dir(path, "base model")
    h = hashlib.sha256((path / "config.json").read_bytes())
    for shard in sorted(path.glob("*.safetensors")):
        h.update(f"{shard.name}\0{shard.stat().st_size}\0".encode())
    index = path / "model.safetensors.index.json"
    if index.is_file():
        h.update(index.read_bytes())
    return FetchedModel(path=path, revision=f"local:{h.hexdigest()[:16]}", source=str(path))


def _is_transient(exc: Exception) -> bool:
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return status is None or status >= 500 or status == 429
    return False


def _explain(exc: Exception, hub: HubSource, token: str | None) -> ModelUnreachable:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"hf://{hub.repo}" + (f"@{hub.revision}" if hub.revision else "")
    if isinstance(exc, RevisionNotFoundError):
        return ModelUnreachable(f"{where}: revision {hub.revision!r} does not exist in the repository")
    if isinstance(exc, (GatedRepoError, RepositoryNotFoundError)):
        if token is None:
            return ModelUnreachable(
                f"{where}: the Hub refused anonymous access (the repo is private, gated, or does not "
                "exist); set spec.base.hub.tokenSecretRef to a Secret holding a read token")
        return ModelUnreachable(f"{where}: the Hub refused the token from {hub.token_env} (no access to a "
                                "private or gated repo, or the repo does not exist)")
    return ModelUnreachable(f"{where}: the Hub is unreachable: {_first_line(exc)}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _with_retries(call, hub: HubSource, token: str | None, *, attempts: int, backoff: float):
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except (ModelUnreachable, InvalidConfig, SecretNotFound):
            raise
        except Exception as exc:
            if not _is_transient(exc):
                raise _explain(exc, hub, token) from None
            last = exc
            log.warning("Hub request %d/%d for hf://%s failed: %s", attempt, attempts, hub.repo, _first_line(exc))
            if attempt < attempts:
                time.sleep(backoff * attempt)
    assert last is not None
    raise _explain(last, hub, token) from None
