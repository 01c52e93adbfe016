"""Streaming converter: compressed-tensors `pack-quantized` checkpoint -> Humming checkpoint.

Memory is bounded by one quantized module (its three source tensors and two outputs) plus one
copy chunk, whatever the checkpoint's size: every output shard is laid out from the source
headers before a byte is written, untouched tensors are copied as raw byte ranges, and each
quantized module is unpacked, checked and re-packed on its own. The output is built under a
hidden temporary name beside ``dst`` and renamed into place only when complete, so a failure
leaves ``src`` untouched and no half-written checkpoint that looks valid.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dedicated.quantize_job import compressed_tensors_io as ct
from dedicated.quantize_job.bitpack import SUPPORTED_BITS
from dedicated.quantize_job.durable import fsync_path
from dedicated.quantize_job.humming import ignore as ignore_rules
from dedicated.quantize_job.humming.format import (
    DEFAULT_IGNORE,
    QUANT_METHOD,
    WEIGHT,
    WEIGHT_SCALE,
    HummingSpec,
)
from dedicated.quantize_job.humming.pack import to_humming
from dedicated.quantize_job.humming.safetensors_stream import (
    PlannedTensor,
    ShardHeader,
    StreamingWriter,
    planned_from_info,
    planned_like,
    read_header,
    read_tensor,
)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
CONFIG = "config.json"
_UNSUPPORTED_SUFFIXES = (".weight_zero_point", ".weight_g_idx", ".weight_global_scale")


class RepackError(ValueError):
    """The source checkpoint cannot be repacked; the message says which file or module and why."""


@dataclass
class RepackReport:
    src: Path
    dst: Path
    bits: int
    group_size: int
    ignore: list[str]
    quantized_modules: int = 0
    expert_modules: int = 0
    copied_tensors: int = 0
    shards: int = 0
    quantized_params: int = 0
    quantized_storage_bytes: int = 0
    output_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def bits_per_weight(self) -> float:
        """Storage bits per quantized weight, codes and scales together."""
        return 8 * self.quantized_storage_bytes / self.quantized_params if self.quantized_params else 0.0


def repack_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    bits: int | None = None,
    extra_ignore: Sequence[str] = (),
    default_ignore: Sequence[str] = DEFAULT_IGNORE,
    progress: Callable[[str], None] | None = None,
) -> RepackReport:
    """Convert ``src`` (compressed-tensors pack-quantized) into a new Humming checkpoint at ``dst``.

    ``bits`` is the Humming width; it defaults to the width ``src`` declares and may be narrower
    (2-bit codes stored in a 4-bit container), in which case every code is checked to fit.
    """
    src, dst = Path(src), Path(dst)
    config = _read_config(src)
    spec = _source_spec(config)
    target_bits = spec.num_bits if bits is None else bits
    if target_bits not in SUPPORTED_BITS or target_bits > spec.num_bits:
        raise RepackError(
            f"cannot store {spec.num_bits}-bit pack-quantized codes as {target_bits}-bit Humming; "
            f"choose one of {[b for b in SUPPORTED_BITS if b <= spec.num_bits]}"
        )
    humming = HummingSpec(bits=target_bits, group_size=spec.group_size)
    if dst.exists():
        raise RepackError(f"destination {dst} already exists; refusing to overwrite it")
    if not dst.parent.is_dir():
        raise RepackError(f"destination parent {dst.parent} is not a directory")

    shards, index_metadata = _read_shards(src)
    owner = {name: shard for shard in shards for name in shard.tensors}
    modules = _quantized_modules(owner)
    ignore = ignore_rules.merge(list(default_ignore) + list(extra_ignore), spec.ignore)
    clashes = ignore_rules.conflicts(modules, ignore)
    if clashes:
        listed = "; ".join(f"{m} matches {p!r}" for m, p in clashes[:5])
        raise RepackError(
            f"{len(clashes)} quantized layer(s) would be skipped by the ignore list and loaded "
            f"as BF16 by vLLM: {listed}"
        )

    shapes = {}
    for module in modules:  # every shape is checked before a byte is written
        shapes[module] = _module_shape(module, owner)
        try:
            humming.check_shape(*shapes[module], module)
        except ValueError as exc:
            raise RepackError(str(exc)) from exc

    report = RepackReport(src=src, dst=dst, bits=target_bits, group_size=spec.group_size,
                          ignore=ignore, quantized_modules=len(modules))
    report.expert_modules = sum(1 for m in modules if len(ignore_rules.vllm_prefixes(m)) > 1)
    tmp = dst.parent / f".{dst.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        weight_map: dict[str, str] = {}
        for shard in shards:
            names = _write_shard(shard, tmp / shard.path.name, shapes, owner, spec, humming,
                                 report)
            weight_map.update({name: shard.path.name for name in names})
            report.shards += bool(names)
            if progress:
                progress(f"wrote {shard.path.name}")
        _write_json(tmp / INDEX, {
            "metadata": {**index_metadata, "total_size": report.output_bytes},
            "weight_map": dict(sorted(weight_map.items())),
        })
        config = dict(config)
        config["quantization_config"] = humming.quantization_config(ignore)
        _write_json(tmp / CONFIG, config)
        _copy_other_files(src, tmp, {shard.path.name for shard in shards})
        os.rename(tmp, dst)
        fsync_path(dst.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _read_config(src: Path) -> dict[str, Any]:
    path = src / CONFIG
    if not src.is_dir():
        raise RepackError(f"source {src} is not a directory")
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise RepackError(f"{path} not found; not a Hugging Face checkpoint directory") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise RepackError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise RepackError(f"{path} is not a JSON object")
    return config


def _source_spec(config: dict[str, Any]) -> ct.PackQuantizedSpec:
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        raise RepackError("config.json has no quantization_config: this is not a quantized "
                          "compressed-tensors checkpoint")
    if quant.get("quant_method") == QUANT_METHOD:
        raise RepackError("the checkpoint is already in Humming format (quant_method 'humming'); "
                          "nothing to repack")
    try:
        return ct.PackQuantizedSpec.from_quantization_config(quant)
    except ct.CompressedTensorsFormatError as exc:
        raise RepackError(f"unsupported source checkpoint: {exc}") from exc


def _read_shards(src: Path) -> tuple[list[ShardHeader], dict[str, Any]]:
    index_path = src / INDEX
    if index_path.exists():
        try:
            index = json.loads(index_path.read_text())
            weight_map: dict[str, str] = dict(index["weight_map"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise RepackError(f"{index_path} is not a valid safetensors index: {exc}") from exc
        files = sorted(set(weight_map.values()))
        metadata = {k: v for k, v in (index.get("metadata") or {}).items() if k != "total_size"}
    elif (src / SINGLE).exists():
        files, weight_map, metadata = [SINGLE], {}, {}
    else:
        raise RepackError(f"{src} has neither {INDEX} nor {SINGLE}")
    shards = []
    for file in files:
        if os.path.sep in file or file.startswith(".."):
            raise RepackError(f"index names a shard outside the checkpoint: {file!r}")
        if not (src / file).is_file():
            raise RepackError(f"shard {file} named in the index is missing")
        try:
            shards.append(read_header(src / file))
        except ValueError as exc:
            raise RepackError(str(exc)) from exc
    if weight_map:
        for shard in shards:
            listed = {n for n, f in weight_map.items() if f == shard.path.name}
            if listed != set(shard.tensors):
                missing = sorted(listed - set(shard.tensors))[:3]
                extra = sorted(set(shard.tensors) - listed)[:3]
                raise RepackError(f"index and {shard.path.name} disagree (in index only: "
                                  f"{missing}; in shard only: {extra})")
    return shards, metadata


def _quantized_modules(owner: dict[str, ShardHeader]) -> list[str]:
    modules = sorted(n[: -len(".weight_packed")] for n in owner if n.endswith(".weight_packed"))
    if not modules:
        raise RepackError("no '*.weight_packed' tensors found: nothing is pack-quantized")
    module_set = set(modules)
    for name in owner:
        if name.endswith(_UNSUPPORTED_SUFFIXES):
            raise RepackError(f"{name}: zero points, act-order and global scales are unsupported")
        for suffix in (".weight_scale", ".weight_shape"):
            if name.endswith(suffix) and name[: -len(suffix)] not in module_set:
                raise RepackError(f"{name} has no matching weight_packed tensor")
        if name.endswith(".weight") and name[: -len(".weight")] in module_set:
            raise RepackError(f"{name} exists beside {name}_packed: ambiguous module")
    for module in modules:
        for suffix in (ct.SCALE, ct.SHAPE):
            if f"{module}.{suffix}" not in owner:
                raise RepackError(f"{module}: missing {module}.{suffix}")
    return modules


def _write_shard(
    shard: ShardHeader,
    path: Path,
    shapes: dict[str, tuple[int, int]],
    owner: dict[str, ShardHeader],
    spec: ct.PackQuantizedSpec,
    humming: HummingSpec,
    report: RepackReport,
) -> list[str]:
    module_set = set(shapes)
    plan: list[PlannedTensor] = []
    steps: list[tuple[str, str]] = []  # ("copy", tensor) or ("module", module)
    for info in sorted(shard.tensors.values(), key=lambda t: t.begin):
        module, _, suffix = info.name.rpartition(".")
        if module in module_set and suffix == "weight_packed":
            out_f, in_f = shapes[module]
            plan.append(planned_like(f"{module}.{WEIGHT}", torch.int32,
                                     humming.weight_shape(out_f, in_f)))
            plan.append(planned_like(f"{module}.{WEIGHT_SCALE}", torch.bfloat16,
                                     humming.scale_shape(out_f, in_f)))
            steps.append(("module", module))
        elif module in module_set:
            continue  # scale/shape travel with their weight_packed
        else:
            plan.append(planned_from_info(info))
            steps.append(("copy", info.name))
    if not plan:
        return []  # every tensor here travelled with a module whose weight_packed lives elsewhere
    writer = StreamingWriter(path, plan, shard.metadata)
    try:
        for kind, name in steps:
            if kind == "copy":
                writer.copy_raw(name, shard)
                report.copied_tensors += 1
                continue
            tensors = {f"{name}.{s}": read_tensor(owner[f"{name}.{s}"], f"{name}.{s}")
                       for s in (ct.PACKED, ct.SCALE, ct.SHAPE)}
            try:
                weight = ct.read_module(tensors, name, spec, humming.bits)
                packed, scale = to_humming(weight, name)
            except ValueError as exc:
                raise RepackError(str(exc)) from exc
            writer.write_tensor(f"{name}.{WEIGHT}", packed)
            writer.write_tensor(f"{name}.{WEIGHT_SCALE}", scale)
            report.quantized_params += weight.codes.numel()
            report.quantized_storage_bytes += packed.numel() * 4 + scale.numel() * 2
    except BaseException:
        writer.abort()
        raise
    writer.close()
    report.output_bytes += writer.total_bytes
    return [item.name for item in plan]


def _module_shape(module: str, owner: dict[str, ShardHeader]) -> tuple[int, int]:
    name = f"{module}.{ct.SHAPE}"
    shape = read_tensor(owner[name], name)
    if shape.numel() != 2:
        raise RepackError(f"{module}: weight_shape {shape.tolist()} is not a 2-D Linear shape "
                          "(fused 3-D expert tensors are not supported)")
    out_f, in_f = (int(x) for x in shape.tolist())
    return out_f, in_f


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with path.open("w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _copy_other_files(src: Path, dst: Path, shard_names: set[str]) -> None:
    skip = shard_names | {INDEX, CONFIG}
    for entry in sorted(src.iterdir()):
        if entry.name in skip or entry.name.startswith("."):
            continue
        if entry.is_dir():
            shutil.copytree(entry, dst / entry.name)
        else:
            shutil.copy2(entry, dst / entry.name)


