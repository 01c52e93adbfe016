"""Dedicated-node isolation as pod-template changes: the team label always, the required
anti-affinity only for ``dedicated-nodes``; the serving builder applies it before hashing, so
switching isolation rolls the Deployment out. (That the scheduler honours it is shown on the
simulated pools: tests/integration/test_quota_isolation.py.)"""

from __future__ import annotations

import inspect

import pytest

from dedicated.operator.builders import serving
from dedicated.operator.builders.isolation import TEAM_LABEL, apply_isolation, dedicated_nodes_term

TEMPLATE = {
    "metadata": {"labels": {"app": "x"}},
    "spec": {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100}]}}},
}


def test_shared_adds_only_the_team_label() -> None:
    out = apply_isolation(TEMPLATE, "ml-research", "shared")
    assert out["metadata"]["labels"] == {"app": "x", TEAM_LABEL: "ml-research"}
    assert out["spec"] == TEMPLATE["spec"]
    assert TEMPLATE["metadata"]["labels"] == {"app": "x"}  # input untouched


def test_dedicated_nodes_adds_a_required_anti_affinity_against_other_teams_everywhere() -> None:
    out = apply_isolation(TEMPLATE, "ml-research", "dedicated-nodes")
    anti = out["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"] == [{"weight": 100}]  # kept
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"] == [{
        "labelSelector": {"matchExpressions": [
            {"key": TEAM_LABEL, "operator": "Exists"},
            {"key": TEAM_LABEL, "operator": "NotIn", "values": ["ml-research"]}]},
        "namespaceSelector": {},
        "topologyKey": "kubernetes.io/hostname",
    }]
    assert apply_isolation(out, "ml-research", "dedicated-nodes") == out  # idempotent


def test_long_team_names_are_valid_label_values_and_unknown_team_is_refused_for_dedicated() -> None:
    team = "ns." + "a" * 63
    term = dedicated_nodes_term(team)
    assert len(term["labelSelector"]["matchExpressions"][1]["values"][0]) <= 63
    assert apply_isolation(TEMPLATE, None, "shared") is TEMPLATE
    with pytest.raises(ValueError, match="needs the team"):
        apply_isolation(TEMPLATE, None, "dedicated-nodes")


def test_the_serving_builder_applies_isolation_before_hashing() -> None:
    source = inspect.getsource(serving.build_deployment)
    assert source.index("apply_isolation(template, team, spec.placement.isolation)") < source.index("spec_hash(template)")
    assert "team" in inspect.signature(serving.build_serving).parameters
