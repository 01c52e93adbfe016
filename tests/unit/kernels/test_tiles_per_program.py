"""Several output tiles per program (``GemmConfig.tiles_n``): one flattened loop over the tiles' K
steps (Triton interpreter; the GPU tests run the same path compiled, the sm_90 compile test checks
that it compiles)."""

from __future__ import annotations

import pytest
import torch

from dedicated.kernels import reference as ref
from dedicated.kernels.gemm import dequant_gemm
from dedicated.kernels.gemm_config import GemmConfig
from dedicated.kernels.moe_gemm import moe_align, moe_gemm
from dedicated.kernels.pair_order import n_major_scales, to_pair_order

from .conftest import random_packed_experts, rel_err

E, GROUP = 8, 128


def tiled(tiles_n: int, scale_b: bool = False, **kw) -> GemmConfig:
    base = dict(block_m=16, block_n=16, block_k=128, swap_ab=True, mode=2, num_warps=4, num_stages=3,
                scale_b=scale_b, tiles_n=tiles_n)
    return GemmConfig(**{**base, **kw})


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("tile_major", [False, True])
def test_moe_gemm_with_several_tiles_per_program_matches_the_reference(bits, tile_major):
    # N = 56: 4 tiles of 16, the last one ragged; with 4 tiles per program one program covers all of
    # them, with 8 its last four tiles lie past N and must neither be stored nor read out of bounds
    m, top_k, n, k = 5, 3, 56, 256
    packed, scales = random_packed_experts(n, k, bits, seed=11 + bits, experts=E, group=GROUP)
    g = torch.Generator().manual_seed(3)
    ids = torch.stack([torch.randperm(6, generator=g)[:top_k] for _ in range(m)])
    tw = torch.rand(m, top_k, generator=g)
    xd = torch.randn(m * top_k, k, generator=g).to(torch.bfloat16)
    w = to_pair_order(packed, bits, tile_major=tile_major)
    s = n_major_scales(scales) if tile_major else scales
    want = ref.moe_gemm_ref(xd, packed, scales, ids, bits, GROUP, topk_weights=tw, out_dtype=torch.float32)
    for cfg in (tiled(2), tiled(4, scale_b=True), tiled(8), tiled(2, split_k=2), tiled(2, tma=True)):
        r = moe_align(ids, E, cfg.block_m)
        got = moe_gemm(xd, w, s, r, bits, GROUP, topk_weights=tw, config=cfg, out=torch.empty(m * top_k, n),
                       pair_ordered=True)
        # the folded scale rounds each weight to bf16; split-K (interpreted) adds its splits in fp32
        assert rel_err(got, want) < (5e-3 if cfg.scale_b and bits == 4 else 3e-5), cfg.short()


def test_dense_gemm_with_several_tiles_per_program_on_wide_tiles():
    bits, n, k = 2, 40, 512
    packed, scales = random_packed_experts(n, k, bits, seed=5, experts=1, group=GROUP)
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    want = x.float() @ ref.dequantize_ref(packed[0], scales[0], bits, GROUP).float().T
    w = to_pair_order(packed[0], bits, tile_k=256)
    got = dequant_gemm(x, w, scales[0], bits, GROUP, config=tiled(2, block_k=256), out=torch.empty(3, n),
                       pair_ordered=True, pair_tile_k=256)
    assert rel_err(got, want) < 3e-5


def test_tiles_per_program_is_a_power_of_two_on_the_tensor_core_kernel():
    with pytest.raises(ValueError, match="tiles_n must be a positive power of two"):
        tiled(3)
    with pytest.raises(ValueError, match="tiles_n applies to the tensor-core kernel only"):
        GemmConfig(block_m=1, block_n=32, kernel="fma", tiles_n=2)
    assert tiled(4).short().endswith("-t4") and "-t" not in tiled(1).short()
