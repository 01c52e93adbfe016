"""Model facts from ``config.json``: the shapes the planner needs, read without assuming a model.

Handles flat configs (Llama, Qwen3, Mixtral), configs that nest the language model under
``text_config`` (Qwen3.5/3.6 and other vision-language models), hybrid layer schedules
(``layer_types`` with ``linear_attention``/``full_attention``/``sliding_attention``, or Qwen3-Next's
``full_attention_interval``), MoE under its various spellings, and MTP heads
(``mtp_num_hidden_layers`` / ``num_nextn_predict_layers``). Missing essentials are a
``CheckpointError`` with reason ``UnsupportedModel`` naming the key, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api.endpoint import EndpointReason
from .errors import CheckpointError

FULL = "full_attention"
LINEAR = "linear_attention"
SLIDING = "sliding_attention"
_LAYER_ALIASES = {"full_attention": FULL, "attention": FULL, "linear_attention": LINEAR,
                  "sliding_attention": SLIDING, "sliding_window": SLIDING}
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 2, "float": 2}
"""Serving dtype per config dtype: vLLM's ``--dtype auto`` serves float32 checkpoints in 16 bits."""


@dataclass(frozen=True)
class LinearAttention:
    """Gated DeltaNet shape: the recurrent state per sequence depends only on these."""

    num_key_heads: int
    num_value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int

    @property
    def conv_dim(self) -> int:
        return 2 * self.num_key_heads * self.key_head_dim + self.num_value_heads * self.value_head_dim


@dataclass(frozen=True)
class Moe:
    num_experts: int
    experts_per_token: int
    intermediate_size: int
    shared_intermediate_size: int  # 0 when the model has no shared expert


@dataclass(frozen=True)
class Quantization:
    """What the checkpoint's ``quantization_config`` means for serving."""

    method: str  # normalised: bf16, humming, auto-round, gptq, awq, compressed-tensors, fp8, ...
    bits: int | None
    group_size: int | None
    vllm_quantization: str | None  # value for --quantization; None lets vLLM detect it
    min_capability: tuple[int, int]
    why_capability: str

    @property
    def quantized(self) -> bool:
        return self.method not in ("bf16", "fp16")


@dataclass(frozen=True)
class ModelFacts:
    model_type: str
    architectures: tuple[str, ...]
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    layer_types: tuple[str, ...]
    sliding_window: int | None
    linear: LinearAttention | None
    moe: Moe | None
    intermediate_size: int | None  # dense MLP width (None for MoE-only models)
    mtp_layers: int
    vision_heads: int | None  # attention heads of the vision encoder; None without vision
    dtype_bytes: int
    quant: Quantization

    @property
    def has_vision(self) -> bool:
        return self.vision_heads is not None

    def count(self, kind: str) -> int:
        return sum(1 for t in self.layer_types if t == kind)


