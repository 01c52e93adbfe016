"""Compile the dequant-GEMM kernels for a GPU architecture without a GPU (Triton AOT + ptxas).

The CPU interpreter runs the kernels' arithmetic but not Triton's compiler, so a kernel can pass
every interpreted test and still fail to compile (it happened: a ``tl.constexpr`` re-annotated
inside ``tl.static_range`` is fine interpreted and rejected compiled). This module runs the real
front end, the MLIR pipeline and ptxas for ``sm_<arch>``; run it as

    python -m dedicated.kernels.aot            # every config of kernels/configs.py, sm_90

It must run without ``TRITON_INTERPRET`` (the unit test starts it in a subprocess).
"""

from __future__ import annotations

import argparse
import sys
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from dedicated.kernels.gemm import dq_fma_kernel, dq_gemm_kernel
from dedicated.kernels.gemm_config import GemmConfig
from dedicated.kernels.gemm_operands import weight_tile_box

_POINTERS = {"a_ptr": "*bf16", "c_ptr": "*bf16", "rw_ptr": "*fp32", "w_ptr": "*i32", "s_ptr": "*bf16",
             "sorted_ids_ptr": "*i32", "expert_ids_ptr": "*i32", "npad_ptr": "*i32"}


def compile_moe(cfg: GemmConfig, bits: int, kind: str = "down", arch: int = 90, pair_ordered: bool = False,
                tile_major: bool = False):
    """Compile one MoE launch (``kind``: "gate_up" reads token rows, "down" pair rows + weights;
    ``pair_ordered``: weights in :mod:`dedicated.kernels.pair_order`'s layout; ``tile_major``: its
    K-tile-major form with N-contiguous scales)."""
    fn = dq_fma_kernel if cfg.kernel == "fma" else dq_gemm_kernel
    constexprs = dict(
        BITS=bits, GROUP=128, OFFSET=1 << (bits - 1), IS_MOE=True, A_ROW_DIV=8 if kind == "gate_up" else 1,
        MUL_ROUTED=kind == "down", BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
    )
    constexprs.update(stride_ak=1, stride_cn=1)  # a launch specialises unit strides into constants
    constexprs.update(stride_sn=1) if tile_major else constexprs.update(stride_sg=1)
    if cfg.kernel != "fma":
        constexprs.update(SWAP_AB=cfg.swap_ab, MODE=cfg.mode, UPCAST=False, SCALE_B=cfg.scale_b, SPLIT_K=cfg.split_k,
                          W_TILED=tile_major, W_TMA=cfg.tma, TILES_N=cfg.tiles_n,
                          A_PERMUTED=cfg.permute_a or pair_ordered)
    signature = {}
    for name in fn.arg_names:
        signature[name] = "constexpr" if name in constexprs else _POINTERS.get(name, "i32")
    if cfg.tma:  # the weights come as a TMA descriptor whose box is one tile (gemm_operands.weight_descriptor)
        signature["w_ptr"] = f"tensordesc<i32[{','.join(map(str, weight_tile_box(cfg, bits, tile_major)))}]>"
    if cfg.pair_mma_too_short(bits):
        raise ValueError(f"unpack mode 2 needs block_k >= {8 * 32 // bits} at {bits} bits")
    # What a real launch specialises on: 16-byte aligned tensors, and the sizes and strides that are
    # multiples of 16 at every shape served (K, N, row strides). Without it the SASS shows scalar
    # loads where the launched kernel has vector ones.
    aligned = [i for i, name in enumerate(fn.arg_names)
               if name in _POINTERS or name in ("N", "K", "stride_am", "stride_we", "stride_cm")
               or (tile_major and name in ("stride_wk", "stride_sg"))
               # K-tile-major rows are one tile's words apart: 16 at 4 bits, 8 (not a multiple of 16) at 2
               or (name == "stride_wn" and not (tile_major and cfg.block_k * bits // 32 % 16))]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    if cfg.max_regs is not None:
        options["maxnreg"] = cfg.max_regs
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def main(argv: list[str] | None = None) -> int:
    from dedicated.kernels.configs import all_configs, wide_configs

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--bits", type=int, nargs="+", default=[2, 4])
    p.add_argument("--fma", action="store_true", help="also compile a few CUDA-core (fma) configs")
    args = p.parse_args(argv)
    cfgs = [(cfg, False) for cfg in all_configs()] + [(cfg, True) for cfg in wide_configs()]
    if args.fma:
        cfgs += [(GemmConfig(block_m=bm, block_n=32, block_k=128, kernel="fma"), False) for bm in (1, 4)]
    failures = 0
    for cfg, pair_ordered in cfgs:
        for bits in args.bits:
            t = time.time()
            try:
                compile_moe(cfg, bits, arch=args.arch, pair_ordered=pair_ordered)
                print(f"ok   sm_{args.arch} {bits}-bit {cfg.short()} ({time.time() - t:.1f}s)", flush=True)
            except Exception as exc:  # noqa: BLE001 - report every failing config, then fail
                failures += 1
                print(f"FAIL sm_{args.arch} {bits}-bit {cfg.short()}: {type(exc).__name__}: {exc}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
