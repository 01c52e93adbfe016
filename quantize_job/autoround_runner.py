"""AutoRound 4-bit (W4A16, symmetric, group 128) through the auto-round library, not re-implemented.

``run_autoround`` hands a loaded Hugging Face model and locally supplied calibration token ids to
``auto_round.AutoRound`` (never a Hub dataset), keeps the reference BF16 list of the design
(:data:`KEEP_BF16_PATTERNS`, as ``layer_config`` entries ``{"bits": 16, "data_type": "fp"}`` for the
modules of that list the model actually has), and saves ``auto_round:auto_gptq``. The saved
``quantization_config.extra_config`` then gets a ``{"bits": 16, "data_type": "fp"}`` entry for every
``<layer>.linear_attn.in_proj_ba``: vLLM fuses ``in_proj_a``/``in_proj_b`` into that module, and
without the entry tensor-parallel serving (TP >= 2) tries to shard it for Marlin and fails.

With a ``resume_dir`` the run resumes per decoder block after a kill, byte for byte
(:mod:`dedicated.quantize_job.autoround_resume`); the checkpoint then has one shard per block.

``dequantize_autogptq_checkpoint`` reads such a checkpoint back to dense weights, so the quality
benchmark and the Job's validation measure what was actually saved.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from dedicated.quantize_job.bitpack import unpack

# The design's keep-in-BF16 list (shared/DESIGN.md, "AutoRound checkpoint"), as module-name regexes.
KEEP_BF16_PATTERNS: tuple[str, ...] = (
    r"(^|.*\.)shared_expert\..*",  # the shared expert's projections
    r"(^|.*\.)shared_expert_gate$",
    r"^mtp\..*|(^|.*\.)mtp\..*",
    r"(^|.*\.)linear_attn\.in_proj_[ab]$",
    r"(^|.*\.)mlp\.gate$",  # the MoE router
    r"^model\.visual\..*|(^|.*\.)visual\..*",
    r"^lm_head$",
)
FP16_ENTRY = {"bits": 16, "data_type": "fp"}
FORMAT = "auto_round:auto_gptq"


@dataclass
class AutoRoundResult:
    output_dir: Path  # the directory holding config.json and the safetensors
    kept_bf16: list[str]
    in_proj_ba: list[str]
    seconds: float
    settings: dict = field(default_factory=dict)
    restored_blocks: int = 0  # blocks a resumed run took from its resume dir instead of tuning


def keep_bf16_modules(model: nn.Module, patterns: Iterable[str] = KEEP_BF16_PATTERNS) -> list[str]:
    """Names of the model's Linear-like modules (anything with a 2-D weight) on the keep list."""
    regex = [re.compile(p) for p in patterns]
    names = []
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 2 and not isinstance(mod, nn.Embedding):
            if any(r.fullmatch(name) for r in regex):
                names.append(name)
    return names


def in_proj_ba_names(module_names: Iterable[str]) -> list[str]:
    """``<prefix>.linear_attn.in_proj_ba`` for every prefix that has ``in_proj_a`` or ``in_proj_b``."""
    out = set()
    for name in module_names:
        m = re.fullmatch(r"(.*\.linear_attn)\.in_proj_[ab]", name)
        if m:
            out.add(f"{m.group(1)}.in_proj_ba")
    return sorted(out)


def add_in_proj_ba_entries(output_dir: Path | str, module_names: Iterable[str]) -> list[str]:
    """Add the fused ``in_proj_ba`` entries to ``quantization_config.extra_config`` (config.json and,
    if auto-round wrote one, quantization_config.json). Idempotent; returns the names added."""
    output_dir = Path(output_dir)
    names = in_proj_ba_names(module_names)
    for fname, key in (("config.json", "quantization_config"), ("quantization_config.json", None)):
        path = output_dir / fname
        if not path.exists():
            if fname == "config.json":
                raise FileNotFoundError(f"{path} missing: not an auto-round output directory")
            continue
        cfg = json.loads(path.read_text())
        qc = cfg[key] if key else cfg
        if key and key not in cfg:
            raise ValueError(f"{path} has no quantization_config")
        extra = qc.setdefault("extra_config", {})
        for n in names:
            extra[n] = dict(FP16_ENTRY)
        path.write_text(json.dumps(cfg, indent=2, sort_keys=False) + "\n")
    return names


