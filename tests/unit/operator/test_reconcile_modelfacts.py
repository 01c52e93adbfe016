"""Model-facts ConfigMaps: the compact tensor table is lossless, small, and plans like the files."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml
from hypothesis import given, strategies as st

from dedicated.cli import main as cli
from dedicated.operator.modelfacts import (
    FactsLocation,
    checkpoint_from_configmap,
    decode_ints,
    decode_tensors,
    encode_ints,
    encode_tensors,
    facts_configmap,
    matches,
)
from dedicated.operator.vram import profile_checkpoint, read_local
from dedicated.operator.vram.checkpoint import Checkpoint, Tensor
from dedicated.operator.vram.errors import CheckpointError


@given(st.sets(st.integers(0, 400), min_size=1, max_size=60))
def test_index_ranges_round_trip(values) -> None:
    assert decode_ints(encode_ints(values)) == sorted(values)


def test_index_range_spelling() -> None:
    assert encode_ints(range(256)) == "0-255"
    assert encode_ints(range(3, 40, 4)) == "3-39/4"
    assert encode_ints([0, 1, 2, 5]) == "0-2,5"


names = st.lists(st.sampled_from(["model", "layers", "mlp", "experts", "visual", "mtp", "w", "007", "{x}", "3", "12"]),
                 min_size=1, max_size=5).map(".".join)


@given(st.lists(st.tuples(names, st.sampled_from(["BF16", "I32"]), st.integers(1, 9)), max_size=40, unique_by=lambda t: t[0]))
def test_tensor_table_round_trips_exactly(raw) -> None:
    tensors = [Tensor(n, d, (k, 2), k * 4) for n, d, k in raw]
    back = decode_tensors(json.loads(json.dumps(encode_tensors(tensors))))
    assert sorted(back, key=lambda t: t.name) == sorted(tensors, key=lambda t: t.name)


@pytest.mark.parametrize("variant", ["humming", "autoround"])
def test_real_sized_checkpoint_fits_and_plans_the_same(checkpoints, variant) -> None:
    ck = read_local(checkpoints[variant])
    cm = facts_configmap(ck, FactsLocation("models", f"qwen36-{variant}"), name="facts", namespace="ns")
    size = sum(len(v) for v in cm["data"].values())
    assert size < 64 * 1024, size  # ~100k tensors in a few tens of KB
    back = checkpoint_from_configmap(json.loads(json.dumps(cm)))
    assert sorted(back.tensors, key=lambda t: t.name) == sorted(ck.tensors, key=lambda t: t.name)
    assert back.config == ck.config
    a, b = profile_checkpoint(ck), profile_checkpoint(back)
    assert a.parts == b.parts and a.facts == b.facts
    assert matches(cm, FactsLocation("models", f"qwen36-{variant}"))
    assert not matches(cm, FactsLocation("models", "other"))


def test_malformed_configmaps_are_config_unreadable() -> None:
    base = facts_configmap(Checkpoint({"a": 1}, (Tensor("x.weight", "BF16", (2,), 4),), "t"),
                           FactsLocation("c", ""), name="f")
    for data in ({}, {"config.json": "{", "tensors.json": "{}"},
                 {"config.json": "{}", "tensors.json": json.dumps({"formatVersion": 9, "tensors": []})},
                 {"config.json": "{}", "tensors.json": json.dumps({"formatVersion": 1, "tensors": [{"name": "a"}]})}):
        with pytest.raises(CheckpointError) as err:
            checkpoint_from_configmap({**base, "data": data})
        assert err.value.reason == "ConfigUnreadable" and "model facts ConfigMap f" in err.value.message


def test_cli_writes_an_applicable_configmap(checkpoints, tmp_path, capsys) -> None:
    out = tmp_path / "cm.yaml"
    assert cli(["model-facts", str(checkpoints["qwen3-0.6b"]), "--claim", "models", "--path", "qwen3",
                "--namespace", "team-a", "-o", str(out)]) == 0
    cm = yaml.safe_load(out.read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["namespace"] == "team-a"
    assert cm["metadata"]["labels"]["llm.dedicated.dev/model-facts"] == "true"
    assert cm["metadata"]["annotations"]["llm.dedicated.dev/claim-name"] == "models"
    assert checkpoint_from_configmap(cm).config["model_type"]
    assert cli(["model-facts", str(tmp_path / "nothing"), "--claim", "models"]) == 2
    assert "ModelNotFound" in capsys.readouterr().err


def test_example_model_facts_are_up_to_date(checkpoints) -> None:
    """examples/model-facts/*.yaml are generated (examples/model-facts/generate.py): same content as
    freshly computed from the model zoo's checkpoints, so a change of shapes cannot go stale."""
    import dataclasses
    from pathlib import Path

    from dedicated.operator.modelfacts import to_yaml

    root = Path(__file__).resolve().parents[3] / "examples" / "model-facts"
    spec = importlib.util.spec_from_file_location("example_facts_generate", root / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for stem, variant, what in gen.MODELS:
        ck = dataclasses.replace(read_local(checkpoints[variant]),
                                 source=f"{what} (example facts: examples/model-facts/generate.py)")
        fresh = to_yaml(facts_configmap(ck, FactsLocation(gen.CLAIM, stem), name=f"{stem}-facts"))
        assert (root / f"{stem}.yaml").read_text() == fresh, f"{stem}.yaml is stale: run examples/model-facts/generate.py"
