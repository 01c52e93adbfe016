"""The quantizers and the engine on CUDA: the same math as on the CPU, and bounded GPU memory.

The fused Triton soft-assignment path of GSQ (``use_kernel=True``) must agree with the plain-torch
path when both get the same Gumbel noise; GPTQ on the GPU must agree with the CPU result; the
engine must leave the model on the CPU and keep only one layer's worth of state on the GPU.
"""

from __future__ import annotations

import copy

import pytest
import torch

from dedicated.quantize_job.gptq import gptq, reconstruction_error
from dedicated.quantize_job.gsq import GSQConfig, gsq
from dedicated.quantize_job.rtn import dequantize

pytestmark = pytest.mark.gpu


def _problem(experts=4, out=256, inp=512, tokens=4096, seed=0, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(inp, inp, generator=g) / inp**0.5 + torch.eye(inp)
    x = torch.randn(experts, tokens, inp, generator=g) @ mix
    h = 2 * x.transpose(1, 2) @ x / tokens
    w = torch.randn(experts, out, inp, generator=g) * 0.02
    return w.to(device), h.to(device)


def test_gptq_on_gpu_matches_cpu():
    w, h = _problem()
    gpu = gptq(w, h, 2, 128)
    cpu = gptq(w.cpu(), h.cpu(), 2, 128)
    agree = (gpu.codes.cpu() == cpu.codes).float().mean().item()
    assert agree > 0.995
    e_gpu = reconstruction_error(w, dequantize(gpu.codes, gpu.scales, 128), h).sum().item()
    e_cpu = reconstruction_error(w.cpu(), dequantize(cpu.codes, cpu.scales, 128), h.cpu()).sum().item()
    assert abs(e_gpu - e_cpu) / e_cpu < 1e-2


@pytest.mark.parametrize("bits", [2, 4])
def test_gsq_kernel_path_equals_torch_path(bits):
    pytest.importorskip("triton")
    w, h = _problem(experts=3, out=128, inp=256)
    init = gptq(w, h, bits, 128)
    cfg = GSQConfig(steps=40, eval_every=10, seed=3, use_kernel=False)  # the default on CUDA is the kernel
    ref = gsq(w, h, init.codes, init.scales, bits, 128, cfg)
    fused = gsq(w, h, init.codes, init.scales, bits, 128, GSQConfig(**{**cfg.as_dict(), "use_kernel": True, "kernel_noise": "torch"}))
    agree = (ref.codes == fused.codes).float().mean().item()
    assert agree > 0.999, agree
    assert torch.allclose(ref.final_loss, fused.final_loss, rtol=1e-3)
    seeded = gsq(w, h, init.codes, init.scales, bits, 128, GSQConfig(**{**cfg.as_dict(), "use_kernel": True}))
    assert (seeded.final_loss <= seeded.init_loss).all()
    with pytest.raises(ValueError, match="2- and 4-bit"):
        gsq(w, h, init.codes, init.scales, 3, 128, GSQConfig(steps=2, use_kernel=True))


def test_engine_holds_one_layer_on_the_gpu_at_a_time(tmp_path):
    from transformers import Qwen2MoeForCausalLM

    from dedicated.quantize_job.layerwise import CalibrationConfig, load_quantized, quantize_model
    from dedicated.quantize_job.tinymoe.config import tiny_moe_config

    torch.manual_seed(0)
    model = Qwen2MoeForCausalLM(tiny_moe_config("gpu", num_hidden_layers=6)).eval()
    layers = model.model.layers
    seen = []

    def on_device():
        return sum(any(p.is_cuda for p in layer.parameters()) for layer in layers)

    hooks = [layer.register_forward_pre_hook(lambda *_: seen.append(on_device())) for layer in layers]
    ids = torch.randint(0, 256, (16, 256))
    quantize_model(model, ids, method="gsq", bits=2, state_dir=tmp_path, device="cuda",
                   gsq_config=GSQConfig(steps=20), calibration=CalibrationConfig(min_tokens=64))
    for hk in hooks:
        hk.remove()
    assert seen and max(seen) == 1
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert len(load_quantized(tmp_path)) == 6 * 16 * 3