def _find_saved_dir(root: Path) -> Path:
    if (root / "config.json").exists():
        return root
    found = sorted(p.parent for p in root.rglob("config.json"))
    if len(found) != 1:
        raise FileNotFoundError(f"cannot find the auto-round output under {root} (found {found})")
    return found[0]


def run_autoround(
    model: nn.Module,
    tokenizer,
    calib_ids: torch.Tensor,
    output_dir: Path | str,
    *,
    iters: int = 200,
    batch_size: int = 8,
    device: str | int = "cpu",
    keep_patterns: Iterable[str] = KEEP_BF16_PATTERNS,
    seed: int = 42,
    low_gpu_mem_usage: bool = False,
    lr: float | None = None,
    resume_dir: Path | str | None = None,
    resume_key: str = "",
    on_resume: Callable[[int], None] | None = None,
) -> AutoRoundResult:
    """Quantize ``model`` with auto-round W4A16 (sym, group 128) and save ``auto_round:auto_gptq``.

    ``calib_ids`` ``[N, T]`` are the calibration samples (N samples of T tokens), passed to
    auto-round as in-memory samples: nothing is fetched from the Hub.

    With ``resume_dir``, every finished block is committed there (and its packed tensors to a shard
    of ``output_dir``), and a rerun with the same inputs and ``resume_key`` continues at the first
    block not committed and saves the same bytes as an uninterrupted run
    (:mod:`dedicated.quantize_job.autoround_resume`); ``output_dir`` then belongs to this function
    (anything in it that is not a committed shard is deleted). ``on_resume(n)`` is told how many
    blocks were restored (0 when starting over) before the tuning starts.
    """
    from auto_round import AutoRound

    calib_ids = torch.as_tensor(calib_ids)
    if calib_ids.dim() != 2 or calib_ids.shape[0] < 1:
        raise ValueError(f"calibration ids must be [samples, tokens], got {tuple(calib_ids.shape)}")
    module_names = [n for n, _ in model.named_modules()]
    kept = keep_bf16_modules(model, keep_patterns)
    layer_config = {n: dict(FP16_ENTRY) for n in kept}
    # An explicit ``attention_mask: None``: every sample is full-length, unpadded text, so "attend
    # to all" is what the model does without a mask. A mask is also wrong on hybrid models:
    # auto-round replays the keyword arguments captured at the first decoder block for every
    # block, so the 2-D integer mask meant for a Gated-DeltaNet layer would reach a full-attention
    # layer's SDPA (a crash on Qwen3.5/3.6-MoE). Leaving the key out is not enough: auto-round then
    # makes a mask of its own (with the last token masked out).
    samples = [{"input_ids": calib_ids[i : i + 1], "attention_mask": None} for i in range(calib_ids.shape[0])]
    settings = dict(scheme="W4A16", bits=4, group_size=128, sym=True, iters=iters, nsamples=len(samples),
                    seqlen=int(calib_ids.shape[1]), batch_size=min(batch_size, len(samples)), seed=seed)
    if lr is not None:
        settings["lr"] = lr
    output_dir = Path(output_dir)
    start = time.time()
    key = None if resume_dir is None else _resume_key(resume_key, model, calib_ids, layer_config, settings, device)
    ar = AutoRound(model, tokenizer, dataset=samples, layer_config=layer_config, device_map=device,
                   enable_torch_compile=False, low_gpu_mem_usage=low_gpu_mem_usage, **settings)
    restored = 0
    if key is None:
        ar.quantize_and_save(str(output_dir), format=FORMAT)
    else:
        from dedicated.quantize_job.autoround_resume import block_resume

        with block_resume(resume_dir, output_dir, model, key) as restored:
            if on_resume is not None:
                on_resume(restored)
            ar.quantize_and_save(str(output_dir), format=FORMAT)
    saved = _find_saved_dir(output_dir)
    if resume_dir is not None:
        from dedicated.quantize_job.autoround_resume import normalize_index

        normalize_index(saved)
    added = add_in_proj_ba_entries(saved, module_names)
    return AutoRoundResult(saved, kept, added, time.time() - start, settings, restored)


