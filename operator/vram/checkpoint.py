"""Tensor sizes of a checkpoint from safetensors headers: a local directory or the Hugging Face Hub.

Only headers are read (an 8-byte length and a JSON table per file), never tensor data, so
planning a 70 GB checkpoint reads a few megabytes. Sizes are the byte spans the header declares
(``data_offsets``), which is what the weights occupy once loaded, whatever the packing.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..api.endpoint import EndpointReason
from .errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit
DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "E8M0": 8, "U16": 16, "I16": 16,
              "F16": 16, "BF16": 16, "U32": 32, "I32": 32, "F32": 32, "U64": 64, "I64": 64, "F64": 64,
              "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class Checkpoint:
    """Everything the planner reads from a model: its config and its tensor table."""

    config: dict[str, Any]
    tensors: tuple[Tensor, ...]
    source: str

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def _unreadable(message: str) -> CheckpointError:
    return CheckpointError(EndpointReason.CONFIG_UNREADABLE, message)


def _tensor(name: str, entry: Any, where: str) -> Tensor:
    try:
        dtype = entry["dtype"]
        shape = tuple(entry["shape"])
        start, end = entry["data_offsets"]
        if not (isinstance(dtype, str) and all(type(d) is int and d >= 0 for d in shape)
                and type(start) is int and type(end) is int and 0 <= start <= end):
            raise ValueError("dtype, shape or data_offsets of the wrong type or sign")
    except (KeyError, TypeError, ValueError) as err:
        raise _unreadable(f"{where}: tensor {name!r} has a malformed header entry ({err})") from None
    bits = DTYPE_BITS.get(dtype)
    if bits is not None and (end - start) * 8 != math.prod(shape) * bits and \
            (end - start) != math.ceil(math.prod(shape) * bits / 8):
        raise _unreadable(f"{where}: tensor {name!r} declares {end - start} bytes but {dtype}{list(shape)} "
                          f"needs {math.ceil(math.prod(shape) * bits / 8)}")
    return Tensor(name, dtype, shape, end - start)


def read_header(path: Path) -> list[Tensor]:
    """The tensor table of one ``.safetensors`` file; checks the file holds all declared bytes."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise _unreadable(f"{path.name}: too short to be a safetensors file")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES or length > size - 8:
                raise _unreadable(f"{path.name}: header length {length} is not plausible for a {size}-byte file")
            header = json.loads(fh.read(length))
    except OSError as err:
        raise _unreadable(f"{path.name}: cannot read: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _unreadable(f"{path.name}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _unreadable(f"{path.name}: safetensors header is not a JSON object")
    tensors = [_tensor(name, entry, path.name) for name, entry in header.items() if name != "__metadata__"]
    end = max((header[t.name]["data_offsets"][1] for t in tensors), default=0)
    if 8 + length + end > size:
        raise _unreadable(f"{path.name}: truncated: header declares {8 + length + end} bytes, file has {size} "
                          "(incomplete download?)")
    return tensors


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(EndpointReason.MODEL_NOT_FOUND, f"{what} not found at {path}") from None
    except OSError as err:
        raise _unreadable(f"{what} at {path}: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _unreadable(f"{what} at {path} is not valid JSON ({err})") from None


def read_local(directory: str | Path) -> Checkpoint:
    """A checkpoint directory: ``config.json`` plus ``model.safetensors`` or sharded files + index."""
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(EndpointReason.MODEL_NOT_FOUND, f"checkpoint directory {root} does not exist")
    config = _load_json(root / "config.json", "config.json")
    index_path = root / INDEX_FILE
    if index_path.exists():
        index = _load_json(index_path, INDEX_FILE)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise _unreadable(f"{INDEX_FILE} has no weight_map")
        files = sorted(set(weight_map.values()))
        for name in files:
            if "/" in name or name.startswith("."):
                raise _unreadable(f"{INDEX_FILE} names a file outside the checkpoint: {name!r}")
    else:
        files = sorted(p.name for p in root.glob("*.safetensors"))
        weight_map = None
    if not files:
        raise CheckpointError(EndpointReason.MODEL_NOT_FOUND, f"no .safetensors files in {root}")
    tensors: list[Tensor] = []
    for name in files:
        path = root / name
        if not path.is_file():
            raise CheckpointError(EndpointReason.MODEL_NOT_FOUND, f"{INDEX_FILE} lists {name}, which is missing")
        found = read_header(path)
        if weight_map is not None:
            declared = {t for t, f in weight_map.items() if f == name}
            missing = declared - {t.name for t in found}
            if missing:
                raise _unreadable(f"{name} lacks {len(missing)} tensors that {INDEX_FILE} maps to it, "
                                  f"e.g. {sorted(missing)[0]!r}")
        tensors += found
    return Checkpoint(config=config, tensors=tuple(tensors), source=str(root))


class HubClient(Protocol):
    """The two ``huggingface_hub.HfApi`` methods the planner uses (a fake in tests: no Hub here)."""

    def hf_hub_download(self, repo_id: str, filename: str, *, revision: str | None = None) -> str: ...

    def get_safetensors_metadata(self, repo_id: str, *, revision: str | None = None) -> Any: ...


def read_hub(repo: str, revision: str | None = None, *, token: str | None = None,
             client: HubClient | None = None) -> Checkpoint:
    """Config and tensor table of a Hub repo, through the Hub API (no weight is downloaded)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        NotASafetensorsRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api: Any = client if client is not None else HfApi(token=token)
    where = f"{repo}@{revision}" if revision else repo
    try:
        config_path = api.hf_hub_download(repo_id=repo, filename="config.json", revision=revision)
        meta = api.get_safetensors_metadata(repo_id=repo, revision=revision)
    except GatedRepoError:
        raise CheckpointError(EndpointReason.MODEL_NOT_FOUND,
                              f"{where} is gated: set model.hub.tokenSecretRef to a token with access") from None
    except RepositoryNotFoundError:
        raise CheckpointError(EndpointReason.MODEL_NOT_FOUND,
                              f"Hub repo {where} does not exist or is private (no access with the given token)") from None
    except RevisionNotFoundError:
        raise CheckpointError(EndpointReason.MODEL_NOT_FOUND, f"revision {revision!r} not found in {repo}") from None
    except NotASafetensorsRepoError:
        raise _unreadable(f"{where} has no safetensors weights; only safetensors checkpoints can be planned") from None
    except HfHubHTTPError as err:
        raise _unreadable(f"Hub API error for {where}: {err}") from None
    except OSError as err:
        raise _unreadable(f"cannot reach the Hub for {where}: {err}") from None
    config = _load_json(Path(config_path), f"config.json of {where}")
    tensors: list[Tensor] = []
    for fname, fmeta in sorted(meta.files_metadata.items()):
        for name, info in fmeta.tensors.items():
            entry = {"dtype": info.dtype, "shape": info.shape, "data_offsets": info.data_offsets}
            tensors.append(_tensor(name, entry, fname))
    if not tensors:
        raise _unreadable(f"{where}: the Hub reports no safetensors tensors")
    return Checkpoint(config=config, tensors=tuple(tensors), source=f"hf://{where}")


def total_by(tensors: Iterable[Tensor]) -> int:
    return sum(t.nbytes for t in tensors)
