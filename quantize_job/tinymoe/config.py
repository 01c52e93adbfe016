"""Model shapes of the tiny MoE, as named presets.

Expert input widths are multiples of 128 on purpose: the quantizers work in groups of 128 input
features, as the production checkpoints do, so a tiny model must have whole groups to be a fair test.
"""

from __future__ import annotations

from typing import Any

from dedicated.quantize_job.tinymoe.tokenizer import VOCAB_SIZE, special_token_ids

PRESETS: dict[str, dict[str, Any]] = {
    # For unit tests: a second or two to build and run on a CPU.
    "test": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 num_experts=4, num_experts_per_tok=2, moe_intermediate_size=128,
                 shared_expert_intermediate_size=128, intermediate_size=256),
    # For tuning on a laptop-class CPU in minutes.
    "cpu": dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                num_experts=8, num_experts_per_tok=2, moe_intermediate_size=128,
                shared_expert_intermediate_size=256, intermediate_size=256),
    # The quality-table model, trained on the GPU (~9 M parameters, ~18 MB in bf16).
    "gpu": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                num_experts=16, num_experts_per_tok=2, moe_intermediate_size=128,
                shared_expert_intermediate_size=512, intermediate_size=512),
}


def tiny_moe_config(preset: str = "cpu", *, max_position_embeddings: int = 1024, **overrides: Any):
    """A ``Qwen2MoeConfig`` for one of :data:`PRESETS`, with the byte tokenizer's vocabulary."""
    from transformers import Qwen2MoeConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown tiny-MoE preset {preset!r}; expected one of {sorted(PRESETS)}")
    ids = special_token_ids()
    kwargs: dict[str, Any] = dict(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=max_position_embeddings,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        decoder_sparse_step=1,
        norm_topk_prob=False,
        # The load-balancing loss keeps every expert in use, as in real MoE training.
        output_router_logits=True,
        router_aux_loss_coef=0.01,
        qkv_bias=True,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    kwargs.update(PRESETS[preset])
    kwargs.update(overrides)
    return Qwen2MoeConfig(**kwargs)