def _resume_key(extra: str, model: nn.Module, calib_ids: torch.Tensor, layer_config: dict, settings: dict,
                device) -> str:
    """What a committed block depends on besides the model's weights (the caller's ``extra`` covers
    those, e.g. the Job's config fingerprint with the model revision)."""
    import auto_round
    import transformers

    tokens = calib_ids.detach().cpu().contiguous()
    blob = {"extra": extra, "settings": settings, "layerConfig": sorted(layer_config), "format": FORMAT,
            "device": str(device), "model": getattr(model.config, "_name_or_path", None),
            "config": model.config.to_dict(), "tokens": [str(tokens.dtype), list(tokens.shape),
                                                         hashlib.sha256(tokens.numpy().tobytes()).hexdigest()],
            "versions": [auto_round.__version__, torch.__version__, transformers.__version__]}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Reading the checkpoint back


def dequantize_autogptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Dense ``[out, in]`` weight of one auto_gptq-packed linear.

    ``qweight`` ``[in * bits / 32, out]`` packs input features LSB-first; ``qzeros`` ``[groups,
    out * bits / 32]`` stores ``zero - 1`` (the legacy GPTQ convention auto-round keeps);
    ``scales`` ``[groups, out]``. ``w = (q - (z + 1)) * s``.
    """
    words, out = qweight.shape
    n_in = words * 32 // bits
    groups = scales.shape[0]
    q = unpack(qweight.t().contiguous(), bits, n_in).float()  # [out, in]
    z = unpack(qzeros.contiguous(), bits, out).float() + 1  # [groups, out]
    group = n_in // groups
    zc = z.t().repeat_interleave(group, dim=1)
    sc = scales.float().t().repeat_interleave(group, dim=1)
    return (q - zc) * sc


def dequantize_autogptq_checkpoint(output_dir: Path | str) -> tuple[dict[str, torch.Tensor], dict]:
    """``{module name: dense [out, in] weight}`` for every quantized module, and the quantization_config."""
    from safetensors import safe_open

    output_dir = Path(output_dir)
    qc = json.loads((output_dir / "config.json").read_text())["quantization_config"]
    bits = int(qc["bits"])
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(output_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            for k in s.keys():
                if k.endswith((".qweight", ".qzeros", ".scales")):
                    tensors[k] = s.get_tensor(k)
    out = {}
    for k in tensors:
        if k.endswith(".qweight"):
            name = k[: -len(".qweight")]
            out[name] = dequantize_autogptq(tensors[k], tensors[f"{name}.qzeros"], tensors[f"{name}.scales"], bits)
    return out, qc


def load_dense_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> int:
    """Write dense weights into ``model`` by checkpoint name, including fused experts
    (``...experts.<e>.gate_proj`` -> rows of ``gate_up_proj[e]``). Returns how many were written."""
    n = 0
    with torch.no_grad():
        for name, w in weights.items():
            m = re.fullmatch(r"(.*\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)", name)
            parent = model.get_submodule(m.group(1)) if m else None
            if parent is not None and isinstance(getattr(parent, "gate_up_proj", None), torch.Tensor):
                e, proj = int(m.group(2)), m.group(3)
                t = bool(getattr(parent, "is_transposed", False))
                if proj == "down_proj":
                    dst = parent.down_proj[e]
                    dst.copy_((w.t() if t else w).to(dst.dtype))
                else:
                    full = parent.gate_up_proj[e]
                    full = full.t() if t else full
                    half = full.shape[0] // 2
                    rows = slice(0, half) if proj == "gate_proj" else slice(half, 2 * half)
                    full[rows].copy_(w.to(full.dtype))
            else:
                mod = model.get_submodule(name)
                mod.weight.copy_(w.to(mod.weight.dtype))
            n += 1
    return n
