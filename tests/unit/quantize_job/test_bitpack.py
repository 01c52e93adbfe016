from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dedicated.quantize_job import bitpack


def test_two_bit_layout_is_lsb_first_sixteen_per_word() -> None:
    values = torch.tensor([[1, 2, 3] + [0] * 13])
    word = bitpack.pack(values, 2)
    assert word.shape == (1, 1)
    assert int(word) == 1 | (2 << 2) | (3 << 4)


def test_top_bits_fold_into_negative_int32() -> None:
    values = torch.full((1, 16), 3)
    assert int(bitpack.pack(values, 2)) == -1


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from(bitpack.SUPPORTED_BITS),
    rows=st.integers(1, 4),
    n=st.integers(1, 70),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip(bits: int, rows: int, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 1 << bits, (rows, n), generator=gen)
    packed = bitpack.pack(values, bits)
    assert packed.shape == (rows, bitpack.packed_length(n, bits))
    assert torch.equal(bitpack.unpack(packed, bits, n), values.to(torch.int32))


def test_rejects_values_that_do_not_fit() -> None:
    import pytest

    with pytest.raises(ValueError, match="cannot be packed in 2 bits"):
        bitpack.pack(torch.tensor([[4]]), 2)
