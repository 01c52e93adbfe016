"""The API models accept valid specs, reject bad ones with messages naming the field, and agree
with the CEL rules the API server will run (evaluated here with cel-python)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from dedicated.operator.api import (
    ConditionStatus,
    DedicatedEndpointSpec,
    QuantizedModelSpec,
    get_condition,
    set_condition,
)
from dedicated.operator.api.crd import DEDICATED_ENDPOINT, QUANTIZED_MODEL, openapi_schema

EP_SCHEMA = openapi_schema(DEDICATED_ENDPOINT)["properties"]["spec"]
QM_SCHEMA = openapi_schema(QUANTIZED_MODEL)["properties"]["spec"]

GOOD_EP: dict[str, Any] = {"model": {"hub": {"repo": "Qwen/Qwen3-8B", "tokenSecretRef": {"name": "hf"}}}}
GOOD_QM: dict[str, Any] = {
    "base": {"hub": {"repo": "Qwen/Qwen3.6-35B-A3B"}},
    "method": "gsq",
    "bits": 2,
    "output": {"volume": {"claimName": "models", "path": "qwen36-gsq"}},
}


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    import copy

    obj = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = obj
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        node.pop(last)
    else:
        node[last] = value
    return obj


_DELETE = object()


def test_defaults_and_round_trip() -> None:
    spec = DedicatedEndpointSpec.model_validate(GOOD_EP)
    assert spec.replicas == 1
    assert spec.serving.concurrency == 8
    assert spec.serving.text_only == "auto" and spec.serving.mtp.mode == "auto"
    assert spec.model.hub.token_secret_ref.key == "token"
    wire = spec.to_k8s()
    assert wire["model"]["hub"]["tokenSecretRef"] == {"name": "hf", "key": "token"}
    assert "image" not in wire  # optional fields are left out, never null
    assert DedicatedEndpointSpec.model_validate(wire) == spec
    qm = QuantizedModelSpec.model_validate(GOOD_QM)
    assert qm.group_size == 128 and qm.calibration.num_samples == 128


def test_python_defaults_match_schema_defaults(cel) -> None:
    """What the API server stores after defaulting parses to the same model as the raw spec."""
    defaulted = cel.apply_defaults(EP_SCHEMA, GOOD_EP)
    assert DedicatedEndpointSpec.model_validate(defaulted) == DedicatedEndpointSpec.model_validate(GOOD_EP)
    assert defaulted["serving"]["mtp"]["mode"] == "auto"  # nested defaults reach through `default: {}`
    defaulted = cel.apply_defaults(QM_SCHEMA, GOOD_QM)
    assert QuantizedModelSpec.model_validate(defaulted) == QuantizedModelSpec.model_validate(GOOD_QM)


BAD_ENDPOINTS = [
    ("two sources", "model.volume", {"claimName": "pvc"}, "spec.model: set exactly one of"),
    ("no source", "model.hub", _DELETE, "spec.model: set exactly one of"),
    ("gpus > max", "placement", {"gpusPerReplica": 4, "maxGpusPerReplica": 2},
     "spec.placement.gpusPerReplica must be <= spec.placement.maxGpusPerReplica"),
    ("pool and families", "placement", {"pool": "hopper-h100", "gpuFamilies": ["ampere"]},
     "spec.placement: set at most one of pool, gpuFamilies"),
    ("tokens with mtp off", "serving", {"mtp": {"mode": "off", "numSpeculativeTokens": 2}},
     "spec.serving.mtp.numSpeculativeTokens must not be set"),
    ("dotdot repo", "model.hub.repo", "Qwen/..", "repo must not contain '..'"),
    ("dashdash repo", "model.hub.repo", "Qwen/a--b", "repo must not contain '..' or '--'"),
    ("dotdot path", "model", {"volume": {"claimName": "m", "path": "a/../../etc"}}, "path must not contain '..'"),
]


@pytest.mark.parametrize(("case", "path", "value", "message"), BAD_ENDPOINTS, ids=[c[0] for c in BAD_ENDPOINTS])
def test_cross_field_rules_reject_in_python_and_in_cel(cel, case, path, value, message) -> None:
    obj = _with(GOOD_EP, path, value)
    with pytest.raises(ValidationError) as err:
        DedicatedEndpointSpec.model_validate(obj)
    assert message.split(":")[0].split(" must")[0] in str(err.value)
    errors = cel.errors(EP_SCHEMA, cel.apply_defaults(EP_SCHEMA, obj))
    assert any(message in e for e in errors), errors


def test_valid_spec_passes_every_cel_rule(cel) -> None:
    full = {
        "model": {"volume": {"claimName": "models", "path": "qwen/gsq-2bit"}, "servedModelName": "qwen36"},
        "replicas": 2,
        "placement": {"gpuFamilies": ["hopper", "ampere"], "maxGpusPerReplica": 4},
        "serving": {"contextLength": 32768, "concurrency": 16, "textOnly": "on",
                    "mtp": {"mode": "on", "numSpeculativeTokens": 2}},
        "image": "ghcr.io/example/vllm-humming:0.11.0@sha256:" + "a" * 64,
        "resources": {"cpu": "8", "memory": "64Gi"},
    }
    DedicatedEndpointSpec.model_validate(full)
    assert cel.errors(EP_SCHEMA, cel.apply_defaults(EP_SCHEMA, full)) == []
    assert cel.errors(QM_SCHEMA, cel.apply_defaults(QM_SCHEMA, GOOD_QM)) == []


@pytest.mark.parametrize("repo", [
    "../etc", "a/b;rm -rf /", "-x/y", "x/y/z", "owner/", "/name", "a b/c", "x/y$(id)", "o/n\n",
    "owner/name.", "a" * 50 + "/" + "b" * 50,
])
def test_hub_repo_pattern_rejects_abuse(repo: str) -> None:
    with pytest.raises(ValidationError):
        DedicatedEndpointSpec.model_validate(_with(GOOD_EP, "model.hub.repo", repo))


@pytest.mark.parametrize(("field", "value"), [
    ("model.hub.revision", "--upload"),
    ("model.servedModelName", "-x"),
    ("image", "Registry/UPPER:tag"),
    ("image", "repo:tag; curl x"),
    ("resources", {"memory": "64 Gi"}),
    ("serving", {"contextLength": 100}),
    ("serving", {"gpuMemoryUtilization": 0.99}),
    ("replicas", -1),
    ("placement", {"pool": "Bad_Pool"}),
])
def test_field_patterns_and_bounds(field: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        DedicatedEndpointSpec.model_validate(_with(GOOD_EP, field, value))


BAD_QMS = [
    ("gsq 4 bits", "bits", 4, "spec.bits: method gsq supports 2 bits"),
    ("two outputs", "output.hub", {"repo": "me/out", "tokenSecretRef": {"name": "hf"}}, "spec.output: set exactly one"),
    ("hub without scratch", "output", {"hub": {"repo": "me/out", "tokenSecretRef": {"name": "hf"}}},
     "spec.output.scratchClaimName is required"),
    ("two calibrations", "calibration", {"dataset": {"repo": "a/b"}, "file": {"claimName": "c", "path": "d.txt"}},
     "spec.calibration: set at most one of dataset, file"),
    ("two bases", "base.volume", {"claimName": "x"}, "spec.base: set exactly one of hub, volume"),
]


@pytest.mark.parametrize(("case", "path", "value", "message"), BAD_QMS, ids=[c[0] for c in BAD_QMS])
def test_quantized_model_rules(cel, case, path, value, message) -> None:
    obj = _with(GOOD_QM, path, value)
    with pytest.raises(ValidationError) as err:
        QuantizedModelSpec.model_validate(obj)
    assert message.split(" supports")[0].split(" is required")[0][:20] in str(err.value)
    errors = cel.errors(QM_SCHEMA, cel.apply_defaults(QM_SCHEMA, obj))
    assert any(message in e for e in errors), errors


def test_autoround_bits() -> None:
    ok = _with(GOOD_QM, "method", "autoround")
    for bits in (2, 3, 4, 8):
        QuantizedModelSpec.model_validate(_with(ok, "bits", bits))
    with pytest.raises(ValidationError):
        QuantizedModelSpec.model_validate(_with(ok, "bits", 5))  # not in the schema enum
    with pytest.raises(ValidationError):
        QuantizedModelSpec.model_validate(_with(ok, "groupSize", 100))
    with pytest.raises(ValidationError):
        QuantizedModelSpec.model_validate(_with(GOOD_QM, "method", "rtn"))


def test_set_condition_keeps_transition_time_when_status_is_unchanged() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    conds = set_condition([], "Ready", False, "RollingOut", "0/1 ready", observed_generation=1, now=t0)
    same = set_condition(conds, "Ready", False, "RollingOut", "0/1 ready", observed_generation=1,
                         now=t0 + timedelta(minutes=5))
    assert same == conds  # a resync with nothing changed produces an identical list
    moved = set_condition(same, "Ready", True, "ReplicasReady", "1/1 ready", observed_generation=1,
                          now=t0 + timedelta(minutes=9))
    ready = get_condition(moved, "Ready")
    assert ready.status == ConditionStatus.TRUE
    assert ready.last_transition_time == t0 + timedelta(minutes=9)
    other = set_condition(moved, "Planned", True, "PlanFound", now=t0)
    assert [c.type for c in other] == ["Ready", "Planned"]
    assert ready.to_k8s()["lastTransitionTime"] == "2025-01-01T00:09:00Z"
