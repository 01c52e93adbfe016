"""Validating a Humming checkpoint on a GPU: routed experts packed (Triton MoE GEMM) against the
dequantized BF16 copy the Job used before — time, peak GPU memory, disk written, perplexity.

Builds a synthetic Qwen2-MoE Humming checkpoint on local disk (random BF16 weights outside the
experts, random 2-bit expert words and group scales: no download is possible, and time and memory
do not depend on the values), then measures each engine the way the Job's validate stage runs it:

- ``packed``: ``packed_model.load_packed_model`` on the GPU, then ``validate.perplexity``;
- ``dequantized``: ``validate.dequantize_humming_checkpoint`` (CPU, writes a BF16 checkpoint), then
  ``validate.load_model`` (``device_map="auto"``) and ``validate.perplexity``.

Both perplexities must agree (the same dequantized values); a random model's perplexity is near
its vocabulary size, so the figure only cross-checks the two paths. The first packed pass includes
Triton's compilation; the second is timed on its own.

Usage (on the GPU machine): ``python benchmarks/bench_packed_validation.py --out DIR [--layers 12]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import time
from pathlib import Path

import torch


def build_checkpoint(root: Path, *, layers: int, hidden: int, experts: int, top_k: int, moe_intermediate: int,
                     shared_intermediate: int, vocab: int, bits: int = 2, group: int = 128) -> Path:
    """A Humming checkpoint of a Qwen2-MoE of these shapes, written one decoder layer per shard."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig

    from dedicated.quantize_job.humming.format import DEFAULT_IGNORE, HummingSpec

    config = Qwen2MoeConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=hidden // 128, num_key_value_heads=max(1, hidden // 512),
                            num_experts=experts, num_experts_per_tok=top_k, moe_intermediate_size=moe_intermediate,
                            shared_expert_intermediate_size=shared_intermediate, intermediate_size=shared_intermediate,
                            decoder_sparse_step=1, tie_word_embeddings=False, max_position_embeddings=4096)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    spec = HummingSpec(bits=bits, group_size=group)
    out = root / "humming"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    shards: dict[str, dict[str, torch.Tensor]] = {}
    for name, param in skeleton.state_dict().items():
        if ".experts." in name:
            continue
        shard = f"layer-{name.split('.')[2]}" if name.startswith("model.layers.") else "other"
        value = torch.ones(param.shape, dtype=torch.bfloat16, device="cuda") if "norm" in name else \
            torch.randn(param.shape, generator=g, device="cuda", dtype=torch.float32).mul_(0.02).to(torch.bfloat16)
        shards.setdefault(shard, {})[name] = value
    for layer in range(layers):
        tensors = shards.setdefault(f"layer-{layer}", {})
        for e in range(experts):
            for proj, (n, k) in (("gate_proj", (moe_intermediate, hidden)), ("up_proj", (moe_intermediate, hidden)),
                                 ("down_proj", (hidden, moe_intermediate))):
                key = f"model.layers.{layer}.mlp.experts.{e}.{proj}"
                tensors[f"{key}.weight"] = torch.randint(-2**31, 2**31 - 1, spec.weight_shape(n, k), generator=g,
                                                         device="cuda", dtype=torch.int32)
                tensors[f"{key}.weight_scale"] = (torch.rand(spec.scale_shape(n, k), generator=g, device="cuda")
                                                  * 0.01 + 0.01).to(torch.bfloat16)
    weight_map = {}
    for shard, tensors in shards.items():
        file = f"model-{shard}.safetensors"
        save_file({k: v.cpu() for k, v in tensors.items()}, str(out / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in tensors})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    raw = config.to_dict()
    raw["quantization_config"] = spec.quantization_config(list(DEFAULT_IGNORE))
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    return out


def _gib(n: int) -> float:
    return round(n / 2**30, 2)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def _reset() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def _two_passes(model, windows: torch.Tensor) -> dict:
    """Two perplexity passes, timed: the first compiles what it needs (Triton), the second is warm."""
    from dedicated.quantize_job.validate import perplexity

    t = time.perf_counter()
    first = perplexity(model, windows)
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    ppl = perplexity(model, windows)
    return {"first_pass_s": first_s, "pass_s": time.perf_counter() - t, "perplexity": ppl, "first_perplexity": first}


def measure_packed(checkpoint: Path, windows: torch.Tensor) -> dict:
    from dedicated.quantize_job.packed_model import load_packed_model
    from dedicated.quantize_job.validate import free

    _reset()
    t = time.perf_counter()
    model = load_packed_model(checkpoint, torch.device("cuda"))
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t
    resident = torch.cuda.memory_allocated()
    row = {"engine": "packed", "prepare_s": 0.0, "load_s": load_s, **_two_passes(model, windows),
           "model_gib": _gib(resident), "peak_gib": _gib(torch.cuda.max_memory_allocated()),
           "disk_written_gib": 0.0, "offloaded": False}
    free(model)
    return row


def measure_dequantized(checkpoint: Path, scratch: Path, windows: torch.Tensor) -> dict:
    from dedicated.quantize_job.validate import dequantize_humming_checkpoint, free, load_model

    _reset()
    t = time.perf_counter()
    bf16 = dequantize_humming_checkpoint(checkpoint, scratch)
    prepare_s = time.perf_counter() - t
    t = time.perf_counter()
    model = load_model(bf16, torch.device("cuda"))
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t
    resident = torch.cuda.memory_allocated()
    offloaded = any(d in ("cpu", "disk") for d in (getattr(model, "hf_device_map", None) or {}).values())
    row = {"engine": "dequantized", "prepare_s": prepare_s, "load_s": load_s, **_two_passes(model, windows),
           "model_gib": _gib(resident), "peak_gib": _gib(torch.cuda.max_memory_allocated()),
           "disk_written_gib": _gib(_dir_bytes(bf16)), "offloaded": offloaded}
    free(model)
    shutil.rmtree(bf16, ignore_errors=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/bench-packed-validation"))
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--moe-intermediate", type=int, default=768)
    ap.add_argument("--shared-intermediate", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--window-tokens", type=int, default=512)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    checkpoint = build_checkpoint(args.scratch, layers=args.layers, hidden=args.hidden, experts=args.experts,
                                  top_k=args.top_k, moe_intermediate=args.moe_intermediate,
                                  shared_intermediate=args.shared_intermediate, vocab=args.vocab)
    print(f"checkpoint: {_gib(_dir_bytes(checkpoint))} GiB in {time.perf_counter() - t:.1f}s "
          f"({args.layers} layers, hidden {args.hidden}, {args.experts} experts x {args.moe_intermediate}, top-{args.top_k})",
          flush=True)
    windows = torch.randint(0, args.vocab, (args.windows, args.window_tokens),
                            generator=torch.Generator().manual_seed(0))
    rows = [measure_packed(checkpoint, windows), measure_dequantized(checkpoint, args.scratch / "bf16", windows)]
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "args": {k: str(v) for k, v in
              vars(args).items()}, "checkpoint_gib": _gib(_dir_bytes(checkpoint)), "rows": rows}
    (args.out / "packed-validation.json").write_text(json.dumps(result, indent=2))
    cols = ["engine", "prepare_s", "load_s", "first_pass_s", "pass_s", "model_gib", "peak_gib", "disk_written_gib",
            "offloaded", "perplexity"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in cols) + " |")
    a, b = rows[0]["perplexity"], rows[1]["perplexity"]
    print(f"perplexity packed / dequantized = {a / b:.5f}")


if __name__ == "__main__":
    main()
