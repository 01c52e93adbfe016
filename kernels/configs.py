"""Launch configurations for the MoE dequant-GEMM, chosen by average tokens per expert.

The table is the outcome of ``python benchmarks/bench_kernels.py --sweep`` on the GPU machine
(see docs/benchmarks-kernels.md); anything it does not cover falls back to the rule below.
A lookup table rather than ``triton.autotune`` so that the serving and validation paths never pay
for benchmarking at first call and every launch is reproducible.
"""

from __future__ import annotations

from dedicated.kernels.gemm import GemmConfig

# (max average tokens per expert, config); first row whose bound is >= the average wins.
MOE_TABLE: list[tuple[float, GemmConfig]] = [
    (8.0, GemmConfig(block_m=16, block_n=64, block_k=128, swap_ab=True, mode=1, num_warps=4, num_stages=4)),
    (32.0, GemmConfig(block_m=32, block_n=64, block_k=128, swap_ab=True, mode=1, num_warps=4, num_stages=4)),
    (96.0, GemmConfig(block_m=64, block_n=128, block_k=64, swap_ab=False, mode=1, num_warps=4, num_stages=4)),
    (float("inf"), GemmConfig(block_m=128, block_n=128, block_k=64, swap_ab=False, mode=1, num_warps=8, num_stages=3)),
]


def moe_config(avg_tokens_per_expert: float, n: int, k: int, bits: int) -> GemmConfig:
    for bound, cfg in MOE_TABLE:
        if avg_tokens_per_expert <= bound:
            return cfg
    return MOE_TABLE[-1][1]
