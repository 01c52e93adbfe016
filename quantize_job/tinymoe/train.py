"""Deterministic training of the tiny MoE on the stdlib corpus.

Run: ``python -m dedicated.quantize_job.tinymoe.train --preset gpu --steps 1500 --out DIR``.
Determinism: one seed drives initialisation and the sampling of training windows (a dedicated
``torch.Generator``), the learning-rate schedule is a function of the step, and deterministic
kernels are requested (``warn_only``: a kernel without a deterministic variant warns instead of
failing). The stopping rule is a fixed number of steps, not wall time, so two runs on the same
machine type produce the same weights; ``--max-seconds`` only guards the wall-clock budget and its
use is recorded in ``train_stats.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dedicated.quantize_job.tinymoe.config import tiny_moe_config
from dedicated.quantize_job.tinymoe.corpus import Corpus, load_corpus
from dedicated.quantize_job.tinymoe.evaluate import perplexity
from dedicated.quantize_job.tinymoe.tokenizer import build_tokenizer


@dataclass
class TrainConfig:
    preset: str = "cpu"
    steps: int = 300
    seq_len: int = 256
    batch_size: int = 16
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    max_seconds: float | None = None
    eval_windows: int = 64
    experts_implementation: str = "grouped_mm"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _sample_windows(stream: torch.Tensor, n: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, stream.numel() - seq_len, (n,), generator=gen)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])


def train(
    corpus: Corpus,
    cfg: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    log=print,
):
    """Train a fresh tiny MoE; returns ``(model, stats)`` with the model on ``device`` in eval mode."""
    from transformers import Qwen2MoeForCausalLM

    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = False
    config = tiny_moe_config(cfg.preset, max_position_embeddings=max(1024, cfg.seq_len))
    config._experts_implementation = cfg.experts_implementation
    model = Qwen2MoeForCausalLM(config).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    stream = corpus.token_ids("train")
    gen = torch.Generator().manual_seed(cfg.seed)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    model.train()
    start = time.time()
    steps_done, losses = 0, []
    for step in range(cfg.steps):
        if cfg.max_seconds is not None and time.time() - start > cfg.max_seconds:
            log(f"[train] wall-clock guard reached after {step} of {cfg.steps} steps")
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = _sample_windows(stream, cfg.batch_size, cfg.seq_len, gen).to(device)
        try:
            with amp:
                out = model(input_ids=batch, labels=batch, use_cache=False)
        except (RuntimeError, NotImplementedError) as exc:
            if step or model.config._experts_implementation == "eager":
                raise
            # grouped_mm is fast but not available for every dtype/device mix: fall back, once, loudly.
            log(f"[train] experts implementation {model.config._experts_implementation!r} failed ({exc}); using 'eager'")
            model.config._experts_implementation = "eager"
            with amp:
                out = model(input_ids=batch, labels=batch, use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps_done = step + 1
        if step % 50 == 0 or step == cfg.steps - 1:
            loss = float(out.loss.detach())
            losses.append((step, loss))
            log(f"[train] step {step}/{cfg.steps} loss {loss:.4f} lr {lr_at(step, cfg):.2e} {time.time() - start:.0f}s")
    seconds = time.time() - start
    model_impl = model.config._experts_implementation
    model.eval()
    model.config.output_router_logits = False
    model.config._experts_implementation = "eager"  # exact and dtype-agnostic for evaluation
    heldout = perplexity(model, corpus.token_ids("heldout"), seq_len=cfg.seq_len, max_windows=cfg.eval_windows)
    stats = {
        "config": asdict(cfg),
        "steps_done": steps_done,
        "seconds": round(seconds, 1),
        "tokens_seen": steps_done * cfg.batch_size * cfg.seq_len,
        "heldout_ppl": heldout,
        "losses": losses,
        "corpus": corpus.summary(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "experts_implementation_used": model_impl,
    }
    log(f"[train] done: {steps_done} steps in {seconds:.0f}s, held-out ppl {heldout:.3f}")
    return model, stats


def save(model, stats: dict, out_dir: Path | str, *, max_shard_size: str = "12MB") -> Path:
    """``save_pretrained`` in bf16 (small enough to travel) plus the tokenizer and the stats."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out_dir, max_shard_size=max_shard_size)
    build_tokenizer().save_pretrained(out_dir)
    (out_dir / "train_stats.json").write_text(json.dumps(stats, indent=2))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=None)
    p.add_argument("--corpus", default=None, help="stdlib directory or corpus .tar.xz (default: this Python's stdlib)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    cfg = TrainConfig(preset=a.preset, steps=a.steps, seq_len=a.seq_len, batch_size=a.batch_size, lr=a.lr,
                      seed=a.seed, max_seconds=a.max_seconds)
    model, stats = train(load_corpus(a.corpus), cfg, device=a.device)
    save(model, stats, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
