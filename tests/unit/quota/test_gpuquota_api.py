"""The GPUQuota API: bad specs are refused with a message naming the field, in Python and in the
CRD (CEL rules compile; printer columns point at fields the schema has); the CRD is cluster-scoped
and generated into crds/ and the chart."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from dedicated.operator.api.gpuquota import GPU_QUOTA, GPUQuotaSpec, gpuquota_crd

ROOT = Path(__file__).resolve().parents[3]


def _spec(**kw):
    base = {"namespaces": {"names": ["ml"]}, "limits": [{"gpuFamily": "hopper", "guaranteed": 4, "max": 16}]}
    base.update(kw)
    return GPUQuotaSpec.model_validate(base)


@pytest.mark.parametrize(("change", "message"), [
    ({"limits": []}, "at least 1 item"),
    ({"limits": [{"guaranteed": 1}]}, "spec.limits[]: set exactly one of pool, gpuFamily"),
    ({"limits": [{"pool": "a", "gpuFamily": "hopper"}]}, "spec.limits[]: set exactly one of pool, gpuFamily"),
    ({"limits": [{"pool": "a", "guaranteed": 9, "max": 8}]}, "guaranteed must be <= spec.limits[].max"),
    ({"limits": [{"pool": "a"}, {"pool": "a", "max": 1}]}, "each pool and each gpuFamily may appear only once"),
    ({"limits": [{"pool": "a", "max": -1}]}, "greater than or equal to 0"),
    ({"limits": [{"pool": "Bad_Name"}]}, "should match pattern"),
    ({"namespaces": {}}, "spec.namespaces: set names, selector or both"),
    ({"namespaces": {"selector": {}}}, "an empty selector would select every namespace"),
    ({"namespaces": {"selector": {"matchExpressions": [{"key": "t", "operator": "In"}]}}}, "In and NotIn need values"),
    ({"namespaces": {"selector": {"matchLabels": {"bad key!": "x"}}}}, "is not a valid label key"),
    ({"unlistedPools": "Maybe"}, "'Allow' or 'Deny'"),
])
def test_bad_specs_are_refused_naming_the_field(change, message) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _spec(**change)


def test_defaults() -> None:
    spec = _spec()
    assert spec.unlisted_pools == "Allow" and spec.mirror_resource_quota is True
    assert spec.limits[0].scope == ("family", "hopper")


def test_crd_is_cluster_scoped_with_cel_that_compiles_and_columns_that_resolve() -> None:
    import celpy

    crd = gpuquota_crd()
    assert crd["spec"]["scope"] == "Cluster"
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    rules = []

    def walk(node):
        rules.extend(node.get("x-kubernetes-validations", []))
        for child in node.get("properties", {}).values():
            walk(child)
        if "items" in node:
            walk(node["items"])
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"])

    walk(schema)
    assert len(rules) >= 8
    for rule in rules:
        celpy.Environment().compile(rule["rule"])
        assert rule["message"].startswith(("spec.", "metadata.name"))
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].split("[?")[0].lstrip(".").split(".")
        node = schema
        for part in path:
            if part == "metadata":
                break
            node = node["properties"][part]
        else:
            assert node["type"] in ("string", "integer", "array"), column
    names = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert names == ["Namespaces", "Used", "Free", "Ready", "Age"]
    assert GPU_QUOTA.short_names == ("gq", "gpuq")


def test_generated_copies_in_crds_and_the_chart_are_current() -> None:
    from dedicated.operator.crdgen import HEADER

    text = HEADER + yaml.dump(gpuquota_crd(), Dumper=__import__("dedicated.operator.crdgen", fromlist=["_Dumper"])._Dumper,
                              sort_keys=False, width=100, default_flow_style=False, allow_unicode=True)
    for where in ("crds", "charts/dedicated-endpoints/files/crds"):
        assert (ROOT / where / "gpuquotas.llm.dedicated.dev.yaml").read_text() == text, \
            f"{where} is stale: run `dedicated crds generate`"


def test_operations_doc_carries_the_current_gpuquota_reference() -> None:
    from dedicated.operator.api.gpuquota import reference_markdown

    text = (ROOT / "docs" / "operations.md").read_text()
    begin = "<!-- BEGIN generated: python -m dedicated.operator.api.gpuquota -->\n"
    end = "<!-- END generated -->"
    assert begin in text and end in text
    region = text[text.index(begin) + len(begin):text.index(end)]
    assert region == reference_markdown(), \
        "docs/operations.md's GPUQuota reference is stale: regenerate it with python -m dedicated.operator.api.gpuquota"
