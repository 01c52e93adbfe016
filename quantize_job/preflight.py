"""Checks of the base model against the config, from the safetensors headers, before any heavy work.

Everything here reads shard headers (a few KB each) or streams one tensor at a time, so a bad
group size, a dense model given to an experts-only method, or a NaN in the weights is reported in
seconds, naming the module, instead of after hours of quantization or as a garbage checkpoint.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from dedicated.quantize_job.config import JobConfig
from dedicated.quantize_job.errors import InvalidConfig, InvalidGroupSize, InvalidWeights, NoExperts
from dedicated.quantize_job.humming.safetensors_stream import ShardHeader, read_header

log = logging.getLogger("dedicated.quantize_job")

_EXPERT = re.compile(r"\.experts\.\d+\.")
_FUSED_EXPERTS = re.compile(r"\.experts\.[A-Za-z_]+$")
#: Token embeddings are 2-D ``.weight`` tensors too, but not Linear layers (lm_head is one).
_EMBEDDING = re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings|embed_in|embeddings)\.weight$")
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}


@dataclass(frozen=True)
class ModelLayout:
    """What the checkpoint holds: every tensor's shard and shape, and the Linear modules among them."""

    tensors: dict[str, tuple[str, tuple[int, ...], str]]  # name -> (shard file, shape, dtype)
    headers: dict[str, ShardHeader]
    linear_modules: dict[str, tuple[int, int]]  # module -> (out, in)

    def shard_of(self, name: str) -> Path:
        return self.headers[self.tensors[name][0]].path


def read_layout(model_dir: Path) -> ModelLayout:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    headers: dict[str, ShardHeader] = {}
    tensors: dict[str, tuple[str, tuple[int, ...], str]] = {}
    for file in files:
        try:
            header = read_header(model_dir / file)
        except (ValueError, OSError) as exc:
            raise InvalidConfig(f"base model shard {file} is unreadable: {exc}") from None
        headers[file] = header
        for name, info in header.tensors.items():
            tensors[name] = (file, tuple(info.shape), info.dtype)
    linear = {name[: -len(".weight")]: (shape[0], shape[1]) for name, (_, shape, dtype) in tensors.items()
              if name.endswith(".weight") and len(shape) == 2 and dtype in _FLOAT_DTYPES
              and not _EMBEDDING.search(name)}
    return ModelLayout(tensors=tensors, headers=headers, linear_modules=linear)


def selected_modules(config: JobConfig, layout: ModelLayout) -> list[str]:
    """Modules to quantize, after the NoExperts and group-size checks (sorted by name)."""
    all_linear = sorted(layout.linear_modules)
    has_experts = any(_EXPERT.search(m + ".") for m in all_linear)
    fused = sorted(n for n, (_, shape, _) in layout.tensors.items() if _FUSED_EXPERTS.search(n) and len(shape) == 3)
    if fused and not has_experts:
        raise InvalidConfig(f"the checkpoint stores experts as fused 3-D tensors ({fused[0]}, ...); only "
                            "per-expert Linear weights (…experts.<i>.<proj>.weight) are supported")
    if config.modules.asks_for_experts and not has_experts:
        raise NoExperts(
            f"the model has no MoE experts (no Linear named '…mlp.experts.<i>.<proj>' among its "
            f"{len(all_linear)} Linear weights), but the module selection {config.modules.quantize} "
            "asks for experts; quantize a MoE model, or set spec.modules.quantize for a dense model")
    chosen = [m for m in all_linear if config.modules.selects(m)]
    if not chosen:
        raise InvalidConfig(f"the module selection quantize={config.modules.quantize} "
                            f"keepBF16={config.modules.keep_bf16} matches none of the model's "
                            f"{len(all_linear)} Linear weights")
    split = _partially_selected_experts(all_linear, set(chosen))
    if split:
        raise InvalidConfig(f"{split}: some of its expert projections are selected for quantization and some kept in "
                            "BF16; a serving engine runs a layer's experts as one fused MoE, so select all "
                            "or none of them")
    bad = [(m, layout.linear_modules[m]) for m in chosen if layout.linear_modules[m][1] % config.group_size]
    if bad:
        listed = "; ".join(f"{m} has input dimension {i} (weight [{o}, {i}])" for m, (o, i) in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise InvalidGroupSize(f"group size {config.group_size} does not divide the input dimension of "
                               f"{len(bad)} selected module(s): {listed}{more}; choose a group size that "
                               "divides it, or keep these modules in BF16")
    return chosen


def check_finite(model_dir: Path, layout: ModelLayout) -> None:
    """Every floating-point tensor of the base model is finite (one tensor in memory at a time)."""
    from safetensors import safe_open

    for file, header in sorted(layout.headers.items()):
        with safe_open(str(header.path), framework="pt") as f:
            for name in sorted(header.tensors):
                if header.tensors[name].dtype not in _FLOAT_DTYPES:
                    continue
                t = f.get_tensor(name)
                finite = torch.isfinite(t)
                if not bool(finite.all()):
                    count = int((~finite).sum())
                    where = tuple(int(i) for i in (~finite).nonzero()[0])
                    raise InvalidWeights(f"base model tensor {name} (in {file}) has {count} NaN/Inf "
                                         f"value(s), first at {where}; refusing to quantize a broken checkpoint")
                del t, finite


def _partially_selected_experts(all_linear: list[str], chosen: set[str]) -> str | None:
    groups: dict[str, set[bool]] = {}
    for m in all_linear:
        found = re.match(r"^(.*\.experts)\.\d+\.[^.]+$", m)
        if found:
            groups.setdefault(found.group(1), set()).add(m in chosen)
    for prefix, states in sorted(groups.items()):
        if len(states) == 2:
            return prefix
    return None
