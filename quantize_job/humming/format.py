"""The Humming checkpoint format: what `config.json` says and what each quantized Linear stores.

Conventions, as read from the `humming-kernels` 0.1.19 wheel (see docs/humming-format.md for the
exact files): `HummingWeightSchema` (humming/schema/humming.py) sizes a group-scaled Linear as
`weight` int32 `[out, in * bits / 32]` plus `weight_scale` `[out, in / group]` in the activation
dtype; integer codes are stored offset-binary (`quant_weight.cuh` adds `2**(bits-1)` to the signed
code, `utils/weight.py:dequantize_weight` subtracts it again), so the symmetric 2-bit codebook
`{-2, -1, 0, +1}` is stored as `{0, 1, 2, 3}` under `b_dtype` `uint2`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dedicated.quantize_job.bitpack import SUPPORTED_BITS

QUANT_METHOD = "humming"
WEIGHT = "weight"
WEIGHT_SCALE = "weight_scale"

# The design card's ignore list for the Qwen3.6-35B-A3B GSQ reference: everything except routed
# experts stays in BF16. vLLM reads `re:` entries with `re.match` and the rest as substrings.
DEFAULT_IGNORE: tuple[str, ...] = (
    "lm_head",
    r"re:.*self_attn.*",
    r"re:.*linear_attn.*",
    r"re:.*visual.*",
    r"re:mtp.*",
    r"re:.*mlp\.gate$",
    r"re:.*mlp\.shared_expert_gate$",
    r"re:.*shared_expert.*",
)

# In-features must be whole 32-value blocks: Humming's pack kernel packs each row 32 values at a
# time (`pack_weight.cuh`), and only then does a 3-bit row end on a word boundary.
IN_FEATURES_MULTIPLE = 32


class HummingFormatError(ValueError):
    """A tensor or config that cannot be (or is not) valid Humming storage."""


@dataclass(frozen=True)
class HummingSpec:
    """One Humming quantization layout: symmetric integer codes, group scales, no zero point."""

    bits: int
    group_size: int

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise HummingFormatError(
                f"unsupported bit width {self.bits}; Humming export supports {SUPPORTED_BITS}"
            )
        if self.group_size <= 0 or self.group_size % IN_FEATURES_MULTIPLE:
            raise HummingFormatError(
                f"group size {self.group_size} must be a positive multiple of "
                f"{IN_FEATURES_MULTIPLE}"
            )

    @property
    def b_dtype(self) -> str:
        return f"uint{self.bits}"

    @property
    def offset(self) -> int:
        """Added to the signed code before packing (offset-binary storage)."""
        return 1 << (self.bits - 1)

    def check_shape(self, out_features: int, in_features: int, name: str = "weight") -> None:
        if in_features % self.group_size:
            raise HummingFormatError(
                f"{name}: group size {self.group_size} does not divide in_features "
                f"{in_features} (shape [{out_features}, {in_features}])"
            )
        if in_features % IN_FEATURES_MULTIPLE:
            raise HummingFormatError(
                f"{name}: in_features {in_features} is not a multiple of {IN_FEATURES_MULTIPLE}"
            )

    def weight_shape(self, out_features: int, in_features: int) -> tuple[int, int]:
        return (out_features, in_features * self.bits // 32)

    def scale_shape(self, out_features: int, in_features: int) -> tuple[int, int]:
        return (out_features, in_features // self.group_size)

    def quantization_config(self, ignore: list[str] | tuple[str, ...]) -> dict[str, Any]:
        """The `quantization_config` block of `config.json` that vLLM's HummingConfig reads."""
        return {
            "quant_method": QUANT_METHOD,
            "b_dtype": self.b_dtype,
            "weight_scale_group_size": self.group_size,
            "weight_scale_type": "group",
            "has_zero_point": False,
            "ignore": list(ignore),
        }

    @classmethod
    def from_quantization_config(cls, config: dict[str, Any]) -> HummingSpec:
        """Parse what :meth:`quantization_config` writes, refusing layouts this exporter never makes."""
        if config.get("quant_method") != QUANT_METHOD:
            raise HummingFormatError(
                f"quant_method is {config.get('quant_method')!r}, not {QUANT_METHOD!r}"
            )
        b_dtype = str(config.get("b_dtype", ""))
        if not b_dtype.startswith("uint") or not b_dtype[4:].isdigit():
            raise HummingFormatError(f"b_dtype {b_dtype!r} is not an unsigned integer type")
        if config.get("weight_scale_type", "group") != "group":
            raise HummingFormatError(
                f"weight_scale_type {config.get('weight_scale_type')!r} is not 'group'"
            )
        if config.get("has_zero_point", False):
            raise HummingFormatError("has_zero_point is true; only symmetric codes are supported")
        group = config.get("weight_scale_group_size")
        if not isinstance(group, int):
            raise HummingFormatError(f"weight_scale_group_size {group!r} is not an integer")
        return cls(bits=int(b_dtype[4:]), group_size=group)
