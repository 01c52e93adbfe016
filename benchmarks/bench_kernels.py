#!/usr/bin/env python3
"""Speed of the bundled Triton kernels, measured on the GPU machine in one run, side by side.

MoE dequant-GEMM at the Qwen3.6-35B-A3B routed-expert shapes (256 experts, top-8; gate/up fused
2048 -> 2 x 512, down 512 -> 2048), 2-bit and 4-bit, decode (1, 8, 32, 128 tokens) and prefill
(2048, 8192 tokens), against

  (a) the Humming library's MoE GEMM (PyPI ``humming-kernels``) on the same packed weights (its
      ``HummingLayer.transform()`` re-lays them out once, outside the timed region);
  (b) bf16 torch: ``torch._grouped_mm`` on the dequantized weights (gather, grouped mm, scatter);
  (c) the roofline: bytes that must move (activations in, the packed weights and scales of every
      expert the batch touches, outputs out) over the peak bandwidth measured here with a large
      device-to-device copy; and the compute floor (2*M*top_k*N*K over the measured bf16 matmul
      rate), which is the real floor for prefill.

Timing: every method runs as a CUDA graph holding one call per routing of a rotating set of
routings (so decode calls touch different experts and do not sit in L2), replayed 20+ times with
CUDA events; the median replay time over the number of calls is reported. Also: the GSQ inner
loop (fwd+bwd) against plain torch autograd, and a GPTQ profile that decides whether a fused
GPTQ block update is worth writing.

    python benchmarks/bench_kernels.py                 # the table: each layout's tuned config (kernels/configs.py)
    python benchmarks/bench_kernels.py --sweep         # also sweep launch configs per shape
    python benchmarks/bench_kernels.py --smoke         # CPU plumbing check (Triton interpreter)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import statistics
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

E, TOP_K, HIDDEN, INTER, GROUP = 256, 8, 2048, 512, 128
SHAPES = {"gate_up": (2 * INTER, HIDDEN), "down": (HIDDEN, INTER)}  # (N, K)
DEVICE = "cuda"
T0 = time.time()
ONLY = None  # --only: a regex the sweep's candidate names must match


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------------------------- timing


def time_calls(calls, replays: int = 25, graph: bool = True) -> tuple[float, str]:
    """Seconds per call: median over replays of one CUDA graph that runs every call once."""
    import torch

    for c in calls:  # compile / JIT / allocate outside the graph
        c()
    if DEVICE == "cpu":  # --smoke: plumbing only, the number means nothing
        t = time.perf_counter()
        for c in calls:
            c()
        return (time.perf_counter() - t) / len(calls), "cpu"
    torch.cuda.synchronize()
    mode = "graph"
    g = None
    if graph:
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for c in calls:
                    c()
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for c in calls:
                    c()
        except Exception as exc:  # noqa: BLE001 - a method that cannot be captured is timed eagerly
            log(f"  graph capture failed ({type(exc).__name__}: {exc}); timing eagerly")
            g = None
            torch.cuda.synchronize()
    if g is None:
        mode = "eager"

    def run():
        if g is not None:
            g.replay()
        else:
            for c in calls:
                c()

    for _ in range(3):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        run()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return statistics.median(times) / len(calls), mode


def host_us_per_call(calls, rounds: int = 20) -> float:
    """CPU time (this thread) per eager call, in microseconds: the Python checks, the argument
    packing and the driver launch a call costs outside a CUDA graph. TMA configs also build a
    descriptor per call (a Python object and a tensor-map encode), which a graph captures once."""
    if DEVICE == "cpu":  # --smoke: the interpreter takes a second per call and the number means nothing
        rounds = 1
    for c in calls:
        c()
    sync()
    t = time.thread_time()
    for _ in range(rounds):
        for c in calls:
            c()
    used = time.thread_time() - t
    sync()
    return used / (rounds * len(calls)) * 1e6


def sync() -> None:
    import torch

    if DEVICE != "cpu":
        torch.cuda.synchronize()


def bench_ms(fn, grad_to_none=None) -> float:
    """Median ms of ``fn`` (triton's do_bench: warm-up, L2 flush, CUDA events)."""
    if DEVICE == "cpu":
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=200, grad_to_none=grad_to_none, return_mode="median")


def peak_memory_of(fn) -> float:
    """MiB allocated on top of what was live before one call of ``fn``."""
    import torch

    if DEVICE == "cpu":
        fn()
        return 0.0
    sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    sync()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def peak_bandwidth() -> float:
    """Bytes/s of a 2 GiB device-to-device copy, counting bytes read plus bytes written."""
    import torch
    import triton

    src = torch.empty(1 << 29, dtype=torch.float32, device=DEVICE).uniform_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=400, return_mode="median")
    bw = 2 * src.numel() * 4 / (ms / 1e3)
    del src, dst
    return bw


def peak_bf16_flops() -> float:
    import torch
    import triton

    a = torch.randn(8192, 8192, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=DEVICE, dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ b, warmup=50, rep=400, return_mode="median")
    return 2 * 8192**3 / (ms / 1e3)


# ------------------------------------------------------------------------------------------ problem


