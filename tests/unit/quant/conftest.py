"""Shared fixtures of the quantization tests: a tiny MoE model built (not downloaded) per test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    # The quantizers' small tensors gain nothing from threads, and on a busy shared CPU OpenMP's
    # spinning makes them ~30x slower; restore the setting for whatever runs next.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_moe():
    """A randomly initialised 2-layer Qwen2-MoE (4 experts, top-2, shared expert), fp32, eval mode."""
    from transformers import Qwen2MoeForCausalLM

    from dedicated.quantize_job.tinymoe.config import tiny_moe_config

    torch.manual_seed(0)
    model = Qwen2MoeForCausalLM(tiny_moe_config("test")).eval()
    # Random init gives tiny, nearly uniform weights; widen them so quantization error is visible.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(5.0)
    return model


@pytest.fixture
def calib_ids():
    return torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(1))


def correlated_problem(experts: int = 3, out: int = 32, inp: int = 256, tokens: int = 1024, seed: int = 0):
    """Weights and Hessians with correlated, outlier-heavy inputs, like real activations."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(inp, inp, generator=g) / inp**0.5 + torch.eye(inp)
    gain = 1 + 4 * (torch.rand(inp, generator=g) < 0.05).float()
    x = (torch.randn(experts, tokens, inp, generator=g) @ mix) * gain
    h = 2 * x.transpose(1, 2) @ x / tokens
    w = torch.randn(experts, out, inp, generator=g) * 0.02
    return w, h
