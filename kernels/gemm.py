"""Fused dequant-GEMM: bf16 activations ``[M, K]`` x packed 2/4-bit weight ``[N, K]`` -> ``[M, N]``.

One Triton kernel serves dense layers and (through :mod:`dedicated.kernels.moe_gemm`) grouped MoE
experts. Per K tile it unpacks the packed words to bf16 ``128 + stored`` (exact, no int->float
conversion, see :mod:`dedicated.kernels.unpack`), runs the tensor-core product, removes the bias
with ``(128 + offset) * rowsum(A)`` and applies the group scale in fp32. The scale is applied to
the partial product rather than to the weights, so the result is as exact as a bf16 GEMM on the
fp32-dequantized weight; a K tile never straddles two scale groups.

``swap_ab`` computes ``C^T = W A^T`` so that the weight rows fill the tensor core's M side (64+)
and the few tokens of a decode step sit on its narrow N side (16) instead of wasting a 64-row tile.
``scale_b`` instead multiplies the unpacked codes by their scale and rounds them to bf16 (exactly
the bf16-dequantized weight a torch reference would use), so the accumulator chains through the
K loop without a per-tile wait on the tensor cores.

The unpack ``mode`` decides how packed words become the MMA's weight operand. Modes 0 and 1 build
the whole ``[BLOCK_N, BLOCK_K]`` bf16 tile, which Triton then stores to shared memory and reloads
in the MMA layout. Mode 2 (:func:`_pair_register_loop`, the default since the third GPU run)
builds each operand register directly from a pair of fields and issues one MMA per pair: about
2.5x fewer instructions per weight and 1.3-1.6x faster decode on an H100
(docs/benchmarks-kernels.md).

``split_k`` gives one output tile several programs, each over a slice of K, that add their partial
products into the zeroed output (bf16 atomic adds: one more rounding per split, and the order of
the adds, hence the last bit, varies between runs); it keeps every SM busy when a decode batch has
few output tiles. The weights may be row-major ``[N, K*bits/32]`` words or, pair-ordered, K-tile-major
``[K/tile, N, tile*bits/32]`` (:mod:`dedicated.kernels.pair_order`), and the scales any strides: the
kernel takes a K-tile stride and a group stride. Pair-ordered weights laid out over 256-wide tiles
are read with ``block_k=256``: each tile then covers two scale groups (``GemmConfig.spans_two_groups``).
``tma`` loads each weight tile with one bulk tensor copy from a host-side descriptor
(:func:`dedicated.kernels.gemm_operands.weight_descriptor`) instead of per-thread asynchronous copies; it makes row-major words read
about as fast as K-tile-major ones.

``kernel="fma"`` is a second kernel for decode (one to a few tokens per expert): no tensor cores,
no shared-memory round trip. Each field of a word becomes the fp32 ``1 + v / 2**bits`` with one
shift and one mask-or (its bits placed at the top of the mantissa: exact), is multiplied by its
scale and fused-multiply-added into a per-element accumulator; the bias ``2**bits + offset`` is
removed once per output from the activations' sum. Two integer operations per weight, the floor
for a CUDA-core dequantizing GEMV; timed on the H100 it lost to the tensor-core kernel at every
shape, so no table uses it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dedicated.kernels.dequant import resolve_offset
from dedicated.kernels.gemm_config import GemmConfig, default_dense_config, resolve_config
from dedicated.kernels.gemm_operands import (check_activations, check_gemm_weights, prepare_activations,
                                             weight_descriptor, weight_strides)
from dedicated.kernels.pair_order import PAIR_TILE_K
from dedicated.kernels.unpack import is_interpreted, mma, mma_acc, pair_fields, tile_k_order, unpack_biased


@triton.jit(do_not_specialize=["M", "NUM_VALID", "NUM_PID_M"])
def dq_gemm_kernel(
    a_ptr, w_ptr, s_ptr, c_ptr, rw_ptr,
    sorted_ids_ptr, expert_ids_ptr, npad_ptr,
    M, N, K, NUM_VALID, NUM_PID_M,
    stride_am, stride_ak, stride_we, stride_wn, stride_wk, stride_se, stride_sn, stride_sg, stride_cm, stride_cn,
    BITS: tl.constexpr, GROUP: tl.constexpr, OFFSET: tl.constexpr,
    IS_MOE: tl.constexpr, A_ROW_DIV: tl.constexpr, MUL_ROUTED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SWAP_AB: tl.constexpr, MODE: tl.constexpr, UPCAST: tl.constexpr, SCALE_B: tl.constexpr,
    A_PERMUTED: tl.constexpr, SPLIT_K: tl.constexpr, W_TILED: tl.constexpr, W_TMA: tl.constexpr = False,
    TILES_N: tl.constexpr = 1,
):
    pid = tl.program_id(0)
    # m-blocks vary fastest: neighbouring programs share one weight tile (same expert) in L2; the
    # K split (split-K: several programs per output tile) varies slowest. A program computes TILES_N
    # neighbouring output tiles along N.
    pid_m = pid % NUM_PID_M
    pid_nk = pid // NUM_PID_M
    num_pid_n = tl.cdiv(tl.cdiv(N, BLOCK_N), TILES_N)
    pid_n = pid_nk % num_pid_n
    if SPLIT_K > 1:
        k_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
        k_lo = (pid_nk // num_pid_n) * k_per_split
        k_hi = tl.minimum(K, k_lo + k_per_split)
    else:
        k_lo = 0
        k_hi = K
    if k_lo >= k_hi:  # more splits than K tiles: this one has nothing to add
        return
    if IS_MOE:
        if pid_m * BLOCK_M >= tl.load(npad_ptr):
            return
        ids = tl.load(sorted_ids_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
        row_ok = ids < NUM_VALID
        expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
        a_rows = ids // A_ROW_DIV
        c_rows = ids
    else:
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        expert = 0
        a_rows = rows
        c_rows = rows
    if W_TMA and IS_MOE:
        expert = expert.to(tl.int32)  # descriptor coordinates are 32-bit
    # TILES_N > 1: one loop over (tile, K step) pairs, so the software pipeline runs on into the next
    # tile instead of paying its first loads' latency per tile (the epilogue sits in the loop, behind
    # a branch). A single tile's loop of one trip folds away.
    for j in tl.range(0, TILES_N, flatten=TILES_N > 1):
        _output_tile((pid_n * TILES_N + j) * BLOCK_N, a_ptr, w_ptr, s_ptr, c_ptr, rw_ptr, a_rows, c_rows, row_ok,
                     expert, k_lo, k_hi, N, stride_am, stride_ak, stride_we, stride_wn, stride_wk, stride_se,
                     stride_sn, stride_sg, stride_cm, stride_cn, BITS, GROUP, OFFSET, MUL_ROUTED, BLOCK_M, BLOCK_N,
                     BLOCK_K, SWAP_AB, MODE, UPCAST, SCALE_B, A_PERMUTED, SPLIT_K, W_TILED, W_TMA)


@triton.jit
def _output_tile(n0, a_ptr, w_ptr, s_ptr, c_ptr, rw_ptr, a_rows, c_rows, row_ok, expert, k_lo, k_hi, N,
                 stride_am, stride_ak, stride_we, stride_wn, stride_wk, stride_se, stride_sn, stride_sg, stride_cm,
                 stride_cn, BITS: tl.constexpr, GROUP: tl.constexpr, OFFSET: tl.constexpr, MUL_ROUTED: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SWAP_AB: tl.constexpr,
                 MODE: tl.constexpr, UPCAST: tl.constexpr, SCALE_B: tl.constexpr, A_PERMUTED: tl.constexpr,
                 SPLIT_K: tl.constexpr, W_TILED: tl.constexpr, W_TMA: tl.constexpr):
    """Output rows ``[n0, n0 + BLOCK_N)`` of one row block, over the K range ``[k_lo, k_hi)``."""
    PW: tl.constexpr = 32 // BITS
    n = n0 + tl.arange(0, BLOCK_N)
    n_ok = n < N
    # Mode 2 reads rows past N from row N - 1 instead of masking its loads (their outputs are never
    # stored); modes 0/1 mask, as rows past N must read as zero there.
    n_w = tl.minimum(n, N - 1) if MODE == 2 else n
    if W_TMA:  # w_ptr is a tensor descriptor over [E, N, words] or [E, K/BLOCK_K, N, words]
        w_base = w_ptr
    else:
        if W_TILED:
            # K-tile-major rows are one tile's words apart: as a constexpr, so that the compiler can
            # prove 16-byte alignment for 2-bit words too (the run-time stride 8 is not a multiple of
            # 16 and made every weight load a 4-byte copy, seen in the sm_90 SASS)
            w_rows = n_w[:, None] * (BLOCK_K // PW)
        else:
            w_rows = n_w[:, None] * stride_wn
        w_base = w_ptr + expert * stride_we + w_rows + tl.arange(0, BLOCK_K // PW)[None, :]
    s_base = s_ptr + expert * stride_se + n_w * stride_sn
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if MODE == 2:
        acc = _pair_register_loop(acc, a_ptr, a_rows, row_ok, w_base, s_base, k_lo, k_hi, stride_am, stride_ak,
                                  stride_wk, stride_sg, BITS, GROUP, OFFSET, BLOCK_N, BLOCK_K, SWAP_AB, UPCAST, SCALE_B, A_PERMUTED,
                                  W_TILED, W_TMA, expert, n0)
    else:
        acc = _unpacked_tile_loop(acc, a_ptr, a_rows, row_ok, w_base, s_base, n_ok, k_lo, k_hi, stride_am,
                                  stride_ak, stride_sg, BITS, GROUP, OFFSET, BLOCK_K, SWAP_AB, MODE, UPCAST, SCALE_B)
    if MUL_ROUTED:
        rw = tl.load(rw_ptr + c_rows, mask=row_ok, other=0.0).to(tl.float32)
        if SWAP_AB:
            acc = acc * rw[None, :]
        else:
            acc = acc * rw[:, None]
    out = acc.to(c_ptr.dtype.element_ty)
    if SWAP_AB:
        c_ptrs = c_ptr + c_rows.to(tl.int64)[None, :] * stride_cm + n[:, None] * stride_cn
        c_ok = row_ok[None, :] & n_ok[:, None]
    else:
        c_ptrs = c_ptr + c_rows.to(tl.int64)[:, None] * stride_cm + n[None, :] * stride_cn
        c_ok = row_ok[:, None] & n_ok[None, :]
    if SPLIT_K > 1:
        tl.atomic_add(c_ptrs, out, mask=c_ok, sem="relaxed")  # the caller zeroed the output
    else:
        tl.store(c_ptrs, out, mask=c_ok)


@triton.jit
def _unpacked_tile_loop(acc, a_ptr, a_rows, row_ok, w_base, s_base, n_ok, k_lo, k_hi, stride_am, stride_ak,
                        stride_sg, BITS: tl.constexpr, GROUP: tl.constexpr, OFFSET: tl.constexpr, BLOCK_K: tl.constexpr,
                        SWAP_AB: tl.constexpr, MODE: tl.constexpr, UPCAST: tl.constexpr, SCALE_B: tl.constexpr):
    """Unpack modes 0/1: the whole ``[BLOCK_N, BLOCK_K]`` weight tile becomes one bf16 operand."""
    PW: tl.constexpr = 32 // BITS
    korder = tile_k_order(BLOCK_K, BITS, MODE)
    a_base = a_ptr + a_rows.to(tl.int64)[:, None] * stride_am + korder[None, :] * stride_ak
    for k0 in range(k_lo, k_hi, BLOCK_K):
        a = tl.load(a_base + k0 * stride_ak, mask=row_ok[:, None], other=0.0)
        w = tl.load(w_base + k0 // PW, mask=n_ok[:, None], other=0)
        s = tl.load(s_base + (k0 // GROUP) * stride_sg, mask=n_ok, other=0.0).to(tl.float32)
        b = unpack_biased(w, BITS, MODE)
        if SCALE_B:
            # (128 + v) * s - (128 + offset) * s is exact in fp32; one rounding to bf16 after.
            bs = tl.fma(b.to(tl.float32), s[:, None], -(128.0 + OFFSET) * s[:, None]).to(tl.bfloat16)
            if SWAP_AB:
                acc = mma_acc(bs, tl.trans(a), acc, UPCAST)
            else:
                acc = mma_acc(a, tl.trans(bs), acc, UPCAST)
        else:
            corr = tl.sum(a.to(tl.float32), axis=1) * (128.0 + OFFSET)
            if SWAP_AB:
                t = mma(b, tl.trans(a), UPCAST)
                acc += (t - corr[None, :]) * s[:, None]
            else:
                t = mma(a, tl.trans(b), UPCAST)
                acc += (t - corr[:, None]) * s[None, :]
    return acc


@triton.jit
def _pair_register_loop(acc, a_ptr, a_rows, row_ok, w_base, s_base, k_lo, k_hi, stride_am, stride_ak,
                        stride_wk, stride_sg, BITS: tl.constexpr, GROUP: tl.constexpr, OFFSET: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, SWAP_AB: tl.constexpr, UPCAST: tl.constexpr,
                        SCALE_B: tl.constexpr, A_PERMUTED: tl.constexpr, W_TILED: tl.constexpr,
                        W_TMA: tl.constexpr, expert, n0):
    """Unpack mode 2: one MMA per field pair, its operand built in the registers the MMA reads.

    Per word, one shift and one mask-or (:func:`pair_fields`) give the int32 holding fields ``i``
    and ``i + PW/2`` as two bf16 ``128 + v``: exactly the register an MMA operand fragment wants
    for two consecutive K. The weight words are not masked by N (the caller clamps out-of-range
    rows to a valid one and masks the store): masked loads made Triton route the operand through
    shared memory. ``join`` + ``reshape`` only name that register as a ``[BLOCK_N, 2 * WC]``
    tile (no data moves: checked in the SASS), whose columns are K ``c * PW + i`` and
    ``c * PW + i + PW/2``; the matching activation columns are loaded in that order. With
    ``SCALE_B`` the bias and scale are applied in bf16x2 (subtract: exact; multiply: the one
    rounding a bf16 dequantization has) and the accumulator chains; without, the bias is removed
    after the product through the activations' sum and the scale is applied in fp32 per K tile.
    The activation columns of a pair are strided (``PW`` apart): fine for a few decode rows, but
    for prefill tiles they cost an element-wise load and shared-memory store each, so with
    ``A_PERMUTED`` pair ``i`` reads the contiguous columns ``[i * 2 * WC, (i + 1) * 2 * WC)`` of each
    K tile: either the caller reordered the activation columns (:func:`~dedicated.kernels.gemm_operands.permute_pair_columns`, one
    gather per call) or the weights were re-laid once into pair order
    (:mod:`dedicated.kernels.pair_order`) and natural activations already match.
    """
    PW: tl.constexpr = 32 // BITS
    HALF: tl.constexpr = PW // 2
    WC: tl.constexpr = BLOCK_K // PW
    # A K tile twice the scale group (GemmConfig.for_group allows it for pair-ordered columns only):
    # the first half of the pairs reads group 2j's scale, the second half group 2j + 1's.
    GROUPS: tl.constexpr = BLOCK_K // GROUP if BLOCK_K > GROUP else 1
    PAIRS_PER_GROUP: tl.constexpr = HALF // GROUPS
    q = tl.arange(0, 2 * WC)
    if A_PERMUTED:
        kq = q
        STEP: tl.constexpr = 2 * WC
    else:
        kq = (q // 2) * PW + (q % 2) * HALF
        STEP: tl.constexpr = 1
    a_base = a_ptr + a_rows.to(tl.int64)[:, None] * stride_am + kq[None, :] * stride_ak
    for k0 in range(k_lo, k_hi, BLOCK_K):
        # K-tile-major words are a row apart per K tile; in a row-major layout the stride is the
        # constexpr BLOCK_K // PW, which keeps the compiler's 16-byte alignment proof for 2-bit words
        # (a run-time stride of 8 words loses it)
        if W_TMA:  # one bulk copy of the tile; rows past N read as zero (their outputs are not stored)
            if W_TILED:
                w = tl.reshape(w_base.load([expert, k0 // BLOCK_K, n0, 0]), (BLOCK_N, WC))
            else:
                w = tl.reshape(w_base.load([expert, n0, k0 // PW]), (BLOCK_N, WC))
        else:
            w = tl.load(w_base + ((k0 // BLOCK_K) * stride_wk if W_TILED else k0 // PW))
        if GROUPS == 1:
            s = tl.load(s_base + (k0 // GROUP) * stride_sg)
        else:
            s, s_hi = tl.split(tl.load(s_base[:, None] + (k0 // GROUP + tl.arange(0, 2))[None, :] * stride_sg))
        t = tl.zeros(acc.shape, dtype=tl.float32)
        a_sum = tl.zeros((a_rows.shape[0], 2 * WC), dtype=tl.float32)
        for i in tl.static_range(HALF):
            if i < PAIRS_PER_GROUP:
                sg = s
            else:
                sg = s_hi
            p = pair_fields(w >> (i * BITS), BITS, UPCAST)
            b = tl.join(p.to(tl.int16), (p >> 16).to(tl.int16))
            b = tl.reshape(b, (BLOCK_N, 2 * WC)).to(tl.bfloat16, bitcast=True)
            a = tl.load(a_base + (k0 + i * STEP) * stride_ak, mask=row_ok[:, None], other=0.0)
            if SCALE_B:
                if UPCAST:  # the interpreter does no bf16 arithmetic; fp32 rounds the same (exact product)
                    bs = ((b.to(tl.float32) - (128.0 + OFFSET)) * sg.to(tl.float32)[:, None]).to(tl.bfloat16)
                else:
                    bs = (b - (128.0 + OFFSET)).to(tl.bfloat16) * sg.to(tl.bfloat16)[:, None]
                if SWAP_AB:
                    acc = mma_acc(bs, tl.trans(a), acc, UPCAST)
                else:
                    acc = mma_acc(a, tl.trans(bs), acc, UPCAST)
            else:
                a_sum += a.to(tl.float32)  # reduced once per scale group, below
                if SWAP_AB:
                    t = mma_acc(b, tl.trans(a), t, UPCAST)
                else:
                    t = mma_acc(a, tl.trans(b), t, UPCAST)
                if (i + 1) % PAIRS_PER_GROUP == 0:  # the group's last pair: remove the bias, apply its scale
                    asum = tl.sum(a_sum, axis=1)
                    sf = sg.to(tl.float32)
                    if SWAP_AB:
                        acc += (t - asum[None, :] * (128.0 + OFFSET)) * sf[:, None]
                    else:
                        acc += (t - asum[:, None] * (128.0 + OFFSET)) * sf[None, :]
                    if i + 1 < HALF:
                        t = tl.zeros(acc.shape, dtype=tl.float32)
                        a_sum = tl.zeros((a_rows.shape[0], 2 * WC), dtype=tl.float32)
    return acc


@triton.jit(do_not_specialize=["M", "NUM_VALID", "NUM_PID_M"])
def dq_fma_kernel(
    a_ptr, w_ptr, s_ptr, c_ptr, rw_ptr,
    sorted_ids_ptr, expert_ids_ptr, npad_ptr,
    M, N, K, NUM_VALID, NUM_PID_M,
    stride_am, stride_ak, stride_we, stride_wn, stride_wk, stride_se, stride_sn, stride_sg, stride_cm, stride_cn,
    BITS: tl.constexpr, GROUP: tl.constexpr, OFFSET: tl.constexpr,
    IS_MOE: tl.constexpr, A_ROW_DIV: tl.constexpr, MUL_ROUTED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    PW: tl.constexpr = 32 // BITS
    BKW: tl.constexpr = BLOCK_K // PW
    FMASK: tl.constexpr = ((1 << BITS) - 1) << (23 - BITS)
    pid = tl.program_id(0)
    pid_m = pid % NUM_PID_M
    pid_n = pid // NUM_PID_M
    if IS_MOE:
        if pid_m * BLOCK_M >= tl.load(npad_ptr):
            return
        ids = tl.load(sorted_ids_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
        row_ok = ids < NUM_VALID
        expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
        a_rows = ids // A_ROW_DIV
        c_rows = ids
    else:
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        expert = 0
        a_rows = rows
        c_rows = rows
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    kw = tl.arange(0, BKW)
    a_base = a_ptr + a_rows.to(tl.int64)[:, None] * stride_am + (kw * PW)[None, :] * stride_ak
    w_base = w_ptr + expert * stride_we + n[:, None] * stride_wn + kw[None, :]
    s_base = s_ptr + expert * stride_se + n * stride_sn
    acc = tl.zeros((BLOCK_M, BLOCK_N, BKW), dtype=tl.float32)
    corr = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        w = tl.load(w_base + k0 // PW, mask=n_ok[:, None], other=0)
        s = tl.load(s_base + (k0 // GROUP) * stride_sg, mask=n_ok, other=0.0).to(tl.float32)
        asum = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for j in tl.static_range(PW):
            SH = 23 - BITS - BITS * j  # a constexpr per unrolled step (not re-annotated: Triton forbids it)
            if SH >= 0:
                bits_j = ((w << SH) & FMASK) | 0x3F800000
            else:
                bits_j = ((w >> (-SH)) & FMASK) | 0x3F800000
            f = bits_j.to(tl.float32, bitcast=True) * s[:, None]  # scale * (1 + v / 2**BITS)
            a = tl.load(a_base + (k0 + j) * stride_ak, mask=row_ok[:, None], other=0.0).to(tl.float32)
            acc += a[:, None, :] * f[None, :, :]
            asum += tl.sum(a, axis=1)
        corr += asum[:, None] * s[None, :]
    # sum_k a * code * s = 2**BITS * sum a * f * s - (2**BITS + OFFSET) * s * sum a
    out = tl.sum(acc, axis=2) * (1 << BITS) - corr * ((1 << BITS) + OFFSET)
    if MUL_ROUTED:
        rw = tl.load(rw_ptr + c_rows, mask=row_ok, other=0.0).to(tl.float32)
        out = out * rw[:, None]
    c_ptrs = c_ptr + c_rows.to(tl.int64)[:, None] * stride_cm + n[None, :] * stride_cn
    tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


def launch(cfg: GemmConfig, x, packed, scales, out, rw, sorted_ids, expert_ids, npad,
           m, n, k, num_valid, num_pid_m, w_strides, s_strides, bits, group, offset,
           is_moe, row_div, mul_routed, pair_ordered: bool = False, w_tiled: bool = False) -> None:
    """One launch of the chosen kernel; shared by the dense and the MoE entry points."""
    interpreted = is_interpreted(dq_gemm_kernel)
    c = out
    if cfg.split_k > 1:
        # The splits add their partial products into a zeroed output with atomic adds (bf16 ones
        # on the GPU). Triton's interpreter has no bf16 atomics: it adds into an fp32 copy.
        c = torch.zeros(out.shape, dtype=torch.float32, device=out.device) if interpreted else out.zero_()
    common = dict(
        BITS=bits, GROUP=group, OFFSET=offset, IS_MOE=is_moe, A_ROW_DIV=row_div, MUL_ROUTED=mul_routed,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    args = (x, packed, scales, c, rw, sorted_ids, expert_ids, npad, m, n, k, num_valid, num_pid_m,
            x.stride(0), x.stride(1), *w_strides, *s_strides, c.stride(0), c.stride(1))
    grid = (num_pid_m * triton.cdiv(triton.cdiv(n, cfg.block_n), cfg.tiles_n) * cfg.split_k,)
    if cfg.max_regs is not None and not interpreted:
        common["maxnreg"] = cfg.max_regs
    if cfg.kernel == "fma":
        dq_fma_kernel[grid](*args, **common)
        return
    if cfg.pair_mma_too_short(bits):
        raise ValueError(f"unpack mode 2 needs block_k >= {8 * 32 // bits} at {bits} bits (a pair MMA takes 16 K)")
    if cfg.tma:
        args = (args[0], weight_descriptor(packed, cfg, bits, is_moe, w_tiled), *args[2:])
    dq_gemm_kernel[grid](*args, SWAP_AB=cfg.swap_ab, MODE=cfg.mode, SCALE_B=cfg.scale_b,
                         A_PERMUTED=cfg.permute_a or pair_ordered, SPLIT_K=cfg.split_k, W_TILED=w_tiled,
                         W_TMA=cfg.tma, TILES_N=cfg.tiles_n, UPCAST=interpreted, **common)
    if c is not out:
        out.copy_(c)


def dequant_gemm(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    bits: int,
    group_size: int = 128,
    offset: int | None = None,
    config: GemmConfig | None = None,
    out: torch.Tensor | None = None,
    pair_ordered: bool = False,
    pair_tile_k: int = PAIR_TILE_K,
) -> torch.Tensor:
    """``x @ dequantize(packed, scales).T`` for a dense layer, never materialising the weight.

    ``pair_ordered``: ``packed`` is in the layout of :func:`dedicated.kernels.pair_order.to_pair_order`
    (built over ``pair_tile_k``-wide K tiles).
    """
    n, k, tiled = check_gemm_weights(packed, scales, bits, group_size, experts=False, pair_ordered=pair_ordered,
                                     pair_tile_k=pair_tile_k)
    check_activations(x, k, packed)
    off = resolve_offset(bits, offset)
    m = x.shape[0]
    default = default_dense_config(m, n, k, bits)
    if pair_ordered:
        default = default.for_pair_tile(pair_tile_k, bits)
    cfg = resolve_config(config or default, group_size, bits, pair_ordered, pair_tile_k)
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    x = prepare_activations(x, cfg, bits)
    num_pid_m = triton.cdiv(m, cfg.block_m)
    launch(cfg, x, packed, scales, out, x, x, x, x, m, n, k, m, num_pid_m,
           (0, *weight_strides(packed, tiled)), (0, *scales.stride()), bits, group_size, off,
           is_moe=False, row_div=1, mul_routed=False, pair_ordered=pair_ordered, w_tiled=tiled)
    return out
