"""A model as the planner sees it: config facts plus bytes per component."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint, HubClient, read_hub, read_local
from .components import EMBEDDINGS, MTP, TEXT, VISION, Breakdown, breakdown
from .facts import ModelFacts, model_facts
from .memory import GIB


@dataclass(frozen=True)
class ModelProfile:
    facts: ModelFacts
    parts: Breakdown
    source: str

    @property
    def has_vision_weights(self) -> bool:
        return self.parts.bytes(VISION) > 0

    @property
    def has_mtp_weights(self) -> bool:
        return self.parts.bytes(MTP) > 0

    def component_gib(self) -> dict[str, float]:
        """Bytes per component in GiB (text, embeddings, vision, mtp, total), for docs and status."""
        out = {name: self.parts.bytes(name) / GIB for name in (TEXT, EMBEDDINGS, VISION, MTP)}
        out["total"] = self.parts.total / GIB
        return out

    def weights_per_gpu(self, tp: int, *, vision: bool, mtp: bool) -> float:
        names = [TEXT, EMBEDDINGS] + ([VISION] if vision else []) + ([MTP] if mtp else [])
        return sum(self.parts.get(n).per_gpu(tp, self.facts.num_kv_heads) for n in names)

    def weights_total(self, *, vision: bool, mtp: bool) -> int:
        names = [TEXT, EMBEDDINGS] + ([VISION] if vision else []) + ([MTP] if mtp else [])
        return sum(self.parts.bytes(n) for n in names)


def profile_checkpoint(checkpoint: Checkpoint) -> ModelProfile:
    facts = model_facts(checkpoint.config)
    return ModelProfile(facts=facts, parts=breakdown(checkpoint.tensors, facts.num_layers),
                        source=checkpoint.source)


def profile_local(directory: str | Path) -> ModelProfile:
    """Profile a checkpoint directory (raises ``CheckpointError`` with a condition reason)."""
    return profile_checkpoint(read_local(directory))


def profile_hub(repo: str, revision: str | None = None, *, token: str | None = None,
                client: HubClient | Any | None = None) -> ModelProfile:
    """Profile a Hub repo through the Hub API (raises ``CheckpointError`` with a condition reason)."""
    return profile_checkpoint(read_hub(repo, revision, token=token, client=client))
