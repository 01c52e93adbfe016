"""GPTQ's fused in-block loop (Triton interpreter) against the torch column loop it replaces."""

from __future__ import annotations

import functools

import pytest
import torch

from dedicated.kernels.gptq_block import gptq_block
from dedicated.quantize_job import gptq as gptq_module
from dedicated.quantize_job.gptq import GPTQConfig, gptq


def problem(e: int, o: int, i: int, seed: int):
    """Weights and a Hessian of correlated inputs, so errors really spread across columns."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(e, 4 * i, i, generator=g) + 0.5 * torch.randn(e, 4 * i, 1, generator=g)
    return torch.randn(e, o, i, generator=g) * 0.02, x.transpose(-1, -2) @ x


@pytest.fixture
def fused_on_cpu(monkeypatch):
    """``use_kernel=True`` runs the interpreted kernel on the CPU (the real entry point insists on CUDA)."""
    monkeypatch.setattr(gptq_module, "_fused_block",
                        lambda device: functools.partial(gptq_module._quantize_block_fused, gptq_block))


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("block_size,group", [(128, 64), (192, 64)])
def test_fused_block_loop_gives_the_torch_loops_codes(fused_on_cpu, bits, act_order, block_size, group):
    # 20 rows: a partial row block; (192, 64) over 256 columns: a 192-wide block (not a power of two,
    # masked columns) and a 64-wide last one; two or three groups per block, searched one by one
    w, h = problem(2, 20, 256, seed=bits + 3 * act_order + block_size)
    cfg = GPTQConfig(act_order=act_order, block_size=block_size)
    want = gptq(w, h, bits, group, cfg)
    got = gptq(w, h, bits, group, GPTQConfig(act_order=act_order, block_size=block_size, use_kernel=True))
    assert torch.equal(got.scales, want.scales)
    assert torch.equal(got.codes, want.codes)


def test_fused_block_updates_only_the_columns_asked_for():
    w, h = problem(1, 5, 64, seed=1)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h + 0.01 * torch.eye(64))), upper=True)
    w1, err = w.clone(), torch.zeros_like(w)
    q = torch.full((1, 5, 64), 7, dtype=torch.int8)
    scales = torch.full((1, 5, 64), 0.01)
    gptq_block(w1, u, scales, q, err, 16, 32, -2, 1)
    assert torch.equal(w1[..., :16], w[..., :16]) and not torch.equal(w1[..., 32:], w[..., 32:])
    assert bool((q[..., 16:32] != 7).any()) and bool((q[..., :16] == 7).all()) and bool((q[..., 32:] == 7).all())
    assert int(q[..., 16:32].min()) >= -2 and int(q[..., 16:32].max()) <= 1
    assert bool((err[..., :16] == 0).all()) and bool((err[..., 32:] == 0).all())


def test_fused_block_rejects_mismatched_operands():
    w1, err = torch.zeros(1, 4, 32), torch.zeros(1, 4, 32)
    u, s, q = torch.eye(32).unsqueeze(0), torch.ones(1, 4, 32), torch.zeros(1, 4, 32, dtype=torch.int8)
    with pytest.raises(ValueError, match="shapes do not match"):
        gptq_block(w1, torch.eye(16).unsqueeze(0), s, q, err, 0, 32, -2, 1)
    with pytest.raises(TypeError, match="codes must be int8"):
        gptq_block(w1, u, s, q.float(), err, 0, 32, -2, 1)
    with pytest.raises(ValueError, match="outside the block"):
        gptq_block(w1, u, s, q, err, 8, 40, -2, 1)
    with pytest.raises(ValueError, match="fp32 with the same strides"):
        gptq_block(w1.double(), u, s, q, err, 0, 32, -2, 1)


def test_use_kernel_needs_cuda():
    w, h = problem(1, 4, 128, seed=2)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        gptq(w, h, 2, 128, GPTQConfig(use_kernel=True))


def test_default_uses_the_kernel_only_where_it_runs():
    """``use_kernel=None`` (the default) is the kernel on CUDA and the torch loop elsewhere, silently."""
    assert GPTQConfig().use_kernel is None
    cpu = torch.device("cpu")
    assert gptq_module._block_loop(cpu, None) is gptq_module._quantize_block_torch
    assert gptq_module._block_loop(cpu, False) is gptq_module._quantize_block_torch
    with pytest.raises(ValueError, match="needs a CUDA device"):
        gptq_module._block_loop(cpu, True)
    w, h = problem(1, 4, 128, seed=2)
    assert torch.equal(gptq(w, h, 2, 128).codes, gptq(w, h, 2, 128, GPTQConfig(use_kernel=False)).codes)
