"""Dequantize exact-width packed Humming weights (2/4-bit codes + bf16 group scales) to bf16.

Storage (see ``quantize_job/bitpack.py``): ``packed`` is int32 ``[..., N, K * bits / 32]`` with the
unsigned values ``code + offset`` bit-packed LSB-first along K; ``scales`` is ``[..., N, K / group]``.
The dequantized weight is ``(stored - offset) * scale``, computed in fp32 and rounded once to the
output dtype, which is exactly what ``QuantizedWeight.dequantize(torch.bfloat16)`` gives.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

from dedicated.kernels.unpack import unpack_biased

SUPPORTED_BITS = (2, 4)


def default_offset(bits: int) -> int:
    """Humming's unsigned-storage offset: stored = code + 2**(bits-1), e.g. {-2..1} -> {0..3}.

    The quantize Job's Humming exporter (``quantize_job/humming/format.py``, ``HummingSpec.offset``)
    is the authority; the kernels read it from there so the two can never disagree, and fall back
    to the same midpoint only where that module is absent.
    """
    check_bits(bits)
    spec = _humming_spec_class()
    if spec is None:
        return 1 << (bits - 1)
    return int(spec(bits=bits, group_size=128).offset)


@functools.lru_cache(maxsize=1)
def _humming_spec_class():
    """``HummingSpec`` from the exporter's format module, without importing its package.

    ``dedicated.quantize_job.humming``'s ``__init__`` pulls in the whole repack pipeline
    (compressed-tensors, tens of seconds to import); ``format.py`` itself needs only ``bitpack``.
    """
    name = "dedicated.quantize_job.humming.format"
    module = sys.modules.get(name)
    if module is None:
        import dedicated.quantize_job as job

        path = next((Path(p) / "humming" / "format.py" for p in job.__path__
                     if (Path(p) / "humming" / "format.py").is_file()), None)
        if path is None:
            return None
        private = "dedicated.kernels._humming_format"
        spec = importlib.util.spec_from_file_location(private, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[private] = module  # dataclasses look their module up while being defined
        spec.loader.exec_module(module)
    return getattr(module, "HummingSpec", None)


def check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(
            f"the Triton kernels support {SUPPORTED_BITS}-bit weights, got bits={bits} "
            "(8-bit values do not fit the exact bf16 bias trick; 3-bit is not word-aligned)"
        )


def resolve_offset(bits: int, offset: int | None) -> int:
    check_bits(bits)
    if offset is None:
        return default_offset(bits)
    if not 0 <= offset < (1 << bits):
        raise ValueError(f"offset {offset} outside [0, {1 << bits}) for {bits}-bit storage")
    return int(offset)


def check_packed(packed: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int,
                 tiled: bool = False) -> tuple[int, int]:
    """Validate a packed weight and its scales; return ``(N, K)`` of one matrix.

    ``tiled``: the weight is K-tile-major, ``[..., K/128, N, 128*bits/32]``
    (:func:`dedicated.kernels.pair_order.to_pair_order` with ``tile_major=True``). Scales may have
    any strides (an N-contiguous copy makes each K tile's scales one contiguous read).
    """
    check_bits(bits)
    if packed.dtype != torch.int32:
        raise TypeError(f"packed weights must be int32, got {packed.dtype}")
    if packed.dim() - tiled not in (2, 3):
        raise ValueError(f"packed weights must be [N, K*bits/32] or [E, N, K*bits/32], got {tuple(packed.shape)}")
    if group_size < 16 or group_size & (group_size - 1):
        raise ValueError(f"group_size must be a power of two >= 16, got {group_size}")
    if tiled:
        lead, n, words = packed.shape[:-3], packed.shape[-2], packed.shape[-3] * packed.shape[-1]
    else:
        lead, n, words = packed.shape[:-2], packed.shape[-2], packed.shape[-1]
    k = words * 32 // bits
    if k % group_size:
        raise ValueError(f"input dim {k} is not a multiple of group_size {group_size}")
    expected = (*lead, n, k // group_size)
    if tuple(scales.shape) != expected:
        raise ValueError(f"scales must be {expected} for packed weights {tuple(packed.shape)}, got {tuple(scales.shape)}")
    if scales.device != packed.device:
        raise ValueError(f"scales are on {scales.device} but packed weights on {packed.device}")
    if packed.stride(-1) != 1:
        raise ValueError("packed weights must be contiguous along their last dimension")
    return n, k


@triton.jit
def _dequant_kernel(
    w_ptr, s_ptr, o_ptr,
    N, K,
    stride_we, stride_wn, stride_se, stride_sn, stride_oe, stride_on,
    BITS: tl.constexpr, GROUP: tl.constexpr, OFFSET: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    PW: tl.constexpr = 32 // BITS
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    e = tl.program_id(2).to(tl.int64)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    kw = pid_k * (BLOCK_K // PW) + tl.arange(0, BLOCK_K // PW)
    w = tl.load(w_ptr + e * stride_we + n[:, None] * stride_wn + kw[None, :], mask=n_mask[:, None], other=0)
    v = unpack_biased(w, BITS, 0).to(tl.float32) - (128.0 + OFFSET)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    s = tl.load(s_ptr + e * stride_se + n[:, None] * stride_sn + (k // GROUP)[None, :], mask=n_mask[:, None], other=0)
    out = (v * s.to(tl.float32)).to(o_ptr.dtype.element_ty)
    tl.store(o_ptr + e * stride_oe + n[:, None] * stride_on + k[None, :], out, mask=n_mask[:, None])


def dequantize(
    packed: torch.Tensor,
    scales: torch.Tensor,
    bits: int,
    group_size: int = 128,
    offset: int | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Packed ``[N, K*bits/32]`` (or ``[E, N, ...]``) + scales -> dense ``[N, K]`` (or ``[E, N, K]``)."""
    n, k = check_packed(packed, scales, bits, group_size)
    scales = scales.contiguous()  # this kernel reads each row's groups contiguously
    off = resolve_offset(bits, offset)
    squeeze = packed.dim() == 2
    p3 = packed.unsqueeze(0) if squeeze else packed
    s3 = scales.unsqueeze(0) if squeeze else scales
    e = p3.shape[0]
    out = torch.empty((e, n, k), dtype=out_dtype, device=packed.device)
    if out.numel():
        block_k = 128 if k % 128 == 0 else (64 if k % 64 == 0 else 32)
        if k % block_k:
            raise ValueError(f"input dim {k} must be a multiple of 32")
        block_n = 32
        grid = (triton.cdiv(n, block_n), k // block_k, e)
        _dequant_kernel[grid](
            p3, s3, out, n, k,
            p3.stride(0), p3.stride(1), s3.stride(0), s3.stride(1), out.stride(0), out.stride(1),
            BITS=bits, GROUP=group_size, OFFSET=off, BLOCK_N=block_n, BLOCK_K=block_k,
        )
    return out[0] if squeeze else out
