"""Humming export: exact-width checkpoints that vLLM's Humming kernels read bit for bit.

The library call the quantize Job uses is :func:`repack_checkpoint`; `dedicated repack SRC DST`
is the same call from the command line. See docs/humming-format.md.
"""

from dedicated.quantize_job.humming.format import DEFAULT_IGNORE, HummingFormatError, HummingSpec
from dedicated.quantize_job.humming.pack import dequantize, from_humming, to_humming
from dedicated.quantize_job.humming.scales import (
    ScaleRoundingError,
    exact_bf16,
    round_scales_to_bf16,
)

_LAZY = {"RepackError", "RepackReport", "repack_checkpoint"}


def __getattr__(name: str) -> object:
    # The converter imports compressed-tensors (and through it transformers): load it on first use
    # so the format helpers stay cheap to import.
    if name in _LAZY:
        from dedicated.quantize_job.humming import repack

        return getattr(repack, name)
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
