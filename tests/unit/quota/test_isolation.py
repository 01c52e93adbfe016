"""Dedicated-node isolation as pod-template changes: the required anti-affinity only for
``dedicated-nodes`` (shared templates stay byte-identical, so quotas never roll endpoints out);
the serving builder applies it before hashing, so switching isolation rolls the Deployment out.
(That the scheduler honours it is shown on the simulated pools: tests/integration/test_quota_isolation.py.)"""

from __future__ import annotations

import inspect

import pytest

from dedicated.operator.builders import serving
from dedicated.operator.builders.isolation import TEAM_LABEL, apply_isolation, dedicated_nodes_terms

TEMPLATE = {
    "metadata": {"labels": {"app": "x"}},
    "spec": {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100}]}}},
}


def test_shared_leaves_the_template_untouched() -> None:
    assert apply_isolation(TEMPLATE, ["ml-a"], "shared") is TEMPLATE
    assert apply_isolation(TEMPLATE, None, "shared") is TEMPLATE


def test_dedicated_nodes_keeps_workload_pods_of_every_other_namespace_away() -> None:
    out = apply_isolation(TEMPLATE, ["ml-b", "ml-a", "ml-a"], "dedicated-nodes")
    anti = out["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"] == [{"weight": 100}]  # kept
    outside = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["ml-a", "ml-b"]}]}
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"] == [
        {"labelSelector": {"matchExpressions": [{"key": "app.kubernetes.io/managed-by", "operator": "In",
                                                 "values": ["dedicated-operator"]}]},
         "namespaceSelector": outside, "topologyKey": "kubernetes.io/hostname"},
        {"labelSelector": {"matchExpressions": [{"key": TEAM_LABEL, "operator": "Exists"}]},
         "namespaceSelector": outside, "topologyKey": "kubernetes.io/hostname"},
    ]
    assert out["metadata"] == TEMPLATE["metadata"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in TEMPLATE["spec"]["affinity"]["podAntiAffinity"]
    assert apply_isolation(out, ["ml-a", "ml-b"], "dedicated-nodes") == out  # idempotent


def test_dedicated_nodes_needs_the_team() -> None:
    with pytest.raises(ValueError, match="needs the team"):
        apply_isolation(TEMPLATE, None, "dedicated-nodes")
    with pytest.raises(ValueError, match="needs the team"):
        dedicated_nodes_terms([])


def test_the_serving_builder_applies_isolation_before_hashing() -> None:
    source = inspect.getsource(serving.build_deployment)
    assert source.index("apply_isolation(template, team_namespaces, spec.placement.isolation)") < \
        source.index("spec_hash(template)")
    assert "team_namespaces" in inspect.signature(serving.build_serving).parameters
