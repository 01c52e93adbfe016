"""AutoRound (the Job's runner) on a GPU at the real Qwen3.6-35B-A3B layer shapes: peak GPU memory
and seconds per decoder block, so the 40-layer run can be planned without the 35B checkpoint.

Builds a randomly initialised ``Qwen3_5MoeForCausalLM`` with the real text config (hidden 2048, 256
experts of width 512, top-8, shared expert, Gated-DeltaNet and full-attention layers, vocab 248320)
but only ``--layers`` decoder layers, keeps it on the CPU, and runs
:func:`dedicated.quantize_job.autoround_runner.run_autoround` on ``cuda`` with the Job's defaults
(W4A16 g128, ``low_gpu_mem_usage``, 128 samples x 2048 tokens, batch 8) and per-block resume on, as
the Job runs it. Random weights and random token ids: the figures are memory and time, not quality.

Usage (GPU machine): ``python benchmarks/bench_autoround_gpu.py --layers 3 --iters 50 --out DIR``
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

TEXT = {  # Qwen3.6-35B-A3B text config (the operator's model zoo holds the same facts)
    "vocab_size": 248320, "hidden_size": 2048, "num_attention_heads": 16, "num_key_value_heads": 2,
    "head_dim": 256, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
    "linear_num_key_heads": 16, "linear_num_value_heads": 32, "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512, "num_experts_per_tok": 8, "num_experts": 256,
    "tie_word_embeddings": False, "max_position_embeddings": 262144,
}
FULL_LAYERS = 40


TINY = dict(TEXT, vocab_size=512, hidden_size=128, num_attention_heads=2, head_dim=64, linear_key_head_dim=32,
            linear_value_head_dim=32, linear_num_key_heads=1, linear_num_value_heads=2, moe_intermediate_size=128,
            shared_expert_intermediate_size=128, num_experts=8, num_experts_per_tok=2)


def build_model(layers: int, tiny: bool = False):
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

    # every 4th layer of the real model is full attention; keep at least one of each kind
    kinds = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)]
    if layers >= 2 and "full_attention" not in kinds:
        kinds[-1] = "full_attention"
    cfg = Qwen3_5MoeTextConfig(**(TINY if tiny else TEXT), num_hidden_layers=layers, layer_types=kinds)
    torch.manual_seed(0)
    start = time.time()
    model = Qwen3_5MoeForCausalLM(cfg).to(torch.bfloat16).eval()
    return model, kinds, time.time() - start


class BlockClock:
    """Wall time and peak GPU memory per block, read at auto-round's per-block progress hook."""

    def __init__(self) -> None:
        self.marks: list[dict] = []
        self.t0 = time.time()

    def __call__(self, done: int, total: int) -> None:
        now = time.time()
        cuda = torch.cuda.is_available()
        self.marks.append({"blocks_done": done, "of": total, "s": now - self.t0,
                           "peak_GiB": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0})
        m = self.marks[-1]
        print(f"[mark] blocks done {done}/{total}: {m['s']:.1f}s since last mark, peak {m['peak_GiB']:.2f} GiB", flush=True)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        self.t0 = now


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default="bench-autoround")
    ap.add_argument("--tiny", action="store_true", help="plumbing check on the CPU with tiny shapes (figures mean nothing)")
    args = ap.parse_args()
    device = "cpu" if args.tiny else "cuda"
    from dedicated.quantize_job.autoround_runner import run_autoround
    from dedicated.quantize_job.pipeline import _autoround_block_progress
    from dedicated.quantize_job.tinymoe.tokenizer import build_tokenizer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, kinds, build_s = build_model(args.layers, args.tiny)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.layers} layers {kinds}, {params / 1e9:.2f} B params, built in {build_s:.0f}s", flush=True)
    ids = torch.randint(0, (TINY if args.tiny else TEXT)["vocab_size"], (args.samples, args.seqlen), generator=torch.Generator().manual_seed(1))
    clock = BlockClock()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    with _autoround_block_progress(clock):
        res = run_autoround(model, build_tokenizer(), ids, out / "checkpoint", iters=args.iters,
                            batch_size=args.batch_size, device=device, low_gpu_mem_usage=device == "cuda",
                            resume_dir=out / "resume", resume_key="bench")
    total = time.time() - start
    clock(args.layers, args.layers)
    # The bar advances when block i + 1 starts (and once more at the end): the time between the
    # first marks of consecutive counts is one block; the first count also holds the calibration
    # pass and block 0, so it is left out of the per-block figure.
    first: dict[int, float] = {}
    elapsed = 0.0
    for m in clock.marks:
        elapsed += m["s"]
        first.setdefault(m["blocks_done"], elapsed)
    counts = sorted(c for c in first if c >= 1)
    per_block = [first[b] - first[a] for a, b in zip(counts, counts[1:])] or [total / args.layers]
    peak = max(m["peak_GiB"] for m in clock.marks)
    s_block = sum(per_block) / len(per_block)
    result = {
        "gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu (tiny plumbing check)", "torch": torch.__version__, "python": platform.python_version(),
        "layers": args.layers, "layer_types": kinds, "iters": args.iters, "samples": args.samples,
        "seqlen": args.seqlen, "batch_size": args.batch_size, "params_B": params / 1e9,
        "total_s": total, "marks": clock.marks, "block_seconds": per_block, "seconds_per_block": s_block, "peak_gpu_GiB": peak,
        "projected_40_layers_h": s_block * FULL_LAYERS / 3600, "checkpoint_files": sorted(
            p.name for p in res.output_dir.iterdir()),
    }
    (out / "bench_autoround_gpu.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "marks"}, indent=2))
    for m in clock.marks:
        print(f"  blocks done {m['blocks_done']}/{m['of']}: {m['s']:.1f}s since last mark, peak {m['peak_GiB']:.1f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
