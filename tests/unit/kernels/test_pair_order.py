"""The pair-ordered weight layout: exact round trip, and the GEMMs read it as the checkpoint layout
(Triton interpreter)."""

from __future__ import annotations

import pytest
import torch

from dedicated.kernels import reference as ref
from dedicated.kernels.configs import TUNED, moe_config
from dedicated.kernels.dequant import dequantize
from dedicated.kernels.gemm import dequant_gemm
from dedicated.kernels.gemm_config import GemmConfig
from dedicated.kernels.moe_gemm import fused_moe, moe_align, moe_gemm
from dedicated.kernels.pair_order import from_pair_order, n_major_scales, pair_positions, to_pair_order

from .conftest import random_packed_experts, rel_err, small_routed_mlp

E, GROUP = 8, 128
PAIR = GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=True, mode=2, scale_b=True)


def weights(n, k, bits, seed, experts=E):
    return random_packed_experts(n, k, bits, seed, experts, GROUP)


@pytest.mark.parametrize("bits", [2, 4])
def test_layout_is_a_permutation_within_each_tile_and_round_trips(bits):
    assert sorted(pair_positions(bits, torch.device("cpu")).tolist()) == list(range(128))
    packed, _ = weights(6, 384, bits, seed=1, experts=2)
    moved = to_pair_order(packed, bits)
    assert not torch.equal(moved, packed)
    assert torch.equal(from_pair_order(moved, bits), packed)
    # pair i of word c holds K columns i * 2 * WC + 2c and + 1: check one value by hand
    pw = 32 // bits
    wc, half = 128 // pw, pw // 2
    codes = (packed[0, 0, :wc].to(torch.int64).unsqueeze(-1) >> (torch.arange(pw) * bits)) & ((1 << bits) - 1)
    natural = codes.reshape(-1)  # K order of the first tile
    field = (moved[0, 0, 3].item() >> ((1 + half) * bits)) & ((1 << bits) - 1)  # word 3, pair 1, high half
    assert field == natural[1 * 2 * wc + 2 * 3 + 1].item()


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("scale_b", [False, True])
def test_moe_gemm_reads_pair_ordered_weights(bits, scale_b):
    m, top_k, n, k = 5, 3, 40, 256
    packed, scales = weights(n, k, bits, seed=bits)
    g = torch.Generator().manual_seed(3)
    ids = torch.stack([torch.randperm(6, generator=g)[:top_k] for _ in range(m)])
    cfg = GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=True, mode=2, scale_b=scale_b)
    r = moe_align(ids, E, cfg.block_m)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    natural = moe_gemm(x, packed, scales, r, bits, GROUP, config=cfg, out=torch.empty(m * top_k, n))
    ordered = moe_gemm(x, to_pair_order(packed, bits), scales, r, bits, GROUP, config=cfg,
                       out=torch.empty(m * top_k, n), pair_ordered=True)
    assert rel_err(ordered, natural) < 1e-5  # same products, summed in another order
    want = ref.moe_gemm_ref(x, packed, scales, ids, bits, GROUP, out_dtype=torch.float32)
    assert rel_err(ordered, want) < (5e-3 if scale_b and bits == 4 else 1e-5)


