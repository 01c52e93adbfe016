"""Validate stage: the checkpoint about to be published loads, generates, and is close to the original.

Quality is measured on the artifact itself, not on the quantizer's in-memory model: the staged
checkpoint is read back from disk exactly as a consumer would, so a packing or export bug fails here
rather than in production.

- Humming (GSQ): no transformers integration exists. On a GPU, :func:`measure_packed` loads the
  checkpoint with its routed experts still packed and runs them through the bundled Triton MoE
  dequant-GEMM (``packed_model``): the 2-bit model needs about its checkpoint's size in GPU memory,
  not the BF16 model's. Where that loader cannot run the model (CPU, another experts layout),
  :func:`dequantize_humming_checkpoint` unpacks every quantized Linear into a BF16 checkpoint
  (streamed shard by shard into the state dir), which transformers then loads as the base
  architecture. Both see exactly the dequantized values the Humming kernels compute.
- auto_round:auto_gptq (AutoRound) and BF16: ``transformers.from_pretrained`` (auto-round's own
  backends for the packed Linears).

Held-out perplexity of the original and of the quantized model use the same windows (cut from the
end of the text stream, never seen by calibration). Models are loaded one at a time; on a GPU,
``device_map="auto"`` keeps what fits on the GPU and streams the rest from CPU memory (accelerate),
so a model larger than the GPU still validates.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dedicated.quantize_job.errors import ValidationFailed

log = logging.getLogger("dedicated.quantize_job")

INDEX = "model.safetensors.index.json"
_AUX_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken", ".py")


# How the quantized checkpoint was run for its measurement (the manifest's quality.engine).
ENGINE_CHECKPOINT = "checkpoint"  # loaded by transformers as published (AutoRound, BF16)
ENGINE_PACKED = "packed-experts"  # Humming: routed experts packed, through the bundled Triton MoE GEMM
ENGINE_DEQUANTIZED = "dequantized-bf16"  # Humming: a BF16 copy of the same dequantized values


@dataclass
class Quality:
    perplexity_original: float | None
    perplexity_quantized: float | None
    load_test_passed: bool | None
    max_perplexity_ratio: float
    generated_text: str | None = None
    heldout_tokens: int = 0
    engine: str = ENGINE_CHECKPOINT
    engine_note: str | None = None

    @property
    def perplexity_ratio(self) -> float | None:
        if self.perplexity_original is None or self.perplexity_quantized is None:
            return None
        return self.perplexity_quantized / self.perplexity_original

    def to_contract(self) -> dict[str, Any]:
        ratio = self.perplexity_ratio
        return {"perplexityOriginal": _round(self.perplexity_original),
                "perplexityQuantized": _round(self.perplexity_quantized),
                "perplexityRatio": _round(ratio), "loadTestPassed": self.load_test_passed}

    def to_manifest(self) -> dict[str, Any]:
        return {**self.to_contract(), "maxPerplexityRatio": self.max_perplexity_ratio,
                "heldoutTokens": self.heldout_tokens, "generatedText": self.generated_text,
                "engine": self.engine, "engineNote": self.engine_note}


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


# --- loading ------------------------------------------------------------------------------------


def pick_device(requested: str) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but no CUDA device is visible")
    return torch.device("cuda")


def load_model(model_dir: Path, device: torch.device, dtype: torch.dtype = torch.bfloat16):
    """A causal LM from a checkpoint directory, on CPU or spread over GPU + CPU memory."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype}
    if device.type == "cuda":
        kwargs["device_map"] = "auto"  # fills the GPU, offloads the rest to CPU memory (accelerate)
    with conversion_registry_kept():
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    model.eval()
    return model


@contextmanager
def conversion_registry_kept() -> Iterator[None]:
    """Undo process-wide changes to transformers' checkpoint-conversion registry.

    Loading an auto-round checkpoint runs auto-round's ``disable_moe_conversion_mapping``, which
    re-registers the model type's conversions without the expert-fusion step, for good. Every
    later load of a BF16 checkpoint of that model type in the same process then leaves the
    per-expert weights unused and the fused experts randomly initialised (transformers only
    warns), and ``save_pretrained`` writes fused 3-D tensors. Seen in a test session; a Job
    could hit it on any load after validating an AutoRound result.
    """
    try:
        from transformers import conversion_mapping
    except ImportError:  # pragma: no cover - transformers is a dependency of this stage
        yield
        return
    if not hasattr(conversion_mapping, "_checkpoint_conversion_mapping_cache"):  # another transformers
        yield
        return
    saved = copy.deepcopy(conversion_mapping._checkpoint_conversion_mapping_cache)  # None: built on first use
    try:
        yield
    finally:
        conversion_mapping._checkpoint_conversion_mapping_cache = saved


def _input_device(model) -> torch.device:
    emb = model.get_input_embeddings()
    dev = next(emb.parameters()).device
    return torch.device("cuda", 0) if dev.type == "meta" and torch.cuda.is_available() else dev


def free(model) -> None:
    del model
    release_memory()


