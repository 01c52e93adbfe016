"""JobConfig: parsing, bad input as one clear InvalidConfig (exit 2), and the operator's builder."""

from __future__ import annotations

import json

import pytest

from dedicated.operator.api.quantizedmodel import QuantizedModelSpec
from dedicated.quantize_job.config import (
    GSQ_KEEP_BF16,
    JobConfig,
    job_config_from_spec,
    job_secret_env,
    job_volume_mounts,
    load_config,
    parse_config,
)
from dedicated.quantize_job.errors import EXIT_INPUT_ERROR, InvalidConfig

BASE = {"model": {"path": "/models/m"}, "method": "gsq", "bits": 2,
        "output": {"dir": "/output/m", "volume": {"claimName": "out", "path": "m"}}}


def test_defaults_fill_reference_module_selection() -> None:
    cfg = parse_config(BASE)
    assert cfg.group_size == 128
    assert cfg.modules.keep_bf16 == GSQ_KEEP_BF16
    assert cfg.modules.selects("model.layers.3.mlp.experts.17.gate_proj")
    assert cfg.modules.selects("model.layers.3.mlp.experts.17.down_proj.weight")
    for kept in ("model.layers.3.mlp.shared_expert.up_proj", "model.layers.3.mlp.gate",
                 "model.layers.3.self_attn.q_proj", "lm_head", "mtp.layers.0.mlp.experts.1.up_proj",
                 "model.visual.blocks.0.mlp.fc1", "model.layers.0.mlp.shared_expert_gate"):
        assert not cfg.modules.selects(kept), kept
    auto = parse_config({**BASE, "method": "autoround", "bits": 4})
    assert auto.modules.selects("model.layers.0.self_attn.q_proj")
    assert auto.modules.selects("model.layers.0.mlp.experts.2.up_proj")
    for kept in ("model.layers.0.linear_attn.in_proj_a", "model.layers.0.linear_attn.in_proj_b",
                 "model.layers.0.mlp.gate", "model.layers.0.mlp.shared_expert.down_proj", "lm_head"):
        assert not auto.modules.selects(kept), kept
    assert auto.modules.selects("model.layers.0.linear_attn.in_proj_qkvz")


@pytest.mark.parametrize("patch, needle", [
    ({"method": "awq"}, "unknown method 'awq'; expected one of gsq, autoround"),
    ({"bits": 4}, "method gsq supports 2 bits, not 4"),
    ({"method": "autoround", "bits": 5}, "method autoround supports 2, 3, 4, 8 bits, not 5"),
    ({"groupSize": 100}, "groupSize: 100 is not one of"),
    ({"model": {"path": "relative/dir"}}, "must be an absolute path"),
    ({"model": {}}, "set exactly one of hub, path"),
    ({"modules": {"quantize": ["("], "keepBF16": []}}, "not a valid regular expression"),
    ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
])
def test_bad_config_is_one_input_error(patch: dict, needle: str) -> None:
    with pytest.raises(InvalidConfig) as err:
        parse_config({**BASE, **patch})
    assert needle in str(err.value)
    assert err.value.exit_code == EXIT_INPUT_ERROR
    assert err.value.termination_line().startswith("JobFailed: invalid job config")
    assert "\n" not in err.value.termination_line()


def test_load_config_errors(tmp_path) -> None:
    with pytest.raises(InvalidConfig, match="cannot read"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidConfig, match="is not JSON"):
        load_config(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(BASE))
    assert load_config(good).method == "gsq"


def test_fingerprint_ignores_output_and_validation_but_not_the_model() -> None:
    a = parse_config(BASE)
    b = parse_config({**BASE, "output": {"dir": "/elsewhere", "volume": {}},
                      "validation": {"maxPerplexityRatio": 9.0}})
    c = parse_config({**BASE, "groupSize": 64})
    assert a.fingerprint("r1") == b.fingerprint("r1")
    assert a.fingerprint("r1") != a.fingerprint("r2")
    assert a.fingerprint("r1") != c.fingerprint("r1")


def _spec(**over) -> QuantizedModelSpec:
    data = {"base": {"hub": {"repo": "Qwen/Qwen3-30B-A3B", "revision": "main",
                             "tokenSecretRef": {"name": "hf", "key": "token"}}},
            "method": "gsq", "bits": 2,
            "output": {"volume": {"claimName": "models", "path": "qwen/gsq"}}}
    data.update(over)
    return QuantizedModelSpec.model_validate(data)


def test_job_config_from_spec_volume_output() -> None:
    cfg = job_config_from_spec(_spec(), "qwen-gsq", "team-a", 3)
    assert cfg.model.hub is not None and cfg.model.hub.token_env == "HF_TOKEN"
    assert cfg.output.dir == "/output/qwen/gsq"
    assert str(cfg.output.state_dir) == "/output/qwen/gsq/.quantize-state"
    assert cfg.output.location() == "pvc://models/qwen/gsq"
    assert cfg.validation.max_perplexity_ratio == 2.0  # the 2-bit default
    assert (cfg.name, cfg.namespace, cfg.generation) == ("qwen-gsq", "team-a", 3)
    # What the operator puts in the ConfigMap reads back identically, and holds no secret.
    text = cfg.to_json()
    assert parse_config(json.loads(text)) == cfg
    assert "tokenSecretRef" not in text
    assert job_volume_mounts(_spec()) == [("models", "/output", False)]


def test_job_config_from_spec_hub_output_and_tokens() -> None:
    spec = _spec(output={"hub": {"repo": "me/out", "tokenSecretRef": {"name": "push", "key": "token"}},
                         "scratchClaimName": "scratch"},
                 calibration={"dataset": {"repo": "org/ds", "tokenSecretRef": {"name": "hf", "key": "token"}},
                              "numSamples": 64},
                 validation={"maxPerplexityRatio": 1.3},
                 modules={"quantize": [r"\.mlp\.experts\."]})
    env = job_secret_env(spec)
    assert {k: (v.name, v.key) for k, v in env.items()} == {"HF_TOKEN": ("hf", "token"),
                                                             "HF_TOKEN_OUTPUT": ("push", "token")}
    cfg = job_config_from_spec(spec, "m", "ns", 1)
    assert cfg.output.hub is not None and cfg.output.hub.token_env == "HF_TOKEN_OUTPUT"
    assert cfg.calibration.dataset is not None and cfg.calibration.dataset.token_env == "HF_TOKEN"
    assert cfg.output.dir == "/scratch/ns-m"
    assert cfg.validation.max_perplexity_ratio == 1.3
    assert cfg.modules.quantize == [r"\.mlp\.experts\."]
    assert cfg.modules.keep_bf16 == GSQ_KEEP_BF16
    assert cfg.output.location("abc123") == "hf://me/out@abc123"


def test_volume_output_without_path_gets_a_subdirectory() -> None:
    spec = _spec(base={"volume": {"claimName": "base", "path": "qwen"}},
                 output={"volume": {"claimName": "models"}})
    cfg = job_config_from_spec(spec, "qm", "ns", 1)
    assert cfg.model.path == "/models/qwen"
    assert cfg.output.dir == "/output/qm"
    assert job_volume_mounts(spec) == [("models", "/output", False), ("base", "/models", True)]
    assert isinstance(cfg, JobConfig)