def test_dense_gemm_and_fused_moe_read_pair_ordered_weights():
    bits, n, k = 2, 40, 256
    packed, scales = weights(n, k, bits, seed=5, experts=1)
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    want = dequant_gemm(x, packed[0], scales[0], bits, GROUP, config=PAIR, out=torch.empty(3, n))
    got = dequant_gemm(x, to_pair_order(packed[0], bits), scales[0], bits, GROUP, config=PAIR,
                       out=torch.empty(3, n), pair_ordered=True)
    assert rel_err(got, want) < 1e-5

    hidden, inter, m, top_k = 128, 128, 4, 2
    w13, s13 = weights(2 * inter, hidden, bits, seed=11)
    w2, s2 = weights(hidden, inter, bits, seed=12)
    ids = torch.tensor([[0, 1], [2, 3], [1, 5], [0, 4]])
    tw = torch.full((m, top_k), 0.5)
    xm = torch.randn(m, hidden, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    natural = fused_moe(xm, w13, s13, w2, s2, ids, tw, bits, GROUP, gate_up_config=PAIR, down_config=PAIR)
    ordered = fused_moe(xm, to_pair_order(w13, bits), s13, to_pair_order(w2, bits), s2, ids, tw, bits, GROUP,
                        pair_ordered=True)  # default configs: the tables' mode-2 entries
    assert rel_err(ordered, natural) < 2e-2  # bf16 intermediate; configs may differ in accumulation order


@pytest.mark.parametrize("bits", [2, 4])
def test_tile_major_layout_and_n_major_scales(bits):
    m, top_k, n, k = 5, 3, 40, 384
    packed, scales = weights(n, k, bits, seed=bits + 7)
    tiled = to_pair_order(packed, bits, tile_major=True)
    assert tiled.shape == (E, k // 128, n, 128 * bits // 32) and tiled.is_contiguous()
    assert torch.equal(from_pair_order(tiled, bits, tile_major=True), packed)
    s_n = n_major_scales(scales)
    assert torch.equal(s_n, scales) and s_n.stride(-2) == 1
    g = torch.Generator().manual_seed(5)
    ids = torch.stack([torch.randperm(6, generator=g)[:top_k] for _ in range(m)])
    tw = torch.rand(m, top_k, generator=g)
    xd = torch.randn(m * top_k, k, generator=g).to(torch.bfloat16)
    want = ref.moe_gemm_ref(xd, packed, scales, ids, bits, GROUP, topk_weights=tw, out_dtype=torch.float32)
    for cfg in (GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=True, mode=2),
                GemmConfig(block_m=16, block_n=16, block_k=128, swap_ab=True, mode=2, scale_b=True, split_k=2)):
        r = moe_align(ids, E, cfg.block_m)
        got = moe_gemm(xd, tiled, s_n, r, bits, GROUP, topk_weights=tw, config=cfg, out=torch.empty(m * top_k, n),
                       pair_ordered=True)
        assert rel_err(got, want) < (5e-3 if cfg.scale_b and bits == 4 else 1e-5), cfg.short()
    # dense: [K/128, N, words]
    x = torch.randn(3, k, generator=g).to(torch.bfloat16)
    got = dequant_gemm(x, tiled[1], s_n[1], bits, GROUP, config=PAIR, out=torch.empty(3, n), pair_ordered=True)
    assert rel_err(got, dequant_gemm(x, packed[1], scales[1], bits, GROUP, config=PAIR, out=torch.empty(3, n))) < 1e-5
    with pytest.raises(ValueError, match="K-tile-major"):
        moe_gemm(xd, tiled, s_n, moe_align(ids, E, 16), bits, GROUP, config=PAIR)  # not marked pair-ordered
    padded = torch.zeros(*tiled.shape[:-1], 2 * tiled.shape[-1], dtype=torch.int32)
    padded[..., : tiled.shape[-1]] = tiled
    with pytest.raises(ValueError, match="contiguous rows"):  # the kernel assumes rows a tile's words apart
        moe_gemm(xd, padded[..., : tiled.shape[-1]], s_n, moe_align(ids, E, 16), bits, GROUP, config=PAIR,
                 pair_ordered=True)
    with pytest.raises(ValueError, match="scales must be"):
        moe_gemm(xd, tiled, s_n[:, :-1], moe_align(ids, E, 16), bits, GROUP, config=PAIR, pair_ordered=True)
    # every reader takes N-contiguous scales, the dequantizer too
    assert torch.equal(dequantize(packed, s_n, bits, GROUP), dequantize(packed, scales, bits, GROUP))


def test_pair_ordered_weights_refuse_a_config_that_cannot_read_them():
    packed, scales = weights(32, 256, 2, seed=1, experts=1)
    x = torch.zeros(2, 256, dtype=torch.bfloat16)
    for bad in (GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=True, mode=0),
                GemmConfig(block_m=4, block_n=32, block_k=128, kernel="fma")):
        with pytest.raises(ValueError, match="pair-ordered weights are read by unpack mode 2"):
            dequant_gemm(x, packed[0], scales[0], 2, GROUP, config=bad, pair_ordered=True)
    with pytest.raises(ValueError, match="multiple of 128"):
        dequant_gemm(x, packed[0], scales[0].repeat_interleave(2, dim=-1), 2, 64, config=PAIR, pair_ordered=True)
    with pytest.raises(ValueError, match="not a multiple"):
        to_pair_order(packed[..., :4], 2)


def test_default_configs_for_pair_ordered_weights_are_mode_2():
    for (bits, n, k), table in TUNED.items():
        for bound, _ in table:
            for tile_major in (False, True):
                cfg = moe_config(bound / 2, n, k, bits, pair_ordered=True, tile_major=tile_major)
                assert cfg.mode == 2 and cfg.block_k == 128, (bits, n, k, bound, cfg.short())
    # each layout has its own table: at 4 bits and 8 tokens per 32 experts they differ (run 7)
    assert moe_config(0.25, 1024, 2048, 4, True, True) != moe_config(0.25, 1024, 2048, 4, True, False)


def test_fused_moe_reads_tile_major_weights_with_their_table():
    bits, group = 4, 128
    w13, s13, w2, s2, ids, tw, x, want = small_routed_mlp(bits, hidden=128, inter=128, seed=21)
    got = fused_moe(x, to_pair_order(w13, bits, tile_major=True), n_major_scales(s13),
                    to_pair_order(w2, bits, tile_major=True), n_major_scales(s2), ids, tw, bits, group, pair_ordered=True)
    assert rel_err(got, want) < 2e-2  # bf16 intermediate
