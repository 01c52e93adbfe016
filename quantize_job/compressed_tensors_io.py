"""compressed-tensors `pack-quantized` checkpoints: write them from QuantizedWeights, read them back.

This is the format GSQ training writes before the repack to Humming. Packing and the config block
come from the `compressed-tensors` library itself (`pack_to_int32`/`unpack_from_int32`,
`QuantizationConfig`), so what the tests feed the repack converter is what the library writes.

What compressed-tensors 0.20 does with ``num_bits=2``: `pack_to_int32` adds ``2**(bits-1)`` and
packs *densely*, LSB-first, 32 values into ``num_bits`` words per row (16 two-bit values per int32)
- the same words Humming stores. Older GSQ exports declared ``num_bits=4`` for their 2-bit codes
(a 4-bit container: 8 values per word, codes only in ``[-2, 1]``) because vLLM's compressed-tensors
MoE kernels took 4 or 8 bits only; :func:`module_tensors` writes either, via ``container_bits``.
Per module the checkpoint holds ``<module>.weight_packed`` (int32 ``[out, ceil(in*bits/32)]``),
``<module>.weight_scale`` (``[out, in/group]``) and ``<module>.weight_shape`` (int64 ``[2]``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
from compressed_tensors.config import CompressionFormat
from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationConfig,
    QuantizationScheme,
    QuantizationStatus,
)
from safetensors.torch import save_file

from dedicated.quantize_job.humming.scales import exact_bf16
from dedicated.quantize_job.qtensor import QuantizedWeight, code_range

PACKED = "weight_packed"
SCALE = "weight_scale"
SHAPE = "weight_shape"
QUANT_METHOD = "compressed-tensors"
FORMAT = CompressionFormat.pack_quantized.value


class CompressedTensorsFormatError(ValueError):
    """A checkpoint or config this reader does not accept as symmetric group pack-quantized."""


@dataclass(frozen=True)
class PackQuantizedSpec:
    """What one pack-quantized checkpoint declares: its container width and group size."""

    num_bits: int
    group_size: int
    ignore: tuple[str, ...]

    @classmethod
    def from_quantization_config(cls, config: Mapping[str, Any]) -> PackQuantizedSpec:
        method = config.get("quant_method")
        if method != QUANT_METHOD:
            raise CompressedTensorsFormatError(
                f"quant_method is {method!r}; expected {QUANT_METHOD!r} with format {FORMAT!r}"
            )
        try:
            parsed = QuantizationConfig.model_validate(dict(config))
        except Exception as exc:  # pydantic's ValidationError, with the library's own message
            raise CompressedTensorsFormatError(f"invalid compressed-tensors config: {exc}") from exc
        groups = list(parsed.config_groups.values())
        if len(groups) != 1:
            raise CompressedTensorsFormatError(
                f"expected exactly one quantization config group, found {len(groups)}"
            )
        scheme = groups[0]
        fmt = scheme.format or parsed.format
        if fmt != FORMAT:
            raise CompressedTensorsFormatError(f"format is {fmt!r}, expected {FORMAT!r}")
        args = scheme.weights
        if args is None or args.type != "int":
            raise CompressedTensorsFormatError("weights must be integer-quantized")
        if not args.symmetric:
            raise CompressedTensorsFormatError("asymmetric (zero-point) weights are not supported")
        if args.strategy != "group" or not args.group_size:
            raise CompressedTensorsFormatError(
                f"weight strategy is {args.strategy!r}; only 'group' with a group_size is supported"
            )
        if args.actorder not in (None, "static"):
            raise CompressedTensorsFormatError(f"activation ordering {args.actorder!r} unsupported")
        if scheme.input_activations is not None:
            raise CompressedTensorsFormatError("activation quantization is not supported (W-only)")
        return cls(num_bits=args.num_bits, group_size=args.group_size,
                   ignore=tuple(parsed.ignore or ()))


def quantization_config(
    num_bits: int, group_size: int, ignore: Sequence[str] = ("lm_head",)
) -> dict[str, Any]:
    """The `quantization_config` block a pack-quantized checkpoint carries, from the library."""
    args = QuantizationArgs(num_bits=num_bits, type="int", symmetric=True, strategy="group",
                            group_size=group_size)
    scheme = QuantizationScheme(targets=["Linear"], weights=args, format=FORMAT)
    config = QuantizationConfig(config_groups={"group_0": scheme}, format=FORMAT,
                                quantization_status=QuantizationStatus.COMPRESSED,
                                ignore=list(ignore))
    return config.model_dump(mode="json")


def module_tensors(
    weight: QuantizedWeight, module: str, container_bits: int | None = None
) -> dict[str, torch.Tensor]:
    """The three tensors of one quantized Linear, packed by compressed-tensors itself."""
    bits = container_bits or weight.bits
    if bits < weight.bits:
        raise CompressedTensorsFormatError(
            f"{module}: a {bits}-bit container cannot hold {weight.bits}-bit codes"
        )
    return {
        f"{module}.{PACKED}": pack_to_int32(weight.codes.to(torch.int8), bits),
        f"{module}.{SCALE}": exact_bf16(weight.scales, f"{module}.{SCALE}").contiguous(),
        f"{module}.{SHAPE}": torch.tensor(weight.shape, dtype=torch.int64),
    }


def read_module(
    tensors: Mapping[str, torch.Tensor], module: str, spec: PackQuantizedSpec, bits: int
) -> QuantizedWeight:
    """Unpack one module with the library; ``bits`` may be narrower than the container."""
    try:
        packed = tensors[f"{module}.{PACKED}"]
        scale = tensors[f"{module}.{SCALE}"]
        shape = tensors[f"{module}.{SHAPE}"]
    except KeyError as exc:
        raise CompressedTensorsFormatError(f"{module}: missing tensor {exc.args[0]}") from exc
    if shape.numel() != 2 or packed.dim() != 2:
        raise CompressedTensorsFormatError(
            f"{module}: only 2-D Linear weights are supported (weight_shape {shape.tolist()}, "
            f"weight_packed {tuple(packed.shape)})"
        )
    out_features, in_features = (int(x) for x in shape.tolist())
    if in_features % spec.group_size:
        raise CompressedTensorsFormatError(
            f"{module}: group size {spec.group_size} does not divide in_features {in_features} "
            f"(shape [{out_features}, {in_features}])"
        )
    words = -(-in_features * spec.num_bits // 32)
    if tuple(packed.shape) != (out_features, words) or packed.dtype != torch.int32:
        raise CompressedTensorsFormatError(
            f"{module}: weight_packed is {packed.dtype} {tuple(packed.shape)}, expected int32 "
            f"{(out_features, words)} for [{out_features}, {in_features}] at {spec.num_bits} bits"
        )
    if tuple(scale.shape) != (out_features, in_features // spec.group_size):
        raise CompressedTensorsFormatError(
            f"{module}: weight_scale shape {tuple(scale.shape)} does not match "
            f"{(out_features, in_features // spec.group_size)}"
        )
    codes = unpack_from_int32(packed, spec.num_bits, torch.Size([out_features, in_features]))
    lo, hi = code_range(bits)
    if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
        bad = ((codes < lo) | (codes > hi)).nonzero()[0].tolist()
        raise CompressedTensorsFormatError(
            f"{module}: code {int(codes[bad[0], bad[1]])} at {tuple(bad)} does not fit the "
            f"{bits}-bit range [{lo}, {hi}] (container is {spec.num_bits}-bit)"
        )
    return QuantizedWeight(codes=codes, scales=scale, bits=bits, group_size=spec.group_size)


def write_checkpoint(
    path: Path,
    quantized: Mapping[str, QuantizedWeight],
    other: Mapping[str, torch.Tensor],
    base_config: Mapping[str, Any],
    *,
    container_bits: int | None = None,
    ignore: Sequence[str] = ("lm_head",),
    shard_bytes: int = 5 << 30,
) -> list[Path]:
    """Write a pack-quantized checkpoint (shards, index, config.json) the way GSQ exports it.

    Tensors fill shards in name order up to ``shard_bytes``; a module's three tensors may land in
    different shards, as they can in real checkpoints. Returns the shard paths.
    """
    if not quantized:
        raise CompressedTensorsFormatError("no quantized modules to write")
    widths = {w.bits for w in quantized.values()}
    groups = {w.group_size for w in quantized.values()}
    if len(widths) != 1 or len(groups) != 1:
        raise CompressedTensorsFormatError("all modules must share one bit width and group size")
    bits = container_bits or widths.pop()
    tensors: dict[str, torch.Tensor] = dict(other)
    for module, weight in quantized.items():
        tensors.update(module_tensors(weight, module, bits))
    path.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    used = 0
    for name in sorted(tensors):
        size = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and used + size > shard_bytes:
            shards.append({})
            used = 0
        shards[-1][name] = tensors[name].contiguous()
        used += size
    files = []
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = path / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(file), metadata={"format": "pt"})
        files.append(file)
        weight_map.update({name: file.name for name in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
    )
    config = dict(base_config)
    config["quantization_config"] = quantization_config(bits, groups.pop(), ignore)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return files
