"""The kernels compile for Hopper (sm_90) with Triton's real compiler and ptxas, no GPU needed.

The interpreter tests in this folder check the arithmetic; this one checks what the interpreter
cannot: Triton's front end and code generation (a kernel that passes interpreted can still be
rejected compiled). It runs in a subprocess because this folder loads the kernels interpreted.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import sys
from dedicated.kernels.aot import compile_moe
from dedicated.kernels.gemm_config import GemmConfig
cfgs = [
    (GemmConfig(block_m=16, block_n=64, block_k=128, swap_ab=True, mode=0, scale_b=True), 2),
    (GemmConfig(block_m=64, block_n=128, block_k=64, swap_ab=False, mode=0, num_stages=4, scale_b=True), 4),
    (GemmConfig(block_m=16, block_n=128, block_k=128, swap_ab=True, mode=2, num_stages=3, scale_b=True), 2),
    (GemmConfig(block_m=128, block_n=128, block_k=128, swap_ab=True, mode=2, num_warps=8, num_stages=3), 4),
    (GemmConfig(block_m=4, block_n=32, block_k=128, kernel="fma"), 4),
    # split-K (bf16 atomic adds)
    (GemmConfig(block_m=16, block_n=64, block_k=128, swap_ab=True, mode=2, split_k=4), 4),
    (GemmConfig(block_m=16, block_n=128, block_k=128, swap_ab=True, mode=2, scale_b=True, split_k=2), 2),
    # a register cap (ptx .maxnreg)
    (GemmConfig(block_m=16, block_n=128, block_k=128, swap_ab=True, mode=2, max_regs=96), 4),
]
layouts = [(c, b, False) for c, b in cfgs] + [
    # 256-wide K tiles over two scale groups, pair-ordered row-major and K-tile-major
    (GemmConfig(block_m=16, block_n=128, block_k=256, swap_ab=True, mode=2), 2, False),
    (GemmConfig(block_m=16, block_n=128, block_k=256, swap_ab=True, mode=2, scale_b=True, split_k=2), 2, True),
    # weight tiles by TMA descriptor, row-major and K-tile-major words
    (GemmConfig(block_m=16, block_n=128, block_k=128, swap_ab=True, mode=2, tma=True), 4, False),
    (GemmConfig(block_m=16, block_n=128, block_k=256, swap_ab=True, mode=2, scale_b=True, tma=True), 2, True),
    # several output tiles per program: one flattened loop over their K steps
    (GemmConfig(block_m=16, block_n=128, block_k=128, swap_ab=True, mode=2, tiles_n=2), 2, True),
    (GemmConfig(block_m=16, block_n=128, block_k=128, swap_ab=True, mode=2, tma=True, tiles_n=4), 4, False),
]
for cfg, bits, tile_major in layouts:
    kernel = compile_moe(cfg, bits, "gate_up", pair_ordered=cfg.block_k == 256 or tile_major, tile_major=tile_major)
    assert kernel.asm.get("cubin"), cfg.short()
    # split-K adds its partial products with bf16 atomics; the other configs store
    assert (".add.noftz" in kernel.asm["ptx"]) == (cfg.split_k > 1), cfg.short()  # atom. or red.global...bf16
    assert (".maxnreg 96" in kernel.asm["ptx"]) == (cfg.max_regs == 96), cfg.short()
    assert ("cp.async.bulk.tensor" in kernel.asm["ptx"]) == cfg.tma, cfg.short()
    print("compiled", cfg.short(), bits)
"""


@pytest.mark.slow
def test_representative_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.count("compiled") == 14
