"""Realistic test checkpoints written by the tests themselves: config.json + sparse safetensors.

Shapes follow the public configs of each architecture (Qwen3.5/3.6-35B-A3B as transformers'
``Qwen3_5MoeTextConfig``/``Qwen3_5MoeVisionConfig`` defaults describe it, Llama-3.1-8B, Qwen3-0.6B).
Each ``.safetensors`` file gets a real header declaring every tensor's dtype, shape and offsets,
then is extended with ``truncate`` to its full size: the file is sparse (no data blocks written),
so a "70 GB" checkpoint costs a few MB of disk and milliseconds to create, and the planner reads
it exactly as it would read a real one.

Tensor naming follows the checkpoints: Qwen3.5/3.6 MoE keeps the language model under
``model.language_model.``, the vision encoder under ``model.visual.``, the MTP head under ``mtp.``;
quantized experts are per-expert Linear modules. Humming stores ``weight`` int32
``[out, in*bits/32]`` + ``weight_scale`` bf16 ``[out, in/group]``; AutoRound (auto_gptq packing)
stores ``qweight`` int32 ``[in*bits/32, out]``, ``qzeros`` int32 ``[in/group, out*bits/32]`` and
``scales`` fp16 ``[in/group, out]``.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4}
SHARD_BYTES = 5 * 10**9

Linear = tuple[str, int, int]  # name (without .weight), out, in


# --- Qwen3.6-35B-A3B-like hybrid MoE ------------------------------------------------------------

QWEN36_TEXT = {
    "model_type": "qwen3_5_moe_text", "vocab_size": 248320, "hidden_size": 2048, "num_hidden_layers": 40,
    "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256, "max_position_embeddings": 262144,
    "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
    "linear_num_key_heads": 16, "linear_num_value_heads": 32, "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512, "num_experts_per_tok": 8, "num_experts": 256,
    "mtp_num_hidden_layers": 1, "tie_word_embeddings": False, "dtype": "bfloat16",
    "layer_types": ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(40)],
}
QWEN36_VISION = {"model_type": "qwen3_5_moe", "depth": 27, "hidden_size": 1152, "intermediate_size": 4304,
                 "num_heads": 16, "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2,
                 "temporal_patch_size": 2, "out_hidden_size": 2048, "num_position_embeddings": 2304}

HUMMING_CONFIG = {
    "quant_method": "humming", "b_dtype": "uint2", "weight_scale_group_size": 128, "weight_scale_type": "group",
    "has_zero_point": False,
    "ignore": ["lm_head", "re:.*self_attn.*", "re:.*linear_attn.*", "re:.*visual.*", "re:mtp.*",
               r"re:.*mlp\.gate$", r"re:.*mlp\.shared_expert_gate$", "re:.*shared_expert.*"],
}


def autoround_config(num_layers: int) -> dict[str, Any]:
    extra = {}
    for i in range(num_layers):
        for name in ("in_proj_a", "in_proj_b", "in_proj_ba"):
            extra[f"model.language_model.layers.{i}.linear_attn.{name}"] = {"bits": 16, "data_type": "fp"}
    return {"quant_method": "auto-round", "packing_format": "auto_round:auto_gptq", "bits": 4, "group_size": 128,
            "sym": True, "data_type": "int", "extra_config": extra}


def _decoder_layer(prefix: str, full: bool, t: dict[str, Any]) -> Iterator[tuple[str, str, tuple[int, ...]] | Linear]:
    """One Qwen3.5-MoE decoder layer: attention (full or Gated DeltaNet) + MoE with shared expert."""
    h = t["hidden_size"]
    yield (f"{prefix}.input_layernorm.weight", "BF16", (h,))
    yield (f"{prefix}.post_attention_layernorm.weight", "BF16", (h,))
    if full:
        heads, kv, hd = t["num_attention_heads"], t["num_key_value_heads"], t["head_dim"]
        yield (f"{prefix}.self_attn.q_proj", heads * hd * 2, h)  # query + output gate
        yield (f"{prefix}.self_attn.k_proj", kv * hd, h)
        yield (f"{prefix}.self_attn.v_proj", kv * hd, h)
        yield (f"{prefix}.self_attn.o_proj", h, heads * hd)
        yield (f"{prefix}.self_attn.q_norm.weight", "BF16", (hd,))
        yield (f"{prefix}.self_attn.k_norm.weight", "BF16", (hd,))
    else:
        kd = t["linear_num_key_heads"] * t["linear_key_head_dim"]
        vd = t["linear_num_value_heads"] * t["linear_value_head_dim"]
        nv = t["linear_num_value_heads"]
        yield (f"{prefix}.linear_attn.in_proj_qkv", 2 * kd + vd, h)
        yield (f"{prefix}.linear_attn.in_proj_z", vd, h)
        yield (f"{prefix}.linear_attn.in_proj_b", nv, h)
        yield (f"{prefix}.linear_attn.in_proj_a", nv, h)
        yield (f"{prefix}.linear_attn.conv1d.weight", "BF16", (2 * kd + vd, 1, t["linear_conv_kernel_dim"]))
        yield (f"{prefix}.linear_attn.dt_bias", "BF16", (nv,))
        yield (f"{prefix}.linear_attn.A_log", "F32", (nv,))
        yield (f"{prefix}.linear_attn.norm.weight", "BF16", (t["linear_value_head_dim"],))
        yield (f"{prefix}.linear_attn.out_proj", h, vd)
    inter, shared = t["moe_intermediate_size"], t["shared_expert_intermediate_size"]
    yield (f"{prefix}.mlp.gate", t["num_experts"], h)
    yield (f"{prefix}.mlp.shared_expert_gate", 1, h)
    yield (f"{prefix}.mlp.shared_expert.gate_proj", shared, h)
    yield (f"{prefix}.mlp.shared_expert.up_proj", shared, h)
    yield (f"{prefix}.mlp.shared_expert.down_proj", h, shared)
    for e in range(t["num_experts"]):
        yield (f"{prefix}.mlp.experts.{e}.gate_proj", inter, h)
        yield (f"{prefix}.mlp.experts.{e}.up_proj", inter, h)
        yield (f"{prefix}.mlp.experts.{e}.down_proj", h, inter)


def qwen36_modules(t: dict[str, Any] = QWEN36_TEXT, v: dict[str, Any] = QWEN36_VISION,
                   *, vision: bool = True, mtp: bool = True) -> Iterator[Any]:
    h, lm = t["hidden_size"], "model.language_model"
    yield (f"{lm}.embed_tokens.weight", "BF16", (t["vocab_size"], h))
    for i, kind in enumerate(t["layer_types"]):
        yield from _decoder_layer(f"{lm}.layers.{i}", kind == "full_attention", t)
    yield (f"{lm}.norm.weight", "BF16", (h,))
    yield ("lm_head.weight", "BF16", (t["vocab_size"], h))
    if mtp:
        yield ("mtp.fc", h, 2 * h)
        for name in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
            yield (f"mtp.{name}.weight", "BF16", (h,))
        for j in range(t["mtp_num_hidden_layers"]):
            yield from _decoder_layer(f"mtp.layers.{j}", True, t)
    if vision:
        vh, vi, p = v["hidden_size"], v["intermediate_size"], v["patch_size"]
        yield ("model.visual.patch_embed.proj.weight", "BF16", (vh, v["in_channels"], v["temporal_patch_size"], p, p))
        yield ("model.visual.patch_embed.proj.bias", "BF16", (vh,))
        yield ("model.visual.pos_embed.weight", "BF16", (v["num_position_embeddings"], vh))
        for b in range(v["depth"]):
            pre = f"model.visual.blocks.{b}"
            for norm in ("norm1", "norm2"):
                yield (f"{pre}.{norm}.weight", "BF16", (vh,))
                yield (f"{pre}.{norm}.bias", "BF16", (vh,))
            for name, out, inp in (("attn.qkv", 3 * vh, vh), ("attn.proj", vh, vh),
                                   ("mlp.linear_fc1", vi, vh), ("mlp.linear_fc2", vh, vi)):
                yield (f"{pre}.{name}", out, inp)
                yield (f"{pre}.{name}.bias", "BF16", (out,))
        merged = vh * v["spatial_merge_size"] ** 2
        yield ("model.visual.merger.norm.weight", "BF16", (vh,))
        yield ("model.visual.merger.norm.bias", "BF16", (vh,))
        yield ("model.visual.merger.linear_fc1", merged, merged)
        yield ("model.visual.merger.linear_fc2", v["out_hidden_size"], merged)


def qwen36_config(quant: dict[str, Any] | None) -> dict[str, Any]:
    cfg = {"architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe",
           "text_config": dict(QWEN36_TEXT), "vision_config": dict(QWEN36_VISION),
           "image_token_id": 248056, "video_token_id": 248057, "tie_word_embeddings": False}
    if quant:
        cfg["quantization_config"] = quant
    return cfg


# --- dense and small models ---------------------------------------------------------------------

LLAMA8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
           "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "max_position_embeddings": 131072,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16", "rope_theta": 500000.0}
QWEN3_06B = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024,
             "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960,
             "tie_word_embeddings": True, "torch_dtype": "bfloat16"}


def dense_modules(c: dict[str, Any]) -> Iterator[Any]:
    h, heads, kv, hd, inter = (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"],
                               c["head_dim"], c["intermediate_size"])
    yield ("model.embed_tokens.weight", "BF16", (c["vocab_size"], h))
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        yield (f"{p}.input_layernorm.weight", "BF16", (h,))
        yield (f"{p}.post_attention_layernorm.weight", "BF16", (h,))
        yield (f"{p}.self_attn.q_proj", heads * hd, h)
        yield (f"{p}.self_attn.k_proj", kv * hd, h)
        yield (f"{p}.self_attn.v_proj", kv * hd, h)
        yield (f"{p}.self_attn.o_proj", h, heads * hd)
        if c["model_type"] == "qwen3":
            yield (f"{p}.self_attn.q_norm.weight", "BF16", (hd,))
            yield (f"{p}.self_attn.k_norm.weight", "BF16", (hd,))
        yield (f"{p}.mlp.gate_proj", inter, h)
        yield (f"{p}.mlp.up_proj", inter, h)
        yield (f"{p}.mlp.down_proj", h, inter)
    yield ("model.norm.weight", "BF16", (h,))
    if not c["tie_word_embeddings"]:
        yield ("lm_head.weight", "BF16", (c["vocab_size"], h))


# --- storage formats ----------------------------------------------------------------------------

Quantizer = Callable[[str, int, int], list[tuple[str, str, tuple[int, ...]]]]


def bf16(name: str, out: int, inp: int) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(f"{name}.weight", "BF16", (out, inp))]


def humming(bits: int = 2, group: int = 128) -> Quantizer:
    def q(name: str, out: int, inp: int) -> list[tuple[str, str, tuple[int, ...]]]:
        return [(f"{name}.weight", "I32", (out, inp * bits // 32)),
                (f"{name}.weight_scale", "BF16", (out, inp // group))]
    return q


def auto_gptq(bits: int = 4, group: int = 128) -> Quantizer:
    def q(name: str, out: int, inp: int) -> list[tuple[str, str, tuple[int, ...]]]:
        return [(f"{name}.qweight", "I32", (inp * bits // 32, out)),
                (f"{name}.qzeros", "I32", (inp // group, out * bits // 32)),
                (f"{name}.scales", "F16", (inp // group, out))]
    return q


QWEN36_EXPERTS = re.compile(r"^model\.language_model\.layers\.\d+\.mlp\.experts\.")
QWEN36_AUTOROUND = re.compile(r"^model\.language_model\.layers\.\d+\.(mlp\.experts\.|self_attn\.[qkvo]_proj$|"
                              r"linear_attn\.(in_proj_qkv|in_proj_z|out_proj)$)")


def materialise(modules: Iterator[Any], quantize: Quantizer | None = None,
                which: re.Pattern[str] | None = None) -> list[tuple[str, str, tuple[int, ...]]]:
    """Expand Linear modules into stored tensors: quantized where ``which`` matches, BF16 else."""
    out = []
    for item in modules:
        if len(item) == 3 and isinstance(item[1], str):
            out.append(item)
            continue
        name, o, i = item
        if quantize is not None and which is not None and which.search(name):
            out += quantize(name, o, i)
        else:
            out += bf16(name, o, i)
    return out


def write_checkpoint(root: Path, config: dict[str, Any], tensors: list[tuple[str, str, tuple[int, ...]]],
                     shard_bytes: int = SHARD_BYTES) -> Path:
    """Write config.json, sparse shards with real headers, and the index; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config, indent=2))
    shards: list[list[tuple[str, str, tuple[int, ...], int]]] = [[]]
    size = 0
    for name, dtype, shape in tensors:
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, dtype, shape, nbytes))
        size += nbytes
    weight_map = {}
    total = 0
    for n, shard in enumerate(shards, 1):
        fname = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dtype, shape, nbytes in shard:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = fname
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        path = root / fname
        with path.open("wb") as fh:
            fh.write(struct.pack("<Q", len(blob)))
            fh.write(blob)
        os.truncate(path, 8 + len(blob) + offset)  # sparse: the data region is a hole
        total += offset
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return root


def qwen36(root: Path, variant: str, *, vision: bool = True, mtp: bool = True) -> Path:
    """The Qwen3.6-35B-A3B-like checkpoint in ``bf16``, ``humming`` (2-bit) or ``autoround`` (4-bit)."""
    modules = qwen36_modules(vision=vision, mtp=mtp)
    if variant == "bf16":
        return write_checkpoint(root, qwen36_config(None), materialise(modules))
    if variant == "humming":
        return write_checkpoint(root, qwen36_config(HUMMING_CONFIG), materialise(modules, humming(), QWEN36_EXPERTS))
    if variant == "autoround":
        return write_checkpoint(root, qwen36_config(autoround_config(40)),
                                materialise(modules, auto_gptq(), QWEN36_AUTOROUND))
    raise ValueError(variant)


def dense(root: Path, config: dict[str, Any]) -> Path:
    return write_checkpoint(root, dict(config), materialise(dense_modules(config)))
