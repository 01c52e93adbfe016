"""Dequantize and dense dequant-GEMM kernels against plain torch, on the CPU (Triton interpreter)."""

from __future__ import annotations

import pytest
import torch

from dedicated.kernels import reference as ref
from dedicated.kernels.dequant import default_offset, dequantize
from dedicated.kernels.gemm import dequant_gemm, dq_gemm_kernel
from dedicated.kernels.gemm_config import GemmConfig
from dedicated.kernels.unpack import is_interpreted
from dedicated.quantize_job.bitpack import pack
from dedicated.quantize_job.qtensor import QuantizedWeight


def make_weight(shape, bits, group, offset=None, seed=0):
    """Random signed codes and bf16 scales, packed the Humming way (stored = code + offset)."""
    g = torch.Generator().manual_seed(seed)
    half = 1 << (bits - 1)
    off = half if offset is None else offset
    codes = torch.randint(-half, half, shape, generator=g)
    codes = codes.clamp(-off, (1 << bits) - 1 - off)  # keep stored values inside [0, 2**bits)
    packed = pack(codes + off, bits)
    scales = (torch.rand(*shape[:-1], shape[-1] // group, generator=g) * 0.05 + 0.002).to(torch.bfloat16)
    return codes, packed, scales


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def test_kernels_here_are_interpreted():
    assert is_interpreted(dq_gemm_kernel), "conftest.py must load the kernels under TRITON_INTERPRET=1"


def test_default_offset_is_the_humming_exporters():
    from dedicated.kernels.dequant import _humming_spec_class

    spec = _humming_spec_class()
    assert spec is not None, "quantize_job/humming/format.py is the authority for the offset"
    assert default_offset(2) == spec(bits=2, group_size=128).offset == 2
    assert default_offset(4) == spec(bits=4, group_size=128).offset == 8


@pytest.mark.parametrize("bits", [2, 4])
def test_dequantize_matches_quantized_weight_exactly(bits):
    n, k, group = 37, 256, 128  # N deliberately not a multiple of the 32-row block
    codes, packed, scales = make_weight((n, k), bits, group)
    got = dequantize(packed, scales, bits, group, out_dtype=torch.float32)
    qw = QuantizedWeight(codes=codes.to(torch.int8), scales=scales, bits=bits, group_size=group)
    assert torch.equal(got, qw.dequantize(torch.float32))
    # bf16 output: one rounding of the fp32 value (the interpreter truncates, the GPU rounds).
    got16 = dequantize(packed, scales, bits, group)
    assert got16.dtype == torch.bfloat16
    assert torch.allclose(got16.float(), qw.dequantize(torch.float32), rtol=2**-7, atol=0)


def test_dequantize_experts_and_custom_offset():
    bits, group, off = 2, 64, 1  # offset 1: codes {-1, 0, 1, 2}
    codes, packed, scales = make_weight((3, 8, 128), bits, group, offset=off)
    got = dequantize(packed, scales, bits, group, offset=off, out_dtype=torch.float32)
    want = ref.dequantize_ref(packed, scales, bits, group, offset=off, out_dtype=torch.float32)
    assert got.shape == (3, 8, 128)
    assert torch.equal(got, want)
    assert torch.equal(want, codes.float() * scales.float().repeat_interleave(group, -1))


def test_dequantize_rejects_bad_input():
    _, packed, scales = make_weight((4, 128), 2, 128)
    with pytest.raises(ValueError, match="support"):
        dequantize(packed, scales, 3)
    with pytest.raises(ValueError, match="scales must be"):
        dequantize(packed, scales[:, :0], 2)
    with pytest.raises(TypeError, match="int32"):
        dequantize(packed.to(torch.int64), scales, 2)
    with pytest.raises(ValueError, match="offset"):
        dequantize(packed, scales, 2, offset=4)
    with pytest.raises(ValueError, match="multiple of group_size"):
        dequantize(packed[:, :4], scales[:, :1], 2, group_size=128)  # K=64 < group 128


VARIANTS = [
    GemmConfig(block_m=16, block_n=32, block_k=64, swap_ab=False, mode=0),
    GemmConfig(block_m=16, block_n=32, block_k=64, swap_ab=False, mode=1),
    GemmConfig(block_m=16, block_n=32, block_k=64, swap_ab=True, mode=0),
    GemmConfig(block_m=16, block_n=32, block_k=64, swap_ab=True, mode=1),
    GemmConfig(block_m=16, block_n=32, block_k=64, swap_ab=True, mode=0, scale_b=True),
    GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=False, mode=0, scale_b=True),
    GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=True, mode=2),
    GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=True, mode=2, scale_b=True),
    GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=False, mode=2, scale_b=True),
    GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=True, mode=2, scale_b=True, permute_a=True),
    GemmConfig(block_m=4, block_n=64, block_k=64, kernel="fma"),
    GemmConfig(block_m=1, block_n=64, block_k=128, kernel="fma"),
]


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("cfg", VARIANTS, ids=lambda c: c.short())
def test_dense_gemm_all_variants(bits, cfg):
    m, n, k, group = 5, 40, 256, 128  # M and N not multiples of their blocks
    _, packed, scales = make_weight((n, k), bits, group, seed=bits)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    out = torch.full((m, n), float("nan"))
    got = dequant_gemm(x, packed, scales, bits, group, config=cfg, out=out)
    want = ref.dequant_gemm_ref(x, packed, scales, bits, group, out_dtype=torch.float32)
    assert not got.isnan().any(), "every output element must be written"
    # scale_b multiplies with bf16 weights: exact for 2-bit codes, one bf16 rounding per 4-bit weight
    tol = 5e-3 if (cfg.scale_b and bits == 4) else 1e-5
    assert rel_err(got, want) < tol


def test_gemm_config_validation():
    with pytest.raises(ValueError, match="power of two"):
        GemmConfig(block_m=12)
    with pytest.raises(ValueError, match=">= 16"):
        GemmConfig(block_m=4)  # tensor cores need 16 rows
    with pytest.raises(ValueError, match="kernel"):
        GemmConfig(kernel="wmma")
    assert GemmConfig(block_m=1, kernel="fma").block_m == 1


def test_dense_gemm_default_config_bf16_and_small_group():
    bits, group = 4, 64  # the config's 128-wide K tile is clamped to the 64-wide group
    _, packed, scales = make_weight((48, 256), bits, group, seed=7)
    x = torch.randn(3, 256).to(torch.bfloat16)
    got = dequant_gemm(x, packed, scales, bits, group)
    assert got.dtype == torch.bfloat16 and got.shape == (3, 48)
    assert rel_err(got, ref.dequant_gemm_ref(x, packed, scales, bits, group, out_dtype=torch.float32)) < 8e-3


def test_dense_gemm_empty_and_bad_shapes():
    _, packed, scales = make_weight((32, 128), 2, 128)
    assert dequant_gemm(torch.empty(0, 128, dtype=torch.bfloat16), packed, scales, 2).shape == (0, 32)
    with pytest.raises(ValueError, match="K=64"):
        dequant_gemm(torch.zeros(2, 64, dtype=torch.bfloat16), packed, scales, 2)
    with pytest.raises(TypeError, match="bf16 or fp16"):
        dequant_gemm(torch.zeros(2, 128), packed, scales, 2)
