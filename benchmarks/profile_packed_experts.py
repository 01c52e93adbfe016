"""Where one eager forward of a packed-experts module spends its time (GPU kernels and host).

The validate stage runs each MoE layer's routed experts through ``PackedExperts`` (the bundled
Triton MoE GEMM behind the routing sort and padding, the gate activation and the weighted sum),
one eager call per layer and forward. This times such a call at the Qwen3.6-35B-A3B expert shapes
(256 experts, hidden 2048, expert intermediate 512, top-8, 2-bit, random words and scales) for a
prefill-sized batch, and prints torch.profiler's tables by GPU time and by host time.

Usage (on the GPU machine): ``python benchmarks/profile_packed_experts.py [--tokens 2048]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from dedicated.quantize_job.packed_model import PackedExperts


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=512)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--calls", type=int, default=20)
    a = ap.parse_args()
    m = PackedExperts(a.experts, a.hidden, a.intermediate, 2, 128, swiglu).cuda()
    for words in (m.w13, m.w2):
        words.copy_(torch.randint(-2**31, 2**31 - 1, words.shape, dtype=torch.int32, device="cuda"))
    for scales in (m.s13, m.s2):
        scales.copy_((torch.rand(scales.shape, device="cuda") * 0.01 + 0.01).to(torch.bfloat16))
    x = torch.randn(a.tokens, a.hidden, device="cuda", dtype=torch.bfloat16)
    weights, ids = torch.topk(torch.softmax(torch.randn(a.tokens, a.experts, device="cuda"), -1), a.top_k)
    weights = weights.to(torch.bfloat16)
    for _ in range(3):  # compile and warm up
        m(x, ids, weights)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(a.calls):
        m(x, ids, weights)
    torch.cuda.synchronize()
    print(f"{torch.cuda.get_device_name()}: {a.tokens} tokens, {(time.perf_counter() - t) / a.calls * 1e3:.3f} ms "
          f"per eager call (wall, {a.calls} calls)")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            m(x, ids, weights)
        torch.cuda.synchronize()
    print("5 calls profiled")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=48))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=10, max_name_column_width=48))


if __name__ == "__main__":
    main()
