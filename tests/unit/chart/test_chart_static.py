"""The chart agrees with the code it deploys, and its values schema refuses bad values, without a
cluster or the helm binary (rendering and installing are in tests/integration/test_helm_*.py)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dedicated.operator import images as operator_images
from dedicated.operator.handlers.admission import WEBHOOKS
from dedicated.operator.pools import PoolConfigError, parse_pools
from dedicated.operator.runtime import PEERING_CRDS

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "dedicated-endpoints"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
CI_VALUES = yaml.safe_load((CHART / "ci" / "local-cluster-values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Helm's values merge: maps merge recursively, everything else is replaced."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def schema_errors(values: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values))


def test_chart_crds_are_byte_identical_copies_of_the_generated_ones() -> None:
    generated = {p.name: p.read_text() for p in (ROOT / "crds").glob("*.yaml")}
    shipped = {p.name: p.read_text() for p in (CHART / "files" / "crds").glob("*.yaml")}
    assert set(shipped) == set(generated), "run `dedicated crds generate`"
    stale = [name for name in generated if shipped[name] != generated[name]]
    assert not stale, f"stale chart CRDs {stale}: run `dedicated crds generate`"
    assert {"gpuquotas.llm.dedicated.dev.yaml", "dedicatedendpoints.llm.dedicated.dev.yaml",
            "quantizedmodels.llm.dedicated.dev.yaml"} <= set(shipped)


def test_kopf_peering_crds_match_what_the_runtime_expects() -> None:
    shipped = {d["metadata"]["name"]: d for d in yaml.safe_load_all((CHART / "crds" / "kopfpeerings.kopf.dev.yaml").read_text())}
    expected = {d["metadata"]["name"]: d for d in PEERING_CRDS}
    assert set(shipped) == set(expected) == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    for name, crd in shipped.items():
        want = expected[name]["spec"]
        assert crd["spec"]["scope"] == want["scope"] and crd["spec"]["group"] == "kopf.dev"
        assert crd["spec"]["names"]["kind"] == want["names"]["kind"]
        version = crd["spec"]["versions"][0]
        assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
        assert version["schema"] == want["versions"][0]["schema"]


def _chart_webhooks() -> list[dict[str, Any]]:
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    block = re.search(r'define "de\.webhooks" -\}\}\n(.*?)\{\{- end -\}\}', text, re.S)
    assert block, "de.webhooks not found in _helpers.tpl"
    return yaml.safe_load(block.group(1))


def test_webhook_paths_rules_and_policies_match_the_operators_handlers() -> None:
    chart = {w["id"]: w for w in _chart_webhooks()}
    code = {w.id: w for w in WEBHOOKS}
    assert set(chart) == set(code)
    for wid, w in code.items():
        c = chart[wid]
        assert (c["type"], c["plural"], c["subresource"] or None, tuple(c["operations"]), c["failurePolicy"]) == \
            (w.type, w.plural, w.subresource, w.operations, w.failure_policy), wid


def test_default_images_are_the_operators_defaults_in_one_place() -> None:
    imgs = VALUES["images"]
    ref = lambda which: f"{imgs[which]['repository']}:{imgs[which]['tag']}"  # noqa: E731
    assert ref("serving") == operator_images.DEFAULT_SERVING_IMAGE
    assert ref("quantize") == operator_images.DEFAULT_QUANTIZE_IMAGE
    assert ref("operator") == operator_images.DEFAULT_OPERATOR_IMAGE
    assert imgs["pullPolicy"] == operator_images.ImageConfig().pull_policy
    # no other template names an image: every `image:` goes through de.image
    for path in (CHART / "templates").rglob("*.yaml"):
        for line in path.read_text().splitlines():
            if re.match(r"\s*image:", line):
                assert 'include "de.image"' in line, f"{path.name}: {line.strip()}"


def test_local_cluster_values_declare_the_local_clusters_pools() -> None:
    local = parse_pools(yaml.safe_load((ROOT / "dedicated" / "localcluster" / "gpu-pools.yaml").read_text()))
    chart = parse_pools({"pools": CI_VALUES["pools"]})
    dump = lambda cfg: [p.model_dump(by_alias=True) for p in cfg.pools]  # noqa: E731 (nodes/node are excluded)
    assert dump(chart) == dump(local)


def test_default_and_ci_values_pass_the_schema_and_no_pools_fails() -> None:
    assert schema_errors(merged(VALUES, CI_VALUES)) == []
    assert schema_errors(VALUES) == ["pools: [] should be non-empty"]


GOOD_POOL = CI_VALUES["pools"][2]


@pytest.mark.parametrize(("change", "fragment"), [
    ({"images": {"serving": {"tag": "latest"}}}, "images/serving/tag"),
    ({"images": {"operator": {"repository": "Bad/Name"}}}, "images/operator/repository"),
    ({"images": {"pullPolicy": "Sometimes"}}, "images/pullPolicy"),
    ({"operator": {"replicas": 0}}, "operator/replicas"),
    ({"operator": {"logLevel": "TRACE"}}, "operator/logLevel"),
    ({"operator": {"replicsa": 2}}, "operator: Additional properties are not allowed ('replicsa'"),
    ({"webhook": {"failurePolicy": "Maybe"}}, "webhook/failurePolicy"),
    ({"webhook": {"url": "http://127.0.0.1:9443"}}, "webhook/url"),
    ({"webhook": {"url": "https://127.0.0.1:9443/path"}}, "webhook/url"),
    ({"webhook": {"timeoutSeconds": 31}}, "webhook/timeoutSeconds"),
    ({"quota": {"sweepSeconds": 1}}, "quota/sweepSeconds"),
    ({"peering": {"name": "Not_A_Name"}}, "peering/name"),
    ({"imagez": {}}, "Additional properties are not allowed ('imagez'"),
])
def test_bad_values_are_refused_naming_the_key(change, fragment) -> None:
    errors = schema_errors(merged(VALUES, CI_VALUES, change))
    assert errors and any(fragment in e for e in errors), errors


# --- the pools: schema and operator model agree -------------------------------------------------


POOL_CASES = [
    ({}, True),
    ({"gpuMemoryMiB": "80GB"}, False),
    ({"gpuMemoryMiB": 0}, False),
    ({"computeCapability": 9.0}, False),
    ({"computeCapability": "9"}, False),
    ({"gpusPerNode": 65}, False),
    ({"costPerGpuHour": -1}, False),
    ({"costPerGpuHour": "2.5"}, False),
    ({"name": "Hopper"}, False),
    ({"gpuFamily": "Hopper"}, False),
    ({"nodeSelector": {}}, False),
    ({"nodeSelector": {"dedicated.dev/pool": "bad value!"}}, False),
    ({"tolerations": [{"key": "k", "operator": "Sometimes"}]}, False),
    ({"tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]}, True),
    ({"gpuMemoryMib": 81559}, False),  # a typo of gpuMemoryMiB
    ({"unifiedMemory": "no"}, False),
    ({"nodes": 3}, False),  # local-cluster-only field: not a chart value
]


@pytest.mark.parametrize(("change", "valid"), POOL_CASES)
def test_pool_schema_and_operator_model_agree(change, valid) -> None:
    pool = {**GOOD_POOL, **change}
    schema_ok = not schema_errors(merged(VALUES, {"pools": [pool]}))
    if change == {"nodes": 3}:  # the operator tolerates the local cluster's extra fields; the chart does not
        assert not schema_ok
        return
    try:
        parse_pools({"pools": [pool]})
        model_ok = True
    except PoolConfigError:
        model_ok = False
    assert (schema_ok, model_ok) == (valid, valid), (change, schema_errors(merged(VALUES, {"pools": [pool]})))


# --- RBAC: read the ClusterRole without rendering -------------------------------------------------


def _cluster_role() -> dict[str, Any]:
    text = (CHART / "templates" / "rbac.yaml").read_text()
    text = re.sub(r"\{\{-? /\*.*?\*/ -?\}\}", "", text, flags=re.S)
    text = re.sub(r"\{\{.*?\}\}", "x", text)
    return next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "ClusterRole")


def test_cluster_role_has_no_wildcards_no_escalation_and_reads_secrets_by_name_only() -> None:
    rules = _cluster_role()["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
        assert not {"bind", "escalate", "impersonate", "deletecollection"} & set(rule["verbs"]), rule
        assert "update" not in rule["verbs"], f"patch/apply only: {rule}"
    secrets = [r for r in rules if "secrets" in r["resources"]]
    assert secrets == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    nodes = [r for r in rules if "nodes" in r["resources"]]
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in nodes)
    assert not any("admissionregistration.k8s.io" in r["apiGroups"] for r in rules)
    custom = [r for r in rules if r["apiGroups"] == ["llm.dedicated.dev"]]
    assert {v for r in custom for v in r["verbs"]} == {"get", "list", "watch", "patch"}
    assert all(r["verbs"] == ["patch"] for r in custom if any("/" in res for res in r["resources"]))
