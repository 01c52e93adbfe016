"""Humming packing: layout, offset-binary codes, round trips and exact dequantization."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings

sys.path.insert(0, str(Path(__file__).parent))
from strategies import quantized_weights  # noqa: E402

from dedicated.quantize_job import bitpack  # noqa: E402
from dedicated.quantize_job.humming import (  # noqa: E402
    HummingFormatError,
    HummingSpec,
    ScaleRoundingError,
    dequantize,
    exact_bf16,
    from_humming,
    round_scales_to_bf16,
    to_humming,
)
from dedicated.quantize_job.qtensor import QuantizedWeight  # noqa: E402


def _weight(codes: list[list[int]], bits: int = 2, group: int = 32) -> QuantizedWeight:
    c = torch.tensor(codes, dtype=torch.int8)
    scales = torch.ones(c.shape[0], c.shape[1] // group, dtype=torch.bfloat16)
    return QuantizedWeight(codes=c, scales=scales, bits=bits, group_size=group)


def test_two_bit_codebook_is_stored_offset_binary_lsb_first() -> None:
    # codes -2, -1, 0, +1 are stored as 0, 1, 2, 3; value j of a word sits at bits 2j..2j+1.
    codes = [[-2, -1, 0, 1] + [0] * 28]
    packed, scale = to_humming(_weight(codes))
    assert packed.shape == (1, 2) and packed.dtype == torch.int32
    expected_first = 0 | (1 << 2) | (2 << 4) | (3 << 6)
    for j in range(4, 16):
        expected_first |= 2 << (2 * j)
    assert int(packed[0, 0]) == expected_first - (1 << 32)  # top bits set: negative int32
    assert scale.dtype == torch.bfloat16 and scale.shape == (1, 1)


def test_four_and_eight_bit_offsets() -> None:
    packed4, _ = to_humming(_weight([[-8, 7] + [0] * 30], bits=4))
    assert int(packed4[0, 0]) & 0xFF == (0 | (15 << 4))
    packed8, _ = to_humming(_weight([[-128, 127, 0, -1] + [0] * 28], bits=8))
    assert int(packed8[0, 0]) & 0xFFFFFFFF == 0 | (255 << 8) | (128 << 16) | (127 << 24)


def test_three_bit_rows_end_on_word_boundaries() -> None:
    packed, _ = to_humming(_weight([list(range(-4, 4)) * 4], bits=3))
    assert packed.shape == (1, 3)  # 32 values x 3 bits = 3 words


@settings(max_examples=80, deadline=None)
@given(weight=quantized_weights())
def test_round_trip_and_exact_dequantization(weight: QuantizedWeight) -> None:
    spec = HummingSpec(bits=weight.bits, group_size=weight.group_size)
    packed, scale = to_humming(weight)
    assert tuple(packed.shape) == spec.weight_shape(*weight.shape)
    assert tuple(scale.shape) == spec.scale_shape(*weight.shape)
    back = from_humming(packed, scale, spec)
    assert torch.equal(back.codes, weight.codes)
    assert torch.equal(back.scales.view(torch.int16), weight.scales.view(torch.int16))
    assert torch.equal(dequantize(packed, scale, spec), weight.dequantize(torch.float32))


@settings(max_examples=20, deadline=None)
@given(weight=quantized_weights(max_out=3))
def test_words_match_an_independent_unpack(weight: QuantizedWeight) -> None:
    """bitpack and the signed offset agree with a slow, obviously-correct bit loop."""
    packed, _ = to_humming(weight)
    bits = weight.bits
    words = packed.to(torch.int64) & 0xFFFFFFFF
    for row in range(weight.shape[0]):
        stream = 0
        for i, word in enumerate(words[row].tolist()):
            stream |= word << (32 * i)
        for j, code in enumerate(weight.codes[row].tolist()):
            assert (stream >> (bits * j)) & ((1 << bits) - 1) == code + (1 << (bits - 1))


def test_rejects_in_features_not_multiple_of_32() -> None:
    weight = QuantizedWeight(codes=torch.zeros(2, 48, dtype=torch.int8),
                             scales=torch.ones(2, 1, dtype=torch.bfloat16), bits=2, group_size=48)
    with pytest.raises(HummingFormatError, match="multiple of 32"):
        to_humming(weight)


def test_rejects_group_size_that_does_not_divide() -> None:
    with pytest.raises(HummingFormatError, match="does not divide in_features 96"):
        HummingSpec(bits=2, group_size=64).check_shape(4, 96)


def test_rejects_mismatched_scale_shape_on_read() -> None:
    packed, _ = to_humming(_weight([[0] * 64]))
    with pytest.raises(HummingFormatError, match="weight_scale shape"):
        from_humming(packed, torch.ones(1, 3, dtype=torch.bfloat16), HummingSpec(2, 32))


def test_float32_scales_that_bf16_cannot_hold_are_refused_not_rounded() -> None:
    codes = torch.zeros(1, 32, dtype=torch.int8)
    weight = QuantizedWeight(codes=codes, scales=torch.tensor([[0.1]]), bits=2, group_size=32)
    with pytest.raises(ScaleRoundingError, match="not exactly representable in bfloat16"):
        to_humming(weight)
    rounded = round_scales_to_bf16(weight)
    packed, scale = to_humming(rounded)
    assert float(scale) == float(torch.tensor(0.1).to(torch.bfloat16))


def test_bf16_representable_float32_scales_convert_losslessly() -> None:
    scales = torch.tensor([[0.5, -3.0, 2.0**-30]], dtype=torch.float32)
    assert torch.equal(exact_bf16(scales).float(), scales)


def test_bitpack_matches_compressed_tensors_dense_packing() -> None:
    """Two independent packers (ours and compressed-tensors 0.20) agree word for word."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    gen = torch.Generator().manual_seed(7)
    for bits in bitpack.SUPPORTED_BITS:
        codes = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (5, 96), generator=gen)
        ours = bitpack.pack(codes + (1 << (bits - 1)), bits)
        theirs = pack_to_int32(codes.to(torch.int8), bits)
        assert torch.equal(ours, theirs), bits
