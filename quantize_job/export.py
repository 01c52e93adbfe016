"""Export stage for GSQ: a compressed-tensors ``pack-quantized`` checkpoint, then the Humming repack.

The compressed-tensors writer here streams: one output shard per decoder layer (plus one for the
tensors outside the layers), each holding that layer's BF16 tensors copied unchanged from the base
shards and its quantized Linears packed by compressed-tensors itself
(:func:`compressed_tensors_io.module_tensors`). Memory is one layer, never the model. 2-bit codes go
into a 4-bit container, as the GSQ reference exports do; the repack
(:func:`humming.repack_checkpoint`) then stores them at exact width without changing any value.

The Humming ``ignore`` list must cover every Linear left in BF16 (vLLM would otherwise expect it
quantized) and must not touch a quantized one: the design's reference list is used where it fits
and any BF16 Linear it does not cover is named exactly.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from dedicated.quantize_job.preflight import ModelLayout
from dedicated.quantize_job.qtensor import QuantizedWeight

log = logging.getLogger("dedicated.quantize_job")

INDEX = "model.safetensors.index.json"
_LAYER = re.compile(r"^(?P<key>(?:.*\.)?layers\.\d+)\.")
_SKIP_FILES = {"config.json", INDEX, "manifest.json", "progress.json"}

#: ``modules -> {module: QuantizedWeight}`` for the quantized modules of one group (a layer).
WeightLoader = Callable[[list[str]], Mapping[str, QuantizedWeight]]


def group_key(tensor_or_module: str) -> str:
    """``model.layers.7`` for anything inside decoder layer 7; ``""`` for the rest of the model."""
    found = _LAYER.match(tensor_or_module)
    return found.group("key") if found else ""


def _layer_sort(key: str) -> tuple:
    if not key:
        return (1, "", 0)
    prefix, _, idx = key.rpartition(".")
    return (0, prefix, int(idx))


def humming_ignore(all_linear: Iterable[str], quantized: Iterable[str]) -> list[str]:
    """The ignore list: reference patterns that skip no quantized module, then exact names for the rest."""
    from dedicated.quantize_job.humming import DEFAULT_IGNORE
    from dedicated.quantize_job.humming.ignore import exact_name, matches, vllm_prefixes

    quantized = set(quantized)
    prefixes = {p for m in quantized for p in vllm_prefixes(m)}
    keep = [p for p in DEFAULT_IGNORE if not any(matches(p, q) for q in prefixes)]
    extra = [exact_name(m) for m in sorted(set(all_linear) - quantized)
             if not any(matches(p, m) for p in keep)]
    return keep + extra


def copy_aux_files(src: Path, dst: Path) -> None:
    """Tokenizer, generation config and other small files a consumer loads besides the weights."""
    for entry in sorted(src.iterdir()):
        if entry.is_file() and not entry.name.startswith(".") and entry.suffix != ".safetensors" \
                and entry.name not in _SKIP_FILES:
            shutil.copy2(entry, dst / entry.name)


def write_compressed_tensors(
    base_dir: Path,
    layout: ModelLayout,
    quantized_modules: list[str],
    load_weights: WeightLoader,
    dst: Path,
    *,
    bits: int,
    group_size: int,
    ignore: list[str],
    container_bits: int | None = None,
    on_group: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``dst`` (must not exist) as a pack-quantized checkpoint, one decoder layer at a time."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from dedicated.quantize_job import compressed_tensors_io as ct

    container = container_bits or (4 if bits == 2 else bits)
    quantized = set(quantized_modules)
    groups: dict[str, list[str]] = {}
    for name in layout.tensors:
        groups.setdefault(group_key(name), []).append(name)
    keys = sorted(groups, key=_layer_sort)
    dst.mkdir(parents=True)
    weight_map: dict[str, str] = {}
    total = 0
    handles: dict[Path, object] = {}
    try:
        for i, key in enumerate(keys, start=1):
            names = sorted(groups[key])
            modules = sorted({n[: -len(".weight")] for n in names if n.endswith(".weight")} & quantized)
            weights = load_weights(modules) if modules else {}
            missing = [m for m in modules if m not in weights]
            if missing:
                raise RuntimeError(f"the quantization state has no result for {missing[:3]}")
            out: dict[str, torch.Tensor] = {}
            for name in names:
                module = name[: -len(".weight")] if name.endswith(".weight") else None
                if module in weights:
                    qw = weights[module]
                    out_f, in_f = layout.linear_modules[module]
                    if qw.shape != (out_f, in_f) or qw.bits != bits or qw.group_size != group_size:
                        raise RuntimeError(f"{module}: quantized result {qw.shape} {qw.bits}-bit g{qw.group_size} "
                                           f"does not match the base weight [{out_f}, {in_f}] {bits}-bit g{group_size}")
                    out.update(ct.module_tensors(qw, module, container))
                else:
                    path = layout.shard_of(name)
                    if path not in handles:
                        handles[path] = safe_open(str(path), framework="pt")
                    out[name] = handles[path].get_tensor(name)  # type: ignore[attr-defined]
            file = f"model-{i:05d}-of-{len(keys):05d}.safetensors"
            save_file({k: v.contiguous() for k, v in out.items()}, str(dst / file), metadata={"format": "pt"})
            total += sum(t.numel() * t.element_size() for t in out.values())
            weight_map.update({k: file for k in out})
            del out, weights
            if on_group:
                on_group(i, len(keys))
    finally:
        handles.clear()
    (dst / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                         "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
    config = json.loads((base_dir / "config.json").read_text())
    config["quantization_config"] = ct.quantization_config(container, group_size, ignore)
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    copy_aux_files(base_dir, dst)
    return dst


def repack_to_humming(ct_dir: Path, dst: Path, *, bits: int, ignore: list[str]) -> dict:
    """The Humming checkpoint at ``dst`` from the compressed-tensors one; returns the repack report."""
    from dedicated.quantize_job.humming import repack_checkpoint

    report = repack_checkpoint(ct_dir, dst, bits=bits, default_ignore=ignore)
    log.info("repacked %d quantized modules (%d experts) into %d shards, %.3f bits/weight",
             report.quantized_modules, report.expert_modules, report.shards, report.bits_per_weight)
    return {"quantizedModules": report.quantized_modules, "expertModules": report.expert_modules,
            "shards": report.shards, "bitsPerWeight": round(report.bits_per_weight, 4),
            "outputBytes": report.output_bytes}
