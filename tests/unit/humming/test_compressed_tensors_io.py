"""compressed-tensors pack-quantized IO, checked against the library's own compressor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from hypothesis import given, settings

sys.path.insert(0, str(Path(__file__).parent))
from strategies import quantized_weights  # noqa: E402

from dedicated.quantize_job import compressed_tensors_io as ct  # noqa: E402
from dedicated.quantize_job.humming import to_humming  # noqa: E402
from dedicated.quantize_job.qtensor import QuantizedWeight  # noqa: E402


def _spec(bits: int, group: int) -> ct.PackQuantizedSpec:
    return ct.PackQuantizedSpec.from_quantization_config(ct.quantization_config(bits, group))


@settings(max_examples=15, deadline=None)
@given(weight=quantized_weights())
def test_module_tensors_are_what_the_library_compressor_writes(weight: QuantizedWeight) -> None:
    """Our writer == compressed-tensors' PackedQuantizationCompressor on the dequantized weight."""
    args = QuantizationArgs(num_bits=weight.bits, type="int", symmetric=True, strategy="group",
                            group_size=weight.group_size)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    state = {"weight": weight.dequantize(torch.float32), "weight_scale": weight.scales}
    reference = PackedQuantizationCompressor.compress(state, scheme)
    ours = ct.module_tensors(weight, "m")
    assert torch.equal(ours["m.weight_packed"], reference["weight_packed"])
    assert torch.equal(ours["m.weight_shape"], reference["weight_shape"])
    assert torch.equal(ours["m.weight_scale"], reference["weight_scale"])


@settings(max_examples=15, deadline=None)
@given(weight=quantized_weights())
def test_read_back_round_trips(weight: QuantizedWeight) -> None:
    tensors = ct.module_tensors(weight, "m")
    back = ct.read_module(tensors, "m", _spec(weight.bits, weight.group_size), weight.bits)
    assert torch.equal(back.codes, weight.codes)
    assert torch.equal(back.dequantize(), weight.dequantize())


@settings(max_examples=15, deadline=None)
@given(weight=quantized_weights(bits=(2,)))
def test_two_bit_native_words_equal_humming_words(weight: QuantizedWeight) -> None:
    """compressed-tensors 0.20 packs num_bits=2 densely with the same offset: Humming's words."""
    packed, _ = to_humming(weight)
    assert torch.equal(ct.module_tensors(weight, "m")["m.weight_packed"], packed)


@settings(max_examples=15, deadline=None)
@given(weight=quantized_weights(bits=(2,)))
def test_two_bit_codes_in_a_four_bit_container(weight: QuantizedWeight) -> None:
    tensors = ct.module_tensors(weight, "m", container_bits=4)
    assert tensors["m.weight_packed"].shape[1] == weight.shape[1] // 8  # 8 values per word
    back = ct.read_module(tensors, "m", _spec(4, weight.group_size), bits=2)
    assert back.bits == 2 and torch.equal(back.codes, weight.codes)


def test_narrowing_rejects_codes_outside_the_target_range() -> None:
    codes = torch.zeros(2, 32, dtype=torch.int8)
    codes[1, 5] = 3  # fits 4 bits, not 2
    weight = QuantizedWeight(codes=codes, scales=torch.ones(2, 1, dtype=torch.bfloat16), bits=4,
                             group_size=32)
    tensors = ct.module_tensors(weight, "layer.x")
    with pytest.raises(ct.CompressedTensorsFormatError, match=r"code 3 at \(1, 5\).*\[-2, 1\]"):
        ct.read_module(tensors, "layer.x", _spec(4, 32), bits=2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(quant_method="gptq"), "quant_method is 'gptq'"),
        (lambda c: (c.update(format="int-quantized"), c["config_groups"]["group_0"].pop("format")),
         "format is 'int-quantized'"),
        (lambda c: c["config_groups"]["group_0"].update(format="int-quantized"),
         "format is 'int-quantized'"),
        (lambda c: c["config_groups"]["group_0"]["weights"].update(symmetric=False),
         "asymmetric"),
        (lambda c: c["config_groups"]["group_0"]["weights"].update(strategy="channel",
                                                                    group_size=None),
         "only 'group'"),
    ],
)
def test_spec_rejects_unsupported_configs(change, message: str) -> None:  # noqa: ANN001
    config = ct.quantization_config(2, 128)
    change(config)
    with pytest.raises(ct.CompressedTensorsFormatError, match=message):
        ct.PackQuantizedSpec.from_quantization_config(config)


def test_config_block_is_the_library_schema() -> None:
    config = ct.quantization_config(2, 128, ignore=["lm_head", "re:.*gate$"])
    assert config["quant_method"] == "compressed-tensors"
    assert config["format"] == "pack-quantized"
    weights = config["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["strategy"]) == (2, 128, "group")
    spec = ct.PackQuantizedSpec.from_quantization_config(config)
    assert spec == ct.PackQuantizedSpec(2, 128, ("lm_head", "re:.*gate$"))
