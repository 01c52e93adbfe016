"""A tiny Humming checkpoint made the way the quantize Job makes one (no download possible)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open


def tiny_humming_checkpoint(root: Path, bits: int, extra_modules: tuple[str, ...] = (), model=None,
                            language_model_prefix: bool = False) -> Path:
    """A random tiny MoE (``model``, default a Qwen2-MoE) saved as a Hub checkpoint, its routed experts
    (plus ``extra_modules``) RTN-quantized and exported through the Job's compressed-tensors writer
    and Humming repack. ``language_model_prefix``: the checkpoint names its decoder
    ``model.language_model.*``, as the multimodal Qwen3.5/3.6-MoE checkpoints do."""
    from safetensors.torch import save_file
    from transformers import Qwen2MoeForCausalLM

    from dedicated.quantize_job.config import parse_config
    from dedicated.quantize_job.export import humming_ignore, repack_to_humming, write_compressed_tensors
    from dedicated.quantize_job.preflight import read_layout, selected_modules
    from dedicated.quantize_job.rtn import rtn_quantize
    from dedicated.quantize_job.tinymoe.config import tiny_moe_config

    torch.manual_seed(0)
    if model is None:
        model = Qwen2MoeForCausalLM(tiny_moe_config("test"))
    base = root / "base"
    model.to(torch.bfloat16).save_pretrained(base)
    if language_model_prefix:
        for shard in base.glob("*.safetensors"):
            with safe_open(str(shard), framework="pt") as f:
                renamed = {k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else k:
                           f.get_tensor(k) for k in f.keys()}
            save_file(renamed, str(shard), metadata={"format": "pt"})
    # The Job makes Humming checkpoints at 2 bits (GSQ); the format and the kernels also take 4.
    cfg = parse_config({"model": {"path": str(base)}, "method": "gsq", "bits": 2,
                        "output": {"dir": str(root / "o"), "volume": {}}})
    layout = read_layout(base)
    modules = [*selected_modules(cfg, layout), *extra_modules]
    weights = {}
    for shard in base.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as f:
            weights.update({k: f.get_tensor(k) for k in f.keys()})
    quantized = {m: rtn_quantize(weights[f"{m}.weight"].float(), bits, 128) for m in modules}
    ignore = humming_ignore(layout.linear_modules, modules)
    write_compressed_tensors(base, layout, modules, lambda ms: {m: quantized[m] for m in ms}, root / "ct",
                             bits=bits, group_size=128, ignore=ignore)
    repack_to_humming(root / "ct", root / "hm", bits=bits, ignore=ignore)
    return root / "hm"


def tiny_qwen3_5_moe():
    """A random two-layer Qwen3.5/3.6-MoE text model (a gated DeltaNet layer, a gated attention layer,
    4 routed experts + a shared expert): the reference architecture at test size."""
    from transformers.models.qwen3_5_moe import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

    config = Qwen3_5MoeTextConfig(
        vocab_size=300, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=64, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=128,
        shared_expert_intermediate_size=128, linear_num_value_heads=2, linear_num_key_heads=1,
        linear_key_head_dim=64, linear_value_head_dim=64, layer_types=["linear_attention", "full_attention"])
    torch.manual_seed(0)
    return Qwen3_5MoeForCausalLM(config)
