"""Model facts ConfigMaps: what the planner needs to know about a checkpoint the operator cannot read.

The operator plans VRAM from a checkpoint's ``config.json`` and its safetensors tensor table
(names, dtypes, shapes, bytes). For a Hub repo it asks the Hub API; a checkpoint on a
PersistentVolumeClaim is invisible to it (it does not mount user volumes). For those, the facts
live in a ConfigMap in the endpoint's namespace:

* label ``llm.dedicated.dev/model-facts: "true"`` (the operator watches only these ConfigMaps) and
  ``llm.dedicated.dev/facts-claim: <claim>`` (a label value; shortened with a hash when longer
  than 63 characters);
* annotations ``llm.dedicated.dev/claim-name`` and ``llm.dedicated.dev/path``: the exact volume
  directory the facts describe (``path`` empty for the volume root);
* data ``config.json`` (the checkpoint's own, verbatim) and ``tensors.json`` (the tensor table in
  the compact form below).

``dedicated model-facts DIR --claim C [--path P]`` writes such a ConfigMap from a checkpoint
directory (headers only are read), or ``--hub REPO`` from the Hub API where it is reachable.

The tensor table is lossless but compact: tensors that differ only in whole-number name segments
(``layers.7``, ``experts.131``) and share dtype, shape and size are one entry with a name template
(``layers.{}.mlp.experts.{}.down_proj.weight``) and one index range per placeholder
(``["0-39", "0-255"]``; ``"3-39/4"`` is every fourth, ``"0-2,5"`` a list). A 35B MoE with
~100k tensors fits in a few hundred entries, far below the ConfigMap size limit.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .api.crd import GROUP
from .api.endpoint import EndpointReason
from .builders.naming import label_value
from .vram.checkpoint import Checkpoint, Tensor
from .vram.errors import CheckpointError

FACTS_LABEL = f"{GROUP}/model-facts"
FACTS_CLAIM_LABEL = f"{GROUP}/facts-claim"
CLAIM_ANNOTATION = f"{GROUP}/claim-name"
PATH_ANNOTATION = f"{GROUP}/path"
SOURCE_ANNOTATION = f"{GROUP}/source"
CONFIG_KEY = "config.json"
TENSORS_KEY = "tensors.json"
FORMAT_VERSION = 1
#: What a ConfigMap may hold (the API server's limit is 1 MiB for data + binaryData).
MAX_CONFIGMAP_BYTES = 1024 * 1024

_INDEX_SEGMENT = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)")


# --- index ranges -------------------------------------------------------------------------------


def encode_ints(values: Iterable[int]) -> str:
    """Sorted unique ints as runs: ``0-255``, ``3-39/4``, ``0-2,5``."""
    vals = sorted(set(values))
    parts: list[str] = []
    i = 0
    while i < len(vals):
        j = i
        if i + 1 < len(vals):
            step = vals[i + 1] - vals[i]
            while j + 1 < len(vals) and vals[j + 1] - vals[j] == step:
                j += 1
            if j - i >= 2 or (j - i == 1 and step == 1):
                parts.append(f"{vals[i]}-{vals[j]}" + (f"/{step}" if step != 1 else ""))
                i = j + 1
                continue
        parts.append(str(vals[i]))
        i += 1
    return ",".join(parts)


def decode_ints(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?:/(\d+))?)?", part.strip())
        if not m:
            raise ValueError(f"bad index range {part!r}")
        start = int(m[1])
        if m[2] is None:
            out.append(start)
            continue
        end, step = int(m[2]), int(m[3] or 1)
        if end < start or step < 1:
            raise ValueError(f"bad index range {part!r}")
        out += range(start, end + 1, step)
    return out


# --- tensor table -------------------------------------------------------------------------------


def _template(name: str) -> tuple[str, tuple[int, ...]] | None:
    if "{" in name or "}" in name:
        return None
    indices = tuple(int(m.group()) for m in _INDEX_SEGMENT.finditer(name))
    # leading zeros would not round-trip ("layers.007")
    if any(m.group() != str(int(m.group())) for m in _INDEX_SEGMENT.finditer(name)):
        return None
    return _INDEX_SEGMENT.sub("{}", name), indices


def _split(tuples: set[tuple[int, ...]]) -> list[list[list[int]]]:
    """Cover a set of index tuples with cartesian products (exactly, no extras)."""
    width = len(next(iter(tuples)))
    axes = [sorted({t[i] for t in tuples}) for i in range(width)]
    if _prod(axes) == len(tuples):
        return [axes]
    out: list[list[list[int]]] = []
    groups: dict[int, set[tuple[int, ...]]] = defaultdict(set)
    for t in tuples:
        groups[t[0]].add(t[1:])
    # Merge first-axis values whose remaining sets are equal (e.g. all linear-attention layers).
    by_rest: dict[frozenset, list[int]] = defaultdict(list)
    for first, rest in groups.items():
        by_rest[frozenset(rest)].append(first)
    for rest, firsts in by_rest.items():
        for sub in _split(set(rest)):
            out.append([sorted(firsts), *sub])
    return out


def _prod(axes: Sequence[Sequence[int]]) -> int:
    n = 1
    for a in axes:
        n *= len(a)
    return n


def encode_tensors(tensors: Iterable[Tensor]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, tuple[int, ...], int], set[tuple[int, ...]]] = defaultdict(set)
    literal: list[dict[str, Any]] = []
    for t in tensors:
        tpl = _template(t.name)
        if tpl is None or not tpl[1]:
            literal.append({"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "bytes": t.nbytes,
                            **({"literal": True} if tpl is None else {})})
            continue
        groups[(tpl[0], t.dtype, t.shape, t.nbytes)].add(tpl[1])
    out = literal
    for (tpl, dtype, shape, nbytes), tuples in groups.items():
        for axes in _split(tuples):
            out.append({"name": tpl, "dtype": dtype, "shape": list(shape), "bytes": nbytes,
                        "index": [encode_ints(a) for a in axes]})
    out.sort(key=lambda e: (e["name"], e.get("index", [])))
    return out


def decode_tensors(entries: Sequence[Mapping[str, Any]]) -> list[Tensor]:
    out: list[Tensor] = []
    for i, e in enumerate(entries):
        try:
            name, dtype, shape, nbytes = e["name"], e["dtype"], tuple(int(d) for d in e["shape"]), int(e["bytes"])
            if not isinstance(name, str) or not isinstance(dtype, str) or nbytes < 0:
                raise ValueError("name/dtype must be strings and bytes >= 0")
            index = e.get("index")
            if not index or e.get("literal"):
                out.append(Tensor(name, dtype, shape, nbytes))
                continue
            axes = [decode_ints(r) for r in index]
            if name.count("{}") != len(axes):
                raise ValueError(f"template has {name.count('{}')} placeholders but {len(axes)} index ranges")
            for combo in itertools.product(*axes):
                out.append(Tensor(name.format(*combo), dtype, shape, nbytes))
        except KeyError as err:
            raise CheckpointError(EndpointReason.CONFIG_UNREADABLE,
                                  f"{TENSORS_KEY} entry {i} is malformed: missing key {err}") from None
        except (TypeError, ValueError) as err:
            raise CheckpointError(EndpointReason.CONFIG_UNREADABLE,
                                  f"{TENSORS_KEY} entry {i} is malformed: {err}") from None
    return out


# --- documents and ConfigMaps -------------------------------------------------------------------


@dataclass(frozen=True)
class FactsLocation:
    claim_name: str
    path: str  # "" for the volume root

    def describe(self) -> str:
        return f"pvc://{self.claim_name}/{self.path}".rstrip("/")


def tensors_document(checkpoint: Checkpoint) -> str:
    """The tensor table as JSON, one entry per line (readable in ``kubectl get cm -o yaml``)."""
    head = {"formatVersion": FORMAT_VERSION, "source": checkpoint.source, "totalBytes": checkpoint.total_bytes,
            "tensorCount": len(checkpoint.tensors)}
    entries = ",\n".join("  " + json.dumps(e, separators=(",", ":"), sort_keys=True)
                         for e in encode_tensors(checkpoint.tensors))
    return json.dumps(head, sort_keys=True)[:-1] + ', "tensors": [\n' + entries + "\n]}\n"


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as ``|`` blocks, so the JSON documents stay readable in YAML."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str)


def to_yaml(configmap: Mapping[str, Any]) -> str:
    return yaml.dump(dict(configmap), Dumper=_LiteralDumper, sort_keys=False, width=4096)


def facts_configmap(checkpoint: Checkpoint, location: FactsLocation, *, name: str,
                    namespace: str | None = None) -> dict[str, Any]:
    """The ConfigMap manifest for ``checkpoint`` as found at ``location``."""
    data = {CONFIG_KEY: json.dumps(checkpoint.config, indent=1, sort_keys=True) + "\n",
            TENSORS_KEY: tensors_document(checkpoint)}
    size = sum(len(v.encode()) for v in data.values())
    if size > MAX_CONFIGMAP_BYTES:
        raise ValueError(f"the model facts take {size} bytes, more than a ConfigMap holds ({MAX_CONFIGMAP_BYTES})")
    meta: dict[str, Any] = {
        "name": name,
        "labels": {FACTS_LABEL: "true", FACTS_CLAIM_LABEL: label_value(location.claim_name)},
        "annotations": {CLAIM_ANNOTATION: location.claim_name, PATH_ANNOTATION: location.path,
                        SOURCE_ANNOTATION: checkpoint.source[:1024]},
    }
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def matches(configmap: Mapping[str, Any], location: FactsLocation) -> bool:
    ann = configmap.get("metadata", {}).get("annotations") or {}
    return ann.get(CLAIM_ANNOTATION) == location.claim_name and (ann.get(PATH_ANNOTATION) or "") == location.path


def checkpoint_from_configmap(configmap: Mapping[str, Any]) -> Checkpoint:
    """Decode a facts ConfigMap; a malformed one is ``CheckpointError(ConfigUnreadable)`` naming it."""
    meta = configmap.get("metadata", {})
    where = f"model facts ConfigMap {meta.get('name')}"
    data = configmap.get("data") or {}
    for key in (CONFIG_KEY, TENSORS_KEY):
        if key not in data:
            raise CheckpointError(EndpointReason.CONFIG_UNREADABLE, f"{where} has no {key!r} key")
    try:
        config = json.loads(data[CONFIG_KEY])
        doc = json.loads(data[TENSORS_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(EndpointReason.CONFIG_UNREADABLE, f"{where}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(EndpointReason.CONFIG_UNREADABLE, f"{where}: {CONFIG_KEY} is not a JSON object")
    if not isinstance(doc, dict) or doc.get("formatVersion") != FORMAT_VERSION or not isinstance(doc.get("tensors"), list):
        raise CheckpointError(EndpointReason.CONFIG_UNREADABLE,
                              f"{where}: {TENSORS_KEY} is not a format-{FORMAT_VERSION} tensor table")
    try:
        tensors = decode_tensors(doc["tensors"])
    except CheckpointError as err:
        raise CheckpointError(err.reason, f"{where}: {err.message}") from None
    if not tensors:
        raise CheckpointError(EndpointReason.CONFIG_UNREADABLE, f"{where}: the tensor table is empty")
    source = (meta.get("annotations") or {}).get(SOURCE_ANNOTATION) or where
    return Checkpoint(config=config, tensors=tuple(tensors), source=source)


def default_name(location: FactsLocation) -> str:
    """A readable ConfigMap name for a volume location (stable, valid)."""
    digest = hashlib.sha256(location.describe().encode()).hexdigest()[:6]
    stem = re.sub(r"[^a-z0-9-]+", "-", f"{location.claim_name}-{location.path}".lower()).strip("-")
    return f"modelfacts-{stem[:40].rstrip('-')}-{digest}"


# --- command line -------------------------------------------------------------------------------


def _command(args: argparse.Namespace) -> int:
    from .vram.checkpoint import read_hub, read_local

    try:
        if args.hub:
            import os

            checkpoint = read_hub(args.hub, args.revision, token=os.environ.get("HF_TOKEN"))
        else:
            checkpoint = read_local(args.dir)
    except CheckpointError as err:
        print(f"error: {err.reason.value}: {err.message}", file=sys.stderr)
        return 2
    location = FactsLocation(args.claim, args.path or "")
    try:
        cm = facts_configmap(checkpoint, location, name=args.name or default_name(location), namespace=args.namespace)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = to_yaml(cm)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "model-facts",
        help="write the model-facts ConfigMap for a checkpoint on a volume (config.json + tensor table)",
        description="Reads a checkpoint's config.json and safetensors headers (never the weights) and prints a "
        "ConfigMap that tells the operator what lives at pvc://CLAIM/PATH, so endpoints serving from that "
        "volume can be planned. Apply it in the endpoint's namespace.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("dir", nargs="?", help="checkpoint directory (config.json + *.safetensors)")
    source.add_argument("--hub", metavar="REPO", help="read the facts through the Hugging Face Hub API instead "
                        "(token from $HF_TOKEN)")
    parser.add_argument("--revision", help="Hub revision (with --hub)")
    parser.add_argument("--claim", required=True, help="PersistentVolumeClaim the checkpoint lives on")
    parser.add_argument("--path", default="", help="directory inside the claim (empty: the volume root)")
    parser.add_argument("--name", help="ConfigMap name (default: derived from claim and path)")
    parser.add_argument("--namespace", "-n", help="namespace to put in the manifest")
    parser.add_argument("--output", "-o", help="write to this file instead of stdout")
    parser.set_defaults(handler=_command)
