"""Split a checkpoint's bytes into the components the planner switches on and off.

Components: ``vision`` (encoder and projector: skipped when serving text-only), ``mtp`` (the
multi-token-prediction head: needed only with MTP speculative decoding), ``embeddings``
(input embeddings and lm_head) and ``text`` (everything else of the language model). Names are
matched by pattern, and DeepSeek-style MTP layers stored as ``layers.{N}`` past
``num_hidden_layers`` count as MTP too.

For tensor parallelism each component also records what vLLM does *not* shard: 0-/1-D tensors
(norms, biases, gates' vectors), MoE routers and shared-expert gates are replicated on every GPU,
and K/V projections are replicated once TP exceeds the number of KV heads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .checkpoint import Tensor

_VISION = re.compile(r"(^|\.)(visual|vision_tower|vision_model|vision_encoder|multi_modal_projector|"
                     r"mm_projector|vision_embed|image_newline|patch_embed)(\.|$)")
_MTP = re.compile(r"(^|\.)mtp(\.|$)")
_EMBED = re.compile(r"(^|\.)(embed_tokens|lm_head|wte|word_embeddings|output_layer|embed_out)(\.|$)")
_LAYER = re.compile(r"(^|\.)layers\.(\d+)\.")
_REPLICATED = re.compile(r"(\.mlp\.gate\.|\.router\.|shared_expert_gate|\.gate\.weight$|e_score_correction)")
_KV_PROJ = re.compile(r"\.(k_proj|v_proj)\.")

VISION, MTP, EMBEDDINGS, TEXT = "vision", "mtp", "embeddings", "text"


@dataclass
class ComponentBytes:
    total: int = 0
    replicated: int = 0  # held whole on every GPU
    kv_proj: int = 0  # K/V projections: sharded by min(tp, kv_heads)

    def per_gpu(self, tp: int, kv_heads: int) -> float:
        sharded = self.total - self.replicated - self.kv_proj
        return sharded / tp + self.replicated + self.kv_proj / min(tp, kv_heads)


@dataclass
class Breakdown:
    parts: dict[str, ComponentBytes] = field(default_factory=dict)

    def get(self, name: str) -> ComponentBytes:
        return self.parts.setdefault(name, ComponentBytes())

    def bytes(self, name: str) -> int:
        return self.parts[name].total if name in self.parts else 0

    @property
    def total(self) -> int:
        return sum(p.total for p in self.parts.values())


_VISION_HINTS = ("vis", "mm_projector", "multi_modal", "image_newline", "patch_embed")


def classify(name: str, num_layers: int) -> str:
    # Substring checks first: a 35B MoE has ~100k tensors and most are plain decoder weights.
    if any(h in name for h in _VISION_HINTS) and _VISION.search(name):
        return VISION
    if "mtp" in name and _MTP.search(name):
        return MTP
    if "layers." in name:
        layer = _LAYER.search(name)
        if layer and int(layer.group(2)) >= num_layers:
            return MTP  # DeepSeek/GLM keep their next-token-prediction layers after the last decoder layer
        return TEXT
    if _EMBED.search(name):
        return EMBEDDINGS
    return TEXT


def breakdown(tensors: tuple[Tensor, ...], num_layers: int) -> Breakdown:
    out = Breakdown()
    for t in tensors:
        part = out.get(classify(t.name, num_layers))
        part.total += t.nbytes
        if len(t.shape) <= 1 or ("gate" in t.name or "router" in t.name or "score" in t.name) and _REPLICATED.search(t.name):
            part.replicated += t.nbytes
        elif ("k_proj" in t.name or "v_proj" in t.name) and _KV_PROJ.search(t.name):
            part.kv_proj += t.nbytes
    for name in (TEXT, EMBEDDINGS, VISION, MTP):
        out.get(name)
    return out
