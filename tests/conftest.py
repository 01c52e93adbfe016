"""Suite-wide markers: GPU tests are skipped, loudly, on machines without an NVIDIA GPU."""

from __future__ import annotations

import pytest


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
