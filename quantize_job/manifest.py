"""``manifest.json``: what was published, how big each part is, how good it is, and how it was made.

Bytes per component come from the safetensors headers of the published files (the bytes a server
loads), split the way serving plans memory: quantized routed experts, other quantized Linears
(AutoRound quantizes attention too), BF16 text weights, the vision encoder, the MTP head, and
embeddings + lm_head. A text-only server skips ``vision``; one without speculative decoding skips
``mtp``.

Schema (``schemaVersion`` 1)::

    {"schemaVersion": 1, "createdAt": ISO-8601, "job": {name, namespace, generation, configFingerprint},
     "source": {"model": ..., "revision": ...}, "method", "bits", "groupSize", "format",
     "quantizationConfig": <exactly config.json's quantization_config>,
     "files": [{"path", "bytes", "sha256"}], "totalBytes",
     "components": {<name>: {"bytes", "tensors", "parameters"}},
     "modules": {"quantized", "keptBF16", "experts"},
     "calibration": {...}, "quality": {...}, "layers": {"total", "computed", "resumedFromLayer"},
     "timings": {<stage>: seconds}, "environment": {...}, "artifact": {...}}
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dedicated.quantize_job.humming.safetensors_stream import read_header

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
COMPONENTS = ("quantizedExperts", "quantizedOther", "bf16Text", "vision", "mtp", "embeddingsLmHead")

_VISION = re.compile(r"(^|\.)(visual|vision_tower|vision_model|vision_encoder|image_encoder)(\.|$)")
_MTP = re.compile(r"(^|\.)mtp(\.|$)")
_EMBED = re.compile(r"(^|\.)(embed_tokens|lm_head|wte|embed_in|embed_out|word_embeddings)(\.|$)")
_EXPERT = re.compile(r"\.experts\.\d+\.")
#: Suffixes of the tensors a quantized Linear is stored as, in every format this Job writes.
QUANTIZED_SUFFIXES = ("weight", "weight_scale", "weight_packed", "weight_shape", "qweight", "qzeros",
                      "scales", "g_idx")


def component_of(tensor: str, quantized_modules: set[str]) -> str:
    module, _, suffix = tensor.rpartition(".")
    if module in quantized_modules and suffix in QUANTIZED_SUFFIXES:
        return "quantizedExperts" if _EXPERT.search(module + ".") else "quantizedOther"
    if _VISION.search(tensor):
        return "vision"
    if _MTP.search(tensor):
        return "mtp"
    if _EMBED.search(tensor):
        return "embeddingsLmHead"
    return "bf16Text"


def sha256_file(path: Path, chunk: int = 16 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def checkpoint_files(ckpt: Path) -> list[Path]:
    """Every file of the checkpoint (not the run's own files or hidden state), in path order."""
    skip = {MANIFEST, "progress.json"}
    return sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name not in skip
                  and not any(part.startswith(".") for part in p.relative_to(ckpt).parts))


def components(ckpt: Path, quantized_modules: Iterable[str]) -> dict[str, dict[str, int]]:
    quantized = set(quantized_modules)
    out = {name: {"bytes": 0, "tensors": 0, "parameters": 0} for name in COMPONENTS}
    for shard in sorted(ckpt.glob("*.safetensors")):
        header = read_header(shard)
        for name, info in header.tensors.items():
            part = out[component_of(name, quantized)]
            part["bytes"] += info.nbytes
            part["tensors"] += 1
            part["parameters"] += math.prod(info.shape) if info.shape else 1
    return out


def _environment() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    env = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "auto-round", "compressed-tensors", "safetensors"):
        try:
            env[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return env


def build_manifest(
    ckpt: Path,
    *,
    job: dict[str, Any],
    source: dict[str, Any],
    method: str,
    bits: int,
    group_size: int,
    output_format: str,
    quantized_modules: list[str],
    kept_modules: int,
    calibration: dict[str, Any],
    quality: dict[str, Any],
    layers: dict[str, Any],
    timings: dict[str, float],
    hash_files: bool = True,
) -> dict[str, Any]:
    config = json.loads((ckpt / "config.json").read_text())
    files = []
    for path in checkpoint_files(ckpt):
        entry: dict[str, Any] = {"path": path.relative_to(ckpt).as_posix(), "bytes": path.stat().st_size}
        if hash_files:
            entry["sha256"] = sha256_file(path)
        files.append(entry)
    return {
        "schemaVersion": SCHEMA_VERSION,
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "job": job,
        "source": source,
        "method": method,
        "bits": bits,
        "groupSize": group_size,
        "format": output_format,
        "quantizationConfig": config.get("quantization_config"),
        "files": files,
        "totalBytes": sum(f["bytes"] for f in files),
        "components": components(ckpt, quantized_modules),
        "modules": {"quantized": len(quantized_modules),
                    "experts": sum(1 for m in quantized_modules if _EXPERT.search(m + ".")),
                    "keptBF16": kept_modules},
        "calibration": calibration,
        "quality": quality,
        "layers": layers,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "environment": _environment(),
    }


def write_manifest(ckpt: Path, manifest: dict[str, Any]) -> Path:
    from dedicated.quantize_job.progress import write_json_atomic

    path = ckpt / MANIFEST
    write_json_atomic(path, manifest)
    return path


def read_manifest(ckpt: Path) -> dict[str, Any] | None:
    try:
        return json.loads((ckpt / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
