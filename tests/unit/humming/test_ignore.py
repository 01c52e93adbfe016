"""The ignore list follows vLLM's HummingConfig.is_layer_skipped rules."""

from __future__ import annotations

from dedicated.quantize_job.humming import DEFAULT_IGNORE
from dedicated.quantize_job.humming import ignore as rules


def _skipped(module: str, ignore: list[str] | tuple[str, ...] = DEFAULT_IGNORE) -> bool:
    return any(rules.matches(p, module) for p in ignore)


def test_design_card_patterns_keep_everything_but_routed_experts_in_bf16() -> None:
    for module in ("lm_head", "model.layers.3.self_attn.qkv_proj",
                   "model.layers.0.linear_attn.in_proj_qkvz", "model.visual.blocks.0.attn.qkv",
                   "mtp.layers.0.mlp.experts", "model.layers.0.mlp.gate",
                   "model.layers.0.mlp.shared_expert_gate",
                   "model.layers.0.mlp.shared_expert.gate_up_proj"):
        assert _skipped(module), module
    for module in ("model.layers.0.mlp.experts", "model.layers.0.mlp.experts.7.down_proj",
                   "model.layers.0.mlp.gate_up_proj", "model.layers.1.mlp.down_proj"):
        assert not _skipped(module), module


def test_plain_checkpoint_names_become_exact_matches() -> None:
    merged = rules.merge([], ["model.layers.0.mlp.gate", "re:.*foo"])
    assert merged == [r"re:model\.layers\.0\.mlp\.gate$", "re:.*foo"]
    assert _skipped("model.layers.0.mlp.gate", merged)
    # A substring entry would also have skipped the quantized gate_up_proj.
    assert not _skipped("model.layers.0.mlp.gate_up_proj", merged)
    assert rules.matches("model.layers.0.mlp.gate", "model.layers.0.mlp.gate_up_proj")


def test_merge_keeps_defaults_first_and_deduplicates() -> None:
    merged = rules.merge(DEFAULT_IGNORE, ["lm_head", "re:mtp.*"])
    assert merged == list(DEFAULT_IGNORE)


def test_conflicts_check_the_fused_expert_prefix() -> None:
    clashes = rules.conflicts(["model.layers.0.mlp.experts.1.up_proj"], [r"re:.*experts$"])
    assert clashes == [("model.layers.0.mlp.experts", r"re:.*experts$")]
    assert rules.conflicts(["model.layers.0.mlp.experts.1.up_proj"], DEFAULT_IGNORE) == []
