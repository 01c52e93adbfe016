"""Small synthetic checkpoints shaped like real MoE and dense decoders, for the repack tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import safe_open

from dedicated.quantize_job.qtensor import QuantizedWeight, code_range

BASE_CONFIG = {"architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe",
               "hidden_size": 128, "torch_dtype": "bfloat16"}


def random_weight(out_f: int, in_f: int, bits: int = 2, group: int = 32, seed: int = 0
                  ) -> QuantizedWeight:
    gen = torch.Generator().manual_seed(seed)
    lo, hi = code_range(bits)
    codes = torch.randint(lo, hi + 1, (out_f, in_f), generator=gen).to(torch.int8)
    scales = (torch.rand(out_f, in_f // group, generator=gen) * 0.05 + 1e-3).to(torch.bfloat16)
    return QuantizedWeight(codes=codes, scales=scales, bits=bits, group_size=group)


def moe_and_dense_modules(layers: int = 2, experts: int = 3, hidden: int = 128,
                          inter: int = 64, bits: int = 2, group: int = 32
                          ) -> dict[str, QuantizedWeight]:
    """Routed experts (`mlp.experts.E.{gate,up,down}_proj`) plus one dense-MLP layer."""
    modules: dict[str, QuantizedWeight] = {}
    seed = 0
    for layer in range(layers):
        for e in range(experts):
            for proj, (o, i) in {"gate_proj": (inter, hidden), "up_proj": (inter, hidden),
                                 "down_proj": (hidden, inter)}.items():
                seed += 1
                modules[f"model.layers.{layer}.mlp.experts.{e}.{proj}"] = random_weight(
                    o, i, bits, group, seed)
    for proj, (o, i) in {"gate_proj": (96, hidden), "up_proj": (96, hidden),
                         "down_proj": (hidden, 96)}.items():
        seed += 1
        modules[f"model.layers.{layers}.mlp.{proj}"] = random_weight(o, i, bits, group, seed)
    return modules


def float_tensors(layers: int = 2, hidden: int = 128, vocab: int = 256) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(99)
    t = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=gen).bfloat16(),
         "lm_head.weight": torch.randn(vocab, hidden, generator=gen).bfloat16(),
         "model.norm.weight": torch.randn(hidden, generator=gen).float()}
    for layer in range(layers + 1):
        p = f"model.layers.{layer}"
        t[f"{p}.self_attn.q_proj.weight"] = torch.randn(hidden, hidden, generator=gen).bfloat16()
        t[f"{p}.input_layernorm.weight"] = torch.randn(hidden, generator=gen).bfloat16()
        if layer < layers:
            t[f"{p}.mlp.gate.weight"] = torch.randn(3, hidden, generator=gen).bfloat16()
            t[f"{p}.mlp.shared_expert.gate_proj.weight"] = torch.randn(
                64, hidden, generator=gen).bfloat16()
            t[f"{p}.mlp.shared_expert_gate.weight"] = torch.randn(1, hidden, generator=gen).bfloat16()
    return t


def write_source(path: Path, *, container_bits: int | None = None, shard_bytes: int = 40_000,
                 modules: dict[str, QuantizedWeight] | None = None,
                 other: dict[str, torch.Tensor] | None = None) -> Path:
    from dedicated.quantize_job import compressed_tensors_io as ct  # imports transformers: lazy

    ct.write_checkpoint(path, modules if modules is not None else moe_and_dense_modules(),
                        other if other is not None else float_tensors(), BASE_CONFIG,
                        container_bits=container_bits, ignore=["lm_head"],
                        shard_bytes=shard_bytes)
    (path / "tokenizer.json").write_text('{"version": "1.0"}\n')
    return path


def raw_tensor_digests(checkpoint: Path) -> dict[str, str]:
    """sha256 of every tensor's raw bytes, read through the safetensors library."""
    digests = {}
    for file in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for name in f.keys():
                t = f.get_tensor(name).contiguous()
                digests[name] = hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy()).hexdigest()
    return digests


def load_all(checkpoint: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return tensors


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}