def random_packed(n: int, k: int, bits: int, seed: int):
    """Uniformly random stored values (random int32 words) and realistic bf16 group scales."""
    import torch

    g = torch.Generator(device=DEVICE).manual_seed(seed)
    words = torch.randint(-(2**31), 2**31 - 1, (E, n, k * bits // 32), generator=g, device=DEVICE, dtype=torch.int64)
    packed = words.to(torch.int32)
    scales = (torch.rand(E, n, k // GROUP, generator=g, device=DEVICE) * 0.015 + 0.005).to(torch.bfloat16)
    return packed, scales


def routings(m: int, count: int, seed: int):
    import torch

    g = torch.Generator(device=DEVICE).manual_seed(seed)
    out = []
    for _ in range(count):
        scores = torch.randn(m, E, generator=g, device=DEVICE)
        w, ids = scores.softmax(-1).topk(TOP_K, dim=-1)
        out.append((ids.to(torch.int32), (w / w.sum(-1, keepdim=True)).float()))
    return out


def rotation(m: int) -> int:
    """Routings per graph: enough that decode batches cycle through every expert (beat L2)."""
    return 32 if m <= 128 else (4 if m <= 2048 else 2)


def bytes_moved(m: int, kind: str, bits: int, active: float) -> float:
    n, k = SHAPES[kind]
    a_rows = m if kind == "gate_up" else m * TOP_K
    weights = active * (n * k * bits / 8 + n * (k // GROUP) * 2)
    return a_rows * k * 2 + weights + m * TOP_K * n * 2


# ----------------------------------------------------------------------------------------- candidates


# weight layouts (kernels/pair_order.py): name -> (K-tile-major with N-contiguous scales, pair tile K)
LAYOUTS = {"po": (False, 128), "tm": (True, 128), "po256": (False, 256), "tm256": (True, 256)}


def config_name(cfg, layout: str) -> str:
    """``layout``: "" checkpoint words, "po" pair-ordered, "tm" pair-ordered K-tile-major with
    N-contiguous scales; "po256" / "tm256" the same over 256-wide K tiles (:data:`LAYOUTS`)."""
    return cfg.short() + (f"+{layout}" if layout else "")


def tile_k_of(layout: str) -> int:
    return LAYOUTS[layout][1] if layout else 128


def lay_out(packed, scales, bits: int, layout: str):
    """The weights and scales as a launch on ``layout`` reads them (re-laid once, outside timing)."""
    from dedicated.kernels.pair_order import n_major_scales, to_pair_order

    if not layout:
        return packed, scales
    tile_major, tile_k = LAYOUTS[layout]
    words = to_pair_order(packed, bits, tile_major=tile_major, tile_k=tile_k)
    return words, (n_major_scales(scales) if tile_major else scales)


def tabled_configs(m: int, n: int, k: int, bits: int, layouts) -> list:
    """(config, layout) the shipped tables pick at this size: the checkpoint layout's default first
    (the sweep's baseline), then each pair-ordered layout's tuned config; without ``--sweep`` the
    fastest of these is "ours", so the table shows what a caller of :func:`moe_gemm` gets."""
    from dedicated.kernels.moe_gemm import default_moe_config

    out = [(default_moe_config(m, TOP_K, E, n, k, bits), "")]
    for name, (tile_major, tile_k) in LAYOUTS.items():
        if name in layouts:
            out.append((default_moe_config(m, TOP_K, E, n, k, bits, pair_ordered=True, tile_major=tile_major,
                                           pair_tile_k=tile_k), name))
    return out


def candidates(m: int, bits: int) -> list:
    """(config, weight layout) pairs the sweep tries (layouts: :func:`config_name`).

    Run 4 found every shape's winner on pair-ordered weights, so runs 6-7 sweep that layout only (the
    checkpoint layout keeps run 3's table; its default config is still timed first, as the
    baseline), as is ("po") and K-tile-major with N-contiguous scales ("tm"): the pair-register
    unpack (mode 2) in the tile shapes that won before, with and without the scale folded, and for
    decode with the K range split over 1, 2 or 4 programs (``split_k``). Run 5 also tried mma.sync
    code on Hopper (never faster than wgmma, up to 1.5x slower at prefill), so it is gone.

    Run 8 adds, at 2 bits, the layouts over 256-wide K tiles read with ``block_k=256`` (pair MMAs
    32 deep instead of 16: -19% loop instructions per weight byte in the sm_90 SASS; at 4 bits the
    wide tile needs 217 registers at 128 rows, so only 64-row ones are tried, in run 9), and at 4 bits
    a 96-register cap (``max_regs``: 5 CTAs per SM instead of 4 for the decode tiles, no spills in
    ptxas; within 2% of uncapped at every shape in run 8).
    """
    from dedicated.kernels.gemm_config import GemmConfig as C

    if m <= 128:
        shapes = [(16, 64, 4, 3), (16, 128, 4, 3), (16, 128, 4, 4)]  # run 6: 256-wide tiles never won decode
        if m >= 32:
            shapes.append((32, 128, 4, 3))
        splits = (1, 2, 4) if m <= 32 else (1, 2)
    else:
        shapes = [(64, 128, 4, 3), (128, 128, 4, 3), (128, 128, 8, 3), (128, 256, 8, 3), (256, 128, 8, 3),
                  (64, 256, 8, 4), (128, 128, 8, 4)]
        splits = (1,)
    out = [(C(block_m=bm, block_n=bn, block_k=128, swap_ab=True, mode=2, num_warps=w, num_stages=st, scale_b=sb,
              split_k=sk), layout)
           for bm, bn, w, st in shapes for sb in (False, True) for sk in splits for layout in ("po", "tm")]
    if bits == 2:
        if m <= 128:
            wide = [(bm, bn, w, st, sb, sk) for bm, bn, w, st in shapes for sb in (False, True) for sk in splits]
        else:  # the scale folded won every prefill shape; a 256-deep activation tile limits the stages
            wide = [(bm, bn, w, st, True, 1) for bm, bn, w, st in
                    [(64, 128, 4, 3), (128, 128, 8, 3), (128, 128, 8, 2), (128, 256, 8, 2), (64, 256, 8, 3)]]
        out += [(C(block_m=bm, block_n=bn, block_k=256, swap_ab=True, mode=2, num_warps=w, num_stages=st,
                   scale_b=sb, split_k=sk), layout)
                for bm, bn, w, st, sb, sk in wide for layout in ("po256", "tm256")]
        if m <= 128:  # end of run 11: register caps that fit 8-9 CTAs per SM (the down GEMM ran 1.18 waves at 7)
            out += [(C(block_m=16, block_n=128, block_k=128, swap_ab=True, mode=2, num_warps=4, num_stages=3,
                       scale_b=sb, max_regs=regs), layout)
                    for regs in (56, 64) for sb in (False, True) for layout in ("po", "tm")]
    elif m <= 128:
        out += [(C(block_m=16, block_n=128, block_k=128, swap_ab=True, mode=2, num_warps=4, num_stages=st,
                   scale_b=sb, max_regs=96), layout)
                for st in (3, 4) for sb in (False, True) for layout in ("po", "tm")]
        # 4-bit wide tiles at 64 rows (99 registers; 128 rows need 217)
        out += [(C(block_m=16, block_n=64, block_k=256, swap_ab=True, mode=2, num_warps=4, num_stages=st,
                   scale_b=sb, split_k=sk), layout)
                for st in (3, 4) for sb in (False, True) for sk in (1, 2) for layout in ("po256", "tm256")]
    if m <= 128:  # run 13: several output tiles per program (tiles_n): a shorter grid whose programs pipeline
        # on from one tile into the next (the 2-bit down GEMM has 4 K steps per tile and ran 1.18 waves)
        tile_layouts = ("po", "tm", "po256", "tm256") if bits == 2 else ("po", "tm")
        out += [(C(block_m=16, block_n=bn, block_k=LAYOUTS[layout][1], swap_ab=True, mode=2, num_warps=4,
                   num_stages=3, scale_b=sb, tiles_n=tiles), layout)
                for bn in (64, 128) for sb in (False, True) for tiles in (2, 4) for layout in tile_layouts]
    # run 10: every config again with its weight tiles by TMA descriptor (GemmConfig.tma)
    out += [(dataclasses.replace(c, tma=True), layout) for c, layout in out if c.max_regs is None]
    if ONLY is not None:
        out = [c for c in out if ONLY.search(config_name(*c))]
    return out


def _compile_one(job):
    """Worker: compile one (bits, kind, config) into Triton's disk cache with a tiny launch."""
    bits, kind, cfg_dict = job
    try:
        import torch

        from dedicated.kernels.gemm_config import GemmConfig
        from dedicated.kernels.moe_gemm import moe_align, moe_gemm

        layout = cfg_dict.pop("layout", "")
        cfg = GemmConfig(**cfg_dict)
        n, k = SHAPES[kind]
        # top_k experts are enough: the compiled kernel does not depend on the expert count, and
        # re-laying all 256 took ~13 GB per worker (14 workers ran the GPU out of memory in run 14)
        experts = TOP_K
        packed = torch.zeros(experts, n, k * bits // 32, dtype=torch.int32, device=DEVICE)
        scales = torch.ones(experts, n, k // GROUP, dtype=torch.bfloat16, device=DEVICE)
        packed, scales = lay_out(packed, scales, bits, layout)
        ids = torch.arange(TOP_K, dtype=torch.int32, device=DEVICE).view(1, TOP_K)
        r = moe_align(ids, experts, cfg.block_m)
        x = torch.zeros(1 if kind == "gate_up" else TOP_K, k, dtype=torch.bfloat16, device=DEVICE)
        tw = torch.ones(1, TOP_K, device=DEVICE) if kind == "down" else None
        moe_gemm(x, packed, scales, r, bits, GROUP, topk_weights=tw, config=cfg, pair_ordered=bool(layout),
                 pair_tile_k=tile_k_of(layout))
        torch.cuda.synchronize()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{bits}-bit {kind} {cfg_dict}: {type(exc).__name__}: {str(exc)[:300]}"


def precompile(jobs, workers: int) -> dict:
    """Compile every config in parallel processes; returns {job: error} for those that failed."""
    import multiprocessing as mp

    uniq = list(dict.fromkeys((b, k, tuple(sorted(c.items()))) for b, k, c in jobs))
    todo = [(b, k, dict(c)) for b, k, c in uniq]
    log(f"precompiling {len(todo)} kernel variants on {workers} processes")
    errors = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        for job, err in zip(uniq, pool.map(_compile_one, todo)):
            if err:
                errors[job] = err
                log(f"  compile failed: {err}")
    log(f"precompile done ({len(errors)} failures)")
    return errors


# ------------------------------------------------------------------------------------------- methods


class Humming:
    """The Humming MoE GEMM on the same packed weights (layout converted once by transform())."""

    def __init__(self, kind: str, bits: int, packed, scales):
        import torch
        from humming.config import GemmType
        from humming.layer import HummingLayer
        from humming.tune import get_heuristics_config

        n, k = SHAPES[kind]
        self.kind = kind
        self.layer = HummingLayer(
            shape_n=n, shape_k=k, num_experts=E,
            weight_config={"quant_method": "humming", "b_dtype": f"uint{bits}", "weight_scale_group_size": GROUP,
                           "weight_scale_type": "group", "has_zero_point": False, "bs_dtype": "bfloat16"},
            input_config={"dtype": "bfloat16"},
            torch_dtype=torch.bfloat16,
        ).to(DEVICE)
        self.layer.load_from_tensors({"weight": packed, "weight_scale": scales})
        self.layer.transform()
        self.tuning = get_heuristics_config(layer_config=self.layer.humming_config, gemm_type=GemmType.INDEXED)
        self.tuning_json = json.dumps(self.tuning)
        self.compute_json = json.dumps({"use_f16_accum": False, "use_m_major_input_scale": False, "gemm_type": "indexed"})

    def block_m(self, m: int) -> int:
        routed = m * TOP_K
        for lo, hi, cfg in self.tuning:
            if lo < routed <= hi:
                return int(cfg["block_shape"][0])
        return int(self.tuning[-1][2]["block_shape"][0])

    def call(self, x, routing, out):
        return self.layer(
            inputs=x, outputs=out, sorted_ids=routing.sorted_ids, expert_ids=routing.expert_ids,
            num_tokens_padded=routing.num_padded, compute_config=self.compute_json,
            tuning_config=self.tuning_json, top_k=TOP_K if self.kind == "gate_up" else 1,
        )


def warm_humming(args) -> None:
    """Build every Humming layer once and call it: compiles all its tuning intervals (disk cache)."""
    import torch

    from dedicated.kernels.moe_gemm import moe_align

    for bits in args.bits:
        for kind, (n, k) in SHAPES.items():
            try:
                t = time.time()
                packed, scales = random_packed(n, k, bits, seed=0)
                hum = Humming(kind, bits, packed, scales)
                ids = torch.arange(TOP_K, dtype=torch.int32, device=DEVICE).view(1, TOP_K)
                rows = 1 if kind == "gate_up" else TOP_K
                x = torch.zeros(rows, k, dtype=torch.bfloat16, device=DEVICE)
                out = torch.empty(TOP_K, n, dtype=torch.bfloat16, device=DEVICE)
                hum.call(x, moe_align(ids, E, hum.block_m(1)), out)
                torch.cuda.synchronize()
                log(f"  humming {bits}-bit {kind} compiled in {time.time() - t:.1f}s")
                del hum, packed, scales
            except Exception as exc:  # noqa: BLE001
                log(f"  humming warm-up {bits}-bit {kind} failed: {type(exc).__name__}: {exc}")
                traceback.print_exc()


def torch_grouped_call(x, w_t, ids, kind, out):
    """bf16 torch: gather rows by expert, one grouped GEMM, scatter back."""
    import torch

    flat = ids.reshape(-1).long()
    order = torch.argsort(flat, stable=True)
    src = order // TOP_K if kind == "gate_up" else order
    offs = torch.cumsum(torch.bincount(flat, minlength=E), 0).to(torch.int32)

    def call():
        xs = x.index_select(0, src)
        y = torch._grouped_mm(xs, w_t, offs=offs)
        out.index_copy_(0, order, y)
        return out

    return call


# ---------------------------------------------------------------------------------------------- MoE


def bench_moe(args, bw: float, flops: float, results: list, sweep_rows: list) -> None:
    import torch

    from dedicated.kernels.dequant import dequantize
    from dedicated.kernels.moe_gemm import default_moe_config, moe_align, moe_gemm
    for bits in args.bits:
        for kind, (n, k) in SHAPES.items():
            log(f"== {bits}-bit {kind}: N={n} K={k}")
            packed, scales = random_packed(n, k, bits, seed=bits * 10 + len(kind))
            w_t = dequantize(packed, scales, bits, GROUP).transpose(1, 2)  # [E, K, N] column-major view
            # re-laid once, outside timing (as Humming's transform() is for Humming)
            layouts = {name: lay_out(packed, scales, bits, name) for name in ("", *LAYOUTS)
                       if k % tile_k_of(name) == 0}
            hum = None
            if not args.skip_humming:
                try:
                    t = time.time()
                    hum = Humming(kind, bits, packed, scales)
                    log(f"  humming layer ready in {time.time() - t:.1f}s")
                except Exception as exc:  # noqa: BLE001
                    log(f"  humming unavailable: {type(exc).__name__}: {exc}")
                    traceback.print_exc()
            for m in args.tokens:
                rot = rotation(m) if not args.smoke else 1
                routes = routings(m, rot, seed=1000 + m)
                rows = m if kind == "gate_up" else m * TOP_K
                x = torch.randn(rows, k, device=DEVICE).to(torch.bfloat16)
                outs = [torch.empty(m * TOP_K, n, device=DEVICE, dtype=torch.bfloat16) for _ in range(rot)]
                active = statistics.mean(int(torch.unique(ids).numel()) for ids, _ in routes)
                nbytes = bytes_moved(m, kind, bits, active)
                roof_mem = nbytes / bw
                roof_cmp = 2 * m * TOP_K * n * k / flops
                row = {"bits": bits, "gemm": kind, "tokens": m, "active_experts": active, "bytes": nbytes,
                       "roofline_mem_us": roof_mem * 1e6, "floor_compute_us": roof_cmp * 1e6}
                aligned: dict[int, list] = {}

                def routing_for(bm):
                    if bm not in aligned:
                        aligned[bm] = [moe_align(ids, E, bm) for ids, _ in routes]
                    return aligned[bm]

                def mine_calls(cfg, layout=""):
                    w, sc = layouts[layout]
                    calls = []
                    for i, r in enumerate(routing_for(cfg.block_m)):
                        tw = routes[i][1] if kind == "down" else None
                        calls.append(lambda r=r, tw=tw, o=outs[i]: moe_gemm(x, w, sc, r, bits, GROUP, topk_weights=tw,
                                                                            config=cfg, out=o, pair_ordered=bool(layout),
                                                                            pair_tile_k=tile_k_of(layout)))
                    return calls

                # reference for correctness: bf16 torch on the dequantized weights
                ref_out = torch.empty(m * TOP_K, n, device=DEVICE, dtype=torch.bfloat16)
                torch_grouped_call(x, w_t, routes[0][0], kind, ref_out)()
                if kind == "down":
                    ref_out = (ref_out.float() * routes[0][1].reshape(-1, 1)).to(torch.bfloat16)

                def check(out):
                    return ((out.float() - ref_out.float()).norm() / ref_out.float().norm()).item()

                default_cfg = default_moe_config(m, TOP_K, E, n, k, bits)
                tried = list(dict.fromkeys(tabled_configs(m, n, k, bits, layouts)
                                           + ([c for c in candidates(m, bits) if c[1] in layouts] if args.sweep else [])))
                best = None
                for cfg, po in tried:
                    name = config_name(cfg, po)
                    try:
                        calls = mine_calls(cfg, po)
                        outs[0].fill_(float("nan"))  # a config that writes nothing must not pass
                        calls[0]()
                        err = check(outs[0])
                        if not err < 2e-2:  # a fast wrong answer must never win
                            raise RuntimeError(f"wrong result, rel. error {err:.2e}")
                        t, _ = time_calls(calls, replays=10)
                    except Exception as exc:  # noqa: BLE001
                        sweep_rows.append({"bits": bits, "gemm": kind, "tokens": m, "config": name, "error": str(exc)[:200]})
                        log(f"  {name} rejected: {str(exc)[:200]}")
                        continue
                    sweep_rows.append({"bits": bits, "gemm": kind, "tokens": m, "config": name, "us": t * 1e6,
                                       "err": err, "cfg": dataclasses.asdict(cfg), "layout": po,
                                       "pair_ordered": bool(po)})
                    if (cfg, po) == (default_cfg, ""):
                        row["default_config"], row["default_us"] = name, t * 1e6
                    if best is None or t < best[0]:
                        best = (t, cfg, err, po)
                if best is None:
                    log(f"  no working config at M={m}; row skipped")
                    continue
                cfg, po = best[1], best[3]
                calls = mine_calls(cfg, po)
                calls[0]()
                row["mine_config"] = config_name(cfg, po)
                row["mine_cfg"] = dict(dataclasses.asdict(cfg), layout=po, pair_ordered=bool(po))
                row["mine_err_vs_bf16"] = check(outs[0])
                t, mode = time_calls(calls)
                row["mine_us"], row["mine_timing"] = t * 1e6, mode
                row["mine_host_us"] = host_us_per_call(calls)
                if cfg.mode == 2:  # the same launch with the other weight-tile load, for the descriptor's cost
                    other = dataclasses.replace(cfg, tma=not cfg.tma)
                    row["host_us_tma" if other.tma else "host_us_no_tma"] = host_us_per_call(mine_calls(other, po))
                    row["host_us_tma" if cfg.tma else "host_us_no_tma"] = row["mine_host_us"]
                log(f"  M={m}: best {config_name(cfg, po)} {t * 1e6:.1f}us (default {row.get('default_config')} "
                    f"{row.get('default_us', float('nan')):.1f}us)")

                if hum is not None:
                    try:
                        bm = hum.block_m(m)
                        hr = routing_for(bm)
                        hcalls = [lambda r=r, o=outs[i]: hum.call(x, r, o) for i, r in enumerate(hr)]
                        hcalls[0]()
                        hout = outs[0]
                        if kind == "down":
                            hout = (hout.float() * routes[0][1].reshape(-1, 1)).to(torch.bfloat16)
                        row["humming_err_vs_bf16"] = check(hout)
                        t, mode = time_calls(hcalls)
                        row["humming_us"], row["humming_timing"], row["humming_block_m"] = t * 1e6, mode, bm
                        row["humming_host_us"] = host_us_per_call(hcalls)
                    except Exception as exc:  # noqa: BLE001
                        row["humming_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                        log(f"  humming failed at M={m}: {row['humming_error']}")
                try:
                    tcalls = [torch_grouped_call(x, w_t, ids, kind, outs[i]) for i, (ids, _) in enumerate(routes)]
                    t, mode = time_calls(tcalls)
                    row["torch_bf16_us"], row["torch_timing"] = t * 1e6, mode
                except Exception as exc:  # noqa: BLE001
                    row["torch_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    log(f"  torch baseline failed at M={m}: {row['torch_error']}")
                finalize(row, bw)
                results.append(row)
                log("  " + one_line(row))
                write_json(args, results, sweep_rows)
            del w_t, packed, scales, hum
            torch.cuda.empty_cache()


def finalize(row: dict, bw: float) -> None:
    t = row["mine_us"]
    floor = max(row["roofline_mem_us"], row["floor_compute_us"])
    row["mine_GBps"] = row["bytes"] / (t * 1e-6) / 1e9
    row["mine_vs_roofline"] = t / row["roofline_mem_us"]
    row["mine_vs_floor"] = t / floor
    if "humming_us" in row:
        row["humming_GBps"] = row["bytes"] / (row["humming_us"] * 1e-6) / 1e9
        row["speedup_vs_humming"] = row["humming_us"] / t
    if "torch_bf16_us" in row:
        row["speedup_vs_torch"] = row["torch_bf16_us"] / t


def one_line(r: dict) -> str:
    return (f"{r['bits']}b {r['gemm']:7s} M={r['tokens']:5d} mine {r['mine_us']:8.1f}us ({r['mine_GBps']:6.0f} GB/s, "
            f"{r['mine_vs_roofline']:.2f}x roof) humming {r.get('humming_us', float('nan')):8.1f}us "
            f"torch {r.get('torch_bf16_us', float('nan')):8.1f}us err {r['mine_err_vs_bf16']:.1e}/"
            f"{r.get('humming_err_vs_bf16', float('nan')):.1e}")


# ---------------------------------------------------------------------------------------------- GSQ


def bench_gsq(args, results: dict) -> None:
    import torch

    from dedicated.kernels import gsq_relax as gsq
    from dedicated.kernels import reference as ref

    torch.manual_seed(0)
    bits, experts, n, k, t_tokens, tau = 2, 8, 2 * INTER, HIDDEN, 1024, 0.7
    if args.smoke:
        experts, n, k, t_tokens = 1, 8, 256, 16
    levels = 1 << bits
    logits = torch.randn(experts, n, k, levels, device=DEVICE, requires_grad=True)
    scales = (torch.rand(experts, n, k // GROUP, device=DEVICE) * 0.02 + 0.01).requires_grad_(True)
    weight = torch.randn(experts, n, k, device=DEVICE) * 0.02
    x = torch.randn(experts, t_tokens, k, device=DEVICE)
    h = x.transpose(-1, -2) @ x
    grid = ref.grid_points(bits, DEVICE)
    up = torch.randn(experts, n, k, device=DEVICE)

    def torch_noise():
        return ref.gumbel_from_uniform(torch.rand(logits.shape, device=DEVICE))

    step = [0]

    def seed():
        step[0] += 1
        return step[0]

    cases = {
        "soft_weight": (
            lambda: ref.gsq_soft_weight_ref(logits, scales, torch_noise(), tau, bits).backward(up),
            lambda: gsq.gsq_soft_weight(logits, scales, tau, bits, seed=seed()).backward(up),
        ),
        "relaxed_codes (quantize_job.gsq drop-in)": (
            lambda: ref.relaxed_codes_ref(logits, torch_noise(), tau, grid).backward(up),
            lambda: gsq.relaxed_codes(logits, torch_noise(), tau, grid).backward(up),
        ),
        "loss, Hessian form": (
            lambda: ref.gsq_loss_ref(logits, scales, weight, torch_noise(), tau, bits, hessian=h).backward(),
            lambda: gsq.gsq_loss(logits, scales, weight, tau, bits, hessian=h, seed=seed()).backward(),
        ),
        f"loss, X form (T={t_tokens})": (
            lambda: ref.gsq_loss_ref(logits, scales, weight, torch_noise(), tau, bits, x=x).backward(),
            lambda: gsq.gsq_loss(logits, scales, weight, tau, bits, x=x, seed=seed()).backward(),
        ),
    }
    shape = f"{experts} experts x [{n}, {k}] x {levels} logits ({bits}-bit)"
    results["gsq_shape"] = shape
    rows = []
    for name, (ref_fn, fused_fn) in cases.items():
        row = {"case": name}
        for label, fn in (("torch", ref_fn), ("fused", fused_fn)):
            fn()
            row[f"{label}_peak_MiB"] = peak_memory_of(fn)
            row[f"{label}_ms"] = bench_ms(fn, grad_to_none=[logits, scales])
        row["speedup"] = row["torch_ms"] / row["fused_ms"]
        rows.append(row)
        log(f"  GSQ {name}: torch {row['torch_ms']:.3f} ms, fused {row['fused_ms']:.3f} ms -> {row['speedup']:.2f}x; "
            f"extra memory {row['torch_peak_MiB']:.0f} -> {row['fused_peak_MiB']:.0f} MiB")
    results["gsq"] = rows

    # the quantizer's own loop, a few steps, with and without the kernel
    try:
        from dedicated.quantize_job.gsq import GSQConfig, gsq as run_gsq

        codes0 = torch.randint(-2, 2, (experts, n, k), device=DEVICE, dtype=torch.int8)
        scales0 = scales.detach().float()
        steps = 20 if not args.smoke else 2
        e2e = {}
        for use_kernel in (False, True):
            cfg = GSQConfig(steps=steps, eval_every=steps, use_kernel=use_kernel)
            if use_kernel and DEVICE == "cpu":
                continue  # the quantizer refuses the kernel off CUDA
            run_gsq(weight, h, codes0, scales0, bits, GROUP, cfg)  # warm-up / compile
            walls = []
            for _ in range(3 if not args.smoke else 1):  # the median of three runs: one run scattered 1.6x
                sync()
                t = time.time()
                run_gsq(weight, h, codes0, scales0, bits, GROUP, cfg)
                sync()
                walls.append((time.time() - t) / steps * 1e3)
            e2e["kernel" if use_kernel else "torch"] = statistics.median(walls)
            e2e[("kernel" if use_kernel else "torch") + "_runs"] = walls
        e2e.setdefault("kernel", float("nan"))
        e2e["speedup"] = e2e["torch"] / e2e["kernel"]
        results["gsq_quantizer_step_ms"] = e2e
        log(f"  quantize_job.gsq step: torch {e2e['torch']:.2f} ms, kernel {e2e['kernel']:.2f} ms -> {e2e['speedup']:.2f}x")
    except Exception as exc:  # noqa: BLE001
        results["gsq_quantizer_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        log(f"  quantize_job.gsq end-to-end not measured: {results['gsq_quantizer_error']}")


def bench_gptq(args, results: dict) -> None:
    """GPTQ's column loop (launch-bound Python) against the fused in-block kernel
    (``GPTQConfig(use_kernel=True)``, :mod:`dedicated.kernels.gptq_block`): wall time and GPU time."""
    import torch

    from dedicated.quantize_job.gptq import GPTQConfig, gptq

    experts, n, k = (8, 2 * INTER, HIDDEN) if not args.smoke else (1, 8, 256)
    torch.manual_seed(1)
    w = torch.randn(experts, n, k, device=DEVICE) * 0.02
    x = torch.randn(experts, 1024 if not args.smoke else 16, k, device=DEVICE)
    h = x.transpose(-1, -2) @ x
    variants = {"torch": GPTQConfig(use_kernel=False)}
    if DEVICE != "cpu":  # the fused loop needs CUDA
        variants["fused"] = GPTQConfig(use_kernel=True)
    for name, cfg in variants.items():
        gptq(w, h, 2, config=cfg)
        sync()
        t = time.time()
        gptq(w, h, 2, config=cfg)
        sync()
        wall = time.time() - t
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA if DEVICE != "cpu" else ProfilerActivity.CPU]) as prof:
            gptq(w, h, 2, config=cfg)
            sync()
        avgs = prof.key_averages()
        gpu_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in avgs)
        kernels = sum(e.count for e in avgs if getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) > 0)
        results["gptq" if name == "torch" else "gptq_fused"] = {
            "shape": f"{experts} experts x [{n}, {k}]", "wall_ms": wall * 1e3, "gpu_busy_ms": gpu_us / 1e3,
            "gpu_ops": kernels}
        log(f"  GPTQ ({name}) {experts}x[{n},{k}]: wall {wall * 1e3:.1f} ms, GPU busy {gpu_us / 1e3:.1f} ms, "
            f"{kernels} GPU ops")


# ----------------------------------------------------------------------------------------------- I/O


def write_json(args, results, sweep_rows, extra=None) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"moe": results, "sweep": sweep_rows, **(extra or {})}
    (out / "bench_kernels.json").write_text(json.dumps(payload, indent=1, default=str))


def fmt(v, spec=".1f"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, spec)


def table(meta: dict, results: list, gsq_res: dict) -> str:
    lines = [
        f"GPU: {meta.get('gpu')}  |  torch {meta.get('torch')}  triton {meta.get('triton')}  humming {meta.get('humming')}",
        f"peak copy bandwidth {meta.get('peak_GBps', 0):.0f} GB/s (read+write), bf16 matmul {meta.get('peak_TFLOPs', 0):.0f} TFLOP/s",
        "",
        "| bits | GEMM | tokens | experts hit | ours us | ours GB/s | ours / roofline | Humming us | ours vs Humming | torch bf16 us | roofline us | compute floor us | ours / floor | config |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['bits']} | {r['gemm']} | {r['tokens']} | {r['active_experts']:.0f} | {fmt(r['mine_us'])} | "
            f"{fmt(r['mine_GBps'], '.0f')} | {fmt(r['mine_vs_roofline'], '.2f')}x | {fmt(r.get('humming_us'))} | "
            f"{fmt(r.get('speedup_vs_humming'), '.2f')}x | {fmt(r.get('torch_bf16_us'))} | {fmt(r['roofline_mem_us'])} | "
            f"{fmt(r['floor_compute_us'])} | {fmt(r['mine_vs_floor'], '.2f')}x | {r['mine_config']} |"
        )
    lines.append("")
    lines.append("ours vs Humming > 1 means ours is faster. roofline = bytes that must move / peak bandwidth; "
                 "floor = max(roofline, 2*M*top_k*N*K / peak bf16 rate).")
    if any("host_us_no_tma" in r for r in results):
        lines += ["", "CPU time per eager call (no CUDA graph), us: ours as tabled, the same config with weight "
                  "tiles by per-thread copies and by TMA descriptor, and Humming:", "",
                  "| bits | GEMM | tokens | ours | no TMA | TMA | Humming |", "|---|---|---|---|---|---|---|"]
        for r in results:
            lines.append(f"| {r['bits']} | {r['gemm']} | {r['tokens']} | {fmt(r.get('mine_host_us'))} | "
                         f"{fmt(r.get('host_us_no_tma'))} | {fmt(r.get('host_us_tma'))} | {fmt(r.get('humming_host_us'))} |")
    errs = [(r.get('mine_err_vs_bf16'), r.get('humming_err_vs_bf16')) for r in results]
    if errs:
        lines.append("max rel. error vs the bf16 torch result: ours "
                     f"{max(e[0] for e in errs):.1e}, Humming {fmt(max((e[1] for e in errs if e[1] is not None), default=None), '.1e')}")
    if gsq_res.get("gsq"):
        lines += ["", f"GSQ inner loop, fwd+bwd, {gsq_res.get('gsq_shape')}:", "",
                  "| case | torch autograd ms | fused ms | speed-up | torch extra MiB | fused extra MiB |", "|---|---|---|---|---|---|"]
        for g in gsq_res["gsq"]:
            lines.append(f"| {g['case']} | {g['torch_ms']:.3f} | {g['fused_ms']:.3f} | {g['speedup']:.2f}x | "
                         f"{g['torch_peak_MiB']:.0f} | {g['fused_peak_MiB']:.0f} |")
    if gsq_res.get("gsq_quantizer_step_ms"):
        e = gsq_res["gsq_quantizer_step_ms"]
        lines.append(f"\nquantize_job.gsq step (same shape, Hessian form, Lion): torch {e['torch']:.2f} ms, "
                     f"with relaxed_codes kernel {e['kernel']:.2f} ms ({e['speedup']:.2f}x)")
    if gsq_res.get("gptq"):
        g = gsq_res["gptq"]
        lines.append(f"\nGPTQ (quantize_job.gptq, 2-bit) {g['shape']}: wall {g['wall_ms']:.1f} ms, "
                     f"GPU busy {g['gpu_busy_ms']:.1f} ms ({g['gpu_ops']} GPU ops)")
        f = gsq_res.get("gptq_fused")
        if f:
            lines.append(f"with the fused in-block loop (use_kernel=True): wall {f['wall_ms']:.1f} ms, GPU busy "
                         f"{f['gpu_busy_ms']:.1f} ms ({f['gpu_ops']} GPU ops), {g['wall_ms'] / f['wall_ms']:.1f}x")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", action="store_true", help="time every candidate launch config per shape")
    p.add_argument("--bits", type=int, nargs="+", default=[2, 4])
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 32, 128, 2048, 8192])
    p.add_argument("--out", default="bench-out")
    p.add_argument("--skip-humming", action="store_true")
    p.add_argument("--skip-gsq", action="store_true")
    p.add_argument("--only", default=None, help="sweep only the candidates whose name matches this regex")
    p.add_argument("--workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)))
    p.add_argument("--smoke", action="store_true", help="tiny CPU run through the Triton interpreter")
    p.add_argument("--warm-only", action="store_true",
                   help="only fill the Triton and Humming compile caches (run it beside the GPU tests)")
    args = p.parse_args()
    if args.only:
        global ONLY
        ONLY = re.compile(args.only)
    if args.smoke:
        return smoke(args)

    import torch
    import triton

    if not torch.cuda.is_available():
        print("bench_kernels needs a CUDA GPU (use --smoke for a CPU plumbing check)", file=sys.stderr)
        return 2
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "sms": torch.cuda.get_device_properties(0).multi_processor_count, "command": " ".join(sys.argv)}
    try:
        import humming

        meta["humming"] = humming.__version__
    except Exception as exc:  # noqa: BLE001
        meta["humming"] = f"not importable ({type(exc).__name__}: {exc})"
        args.skip_humming = True
    log(f"{meta}")
    warm_thread = None
    if args.warm_only and not args.skip_humming:
        import threading

        warm_thread = threading.Thread(target=warm_humming, args=(args,), daemon=True)
        warm_thread.start()
    if args.workers > 0:
        jobs = []
        for bits in args.bits:
            for kind, (n, k) in SHAPES.items():
                for m in args.tokens:
                    cfgs = list(candidates(m, bits)) if args.sweep else []
                    cfgs += tabled_configs(m, n, k, bits, [name for name in LAYOUTS if k % tile_k_of(name) == 0])
                    jobs += [(bits, kind, dict(dataclasses.asdict(c), layout=po)) for c, po in cfgs]
        meta["compile_errors"] = list(precompile(jobs, args.workers).values())
    if args.warm_only:
        if warm_thread is not None:
            warm_thread.join()
        log("caches warm")
        return 0
    bw = peak_bandwidth()
    flops = peak_bf16_flops()
    meta["peak_GBps"], meta["peak_TFLOPs"] = bw / 1e9, flops / 1e12
    log(f"peak copy {bw / 1e9:.0f} GB/s, bf16 matmul {flops / 1e12:.0f} TFLOP/s")
    results, sweep_rows, extra = [], [], {"meta": meta}
    try:
        bench_moe(args, bw, flops, results, sweep_rows)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
    if not args.skip_gsq:
        for fn in (bench_gsq, bench_gptq):
            try:
                fn(args, extra)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
    write_json(args, results, sweep_rows, extra)
    text = table(meta, results, extra)
    Path(args.out, "bench_kernels.md").write_text(text + "\n")
    if sweep_rows:
        best = {}
        for r in sweep_rows:
            if "us" in r:
                key = (r["bits"], r["gemm"], r["tokens"])
                if key not in best or r["us"] < best[key]["us"]:
                    best[key] = r
        print("\nsweep winners:")
        for key, r in sorted(best.items()):
            print(f"  {key}: {r['config']} {r['us']:.1f}us")
    print("\n" + text)
    return 0


def smoke(args) -> int:
    """Run the whole pipeline on the CPU with tiny shapes through the Triton interpreter, to catch
    plumbing errors before spending GPU time. The numbers it prints mean nothing."""
    global DEVICE, E, SHAPES
    os.environ["TRITON_INTERPRET"] = "1"
    DEVICE, E, SHAPES = "cpu", 16, {"gate_up": (64, 256), "down": (128, 256)}  # K=256: every layout
    args.skip_humming = True
    args.tokens = [1, 5]
    args.bits = [2]
    meta = {"gpu": "cpu-smoke (interpreter)"}
    results, sweep_rows, extra = [], [], {"meta": meta}
    bench_moe(args, 1e12, 1e14, results, sweep_rows)
    for fn in (bench_gsq, bench_gptq):
        try:
            fn(args, extra)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
    print(table(meta, results, extra))
    print("candidates:", *(len(candidates(m, b)) for b in (2, 4) for m in (1, 8, 32, 128, 8192)))
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
