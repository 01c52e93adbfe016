"""Dedicated-node isolation as pod-template changes: the namespace label on every pod the operator
makes, the required anti-affinity only for ``dedicated-nodes``; the serving builder applies it
before hashing (switching isolation rolls the Deployment out) and quantization Job pods carry the
label too. (That the scheduler honours it is shown on the simulated pools:
tests/integration/test_quota_isolation.py.)"""

from __future__ import annotations

import inspect

import pytest

from dedicated.operator.builders import quantize_job, serving
from dedicated.operator.builders.isolation import NAMESPACE_LABEL, apply_isolation, dedicated_nodes_term

TEMPLATE = {
    "metadata": {"labels": {"app": "x"}},
    "spec": {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100}]}}},
}


def test_shared_adds_only_the_namespace_label() -> None:
    out = apply_isolation(TEMPLATE, "ml-a", ["ml-a", "ml-b"], "shared")
    assert out["metadata"]["labels"] == {"app": "x", NAMESPACE_LABEL: "ml-a"}
    assert out["spec"] == TEMPLATE["spec"]
    assert TEMPLATE["metadata"]["labels"] == {"app": "x"}  # input untouched


def test_dedicated_nodes_keeps_labelled_pods_of_every_other_namespace_away() -> None:
    out = apply_isolation(TEMPLATE, "ml-a", ["ml-b", "ml-a", "ml-a"], "dedicated-nodes")
    anti = out["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"] == [{"weight": 100}]  # kept
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"] == [{
        "labelSelector": {"matchExpressions": [
            {"key": NAMESPACE_LABEL, "operator": "Exists"},
            {"key": NAMESPACE_LABEL, "operator": "NotIn", "values": ["ml-a", "ml-b"]}]},
        "namespaceSelector": {},
        "topologyKey": "kubernetes.io/hostname",
    }]
    assert apply_isolation(out, "ml-a", ["ml-a", "ml-b"], "dedicated-nodes") == out  # idempotent
    # without a quota the team is the namespace itself
    alone = apply_isolation(TEMPLATE, "solo", None, "dedicated-nodes")
    assert alone["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0][
        "labelSelector"]["matchExpressions"][1]["values"] == ["solo"]


def test_a_term_needs_namespaces() -> None:
    with pytest.raises(ValueError, match="needs the team"):
        dedicated_nodes_term([])


def test_builders_apply_it() -> None:
    source = inspect.getsource(serving.build_deployment)
    assert source.index("apply_isolation(template, namespace, team_namespaces, spec.placement.isolation)") < \
        source.index("spec_hash(template)")
    assert "team_namespaces" in inspect.signature(serving.build_serving).parameters
    assert "namespace_labels(namespace)" in inspect.getsource(quantize_job.build_quantize_job)
