"""Read and write safetensors files one tensor at a time.

The `safetensors` library writes a file from a dict that is fully in memory; a repack of a 5 GB
shard would then hold 5 GB. The file format is small and fixed (little-endian u64 header length,
a JSON header of ``name -> {dtype, shape, data_offsets}``, then the contiguous tensor bytes), so
this module reads a validated header, copies untouched tensors as raw byte ranges in bounded
chunks (byte-identical by construction) and writes new tensors from torch. Every file written
here is read back by the `safetensors` library in the tests.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

COPY_CHUNK_BYTES = 16 << 20
_HEADER_LIMIT = 100 << 20

_DTYPES: dict[str, tuple[int, torch.dtype | None]] = {
    "BOOL": (1, torch.bool),
    "U8": (1, torch.uint8),
    "I8": (1, torch.int8),
    "F8_E4M3": (1, torch.float8_e4m3fn),
    "F8_E5M2": (1, torch.float8_e5m2),
    "I16": (2, torch.int16),
    "U16": (2, torch.uint16),
    "F16": (2, torch.float16),
    "BF16": (2, torch.bfloat16),
    "I32": (4, torch.int32),
    "U32": (4, torch.uint32),
    "F32": (4, torch.float32),
    "I64": (8, torch.int64),
    "U64": (8, torch.uint64),
    "F64": (8, torch.float64),
}
_TORCH_TO_NAME = {dt: name for name, (_, dt) in _DTYPES.items() if dt is not None}


class SafetensorsError(ValueError):
    """A shard that is truncated, corrupt or otherwise not a readable safetensors file."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass
class ShardHeader:
    path: Path
    data_start: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)


def read_header(path: Path) -> ShardHeader:
    """Parse and validate a shard's header against the file's real size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise SafetensorsError(f"{path.name}: file is {size} bytes, shorter than a header")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > _HEADER_LIMIT or 8 + header_len > size:
                raise SafetensorsError(
                    f"{path.name}: header claims {header_len} bytes but the file has {size}; "
                    "the shard is truncated or not a safetensors file"
                )
            header = json.loads(f.read(header_len).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"{path.name}: unreadable safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path.name}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            begin, end = (int(x) for x in entry["data_offsets"])
            info = TensorInfo(name, str(entry["dtype"]), tuple(int(d) for d in entry["shape"]),
                              begin, end)
        except (KeyError, TypeError, ValueError) as exc:
            raise SafetensorsError(f"{path.name}: malformed entry for {name!r}") from exc
        item = _DTYPES.get(info.dtype, (None, None))[0]
        if item is not None and info.nbytes != item * math.prod(info.shape):
            raise SafetensorsError(
                f"{path.name}: {name!r} has {info.nbytes} bytes for {info.dtype} {info.shape}"
            )
        tensors[name] = info
    covered = 0
    for info in sorted(tensors.values(), key=lambda t: t.begin):
        if info.begin != covered or info.end < info.begin:
            raise SafetensorsError(f"{path.name}: tensor data of {info.name!r} is not contiguous")
        covered = info.end
    if data_start + covered != size:
        raise SafetensorsError(
            f"{path.name}: header describes {data_start + covered} bytes but the file has "
            f"{size}; the shard is truncated or has trailing data"
        )
    return ShardHeader(path=path, data_start=data_start, tensors=tensors, metadata=metadata)


def read_tensor(shard: ShardHeader, name: str) -> torch.Tensor:
    """One tensor, read with a single seek (only this tensor's bytes enter memory)."""
    info = shard.tensors[name]
    dtype = _DTYPES.get(info.dtype, (None, None))[1]
    if dtype is None:
        raise SafetensorsError(f"{shard.path.name}: cannot load dtype {info.dtype} of {name!r}")
    with shard.path.open("rb") as f:
        f.seek(shard.data_start + info.begin)
        data = bytearray(f.read(info.nbytes))
    if len(data) != info.nbytes:
        raise SafetensorsError(f"{shard.path.name}: {name!r} is cut short")
    if not data:
        return torch.empty(info.shape, dtype=dtype)
    return torch.frombuffer(data, dtype=dtype).reshape(info.shape)


def iter_raw(shard: ShardHeader, name: str, chunk: int = COPY_CHUNK_BYTES) -> Iterator[bytes]:
    info = shard.tensors[name]
    with shard.path.open("rb") as f:
        f.seek(shard.data_start + info.begin)
        left = info.nbytes
        while left:
            block = f.read(min(chunk, left))
            if not block:
                raise SafetensorsError(f"{shard.path.name}: {name!r} is cut short")
            left -= len(block)
            yield block


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor of an output shard: either a raw copy from a source shard or a torch tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def planned_from_tensor(name: str, tensor: torch.Tensor) -> PlannedTensor:
    return PlannedTensor(name, _TORCH_TO_NAME[tensor.dtype], tuple(tensor.shape),
                         tensor.numel() * tensor.element_size())


def planned_from_info(info: TensorInfo) -> PlannedTensor:
    return PlannedTensor(info.name, info.dtype, info.shape, info.nbytes)


def planned_like(name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> PlannedTensor:
    return PlannedTensor(name, _TORCH_TO_NAME[dtype], shape,
                         math.prod(shape) * torch.empty((), dtype=dtype).element_size())


class StreamingWriter:
    """Write a shard whose layout is known up front, then fill it tensor by tensor in order."""

    def __init__(self, path: Path, plan: list[PlannedTensor], metadata: dict[str, str]) -> None:
        header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        for item in plan:
            header[item.name] = {"dtype": item.dtype, "shape": list(item.shape),
                                 "data_offsets": [offset, offset + item.nbytes]}
            offset += item.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)
        self._plan = list(plan)
        self._next = 0
        self.path = path
        self.total_bytes = offset
        self._f: BinaryIO = path.open("wb")
        self._f.write(struct.pack("<Q", len(encoded)))
        self._f.write(encoded)

    def _expect(self, name: str) -> PlannedTensor:
        if self._next >= len(self._plan) or self._plan[self._next].name != name:
            raise RuntimeError(f"tensor {name!r} written out of the planned order")
        item = self._plan[self._next]
        self._next += 1
        return item

    def write_tensor(self, name: str, tensor: torch.Tensor) -> None:
        item = self._expect(name)
        data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
        if len(data) != item.nbytes or _TORCH_TO_NAME[tensor.dtype] != item.dtype:
            raise RuntimeError(f"tensor {name!r} does not match its planned dtype/size")
        self._f.write(data)

    def copy_raw(self, name: str, source: ShardHeader, source_name: str | None = None) -> None:
        item = self._expect(name)
        written = 0
        for block in iter_raw(source, source_name or name):
            self._f.write(block)
            written += len(block)
        if written != item.nbytes:
            raise RuntimeError(f"tensor {name!r}: copied {written} bytes, planned {item.nbytes}")

    def abort(self) -> None:
        """Close after a failure; the caller removes the partial file's directory."""
        self._f.close()

    def close(self) -> None:
        if self._next != len(self._plan):
            self._f.close()
            raise RuntimeError(f"{self.path.name}: {len(self._plan) - self._next} tensors unwritten")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
