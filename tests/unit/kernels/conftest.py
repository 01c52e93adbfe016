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

_MODULES = ("unpack", "dequant", "gemm", "configs", "moe_gemm", "reference", "gsq_relax")

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
