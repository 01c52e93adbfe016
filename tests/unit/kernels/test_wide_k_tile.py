"""256-wide K tiles over 128-wide scale groups (pair-ordered columns only), the register cap and
weight tiles by TMA descriptor (Triton interpreter; the GPU tests run the same paths compiled)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dedicated.kernels import reference as ref
from dedicated.kernels.configs import moe_config
from dedicated.kernels.gemm import dequant_gemm
from dedicated.kernels.gemm_config import GemmConfig
from dedicated.kernels.moe_gemm import fused_moe, moe_align, moe_gemm
from dedicated.kernels.pair_order import from_pair_order, n_major_scales, pair_positions, to_pair_order

from .conftest import random_packed_experts, rel_err, small_routed_mlp

E, GROUP = 8, 128


def weights(n, k, bits, seed, experts=E):
    return random_packed_experts(n, k, bits, seed, experts, GROUP)


def wide(scale_b, split_k=1, block_n=32):
    return GemmConfig(block_m=16, block_n=block_n, block_k=256, swap_ab=True, mode=2, scale_b=scale_b,
                      split_k=split_k)


@pytest.mark.parametrize("bits", [2, 4])
def test_256_wide_layout_round_trips_and_keeps_each_pair_inside_one_group(bits):
    pos = pair_positions(bits, torch.device("cpu"), 256)
    assert sorted(pos.tolist()) == list(range(256))
    pw = 32 // bits
    pair_k = 2 * 256 // pw
    pair_of = (torch.arange(256) % pw) % (pw // 2)  # natural column c * PW + f belongs to pair f % (PW/2)
    # the columns a pair covers in the tile are contiguous and lie inside one 128-wide group
    for i in range(pw // 2):
        cols = pos[pair_of == i]
        assert cols.min() == i * pair_k and cols.max() == (i + 1) * pair_k - 1
        assert cols.min() // GROUP == cols.max() // GROUP
    packed, _ = weights(6, 512, bits, seed=1, experts=2)
    for tile_major in (False, True):
        moved = to_pair_order(packed, bits, tile_major=tile_major, tile_k=256)
        assert torch.equal(from_pair_order(moved, bits, tile_major=tile_major, tile_k=256), packed)
    assert to_pair_order(packed, bits, tile_major=True, tile_k=256).shape == (2, 2, 6, 256 * bits // 32)
    assert not torch.equal(to_pair_order(packed, bits, tile_k=256), to_pair_order(packed, bits))
    with pytest.raises(ValueError, match="not a multiple of the layout's 256-wide tile"):
        to_pair_order(packed[..., : 384 * bits // 32], bits, tile_k=256)
    with pytest.raises(ValueError, match="built over K tiles"):
        to_pair_order(packed, bits, tile_k=64)


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("scale_b", [False, True])
@pytest.mark.parametrize("tile_major", [False, True])
def test_moe_gemm_on_256_wide_tiles_matches_the_reference(bits, scale_b, tile_major):
    m, top_k, n, k = 5, 3, 40, 512
    packed, scales = weights(n, k, bits, seed=bits + 3 * scale_b)
    g = torch.Generator().manual_seed(7)
    ids = torch.stack([torch.randperm(6, generator=g)[:top_k] for _ in range(m)])
    tw = torch.rand(m, top_k, generator=g)
    xd = torch.randn(m * top_k, k, generator=g).to(torch.bfloat16)
    w = to_pair_order(packed, bits, tile_major=tile_major, tile_k=256)
    s = n_major_scales(scales) if tile_major else scales
    want = ref.moe_gemm_ref(xd, packed, scales, ids, bits, GROUP, topk_weights=tw, out_dtype=torch.float32)
    for cfg in (wide(scale_b), wide(scale_b, split_k=2, block_n=16), wide(scale_b, split_k=4)):
        r = moe_align(ids, E, cfg.block_m)
        got = moe_gemm(xd, w, s, r, bits, GROUP, topk_weights=tw, config=cfg, out=torch.empty(m * top_k, n),
                       pair_ordered=True, pair_tile_k=256)
        # split-K (interpreted) adds the splits in fp32; the folded scale rounds each weight to bf16
        assert rel_err(got, want) < (5e-3 if scale_b and bits == 4 else 3e-5), cfg.short()


def test_a_wide_tile_needs_pair_ordered_weights():
    bits, n, k = 2, 40, 512
    packed, scales = weights(n, k, bits, seed=9, experts=1)
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    want = ref.dequant_gemm_ref(x, packed[0], scales[0], bits, GROUP, out_dtype=torch.float32)
    # checkpoint words: each pair takes a field of every word, so of both groups: the tile is clamped
    # to the group, with natural or reordered (permute_a) activation columns alike
    for cfg in (GemmConfig(block_m=16, block_n=32, block_k=256, swap_ab=True, mode=2, permute_a=True),
                GemmConfig(block_m=16, block_n=32, block_k=256, swap_ab=True, mode=2)):
        assert cfg.for_group(GROUP, bits).block_k == 128
        assert cfg.for_group(GROUP, bits, pair_ordered=True).block_k == 256
        got = dequant_gemm(x, packed[0], scales[0], bits, GROUP, config=cfg, out=torch.empty(3, n))
        assert rel_err(got, want) < 3e-5
    # dense pair-ordered weights over 256-wide tiles, with the default config
    got = dequant_gemm(x, to_pair_order(packed[0], bits, tile_k=256), scales[0], bits, GROUP,
                       out=torch.empty(3, n), pair_ordered=True, pair_tile_k=256)
    assert rel_err(got, want) < 5e-3


def test_layout_and_config_tiles_must_agree():
    bits, n, k = 2, 32, 512
    packed, scales = weights(n, k, bits, seed=4, experts=2)
    ids = torch.tensor([[0, 1]])
    x = torch.zeros(1, k, dtype=torch.bfloat16)
    tiled = to_pair_order(packed, bits, tile_major=True, tile_k=256)
    with pytest.raises(ValueError, match="hold 256-wide K tiles but pair_tile_k=128"):
        moe_gemm(x, tiled, n_major_scales(scales), moe_align(ids, 2, 16), bits, GROUP, config=wide(True),
                 pair_ordered=True)
    with pytest.raises(ValueError, match=r"block_k equal to their layout's K tile \(256\)"):
        moe_gemm(x, to_pair_order(packed, bits, tile_k=256), scales, moe_align(ids, 2, 16), bits, GROUP,
                 config=GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=True, mode=2), pair_ordered=True,
                 pair_tile_k=256)


def test_tables_serve_256_wide_layouts_and_fused_moe_reads_them():
    cfg = moe_config(0.25, 1024, 2048, 2, pair_ordered=True, tile_major=True, pair_tile_k=256)
    assert cfg.block_k == 256 and cfg.mode == 2
    bits = 2
    w13, s13, w2, s2, ids, tw, x, want = small_routed_mlp(bits, hidden=256, inter=256, seed=31)
    got = fused_moe(x, to_pair_order(w13, bits, tile_k=256), s13, to_pair_order(w2, bits, tile_k=256), s2, ids, tw,
                    bits, GROUP, pair_ordered=True, pair_tile_k=256)
    assert rel_err(got, want) < 2e-2  # bf16 intermediate
    # each GEMM in its preferred layout: wide row-major gate/up, 128-wide K-tile-major down
    got = fused_moe(x, to_pair_order(w13, bits, tile_k=256), s13, to_pair_order(w2, bits, tile_major=True),
                    n_major_scales(s2), ids, tw, bits, GROUP, pair_ordered=True, pair_tile_k=256, down_pair_tile_k=128)
    assert rel_err(got, want) < 2e-2


def test_register_cap_is_validated_named_and_harmless_when_interpreted():
    with pytest.raises(ValueError, match="max_regs"):
        GemmConfig(max_regs=8)
    cfg = GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=True, mode=2, max_regs=96)
    assert cfg.short().endswith("-r96")
    packed, scales = weights(32, 256, 4, seed=2, experts=1)
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    got = dequant_gemm(x, packed[0], scales[0], 4, GROUP, config=cfg, out=torch.empty(2, 32))
    assert rel_err(got, ref.dequant_gemm_ref(x, packed[0], scales[0], 4, GROUP, out_dtype=torch.float32)) < 3e-5


def test_wide_tables_and_preferred_layouts():
    from dedicated.kernels.configs import TUNED_WIDE, preferred_layout

    for (bits, n, k), table in TUNED_WIDE.items():
        for bound, _ in table:
            for tile_major in (False, True):
                cfg = moe_config(min(bound, 1e9) / 2, n, k, bits, True, tile_major, 256)
                assert cfg.block_k == 256 and cfg.mode == 2 and cfg.spans_two_groups(GROUP, bits, True)
    # a layout without its own table borrows the 128-wide one, with fewer stages where they would not fit
    cfg = moe_config(256, 1024, 2048, 4, True, False, 256)
    assert cfg.block_k == 256 and cfg.num_stages == 2
    # the dense default for a 256-wide layout the same way: 128x128 prefill tiles, 3 stages of 80 KB
    # at 4 bits, would not fit an H100's shared memory
    from dedicated.kernels.gemm_config import SHARED_MEMORY_BUDGET, default_dense_config, pipeline_bytes

    dense = default_dense_config(8192, 1024, 2048, 4)
    assert dense.block_k == 128 and dense.num_stages == 3
    wide_dense = dense.for_pair_tile(256, 4)
    assert wide_dense.block_k == 256 and wide_dense.num_stages == 2
    assert pipeline_bytes(wide_dense, 4) <= SHARED_MEMORY_BUDGET < pipeline_bytes(replace(dense, block_k=256), 4)
    assert dense.for_pair_tile(128, 4) is dense
    assert preferred_layout(2, 1024, 2048) == (False, 256)
    assert preferred_layout(4, 1024, 2048) == (True, 128)
    assert preferred_layout(2, 4096, 4096) == (True, 128)  # untuned shape


@pytest.mark.parametrize("bits", [2, 4])
def test_weight_tiles_by_tma_descriptor(bits):
    m, top_k, n, k = 5, 3, 40, 256  # N is not a multiple of block_n: the descriptor zero-fills the rest
    packed, scales = weights(n, k, bits, seed=bits + 11)
    g = torch.Generator().manual_seed(8)
    ids = torch.stack([torch.randperm(6, generator=g)[:top_k] for _ in range(m)])
    xd = torch.randn(m * top_k, k, generator=g).to(torch.bfloat16)
    want = ref.moe_gemm_ref(xd, packed, scales, ids, bits, GROUP, out_dtype=torch.float32)
    for tile_major in (False, True):
        for tile_k in (128, 256):
            cfg = GemmConfig(block_m=16, block_n=32, block_k=tile_k, swap_ab=True, mode=2, tma=True)
            w = to_pair_order(packed, bits, tile_major=tile_major, tile_k=tile_k)
            s = n_major_scales(scales) if tile_major else scales
            got = moe_gemm(xd, w, s, moe_align(ids, E, 16), bits, GROUP, config=cfg, out=torch.empty(m * top_k, n),
                           pair_ordered=True, pair_tile_k=tile_k)
            assert rel_err(got, want) < 3e-5, (tile_major, tile_k)
    cfg = GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=True, mode=2, tma=True)
    assert cfg.short().endswith("-tma")
    x = xd[:3]
    got = dequant_gemm(x, packed[0], scales[0], bits, GROUP, config=cfg, out=torch.empty(3, n))  # dense, checkpoint words
    assert rel_err(got, ref.dequant_gemm_ref(x, packed[0], scales[0], bits, GROUP, out_dtype=torch.float32)) < 3e-5
    with pytest.raises(ValueError, match="tma loads the weights of unpack mode 2 only"):
        GemmConfig(mode=0, tma=True)
    # a tile too short for a pair MMA falls back to the interleave unpack, without TMA
    short = GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=True, mode=2, tma=True).for_group(32, bits)
    assert short.mode == 0 and not short.tma
    # a weight view that does not start on a 16-byte boundary cannot be described
    k = 64 if bits == 4 else 128  # the shortest K tile a pair MMA takes; one scale group
    words = k * bits // 32
    view = torch.zeros(32, words + 4, dtype=torch.int32)[:, 1 : 1 + words]  # starts 4 bytes in
    cfg = GemmConfig(block_m=16, block_n=32, block_k=k, swap_ab=True, mode=2, tma=True)
    with pytest.raises(ValueError, match="16-byte aligned"):
        dequant_gemm(torch.zeros(2, k, dtype=torch.bfloat16), view, torch.ones(32, 1, dtype=torch.bfloat16), bits,
                     k, config=cfg)
