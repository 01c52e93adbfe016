"""Suite-wide markers: GPU tests are skipped, loudly, on machines without an NVIDIA GPU."""

from __future__ import annotations

import glob
import os

import pytest

# Without an NVIDIA GPU every Triton kernel can only run in Triton's interpreter, and Triton fixes
# the mode of each @triton.jit function when its module is imported. Setting the variable here,
# before any test module imports triton, keeps the whole session in one mode (a GPU test module
# that imports the kernels at collection time would otherwise pin them to compiled mode).
if not glob.glob("/dev/nvidia[0-9]*"):
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any(item.get_closest_marker("gpu") for item in items) and not _has_cuda():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU (runs on the device machine)")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)
