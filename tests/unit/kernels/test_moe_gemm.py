"""Grouped MoE dequant-GEMM and its routing layout against plain torch (Triton interpreter)."""

from __future__ import annotations

import pytest
import torch

from dedicated.kernels import reference as ref
from dedicated.kernels.gemm_config import GemmConfig
from dedicated.kernels.moe_gemm import align_to_blocks, expert_order, fused_moe, max_blocks, moe_align, moe_gemm
from dedicated.quantize_job.bitpack import pack

E = 8


def experts_weight(n, k, bits, group, seed):
    g = torch.Generator().manual_seed(seed)
    half = 1 << (bits - 1)
    codes = torch.randint(-half, half, (E, n, k), generator=g)
    scales = (torch.rand(E, n, k // group, generator=g) * 0.05 + 0.002).to(torch.bfloat16)
    return pack(codes + half, bits), scales


def routing(m, top_k, seed, unused=(6, 7)):
    """Random distinct experts per token, never choosing the ``unused`` ones (zero-token experts)."""
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([e for e in range(E) if e not in unused])
    ids = torch.stack([allowed[torch.randperm(len(allowed), generator=g)[:top_k]] for _ in range(m)])
    weights = torch.rand(m, top_k, generator=g)
    return ids, weights / weights.sum(-1, keepdim=True)


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("block_m", [1, 4, 16, 12])  # any size: Humming's tiles are not powers of two
def test_moe_align_layout(block_m):
    m, top_k = 9, 3
    ids, _ = routing(m, top_k, seed=block_m)
    r = moe_align(ids, E, block_m)
    pairs = m * top_k
    flat = ids.reshape(-1)
    used = int(r.num_padded)
    assert r.sorted_ids.numel() == max_blocks(pairs, E, block_m) * block_m >= used
    real = r.sorted_ids[:used]
    assert sorted(real[real < pairs].tolist()) == list(range(pairs)), "every pair exactly once"
    assert (r.sorted_ids[used:] == pairs).all(), "the tail is padding"
    counts = torch.bincount(flat, minlength=E)
    assert used == int(((counts + block_m - 1) // block_m * block_m).sum())
    for b in range(used // block_m):
        block = r.sorted_ids[b * block_m:(b + 1) * block_m]
        members = block[block < pairs].long()
        assert members.numel() > 0, "no block is pure padding"
        assert (flat[members] == r.expert_ids[b]).all(), "a block holds one expert's pairs"
    assert not set(r.expert_ids[: used // block_m].tolist()) & {6, 7}, "zero-token experts get no block"


def test_one_sort_serves_every_block_size():
    """fused_moe sorts a routing once and pads it for each GEMM's block_m: the same layouts as
    aligning from scratch, pairs of one expert kept in token order (a stable sort)."""
    ids, _ = routing(11, 4, seed=5)
    pairs_by_expert = expert_order(ids, E)
    for block_m in (1, 8, 16):
        want, got = moe_align(ids, E, block_m), align_to_blocks(pairs_by_expert, block_m)
        for field in ("sorted_ids", "expert_ids", "num_padded"):
            assert torch.equal(getattr(got, field), getattr(want, field)), (block_m, field)
    flat = ids.reshape(-1)
    for e in range(E):
        mine = pairs_by_expert.order[pairs_by_expert.sorted_experts == e]
        assert torch.equal(mine, torch.nonzero(flat == e).flatten()), "stable: token order within an expert"


def test_moe_align_rejects_bad_input():
    with pytest.raises(ValueError, match="positive"):
        moe_align(torch.zeros(2, 2, dtype=torch.int64), E, 0)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        moe_align(torch.tensor([[0, 8]]), E, 16)
    with pytest.raises(ValueError, match="top_k"):
        moe_align(torch.zeros(4, dtype=torch.int64), E, 16)


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize(
    "cfg,shape",
    [
        (GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=True, mode=1), (5, 3, 40, 256)),
        (GemmConfig(block_m=16, block_n=32, block_k=64, swap_ab=False, mode=0), (5, 3, 40, 256)),
        (GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=True, mode=2, scale_b=True), (5, 3, 40, 256)),
        (GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=False, mode=2), (5, 3, 40, 256)),
        (GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=True, mode=2, permute_a=True), (5, 3, 40, 256)),
        # the CUDA-core kernel is slow to interpret: fewer pairs, one K tile, N ragged in one block
        (GemmConfig(block_m=4, block_n=16, block_k=128, kernel="fma"), (3, 2, 12, 128)),
    ],
    ids=lambda c: c.short() if isinstance(c, GemmConfig) else "x".join(map(str, c)),
)
def test_moe_gate_up_and_down(bits, cfg, shape):
    m, top_k, n, k = shape  # pairs not a multiple of block_m; N ragged too
    group = 128
    packed, scales = experts_weight(n, k, bits, group, seed=bits)
    ids, weights = routing(m, top_k, seed=3)
    r = moe_align(ids, E, cfg.block_m)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    out = torch.full((m * top_k, n), float("nan"))
    got = moe_gemm(x, packed, scales, r, bits, group, config=cfg, out=out)
    want = ref.moe_gemm_ref(x, packed, scales, ids, bits, group, out_dtype=torch.float32)
    assert not got.isnan().any()
    # scale_b multiplies with bf16 weights: exact for 2-bit codes, one bf16 rounding per 4-bit weight.
    # Unscaled, the MMA sums (128 + stored) * a in fp32 and the bias is removed afterwards, so fp32
    # rounding is ~136x that of the unbiased product: up to 5.7e-6 relative over 25 random inputs
    # for the 2-bit row-major config, hence 3e-5 (a wrong code or scale is off by > 1e-2).
    tol = 5e-3 if (cfg.scale_b and bits == 4) else 3e-5
    assert rel_err(got, want) < tol
    # down: one activation row per pair, each output row scaled by its routing weight
    xd = torch.randn(m * top_k, k, generator=g).to(torch.bfloat16)
    got = moe_gemm(xd, packed, scales, r, bits, group, topk_weights=weights, config=cfg, out=torch.empty(m * top_k, n))
    want = ref.moe_gemm_ref(xd, packed, scales, ids, bits, group, topk_weights=weights, out_dtype=torch.float32)
    assert rel_err(got, want) < tol


@pytest.mark.parametrize(
    "bits,cfg,k",
    [
        # two K tiles, one per split
        (2, GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=True, mode=2, scale_b=True, split_k=2), 256),
        # more splits than K tiles: the surplus programs add nothing
        (4, GemmConfig(block_m=16, block_n=32, block_k=128, swap_ab=True, mode=2, split_k=4), 256),
        # 64-wide tiles in 128-wide groups, 3 tiles per split: the second split starts mid-group
        (4, GemmConfig(block_m=16, block_n=32, block_k=64, swap_ab=True, mode=2, split_k=2), 384),
        (2, GemmConfig(block_m=16, block_n=32, block_k=64, swap_ab=False, mode=0, split_k=2), 384),
    ],
    ids=lambda c: c.short() if isinstance(c, GemmConfig) else str(c),
)
def test_split_k_sums_the_partial_products(bits, cfg, k):
    m, top_k, n, group = 5, 3, 40, 128
    packed, scales = experts_weight(n, k, bits, group, seed=bits + k)
    ids, weights = routing(m, top_k, seed=4)
    r = moe_align(ids, E, cfg.block_m)
    xd = torch.randn(m * top_k, k, generator=torch.Generator().manual_seed(8)).to(torch.bfloat16)
    # the output holds garbage first: the launch must zero it before the splits add into it
    out = torch.full((m * top_k, n), 7.0)
    got = moe_gemm(xd, packed, scales, r, bits, group, topk_weights=weights, config=cfg, out=out)
    want = ref.moe_gemm_ref(xd, packed, scales, ids, bits, group, topk_weights=weights, out_dtype=torch.float32)
    tol = 5e-3 if (cfg.scale_b and bits == 4) else 1e-5
    assert rel_err(got, want) < tol
    # bf16 output: each split's partial is rounded once more when it is added
    got16 = moe_gemm(xd, packed, scales, r, bits, group, topk_weights=weights, config=cfg)
    assert got16.dtype == torch.bfloat16 and rel_err(got16, want) < 1e-2


def test_split_k_is_validated():
    with pytest.raises(ValueError, match="power of two"):
        GemmConfig(split_k=3)
    with pytest.raises(ValueError, match="tensor-core"):
        GemmConfig(block_m=4, block_n=16, kernel="fma", split_k=2)
    assert GemmConfig(mode=2, split_k=2).short().endswith("-sk2")


def test_fused_moe_matches_reference():
    bits, group, m, top_k, hidden, inter = 2, 128, 4, 2, 128, 128
    w13, s13 = experts_weight(2 * inter, hidden, bits, group, seed=11)
    w2, s2 = experts_weight(hidden, inter, bits, group, seed=12)
    ids, weights = routing(m, top_k, seed=5)
    x = torch.randn(m, hidden).to(torch.bfloat16)
    got = fused_moe(x, w13, s13, w2, s2, ids, weights, bits, group)
    want = ref.fused_moe_ref(x, w13, s13, w2, s2, ids, weights, bits, group)
    assert got.shape == (m, hidden) and got.dtype == torch.bfloat16
    assert rel_err(got, want) < 2e-2  # bf16 intermediates (the interpreter truncates, no rounding)
    # no tokens (an empty batch reaching a layer): an empty result, not a reshape error
    empty = fused_moe(x[:0], w13, s13, w2, s2, ids[:0], weights[:0], bits, group)
    assert empty.shape == (0, hidden) and empty.dtype == torch.bfloat16


def test_moe_gemm_rejects_mismatches():
    packed, scales = experts_weight(32, 128, 2, 128, seed=0)
    ids, _ = routing(3, 2, seed=0)
    r = moe_align(ids, E, 16)
    x = torch.zeros(3, 128, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="block_m"):
        moe_gemm(x, packed, scales, r, 2, config=GemmConfig(block_m=32))
    with pytest.raises(ValueError, match="rows"):
        moe_gemm(torch.zeros(5, 128, dtype=torch.bfloat16), packed, scales, r, 2)
    with pytest.raises(ValueError, match="experts"):
        moe_gemm(x, packed[:4], scales[:4], r, 2)
    with pytest.raises(ValueError, match="topk_weights"):
        moe_gemm(x, packed, scales, r, 2, topk_weights=torch.ones(3, 3))
