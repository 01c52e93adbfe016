"""Time per MoE layer of GPTQ and GSQ at the Qwen3.6-35B-A3B expert shapes, and the whole-model projection.

Builds a one-decoder-layer transformers MoE with the real routed-expert shapes (256 experts, hidden
2048, expert intermediate 512, top-8 routing, group 128), random bf16 weights, and quantizes it with
the production engine (``quantize_model``: calibration with the model's own router, per-expert
Hessians, batched GPTQ / GSQ, state-directory commit) on synthetic calibration tokens. The time
of that layer times the model's 40 MoE layers is the projection; attention, the shared expert and
the embeddings are left in BF16 as in the real job and cost only the layer forwards included here.

    python benchmarks/bench_quant_throughput.py --samples 128 --seq 2048 --out-json out/throughput.json
    python benchmarks/bench_quant_throughput.py --smoke     # CPU, toy shapes
    python benchmarks/bench_quant_throughput.py --methods gptq,gptq+kernel,gsq+kernel  # "+kernel": the method's Triton kernels

Reference point: the 4-bit AutoRound checkpoint of that model took about 10.5 h on a GB10
(DGX Spark); that is another GPU and another method, so the ratio is indicative only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from dedicated.quantize_job.gptq import GPTQConfig
from dedicated.quantize_job.gsq import GSQConfig
from dedicated.quantize_job.layerwise import CalibrationConfig, quantize_model

QWEN36_LAYERS = 40
REFERENCE_AUTOROUND_HOURS_GB10 = 10.5


def build_layer_model(hidden: int, experts: int, inter: int, top_k: int, layers: int = 1, heads: int = 16,
                      kv_heads: int = 2, dtype=torch.bfloat16, seed: int = 0):
    """A Qwen2-MoE-class model (fused experts, router, shared expert) with the given expert shapes."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    cfg = Qwen2MoeConfig(vocab_size=1024, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, num_experts=experts,
                         num_experts_per_tok=top_k, moe_intermediate_size=inter, shared_expert_intermediate_size=inter,
                         norm_topk_prob=True, max_position_embeddings=4096, qkv_bias=False)
    cfg._experts_implementation = "eager"
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = Qwen2MoeForCausalLM(cfg).to(dtype).eval()
    return model


def time_method(model_fn, calib, method: str, bits: int, device, gsq_cfg: GSQConfig, cal: CalibrationConfig,
                gptq_cfg: GPTQConfig = GPTQConfig()) -> dict:
    model = model_fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    layer_times: list[float] = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as state:
        res = quantize_model(model, calib, method=method, bits=bits, state_dir=state, device=device,
                             gptq_config=gptq_cfg, gsq_config=gsq_cfg, calibration=cal,
                             progress=lambda ev: layer_times.append(ev.layer_seconds) if ev.computed else None)
    wall = time.time() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    units = res.stats[0]["units"]
    unit = next(iter(units.values()))
    out = {"method": method, "bits": bits, "layer_seconds": layer_times[0], "wall_seconds": wall,
           "peak_gpu_gib": peak, "tokens_per_expert_min": min(unit["tokens_per_expert"]),
           "tokens_per_expert_max": max(unit["tokens_per_expert"]),
           "rel_error": {k: unit[k].get("rel_error") for k in ("gate_up", "down")}}
    if method == "gsq":
        out["gsq"] = {k: unit[k]["gsq"] for k in ("gate_up", "down")}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--experts", type=int, default=256)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--inter", type=int, default=512)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--methods", default="gptq,gsq")
    p.add_argument("--gsq", action="append", default=[], help="GSQConfig override key=value")
    p.add_argument("--layers-total", type=int, default=QWEN36_LAYERS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out-json", default=None)
    a = p.parse_args(argv)
    if a.smoke:
        a.experts, a.hidden, a.inter, a.top_k, a.samples, a.seq = 8, 256, 128, 2, 8, 64
    device = torch.device(a.device)
    gsq_cfg = GSQConfig(steps=10, eval_every=5) if a.smoke else GSQConfig()
    for item in a.gsq:
        k, _, v = item.partition("=")
        cur = getattr(gsq_cfg, k)
        if isinstance(cur, bool) or (cur is None and v.lower() in ("true", "false")):  # use_kernel: None = auto
            val = v.lower() in ("1", "true")
        else:
            val = type(cur)(v) if cur is not None else int(v)
        gsq_cfg = dataclasses.replace(gsq_cfg, **{k: val})
    cal = CalibrationConfig(batch_size=8, min_tokens=16 if a.smoke else 256)
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, 1024, (a.samples, a.seq), generator=g)
    model_fn = lambda: build_layer_model(a.hidden, a.experts, a.inter, a.top_k,
                                         heads=4 if a.smoke else 16, kv_heads=1 if a.smoke else 2)
    results = []
    for item in a.methods.split(","):
        method, _, variant = item.partition("+")
        # "+kernel": every Triton kernel the method has (GSQ: its GPTQ start and the relaxation)
        # (without "+": the plain torch paths, as before the kernels became the default on CUDA)
        kernel = variant == "kernel"
        cfg = dataclasses.replace(gsq_cfg, use_kernel=kernel)
        r = time_method(model_fn, calib, method, a.bits, device, cfg, cal, GPTQConfig(use_kernel=kernel))
        r["variant"] = variant or "torch"
        r["projected_model_hours"] = r["layer_seconds"] * a.layers_total / 3600
        results.append(r)
        print(f"[throughput] {item}: {r['layer_seconds']:.1f} s/layer, peak {r['peak_gpu_gib']} GiB, "
              f"projected {r['projected_model_hours']:.2f} h for {a.layers_total} layers", flush=True)
        if a.out_json:  # after every method, so a run stopped by its time limit keeps what it measured
            Path(a.out_json).write_text(json.dumps({"partial": True, "results": results}, indent=1))
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
            "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
            "shapes": {"experts": a.experts, "hidden": a.hidden, "expert_intermediate": a.inter, "top_k": a.top_k,
                       "group_size": 128, "bits": a.bits},
            "calibration_tokens": a.samples * a.seq, "gsq_config": gsq_cfg.as_dict(),
            "reference": f"AutoRound 4-bit, whole model, ~{REFERENCE_AUTOROUND_HOURS_GB10} h on a GB10"}
    lines = ["| method | s / MoE layer | peak GPU mem (GiB) | projected 40 layers (h) | routed tokens per expert (min-max) |",
             "|---|---|---|---|---|"]
    for r in results:
        peak = "—" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.1f}"
        lines.append(f"| {r['method'].upper()} {a.bits}-bit ({r['variant']}) | {r['layer_seconds']:.1f} | {peak} | "
                     f"{r['projected_model_hours']:.2f} | {r['tokens_per_expert_min']}-{r['tokens_per_expert_max']} |")
    print("\n".join(lines))
    if a.out_json:
        Path(a.out_json).write_text(json.dumps({"meta": meta, "results": results, "table": lines}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
