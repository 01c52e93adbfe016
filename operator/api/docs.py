"""Render ``docs/api.md`` (the CRD reference) from the same schemas the CRDs embed.

Generated, not hand-written, so the reference cannot drift from the API: the stale-file test
covers this file too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from .crd import API_VERSION, CATEGORY, KINDS, Kind, openapi_schema
from .endpoint import EndpointConditionType, EndpointPhase, EndpointReason
from .quantizedmodel import (
    SUPPORTED_BITS,
    QuantizedModelConditionType,
    QuantizedModelPhase,
    QuantizedModelReason,
)

_CONSTRAINTS = (("minimum", "≥"), ("maximum", "≤"), ("minLength", "min length"),
                ("maxLength", "max length"), ("minItems", "min items"), ("maxItems", "max items"))


def _type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    typ = node.get("type", "any")
    if typ == "array":
        return f"[]{_type_of(node['items'])}"
    if node.get("format"):
        return f"{typ} ({node['format']})"
    return typ


def _constraints(node: dict[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    for key, label in _CONSTRAINTS:
        if key in node:
            strict = node.get(f"exclusive{key[0].upper()}{key[1:]}") is True
            parts.append(f"{'>' if strict and key == 'minimum' else label} {node[key]}")
    if "pattern" in node:
        parts.append(f"pattern `{node['pattern']}`")
    for rule in node.get("x-kubernetes-validations", []):
        parts.append(f"CEL `{rule['rule']}` ({rule['message']})")
    return "; ".join(parts).replace("|", "\\|")


def _rows(node: dict[str, Any], path: str, required: bool) -> Iterator[str]:
    default = f"`{json.dumps(node['default'])}`" if "default" in node else ""
    desc = node.get("description", "").replace("\n", " ").replace("|", "\\|")
    yield (f"| `{path}` | {_type_of(node)} | {'yes' if required else ''} | {default} | "
           f"{_constraints(node)} | {desc} |")
    req = set(node.get("required", []))
    for key, child in node.get("properties", {}).items():
        yield from _rows(child, f"{path}.{key}", key in req)
    if node.get("type") == "array" and node["items"].get("properties"):
        for key, child in node["items"]["properties"].items():
            yield from _rows(child, f"{path}[].{key}", key in set(node["items"].get("required", [])))


def _kind_section(kind: Kind) -> list[str]:
    schema = openapi_schema(kind)
    lines = [f"## {kind.kind}", "", kind.description, "",
             f"- plural `{kind.plural}`, singular `{kind.singular}`, short names "
             + ", ".join(f"`{s}`" for s in kind.short_names) + f", category `{CATEGORY}`",
             "- subresources: `status`" + (", `scale` (" + ", ".join(
                 f"{k} `{v}`" for k, v in kind.scale.items()) + ")" if kind.scale else ""), "",
             "### Printer columns", "", "| column | type | JSONPath | shown | description |",
             "|---|---|---|---|---|"]
    for col in kind.columns:
        lines.append(f"| {col.name} | {col.type} | `{col.json_path}` | "
                     f"{'`-o wide`' if col.priority else 'always'} | {col.description} |")
    for part in ("spec", "status"):
        node = schema["properties"][part]
        lines += ["", f"### {part}", "", node.get("description", ""), "",
                  "| field | type | required | default | constraints | description |",
                  "|---|---|---|---|---|---|"]
        for key, child in node.get("properties", {}).items():
            lines += list(_rows(child, f"{part}.{key}", key in set(node.get("required", []))))
        rules = node.get("x-kubernetes-validations", [])
        if rules:
            lines += ["", f"Rules on `{part}`:", ""] + [f"- `{r['rule']}`: {r['message']}" for r in rules]
    return lines


def _planner_section() -> list[str]:
    """How status.plan is decided, with the planner's and builders' constants as they are in code."""
    from ..builders import serving as b
    from ..vram import memory as m
    from ..vram import planner as p

    return [
        "## How `status.plan` is chosen",
        "",
        "The VRAM planner (`dedicated.operator.vram`) reads the model's `config.json` and the tensor table of "
        "its safetensors headers (local directory, or the Hub API for a repo) and splits the bytes into text, "
        "embeddings/lm_head, vision encoder and MTP head. Per GPU it needs: the weights shard (replicated "
        "norms/routers whole; K/V projections replicated once TP exceeds the KV heads) + KV cache for full-"
        "attention layers only (`2 x KV heads per GPU x head_dim x 2 bytes` per token and layer, sliding-"
        "window layers capped at the window) + the fixed Gated DeltaNet conv/SSM state per sequence for linear-"
        "attention layers + runtime overhead. The KV cache is sized for `concurrency` sequences of the full "
        "context (`--max-num-seqs` = concurrency).",
        "",
        "Order of decisions: candidate pools (named pool, or allowed families, or all) with a compute "
        "capability the checkpoint format supports (Humming >= 8.0; AutoRound, GPTQ and BF16 >= 7.0, "
        "vLLM's floor; AWQ >= 7.5); tensor-parallel sizes the model's shapes allow (attention and KV heads, "
        "linear-attention heads, expert/MLP width per shard a multiple of the quantization group); the "
        "cheapest (cost per GPU-hour x GPUs, then fewer GPUs) option on which the *required* configuration "
        "fits; then, on that option, `auto` features are switched on if they still fit (vision first, then "
        "MTP) and an automatic context grows to the largest standard length that fits. A request that fits "
        "nowhere gets reason `InsufficientGPUMemory` naming the closest option and the shortfall in GiB.",
        "",
        "| constant | value | why |",
        "|---|---|---|",
        f"| KV cache dtype | {m.KV_DTYPE_BYTES} bytes | the model's 16-bit dtype; `--kv-cache-dtype` is not set |",
        f"| linear-attention state dtype | {m.STATE_DTYPE_BYTES} bytes | vLLM's default mamba cache dtype (model dtype) |",
        f"| CUDA context | {m.CUDA_CONTEXT_GIB} GiB/GPU | context, cuBLAS workspaces, allocator slack (an estimate; vLLM measures the real value at start-up) |",
        f"| TP communication | {m.TP_COMMUNICATION_GIB} GiB/GPU | NCCL and custom all-reduce buffers, only with TP > 1 |",
        f"| CUDA graphs | {m.CUDA_GRAPH_GIB} GiB/GPU | capture pools for the default sizes (estimate) |",
        f"| vision runtime | {m.VISION_RUNTIME_GIB} GiB/GPU | encoder profiling with the largest image + encoder cache |",
        f"| MTP runtime | {m.MTP_RUNTIME_GIB} GiB/GPU | drafter graphs and buffers |",
        f"| activations | {m.MAX_NUM_BATCHED_TOKENS} tokens x hidden x {m.ACTIVATION_HIDDEN_FACTOR} B + MLP/fused-MoE intermediates + fp32 logits | peak of vLLM's profiling step; `--max-num-batched-tokens {m.MAX_NUM_BATCHED_TOKENS}` is passed so it holds |",
        f"| `--gpu-memory-utilization` | {m.DEFAULT_GPU_MEMORY_UTILIZATION} | vLLM's default on discrete GPUs |",
        f"| unified-memory reserve | {m.UNIFIED_HOST_RESERVE_GIB} GiB | GB10 shares DRAM with the CPU: OS, kubelet, the API server, page cache while loading; utilization = (memory - reserve) / memory |",
        f"| automatic context | {', '.join(map(str, sorted(p.STANDARD_CONTEXTS)))} (>= {p.MIN_AUTO_CONTEXT}) | plus the model's own maximum |",
        f"| MTP draft tokens | {p.DEFAULT_SPECULATIVE_TOKENS} | vLLM's Qwen3.5 recipe: MTP-1; the second position has lower acceptance |",
        f"| startup budget | {b.STARTUP_BASE_SECONDS} s + {b.STARTUP_SECONDS_PER_GIB} s per GiB of weights per GPU, within [{b.STARTUP_MIN_SECONDS}, {b.STARTUP_MAX_SECONDS}] s | assumed: 30 s per GiB covers a slow network volume; 5 min covers compile and CUDA graph capture |",
        f"| `/dev/shm` | {b.SHM_BASE_GIB} GiB + {b.SHM_PER_GPU_GIB} GiB x TP (memory-backed) | NCCL and vLLM's shared-memory queues |",
        "",
        "vLLM arguments: `--tensor-parallel-size`, `--max-model-len`, `--max-num-seqs`, "
        "`--max-num-batched-tokens`, `--gpu-memory-utilization`, `--language-model-only` (text-only for a "
        "multimodal checkpoint), `--speculative-config {\"method\":\"mtp\",\"num_speculative_tokens\":N}` "
        "and `--quantization` (`auto-round`, `humming`) where the format needs it.",
        "",
    ]


def render_api_doc() -> str:
    lines = [
        "# API reference",
        "",
        "<!-- Generated by `dedicated crds generate` from `dedicated.operator.api`; do not edit. -->",
        "",
        f"Group and version: `{API_VERSION}`. Both kinds are namespaced and in the `{CATEGORY}` "
        "category (`kubectl get dedicated` lists both). Optional fields are left out when unset "
        "(never `null`); every string that reaches a container argument or a path is constrained "
        "by a pattern, and cross-field rules are CEL (`x-kubernetes-validations`) so "
        "`kubectl apply` rejects bad input with a message naming the field.",
        "",
        "Conditions follow the Kubernetes API conventions (`type`, `status`, `reason`, `message`, "
        "`lastTransitionTime`, `observedGeneration`); `lastTransitionTime` changes only when "
        "`status` flips. `status.phase` is a one-word summary for humans.",
        "",
    ]
    for kind in KINDS:
        lines += _kind_section(kind) + [""]
    lines += [
        "## Conditions, reasons and phases",
        "",
        "DedicatedEndpoint condition types: " + ", ".join(f"`{t}`" for t in EndpointConditionType) + ".",
        "",
        "DedicatedEndpoint reasons: " + ", ".join(f"`{r}`" for r in EndpointReason) + ".",
        "",
        "DedicatedEndpoint phases: " + ", ".join(f"`{p}`" for p in EndpointPhase) + ".",
        "",
        "QuantizedModel condition types: " + ", ".join(f"`{t}`" for t in QuantizedModelConditionType) + ".",
        "",
        "QuantizedModel reasons: " + ", ".join(f"`{r}`" for r in QuantizedModelReason) + ".",
        "",
        "QuantizedModel phases: " + ", ".join(f"`{p}`" for p in QuantizedModelPhase) + ".",
        "",
        "Bits per method: " + "; ".join(f"`{m}`: {', '.join(map(str, b))}" for m, b in SUPPORTED_BITS.items()) + ".",
        "",
    ]
    lines += _planner_section()
    return "\n".join(lines)
