"""Humming export: exact-width checkpoints that vLLM's Humming kernels read bit for bit.

The library call the quantize Job uses is :func:`repack_checkpoint`; `dedicated repack SRC DST`
is the same call from the command line. See docs/humming-format.md.
"""

import importlib

# Every name is loaded on first use: the package is imported whenever `dedicated` registers the
# `repack` command, and its modules import torch (the converter also compressed-tensors and
# transformers), which the operator process (`dedicated run`) must never load.
_LAZY = {
    "DEFAULT_IGNORE": "format", "HummingFormatError": "format", "HummingSpec": "format",
    "dequantize": "pack", "from_humming": "pack", "to_humming": "pack",
    "ScaleRoundingError": "scales", "exact_bf16": "scales", "round_scales_to_bf16": "scales",
    "RepackError": "repack", "RepackReport": "repack", "repack_checkpoint": "repack",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_IGNORE",
    "HummingFormatError",
    "HummingSpec",
    "RepackError",
    "RepackReport",
    "ScaleRoundingError",
    "dequantize",
    "exact_bf16",
    "from_humming",
    "repack_checkpoint",
    "round_scales_to_bf16",
    "to_humming",
]