def _need(cfg: dict[str, Any], key: str, where: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise CheckpointError(EndpointReason.UNSUPPORTED_MODEL,
                              f"config.json{where} has no {key!r}; cannot plan memory for this model")
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(EndpointReason.UNSUPPORTED_MODEL,
                              f"config.json{where}: {key!r} must be a positive integer, got {value!r}")
    return value


def _first(cfg: dict[str, Any], *keys: str) -> Any:
    return next((cfg[k] for k in keys if cfg.get(k) is not None), None)


def _layer_types(text: dict[str, Any], num_layers: int, where: str) -> tuple[str, ...]:
    raw = text.get("layer_types")
    if raw is not None:
        if not isinstance(raw, list) or len(raw) != num_layers:
            raise CheckpointError(EndpointReason.UNSUPPORTED_MODEL,
                                  f"config.json{where}: layer_types must list {num_layers} entries")
        out = []
        for entry in raw:
            if entry not in _LAYER_ALIASES:
                raise CheckpointError(EndpointReason.UNSUPPORTED_MODEL,
                                      f"config.json{where}: unknown layer type {entry!r}")
            out.append(_LAYER_ALIASES[entry])
        return tuple(out)
    interval = text.get("full_attention_interval")
    if interval:  # Qwen3-Next: every `interval`-th layer is full attention, the rest linear
        return tuple(FULL if (i + 1) % interval == 0 else LINEAR for i in range(num_layers))
    return (FULL,) * num_layers


def parse_quantization(qcfg: dict[str, Any] | None, dtype_name: str) -> Quantization:
    """Normalise ``quantization_config`` (or its absence) into what the planner checks."""
    if not qcfg:
        name = "fp16" if dtype_name in ("float16", "half") else "bf16"
        return Quantization(name, 16, None, None, (7, 0), "unquantized weights run on any GPU vLLM supports (sm >= 7.0)")
    method = str(qcfg.get("quant_method", "")).lower().replace("_", "-")
    group = qcfg.get("group_size", qcfg.get("weight_scale_group_size"))
    group = group if isinstance(group, int) and group > 0 else None
    bits = qcfg.get("bits")
    if method == "humming":
        b_dtype = str(qcfg.get("b_dtype", ""))
        digits = "".join(ch for ch in b_dtype if ch.isdigit())
        # vLLM reads quant_method "humming" from config.json; passing it too makes a mismatch an
        # explicit start-up error instead of a silent fallback.
        return Quantization("humming", int(digits) if digits else None, group, "humming", (8, 0),
                            "the Humming MoE kernels need Ampere or newer (sm >= 8.0)")
    if method in ("auto-round", "autoround", "intel/auto-round"):
        return Quantization("auto-round", bits, group, "auto-round", (7, 0),
                            "AutoRound (auto_gptq packing) runs on any GPU vLLM supports (sm >= 7.0)")
    if method == "gptq":
        return Quantization("gptq", bits, group, None, (7, 0), "GPTQ runs on sm >= 7.0")
    if method == "awq":
        return Quantization("awq", bits, group, None, (7, 5), "AWQ kernels need sm >= 7.5")
    if method == "compressed-tensors":
        for grp in (qcfg.get("config_groups") or {}).values():
            weights = (grp or {}).get("weights") or {}
            bits = weights.get("num_bits", bits)
            group = weights.get("group_size", group)
        return Quantization("compressed-tensors", bits, group, None, (8, 0),
                            "compressed-tensors W4A16/W8A16 use Marlin (sm >= 8.0)")
    if method == "fp8":
        return Quantization("fp8", 8, None, None, (8, 0), "FP8 weights need sm >= 8.0 (Marlin) or 8.9 (native)")
    return Quantization(method or "unknown", bits if isinstance(bits, int) else None, group, None, (8, 0),
                        f"unknown quantization method {method!r}: assuming it needs sm >= 8.0")


def model_facts(config: dict[str, Any]) -> ModelFacts:
    """Read a ``config.json`` (already parsed)."""
    if not isinstance(config, dict):
        raise CheckpointError(EndpointReason.CONFIG_UNREADABLE, "config.json is not a JSON object")
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    where = ".text_config" if text is not config else ""
    hidden = _need(text, "hidden_size", where)
    layers = _need(text, "num_hidden_layers", where)
    heads = _need(text, "num_attention_heads", where)
    kv = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or hidden // heads
    if heads % kv:
        raise CheckpointError(EndpointReason.UNSUPPORTED_MODEL,
                              f"config.json{where}: {heads} attention heads are not a multiple of {kv} KV heads")
    layer_types = _layer_types(text, layers, where)
    linear = None
    if LINEAR in layer_types:
        linear = LinearAttention(
            num_key_heads=_need(text, "linear_num_key_heads", where),
            num_value_heads=_need(text, "linear_num_value_heads", where),
            key_head_dim=_need(text, "linear_key_head_dim", where),
            value_head_dim=_need(text, "linear_value_head_dim", where),
            conv_kernel=_need(text, "linear_conv_kernel_dim", where),
        )
    experts = _first(text, "num_experts", "num_local_experts", "n_routed_experts")
    moe = None
    if experts:
        moe_inter = _first(text, "moe_intermediate_size", "intermediate_size")
        if not moe_inter:
            raise CheckpointError(EndpointReason.UNSUPPORTED_MODEL,
                                  f"config.json{where}: MoE model without moe_intermediate_size")
        shared = text.get("shared_expert_intermediate_size")
        if shared is None and text.get("n_shared_experts"):
            shared = text["n_shared_experts"] * moe_inter
        moe = Moe(num_experts=experts,
                  experts_per_token=_first(text, "num_experts_per_tok", "num_experts_per_token", "moe_topk") or 1,
                  intermediate_size=moe_inter, shared_intermediate_size=shared or 0)
    intermediate = None if moe and "moe_intermediate_size" not in text else text.get("intermediate_size")
    if moe is None and not intermediate:
        raise CheckpointError(EndpointReason.UNSUPPORTED_MODEL, f"config.json{where} has no 'intermediate_size'")
    vision = config.get("vision_config") if isinstance(config.get("vision_config"), dict) else None
    vision_heads = None
    if vision is not None:
        vision_heads = _first(vision, "num_heads", "num_attention_heads") or 1
    dtype_name = str(_first(text, "torch_dtype", "dtype") or _first(config, "torch_dtype", "dtype") or "bfloat16")
    return ModelFacts(
        model_type=str(config.get("model_type", "")),
        architectures=tuple(config.get("architectures") or ()),
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        vocab_size=_need(text, "vocab_size", where),
        max_position_embeddings=_need(text, "max_position_embeddings", where),
        layer_types=layer_types,
        sliding_window=text.get("sliding_window") if SLIDING in layer_types else None,
        linear=linear,
        moe=moe,
        intermediate_size=intermediate,
        mtp_layers=int(_first(text, "mtp_num_hidden_layers", "num_nextn_predict_layers") or 0),
        vision_heads=vision_heads,
        dtype_bytes=_DTYPE_BYTES.get(dtype_name, 2),
        quant=parse_quantization(config.get("quantization_config") or text.get("quantization_config"), dtype_name),
    )
