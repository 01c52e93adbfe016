"""Held-out perplexity of the tiny MoE under each quantization method, with wall time and peak GPU memory.

Trains (or loads) the tiny MoE of ``dedicated.quantize_job.tinymoe`` on the stdlib corpus, then for
every method spec quantizes a fresh copy of the model through the layer-by-layer engine (or
auto-round) and measures held-out perplexity on files the model never saw. Prints a markdown table
and writes it (plus JSON) where asked.

    python benchmarks/bench_quality.py --smoke                 # CPU, toy scale, a minute or two
    python benchmarks/bench_quality.py --preset gpu --train-steps 1500 --save-model out/model \
        --corpus corpus.tar.xz --out-md out/quality.md --out-json out/quality.json

Method specs (separated by ``;``, or by ``,`` when no spec has overrides): ``bf16``, ``rtn:2``, ``gptq:3``, ``gsq:2``, ``autoround:4``, optionally with overrides
after ``@``: ``gsq:2@gsq.learn_scales=false``, ``gptq:2@cal.routing_weighted=true``,
``gptq:2@cal.fallback=identity,calib=4`` (``calib=N`` uses only the first N calibration samples;
``label=...`` names the row). Keys: ``gsq.*`` (GSQConfig), ``gptq.*`` (GPTQConfig), ``cal.*``
(CalibrationConfig), ``ar.iters``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from dedicated.quantize_job.gptq import GPTQConfig
from dedicated.quantize_job.gsq import GSQConfig
from dedicated.quantize_job.layerwise import CalibrationConfig, quantize_model
from dedicated.quantize_job.tinymoe.corpus import load_corpus
from dedicated.quantize_job.tinymoe.evaluate import perplexity
from dedicated.quantize_job.tinymoe.train import TrainConfig, save, train

DEFAULT_METHODS = "bf16,rtn:2,gptq:2,gsq:2,rtn:3,gptq:3,gsq:3,rtn:4,gptq:4,autoround:4"
SMOKE_METHODS = "bf16,rtn:2,gptq:2,gsq:2,gptq:3@gsq.steps=2,autoround:4"
# Each choice the paper leaves open (or that this implementation makes) against the default.
ABLATION_METHODS = ";".join([
    "bf16",
    "gptq:2@gptq.act_order=false",
    "gptq:2@cal.routing_weighted=true",
    "gsq:2@cal.routing_weighted=true",
    "gsq:2@gsq.learn_scales=false",
    "gsq:2@gsq.steps=100",
    "gsq:2@gsq.steps=1000",
    "gsq:2@gsq.tau_schedule=geometric",
    "gsq:2@gsq.init_noise=0",
    "gsq:2@gsq.use_kernel=true",
    "gptq:2@calib=4,cal.fallback=pooled",
    "gptq:2@calib=4,cal.fallback=identity",
    "gptq:2@calib=4,cal.min_tokens=1",
    "gsq:2@calib=4,cal.fallback=pooled",
    "gsq:2@calib=4,cal.fallback=identity",
])
NAMED = {"table": DEFAULT_METHODS, "ablations": ABLATION_METHODS, "smoke": SMOKE_METHODS}


def _coerce(value: str, current):
    if isinstance(current, bool):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(current, int) and not isinstance(current, bool):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if isinstance(current, tuple):
        return tuple(type(c)(v) for c, v in zip(current, value.split(":")))
    if current is None:  # an optional field: a switch left on "auto" (use_kernel) or a number
        if value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        return int(value) if value.isdigit() else value
    return value


@dataclasses.dataclass
class Spec:
    text: str
    method: str
    bits: int | None
    gptq: GPTQConfig
    gsq: GSQConfig
    cal: CalibrationConfig
    calib_samples: int | None = None
    ar_iters: int | None = None
    label: str | None = None


def parse_spec(text: str, gptq: GPTQConfig, gsq: GSQConfig, cal: CalibrationConfig) -> Spec:
    head, _, over = text.partition("@")
    method, _, bits = head.partition(":")
    spec = Spec(text, method, int(bits) if bits else None, gptq, gsq, cal)
    for item in filter(None, over.split(",")):
        key, _, value = item.partition("=")
        if key == "calib":
            spec.calib_samples = int(value)
        elif key == "label":
            spec.label = value
        elif key == "ar.iters":
            spec.ar_iters = int(value)
        else:
            group, _, field = key.partition(".")
            attr = {"gsq": "gsq", "gptq": "gptq", "cal": "cal"}.get(group)
            if attr is None or not hasattr(getattr(spec, attr), field):
                raise ValueError(f"unknown override {key!r} in {text!r}")
            cfg = getattr(spec, attr)
            setattr(spec, attr, dataclasses.replace(cfg, **{field: _coerce(value, getattr(cfg, field))}))
    return spec


def _sample_calibration(corpus, n: int, seq_len: int, seed: int) -> torch.Tensor:
    stream = corpus.token_ids("train")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seq_len, (n,), generator=g)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def _eval(model, heldout, args, device) -> float:
    model.to(device)
    try:
        return perplexity(model, heldout, seq_len=args.eval_len, batch_size=args.eval_batch, max_windows=args.eval_windows)
    finally:
        model.to("cpu")


def _mean_rel_error(stats: list[dict]) -> float | None:
    vals = []
    for layer in stats:
        for unit in layer.get("units", {}).values():
            for part in ("gate_up", "down"):
                if isinstance(unit.get(part), dict) and "rel_error" in unit[part]:
                    vals.append(unit[part]["rel_error"])
            if "rel_error" in unit:
                vals.append(unit["rel_error"])
    return sum(vals) / len(vals) if vals else None


def run_engine(spec: Spec, base, calib, heldout, args, device) -> dict:
    model = copy.deepcopy(base)
    ids = calib[: spec.calib_samples] if spec.calib_samples else calib
    _peak_reset(device)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as state:
        res = quantize_model(model, ids, method=spec.method, bits=spec.bits, state_dir=state, device=device,
                             group_size=args.group_size, gptq_config=spec.gptq, gsq_config=spec.gsq,
                             calibration=spec.cal)
    wall = time.time() - t0
    peak = _peak_mib(device)
    ppl = _eval(model, heldout, args, device)
    starved = sum(len(u.get("gate_up_fallback", {}).get("starved", [])) for layer in res.stats
                  for u in layer.get("units", {}).values())
    gsq_gain = [u["gate_up"]["gsq"] for layer in res.stats for u in layer.get("units", {}).values()
                if isinstance(u.get("gate_up"), dict) and "gsq" in u["gate_up"]]
    extra = {}
    if gsq_gain:
        extra["gsq_layer_loss_ratio"] = sum(g["final_loss"] for g in gsq_gain) / max(1e-30, sum(g["init_loss"] for g in gsq_gain))
    return {"ppl": ppl, "wall_s": wall, "peak_gpu_mib": peak, "mean_rel_error": _mean_rel_error(res.stats),
            "starved_expert_layers": starved, "calib_tokens": int(ids.numel()), **extra}


def run_autoround(spec: Spec, base, calib, heldout, args, device) -> dict:
    from dedicated.quantize_job.autoround_runner import dequantize_autogptq_checkpoint, load_dense_weights, run_autoround
    from dedicated.quantize_job.tinymoe.tokenizer import build_tokenizer

    work = copy.deepcopy(base).to(torch.bfloat16 if device.type == "cuda" else torch.float32)
    ids = calib[: spec.calib_samples] if spec.calib_samples else calib
    iters = spec.ar_iters if spec.ar_iters is not None else args.ar_iters
    _peak_reset(device)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as out:
        res = run_autoround(work, build_tokenizer(), ids, out, iters=iters, batch_size=8,
                            device=0 if device.type == "cuda" else "cpu")
        wall = time.time() - t0
        peak = _peak_mib(device)
        dense, qc = dequantize_autogptq_checkpoint(res.output_dir)
    model = copy.deepcopy(base)
    n = load_dense_weights(model, dense)
    ppl = _eval(model, heldout, args, device)
    return {"ppl": ppl, "wall_s": wall, "peak_gpu_mib": peak, "quantized_modules": n, "kept_bf16": len(res.kept_bf16),
            "ar_iters": iters, "calib_tokens": int(ids.numel()), "packing_format": qc.get("packing_format")}


def _label(spec: Spec) -> str:
    if spec.label:
        return spec.label
    names = {"bf16": "BF16 (unquantized)", "rtn": "RTN", "gptq": "GPTQ", "gsq": "GSQ", "autoround": "AutoRound"}
    base = names.get(spec.method, spec.method)
    return base + (f" — {spec.text.partition('@')[2]}" if "@" in spec.text else "")


def _fmt(v, nd=2):
    return "—" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def markdown(rows: list[dict], meta: dict) -> str:
    base = next((r["ppl"] for r in rows if r["method"] == "bf16"), None)
    lines = [
        "| method | bits | held-out ppl | vs BF16 | quantize wall (s) | peak GPU mem (MiB) | mean layer rel. error | calib tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rel = f"{100 * (r['ppl'] / base - 1):+.1f}%" if base and r["method"] != "bf16" else "—"
        lines.append(
            f"| {r['label']} | {r['bits'] or 16} | {r['ppl']:.3f} | {rel} | {_fmt(r.get('wall_s'), 1)} | "
            f"{_fmt(r.get('peak_gpu_mib'), 0)} | {_fmt(r.get('mean_rel_error'), 4)} | {_fmt(r.get('calib_tokens'))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="toy scale on CPU: tiny model, few steps, every code path")
    p.add_argument("--preset", default="gpu")
    p.add_argument("--model-dir", default=None, help="load a trained tiny MoE instead of training")
    p.add_argument("--save-model", default=None, help="save the trained model here")
    p.add_argument("--train-steps", type=int, default=1500)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--train-seq", type=int, default=512)
    p.add_argument("--train-lr", type=float, default=3e-3)
    p.add_argument("--train-max-seconds", type=float, default=None)
    p.add_argument("--corpus", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--methods", default=None, help="comma-separated specs, or 'table' / 'ablations'")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-len", type=int, default=512)
    p.add_argument("--eval-len", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=None)
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--ar-iters", type=int, default=200)
    p.add_argument("--gsq", action="append", default=[], help="GSQConfig override key=value for every GSQ row")
    p.add_argument("--out-md", default=None)
    p.add_argument("--out-json", default=None)
    a = p.parse_args(argv)
    if a.smoke:
        a.preset, a.train_steps, a.train_batch, a.train_seq = "test", 3, 4, 64
        a.calib_samples, a.calib_len, a.eval_len, a.eval_windows, a.ar_iters = 8, 64, 64, 8, 1
        a.device = "cpu" if a.device == "cuda" and not torch.cuda.is_available() else a.device
    device = torch.device(a.device)
    methods = a.methods or (SMOKE_METHODS if a.smoke else DEFAULT_METHODS)
    methods = NAMED.get(methods, methods)
    gsq_cfg = GSQConfig(steps=12, eval_every=4) if a.smoke else GSQConfig()
    for item in a.gsq:
        k, _, v = item.partition("=")
        gsq_cfg = dataclasses.replace(gsq_cfg, **{k: _coerce(v, getattr(gsq_cfg, k))})
    cal = CalibrationConfig(min_tokens=16, min_total_tokens=64) if a.smoke else CalibrationConfig()
    # Specs are separated by ';' (overrides inside a spec use ','); a list without ';' may use ','.
    items = methods.split(";") if ";" in methods else methods.split(",")
    specs = [parse_spec(m.strip(), GPTQConfig(), gsq_cfg, cal) for m in items if m.strip()]

    corpus = load_corpus(a.corpus)
    log = lambda msg: print(msg, flush=True)
    train_stats = None
    if a.model_dir and (Path(a.model_dir) / "config.json").exists():
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
        stats_file = Path(a.model_dir) / "train_stats.json"
        train_stats = json.loads(stats_file.read_text()) if stats_file.exists() else None
        log(f"[bench] loaded model from {a.model_dir}")
    else:
        tcfg = TrainConfig(preset=a.preset, steps=a.train_steps, seq_len=a.train_seq, batch_size=a.train_batch,
                           lr=a.train_lr, max_seconds=a.train_max_seconds, warmup_steps=min(100, max(1, a.train_steps // 10)),
                           eval_windows=8 if a.smoke else 64)
        model, train_stats = train(corpus, tcfg, device=device, log=log)
        if a.save_model:
            save(model, train_stats, a.save_model)
            log(f"[bench] saved model to {a.save_model}")
        base = model
    # Weights hold bf16 values (as saved); every evaluation computes in fp32 so that quantized and
    # unquantized models are compared on the weights alone.
    base = base.to(torch.bfloat16).to(torch.float32).cpu().eval()
    base.config.output_router_logits = False
    base.config._experts_implementation = "eager"  # exact in fp32 on every device
    heldout = corpus.token_ids("heldout")
    calib = _sample_calibration(corpus, a.calib_samples, a.calib_len, seed=1234)

    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "corpus": corpus.summary(),
        "train": {k: train_stats[k] for k in ("steps_done", "seconds", "tokens_seen", "heldout_ppl", "parameters")}
        if train_stats else None,
        "calibration": {"samples": a.calib_samples, "tokens_per_sample": a.calib_len},
        "eval": {"window": a.eval_len, "windows": a.eval_windows or heldout.numel() // a.eval_len},
        "gsq_config": gsq_cfg.as_dict(),
        "model_config": {k: getattr(base.config, k) for k in ("hidden_size", "num_hidden_layers", "num_experts",
                                                               "num_experts_per_tok", "moe_intermediate_size",
                                                               "shared_expert_intermediate_size")},
    }
    rows = []
    for spec in specs:
        t0 = time.time()
        try:
            if spec.method == "bf16":
                r = {"ppl": _eval(copy.deepcopy(base), heldout, a, device)}
            elif spec.method == "autoround":
                r = run_autoround(spec, base, calib, heldout, a, device)
            else:
                r = run_engine(spec, base, calib, heldout, a, device)
        except Exception as exc:  # one failing row must not lose the others; the error is reported
            log(f"[bench] {spec.text} FAILED: {type(exc).__name__}: {exc}")
            rows.append({"spec": spec.text, "label": _label(spec), "method": spec.method, "bits": spec.bits,
                         "ppl": float("nan"), "error": f"{type(exc).__name__}: {exc}"})
            continue
        row = {"spec": spec.text, "label": _label(spec), "method": spec.method, "bits": spec.bits, **r}
        rows.append(row)
        log(f"[bench] {spec.text}: ppl {row['ppl']:.4f} ({time.time() - t0:.1f}s) {json.dumps({k: v for k, v in r.items() if k != 'ppl'})}")
        if a.out_json:
            Path(a.out_json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown(rows, meta)
    print(table)
    if a.out_md:
        Path(a.out_md).write_text(table)
    if a.out_json:
        Path(a.out_json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
