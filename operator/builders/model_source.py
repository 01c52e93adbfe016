"""Where a serving pod gets its weights: resolved from ``spec.model`` (and, for a
``QuantizedModel`` reference, from its published ``status.artifact``).

Hub weights are downloaded by an init container into a pod-local volume (the Hub token comes from
the referenced Secret through ``secretKeyRef``); volume weights are mounted read-only and checked
by an init container, so a missing shard fails fast with a clear message instead of a vLLM crash
loop. The serving container then loads from a local path with the Hub switched off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..api.common import HUB_REPO, HUB_REVISION, REL_PATH, SecretKeyRef
from ..api.endpoint import EndpointModel
from ..api.quantizedmodel import Artifact

WEIGHTS_DIR = "/models/weights"

_PVC_URI = re.compile(r"^pvc://(?P<claim>[a-z0-9]([-a-z0-9.]*[a-z0-9])?)(/(?P<path>[A-Za-z0-9._/-]+))?$")
_HF_URI = re.compile(r"^hf://(?P<repo>[^@]+)(@(?P<rev>.+))?$")


@dataclass(frozen=True)
class ResolvedModel:
    """Weights of one endpoint: exactly one of (``repo``) or (``claim_name``) is set."""

    served_name: str
    repo: str | None = None
    revision: str | None = None
    token: SecretKeyRef | None = None
    claim_name: str | None = None
    path: str | None = None
    #: Bytes of all weight files (sizes the download volume); from the planner's profile.
    checkpoint_bytes: int = 0

    def __post_init__(self) -> None:
        if (self.repo is None) == (self.claim_name is None):
            raise ValueError("a model comes from exactly one of a Hub repo or a volume claim")
        if self.repo is not None and not re.match(HUB_REPO, self.repo):
            raise ValueError(f"invalid Hub repo id {self.repo!r}")
        if self.revision is not None and (not re.match(HUB_REVISION, self.revision) or ".." in self.revision):
            raise ValueError(f"invalid revision {self.revision!r}")
        if self.path is not None and (not re.match(REL_PATH, self.path) or ".." in self.path):
            raise ValueError(f"invalid volume path {self.path!r}")

    @property
    def from_hub(self) -> bool:
        return self.repo is not None


def resolve_model(model: EndpointModel, *, endpoint_name: str, artifact: Artifact | None = None,
                  artifact_token: SecretKeyRef | None = None, checkpoint_bytes: int = 0) -> ResolvedModel:
    """Turn ``spec.model`` into a weights location. A ``quantizedModelRef`` needs the referenced
    model's ``status.artifact`` (the handler waits for it before calling this)."""
    if model.hub is not None:
        return ResolvedModel(served_name=model.served_model_name or model.hub.repo, repo=model.hub.repo,
                             revision=model.hub.revision, token=model.hub.token_secret_ref,
                             checkpoint_bytes=checkpoint_bytes)
    if model.volume is not None:
        return ResolvedModel(served_name=model.served_model_name or endpoint_name, claim_name=model.volume.claim_name,
                             path=model.volume.path, checkpoint_bytes=checkpoint_bytes)
    if artifact is None:
        raise ValueError("spec.model.quantizedModelRef: the QuantizedModel has no published artifact yet")
    name = model.served_model_name or model.quantized_model_ref.name
    if m := _PVC_URI.match(artifact.location):
        return ResolvedModel(served_name=name, claim_name=m["claim"], path=m["path"], checkpoint_bytes=checkpoint_bytes)
    if m := _HF_URI.match(artifact.location):
        return ResolvedModel(served_name=name, repo=m["repo"], revision=m["rev"] or artifact.revision,
                             token=artifact_token, checkpoint_bytes=checkpoint_bytes)
    raise ValueError(f"artifact location {artifact.location!r} is neither pvc://<claim>/<path> nor hf://<repo>[@rev]")
