"""A tiny MoE checkpoint on disk, for the Job's tests and its memory benchmark (no download possible).

A ``Qwen2MoeForCausalLM`` of the issue-6 ``tinymoe`` shapes (routed experts with top-k routing, a
shared expert and its gate, the router ``mlp.gate``) with the byte-level tokenizer, briefly trained
on Python standard library text so that quantization has something to lose: a random model's
perplexity is the vocabulary size whatever its weights, so a validation check on it proves nothing.
Saved with ``save_pretrained`` in BF16 like a Hub checkpoint (per-expert tensor names, shards, index).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import torch

TRAIN_FILES = ("textwrap.py", "string.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "heapq.py",
               "colorsys.py", "keyword.py", "numbers.py")


def training_bytes() -> bytes:
    root = Path(sysconfig.get_paths()["stdlib"])
    return b"\n".join((root / name).read_bytes() for name in TRAIN_FILES if (root / name).is_file())


def build_tiny_moe_checkpoint(
    out_dir: Path | str,
    *,
    layers: int = 4,
    train_steps: int = 40,
    seed: int = 0,
    hidden_size: int = 128,
    experts: int = 4,
    moe_intermediate: int = 128,
    max_shard_size: str = "300KB",
    train_text: bytes | None = None,
) -> Path:
    """Write the checkpoint to ``out_dir`` (created) and return it. Seconds on a CPU.

    ``train_text`` replaces the default training text (a test that needs the model to have learnt a
    particular text, so that quantization measurably hurts it there, passes that text).
    """
    from transformers import Qwen2MoeForCausalLM

    from dedicated.quantize_job.tinymoe import build_tokenizer, tiny_moe_config

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    config = tiny_moe_config("test", num_hidden_layers=layers, hidden_size=hidden_size, num_experts=experts,
                             moe_intermediate_size=moe_intermediate, max_position_embeddings=512)
    config.output_router_logits = False
    model = Qwen2MoeForCausalLM(config)
    if train_steps:
        data = train_text if train_text is not None else training_bytes()
        stream = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(train_steps):
            starts = torch.randint(0, stream.numel() - 65, (8,), generator=gen)
            batch = torch.stack([stream[s : s + 64] for s in starts.tolist()])
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.eval()
    model.to(torch.bfloat16).save_pretrained(out_dir, max_shard_size=max_shard_size)
    build_tokenizer().save_pretrained(out_dir)
    return out_dir


def cached_tiny_moe_checkpoint(cache_root: Path | str, **kwargs) -> Path:
    """:func:`build_tiny_moe_checkpoint` once per distinct ``kwargs`` under ``cache_root`` (reused after)."""
    key = hashlib.sha256(json.dumps(kwargs, sort_keys=True, default=lambda b: hashlib.sha256(b).hexdigest())
                         .encode()).hexdigest()[:12]
    final = Path(cache_root) / f"tiny-moe-{key}"
    if (final / "config.json").is_file():
        return final
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _build_in_fresh_interpreter(tmp, kwargs)
    try:
        os.rename(tmp, final)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build_in_fresh_interpreter(out_dir: Path, kwargs: dict) -> None:
    """Run :func:`build_tiny_moe_checkpoint` in a new Python process.

    Why: ``save_pretrained`` writes per-expert tensor names by reversing transformers' process-wide
    weight-conversion registry, which other code in a long test session can change (auto-round's
    checkpoint loader drops the expert-fusion step for good; ``validate.conversion_registry_kept``
    now undoes that, but a test helper should not depend on every caller being that careful). A
    fresh interpreter always writes the Hub layout.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    args = dict(kwargs)
    text_file = None
    if args.get("train_text") is not None:
        text_file = out_dir.with_name(out_dir.name + ".train-text")
        text_file.write_bytes(args.pop("train_text"))
    program = (
        "import json, sys; from pathlib import Path\n"
        "from dedicated.quantize_job.tiny_checkpoint import build_tiny_moe_checkpoint\n"
        "kw = json.loads(sys.argv[2])\n"
        "if len(sys.argv) > 3: kw['train_text'] = Path(sys.argv[3]).read_bytes()\n"
        "build_tiny_moe_checkpoint(sys.argv[1], **kw)\n"
    )
    cmd = [sys.executable, "-c", program, str(out_dir), json.dumps(args)] + ([str(text_file)] if text_file else [])
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    finally:
        if text_file is not None:
            text_file.unlink(missing_ok=True)
    if result.returncode != 0:
        raise RuntimeError(f"building the tiny MoE checkpoint failed:\n{result.stderr[-4000:]}")
