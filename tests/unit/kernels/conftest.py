"""Run this folder's Triton kernels on the CPU through Triton's interpreter.

Triton decides per kernel, when its module is imported, whether ``@triton.jit`` compiles for a
GPU or interprets with numpy (``TRITON_INTERPRET=1``). So this file sets the variable, drops any
``dedicated.kernels`` module that an earlier test imported in compiled mode, imports them all
interpreted, and restores the variable; the interpreter also reads it while launching, so an
autouse fixture sets it again around each test of this folder only. Tests elsewhere in the
session are unaffected. (Run ``tests/gpu/test_kernels_gpu.py`` in its own pytest process: it
needs the compiled kernels.)
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest

_MODULES = ("unpack", "dequant", "gemm", "configs", "moe_gemm", "reference", "gsq_relax", "gptq_block")

_previous = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    for _name in list(sys.modules):
        if _name.startswith("dedicated.kernels."):
            del sys.modules[_name]
    for _mod in _MODULES:
        importlib.import_module(f"dedicated.kernels.{_mod}")
finally:
    if _previous is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _previous


@pytest.fixture(autouse=True)
def _interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def random_packed_experts(n: int, k: int, bits: int, seed: int, experts: int = 8, group: int = 128):
    """Seeded random codes packed in the checkpoint layout ``[experts, n, k*bits/32]`` and bf16
    group scales in [0.002, 0.052): a pair read with a neighbouring group's scale is visibly wrong."""
    import torch

    from dedicated.quantize_job.bitpack import pack

    g = torch.Generator().manual_seed(seed)
    half = 1 << (bits - 1)
    codes = torch.randint(-half, half, (experts, n, k), generator=g)
    scales = (torch.rand(experts, n, k // group, generator=g) * 0.05 + 0.002).to(torch.bfloat16)
    return pack(codes + half, bits), scales


def rel_err(a, b) -> float:
    """Relative Frobenius error of ``a`` against ``b``."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def small_routed_mlp(bits: int, hidden: int, inter: int, seed: int, group: int = 128):
    """A 4-token, top-2 routed-expert MLP over 8 experts and its fp32 reference output:
    ``(w13, s13, w2, s2, ids, topk_weights, x, want)`` with weights in the checkpoint layout."""
    import torch

    from dedicated.kernels import reference as ref

    w13, s13 = random_packed_experts(2 * inter, hidden, bits, seed, group=group)
    w2, s2 = random_packed_experts(hidden, inter, bits, seed + 1, group=group)
    ids = torch.tensor([[0, 1], [2, 3], [1, 5], [0, 4]])
    tw = torch.full((4, 2), 0.5)
    x = torch.randn(4, hidden, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    return w13, s13, w2, s2, ids, tw, x, ref.fused_moe_ref(x, w13, s13, w2, s2, ids, tw, bits, group)
