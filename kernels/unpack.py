"""Triton building blocks shared by every kernel that reads exact-width packed weights.

The storage is the Humming checkpoint's: unsigned values (signed code + offset) bit-packed LSB-first
into int32 words along the input dimension, ``32 // bits`` values per word. These helpers turn a
tile of such words into bfloat16 *biased* values ``128 + stored`` without any integer-to-float
conversion instruction: OR-ing the value into the mantissa of the bf16 pattern of 128.0 (0x4300)
is exact for values below 128, and the bias is removed after the matrix product by subtracting
``(128 + offset) * sum(activations)`` per output. Integer-to-float conversions run at a quarter of
the ALU rate on Hopper, which would make a 2-bit dequantizing GEMV compute-bound.

Two unpack modes, both exact and both tested:

* ``MODE_INTERLEAVE`` (0): every column of the tile holds a copy of its word (``tl.interleave``)
  and shifts by its own field offset. Tile column order is the natural K order.
* ``MODE_PAIR`` (1): Marlin-style pairing. One constant shift and one mask extract two fields
  (``i`` and ``i + half``) into the two 16-bit halves of an int32, so each pair of bf16 values
  costs two integer instructions. Tile columns are then in a fixed permuted K order, which the
  caller applies to the activation tile for free (it only changes load offsets); see
  :func:`tile_k_order`.

Only 2- and 4-bit values fit the bias trick (128 + 255 is not exact in bf16), which is all the
formats here need.
"""

from __future__ import annotations

import triton
import triton.language as tl

MODE_INTERLEAVE = 0
MODE_PAIR = 1
BF16_128 = 0x4300  # bit pattern of bfloat16 128.0; 128 + v is exact for 0 <= v < 128
BIAS = 128


def is_interpreted(kernel: object) -> bool:
    """True if ``kernel`` was decorated under ``TRITON_INTERPRET=1`` (Triton decides per kernel,
    at import). The interpreter's ``tl.dot`` multiplies bf16 bit patterns as integers, so such
    kernels feed their dots fp32 operands (exact for bf16 values) instead."""
    return type(kernel).__name__ == "InterpretedFunction"


@triton.jit
def mma_acc(a, b, acc, UPCAST: tl.constexpr):
    """``acc + a @ b`` chained on the tensor cores (fp32 operands only when interpreting)."""
    if UPCAST:
        r = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        r = tl.dot(a, b, acc)
    return r


@triton.jit
def mma(a, b, UPCAST: tl.constexpr):
    """``tl.dot`` in fp32 accumulation; fp32 operands only when interpreting on the CPU."""
    if UPCAST:
        r = tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        r = tl.dot(a, b)
    return r


@triton.jit
def tile_k_order(BLOCK_K: tl.constexpr, BITS: tl.constexpr, MODE: tl.constexpr):
    """K index (within the tile) of each tile column produced by :func:`unpack_biased`."""
    q = tl.arange(0, BLOCK_K)
    if MODE == 1:
        PW: tl.constexpr = 32 // BITS
        HALF: tl.constexpr = PW // 2
        r = q % PW
        field = r // 2 + (r % 2) * HALF
        k = (q // PW) * PW + field
    else:
        k = q
    return k


@triton.jit
def unpack_biased(w, BITS: tl.constexpr, MODE: tl.constexpr):
    """int32 words ``[R, C]`` -> bf16 ``[R, C * 32 // BITS]`` holding ``128 + stored value``."""
    PW: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    if MODE == 0:
        x = tl.interleave(w, w)
        x = tl.interleave(x, x)
        x = tl.interleave(x, x)
        if PW == 16:
            x = tl.interleave(x, x)
        shifts = (tl.arange(0, w.shape[1] * PW) % PW) * BITS
        v = ((x >> shifts[None, :]) & MASK) | 0x4300
        out = v.to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:
        # Written out rather than through helper functions: the CPU interpreter pays per call.
        PM: tl.constexpr = MASK | (MASK << 16)
        if PW == 16:
            p0 = (w & PM) | 0x43004300
            p1 = ((w >> 2) & PM) | 0x43004300
            p2 = ((w >> 4) & PM) | 0x43004300
            p3 = ((w >> 6) & PM) | 0x43004300
            p4 = ((w >> 8) & PM) | 0x43004300
            p5 = ((w >> 10) & PM) | 0x43004300
            p6 = ((w >> 12) & PM) | 0x43004300
            p7 = ((w >> 14) & PM) | 0x43004300
            q0 = tl.join(p0, p4)
            q1 = tl.join(p2, p6)
            q2 = tl.join(p1, p5)
            q3 = tl.join(p3, p7)
            pairs = tl.join(tl.join(q0, q1), tl.join(q2, q3))
        else:
            p0 = (w & PM) | 0x43004300
            p1 = ((w >> 4) & PM) | 0x43004300
            p2 = ((w >> 8) & PM) | 0x43004300
            p3 = ((w >> 12) & PM) | 0x43004300
            pairs = tl.join(tl.join(p0, p2), tl.join(p1, p3))
        lo = pairs.to(tl.int16)
        hi = (pairs >> 16).to(tl.int16)
        full = tl.join(lo, hi)
        out = tl.reshape(full, (w.shape[0], w.shape[1] * PW)).to(tl.bfloat16, bitcast=True)
    return out


@triton.jit
def pair_fields(w, BITS: tl.constexpr, INTERPRETED: tl.constexpr):
    """int32 ``w`` -> int32 holding bf16 ``128 + (w & MASK)`` low and ``128 + ((w >> 16) & MASK)`` high.

    One ``lop3`` with both constants: written as Triton ``&`` and ``|`` it becomes two instructions
    (a LOP3 takes one immediate), and with the bf16x2 constant as a run-time value instead Triton
    routed the MMA operand through shared memory (both seen in the sm_90 SASS). The interpreter
    has no inline assembly, so it gets the plain expression.
    """
    MASK: tl.constexpr = (1 << BITS) - 1
    if INTERPRETED:
        r = (w & (MASK | (MASK << 16))) | 0x43004300
    elif BITS == 4:
        r = tl.inline_asm_elementwise("lop3.b32 $0, $1, 0x000f000f, 0x43004300, 0xea;", "=r,r", [w],
                                      dtype=tl.int32, is_pure=True, pack=1)
    else:
        r = tl.inline_asm_elementwise("lop3.b32 $0, $1, 0x00030003, 0x43004300, 0xea;", "=r,r", [w],
                                      dtype=tl.int32, is_pure=True, pack=1)
    return r
