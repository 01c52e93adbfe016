"""GPTQ's in-block column loop, fused into one Triton launch per block of columns.

In :func:`dedicated.quantize_job.gptq.gptq` each column of a block costs about six small torch ops
(divide, round, clamp, error, rank-1 update, two copies), so a 2048-column layer is ~12 000 launches
and the GPU idles most of the time (run 2 of issue 7: 649 ms wall, 117 ms of GPU work). The loop
is sequential along columns but independent along rows: row ``r``'s rounding error of column ``j``
changes only row ``r``'s later columns (``W[r, k] -= err_r * U[j, k]``). So a program here owns a
few rows of one expert, keeps their slice of the block in registers and walks the block's columns
in order; only the far-field update of the later blocks (one ``bmm``) stays in torch.

Arithmetic is the torch loop's in fp32: divisions round to nearest (``div_rn``), rounding is half
to even (as ``torch.round``), the clamp is the code range. On the GPU the compiler fuses
``a - b * c`` into one FMA where torch rounds twice, so a code that lies exactly on a rounding
boundary can differ; the tests bound how often.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_ROUND_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23: (x + M) - M rounds fp32 x half to even for |x| < 2**22


@triton.jit
def _gptq_block_kernel(
    w_ptr, u_ptr, s_ptr, q_ptr, err_ptr,
    rows_total, width, c0, c1,
    stride_we, stride_wr, stride_ue, stride_ui, stride_uj, stride_se, stride_sr, stride_sc,
    stride_qe, stride_qr, stride_qc,
    LO: tl.constexpr, HI: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    expert = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < rows_total
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < width
    w_base = w_ptr + expert * stride_we + rows[:, None] * stride_wr + cols[None, :]
    tile_ok = row_ok[:, None] & col_ok[None, :]
    w = tl.load(w_base, mask=tile_ok, other=0.0)
    err_base = err_ptr + expert * stride_we + rows * stride_wr
    s_base = s_ptr + expert * stride_se + rows * stride_sr
    q_base = q_ptr + expert * stride_qe + rows * stride_qr
    u_base = u_ptr + expert * stride_ue
    for i in range(c0, c1):
        here = cols == i
        w_i = tl.sum(tl.where(here[None, :], w, 0.0), axis=1)  # column i of every row (exact: one non-zero term)
        s = tl.load(s_base + i * stride_sc, mask=row_ok, other=1.0)
        x = tl.div_rn(w_i, s)
        q = tl.minimum(tl.maximum((x + _ROUND_MAGIC) - _ROUND_MAGIC, LO), HI)
        u = tl.load(u_base + i * stride_ui + cols * stride_uj, mask=col_ok, other=0.0)  # row i of U (zero below i)
        u_ii = tl.sum(tl.where(here, u, 0.0), axis=0)
        err = tl.div_rn(w_i - q * s, u_ii)
        w = w - err[:, None] * tl.where(cols >= i, u, 0.0)[None, :]
        tl.store(q_base + i * stride_qc, q.to(tl.int8), mask=row_ok)
        tl.store(err_base + i, err, mask=row_ok)
    tl.store(w_base, w, mask=tile_ok)


def gptq_block(w1: torch.Tensor, u1: torch.Tensor, col_scales: torch.Tensor, q: torch.Tensor, err: torch.Tensor,
               c0: int, c1: int, lo: int, hi: int, block_rows: int = 16) -> None:
    """Quantize columns ``[c0, c1)`` of one block in place.

    ``w1`` ``[E, O, b]`` fp32, contiguous rows: the block's weights, updated in place through the
    block's last column (the next group's scale search reads them). ``u1`` ``[E, b, b]``: the block
    of the upper Cholesky factor of ``H^-1``. ``col_scales`` ``[E, O, b]`` (any strides; a per-row
    scale expanded over the block has column stride 0). Writes codes into ``q`` ``[E, O, b]`` int8
    and the scaled errors into ``err`` (``w1``'s shape and strides).
    """
    e, o, b = w1.shape
    if w1.dtype != torch.float32 or err.dtype != torch.float32 or w1.stride(-1) != 1 or err.stride() != w1.stride():
        raise ValueError("w1 and err must be fp32 with the same strides and contiguous rows")
    if tuple(u1.shape) != (e, b, b) or tuple(col_scales.shape) != (e, o, b) or tuple(q.shape) != (e, o, b):
        raise ValueError(f"shapes do not match: w1 {tuple(w1.shape)}, u1 {tuple(u1.shape)}, "
                         f"scales {tuple(col_scales.shape)}, q {tuple(q.shape)}")
    if q.dtype != torch.int8:
        raise TypeError(f"codes must be int8, got {q.dtype}")
    if not 0 <= c0 <= c1 <= b:
        raise ValueError(f"column range [{c0}, {c1}) is outside the block of {b}")
    if c0 == c1 or o == 0 or e == 0:
        return
    grid = (triton.cdiv(o, block_rows), e)
    _gptq_block_kernel[grid](
        w1, u1, col_scales, q, err, o, b, c0, c1,
        w1.stride(0), w1.stride(1), u1.stride(0), u1.stride(1), u1.stride(2),
        col_scales.stride(0), col_scales.stride(1), col_scales.stride(2), q.stride(0), q.stride(1), q.stride(2),
        LO=lo, HI=hi, BLOCK_R=block_rows, BLOCK_C=triton.next_power_of_2(b),
    )