def release_memory() -> None:
    """Return what dropped models held, so the next load sees the GPU's memory free."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def dequantize_humming_checkpoint(src: Path, dst: Path) -> Path:
    """A BF16 copy of a Humming checkpoint (same tensor names as the original model), streamed.

    Memory holds one output shard at a time. ``config.json`` loses its ``quantization_config``.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from dedicated.quantize_job.humming import HummingSpec, dequantize

    config = json.loads((src / "config.json").read_text())
    quant = config.pop("quantization_config", None)
    if not isinstance(quant, dict):
        raise ValidationFailed(f"{src}/config.json has no quantization_config: not a Humming checkpoint")
    spec = HummingSpec.from_quantization_config(quant)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    shards = sorted(src.glob("*.safetensors"))
    names: dict[str, str] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            keys = set(f.keys())
        scale_of = {k[: -len(".weight_scale")] for k in keys if k.endswith(".weight_scale")}
        out: dict[str, torch.Tensor] = {}
        with safe_open(str(shard), framework="pt") as f:
            for key in sorted(keys):
                if key.endswith(".weight_scale") and key[: -len(".weight_scale")] in scale_of:
                    continue
                module = key[: -len(".weight")] if key.endswith(".weight") else None
                tensor = f.get_tensor(key)
                if module in scale_of and tensor.dtype == torch.int32:
                    scale = f.get_tensor(f"{module}.weight_scale")
                    out[key] = dequantize(tensor, scale, spec).to(torch.bfloat16)
                else:
                    out[key] = tensor
        if any(k.endswith(".weight_scale") and k[: -len(".weight_scale")] not in scale_of for k in keys):
            raise ValidationFailed(f"{shard.name}: a weight_scale without its weight in the same shard")
        save_file(out, str(dst / shard.name), metadata={"format": "pt"})
        names.update({k: shard.name for k in out})
        del out
    (dst / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": dict(sorted(names.items()))}, indent=2))
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for extra in sorted(src.iterdir()):
        if extra.is_file() and extra.suffix in _AUX_SUFFIXES and extra.name not in ("config.json", INDEX):
            shutil.copy2(extra, dst / extra.name)
    return dst


# --- measurements -------------------------------------------------------------------------------


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 4) -> float:
    """exp(mean next-token NLL) over ``windows`` ``[m, L]`` (every window scores L-1 predictions)."""
    if windows.dim() != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise ValueError(f"held-out windows must be [m>=1, L>=2], got {tuple(windows.shape)}")
    device = _input_device(model)
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                batch[:, 1:].reshape(-1).to(logits.device), reduction="sum")
        total += float(nll)
        count += batch[:, 1:].numel()
    mean = total / count
    return math.exp(mean) if math.isfinite(mean) else float("inf")


@torch.no_grad()
def generation_test(model, tokenizer, prompt_ids: torch.Tensor, new_tokens: int) -> tuple[bool, str]:
    """Greedy generation of ``new_tokens`` tokens: it must run, stay finite and produce tokens."""
    device = _input_device(model)
    ids = prompt_ids.reshape(1, -1).to(device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=getattr(tokenizer, "pad_token_id", None) or getattr(tokenizer, "eos_token_id", 0))
    generated = out[0, ids.shape[1]:]
    logits = model(input_ids=out[:, -min(out.shape[1], 64):], use_cache=False).logits
    ok = generated.numel() == new_tokens and bool(torch.isfinite(logits).all())
    text = tokenizer.decode(generated.tolist(), skip_special_tokens=False) if tokenizer is not None else ""
    return ok, text


def measure_model(model, windows: torch.Tensor, *, tokenizer=None,
                  new_tokens: int = 0) -> tuple[float, bool, str | None]:
    """Perplexity of a loaded model, plus a generation test when ``new_tokens``."""
    ppl = perplexity(model, windows)
    ok, text = (True, None)
    if new_tokens:
        ok, text = generation_test(model, tokenizer, windows[0, : min(32, windows.shape[1])], new_tokens)
    return ppl, ok, text


def measure(model_dir: Path, windows: torch.Tensor, device: torch.device, *, tokenizer=None,
            new_tokens: int = 0) -> tuple[float, bool, str | None]:
    """:func:`measure_model` on a checkpoint directory that transformers loads as it is."""
    model = load_model(model_dir, device)
    try:
        return measure_model(model, windows, tokenizer=tokenizer, new_tokens=new_tokens)
    finally:
        free(model)


def measure_packed(checkpoint: Path, windows: torch.Tensor, device: torch.device, *, tokenizer=None,
                   new_tokens: int = 0) -> tuple[float, bool, str | None]:
    """:func:`measure_model` on a Humming checkpoint with its routed experts still packed.

    Raises ``PackedModelUnsupported`` (before any measurement) for a model the packed loader
    cannot run; see ``dedicated.quantize_job.packed_model``.
    """
    from dedicated.quantize_job.packed_model import load_packed_model

    model = load_packed_model(checkpoint, device)
    try:
        return measure_model(model, windows, tokenizer=tokenizer, new_tokens=new_tokens)
    finally:
        free(model)


def judge(quality: Quality) -> None:
    """Raise ValidationFailed (nothing gets published) when the quantized model is not good enough."""
    ppl_q, ppl_o = quality.perplexity_quantized, quality.perplexity_original
    if quality.load_test_passed is False:
        raise ValidationFailed("the quantized checkpoint loaded but its generation test failed "
                               "(no tokens or non-finite logits); nothing was published")
    if ppl_q is None or ppl_o is None:
        return
    if not math.isfinite(ppl_q):
        raise ValidationFailed("the quantized model's held-out perplexity is not finite; nothing was published")
    ratio = ppl_q / ppl_o
    if ratio > quality.max_perplexity_ratio:
        raise ValidationFailed(
            f"held-out perplexity {ppl_q:.4g} is {ratio:.3f}x the original's {ppl_o:.4g}, above the "
            f"allowed {quality.max_perplexity_ratio:g}x (spec.validation.maxPerplexityRatio); nothing was published")
