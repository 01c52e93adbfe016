"""Namespace-to-team resolution, conflicts, label selectors and the ledger encoding."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from quota_fixtures import quota  # noqa: E402

from dedicated.operator.api.gpuquota import LabelSelector  # noqa: E402
from dedicated.operator.quota import (  # noqa: E402
    Claim,
    LedgerError,
    conflicts_for_new,
    fallback_team,
    ledger_patch,
    matches,
    read_ledger,
    resolve_teams,
)

NAMESPACES = {
    "ml-a": {"team": "ml", "env": "prod"},
    "ml-b": {"team": "ml", "env": "dev"},
    "web": {"team": "web"},
    "bare": {},
}


@pytest.mark.parametrize(("selector", "expected"), [
    ({"matchLabels": {"team": "ml"}}, ["ml-a", "ml-b"]),
    ({"matchLabels": {"team": "ml", "env": "dev"}}, ["ml-b"]),
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["ml", "web"]}]}, ["ml-a", "ml-b", "web"]),
    ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["ml"]}]}, ["bare", "web"]),
    ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, ["ml-a", "ml-b"]),
    ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, ["bare", "web"]),
])
def test_label_selector_semantics_match_kubernetes(selector, expected) -> None:
    sel = LabelSelector.model_validate(selector)
    assert sorted(ns for ns, labels in NAMESPACES.items() if matches(sel, labels)) == expected


def test_teams_by_name_and_selector_and_the_fallback_team() -> None:
    ml = quota("ml", {"gpuFamily": "hopper", "max": 8}, selector={"matchLabels": {"team": "ml"}})
    web = quota("web", {"gpuFamily": "hopper", "max": 8}, names=["web", "not-yet-created"])
    teams = resolve_teams([ml, web], NAMESPACES)
    assert teams.governed == {"ml": ("ml-a", "ml-b"), "web": ("not-yet-created", "web")}
    assert teams.team_of("ml-b") == "ml" and teams.team_of("not-yet-created") == "web"
    assert teams.team_of("bare") == "ns.bare" and teams.quota_of("bare") is None
    assert not teams.conflicts
    long = "x" * 63
    assert len(fallback_team(long)) <= 63 and fallback_team(long) != fallback_team("x" * 62 + "y")


def test_the_older_quota_keeps_a_doubly_claimed_namespace_and_both_report_it() -> None:
    old = quota("old", {"pool": "hopper-h100"}, names=["ml-a"], created="2026-01-01T00:00:00Z")
    new = quota("new", {"pool": "hopper-h100"}, selector={"matchLabels": {"team": "ml"}}, created="2026-03-01T00:00:00Z")
    teams = resolve_teams([new, old], NAMESPACES)
    assert teams.governed == {"old": ("ml-a",), "new": ("ml-b",)}
    assert teams.conflicts["new"] == ("namespace ml-a is already governed by GPUQuota old (older); this quota "
                                      "does not apply there",)
    assert teams.conflicts["old"] == ("namespace ml-a is also claimed by GPUQuota new; this (older) quota keeps it",)


def test_admission_conflicts_for_a_new_quota() -> None:
    ml = quota("ml", {"pool": "hopper-h100"}, selector={"matchLabels": {"team": "ml"}})
    assert conflicts_for_new(quota("x", {"pool": "hopper-h100"}, names=["ml-b", "web"]), [ml], NAMESPACES) == \
        ["namespace ml-b already belongs to GPUQuota ml"]
    # same selector, even with no namespace labelled yet
    future = quota("f1", {"pool": "hopper-h100"}, selector={"matchLabels": {"team": "future"}})
    assert conflicts_for_new(quota("f2", {"pool": "hopper-h100"}, selector={"matchLabels": {"team": "future"}}),
                             [future], NAMESPACES) == ["GPUQuota f1 has the same namespace selector"]
    # updating a quota never conflicts with itself
    assert conflicts_for_new(ml, [ml], NAMESPACES) == []


def test_ledger_round_trip_patch_and_bad_entries() -> None:
    a = Claim(uid="u1", kind="DedicatedEndpoint", namespace="ml-a", name="chat", pool="hopper-h100", family="hopper",
              gpus=8, detail="2 replicas x 4 GPUs")
    b = Claim(uid="u2", kind="QuantizedModel", namespace="ml-a", name="q", pool="ampere-a100", family="ampere", gpus=1)
    data = {"u1": a.encode(), "u2": b.encode(), "junk": "{not json"}
    claims, bad = read_ledger(data)
    assert claims == {"u1": a, "u2": b} and bad == ["junk"]
    grown = Claim(**{**a.as_dict(), "gpus": 12})
    assert ledger_patch(claims, {"u1": grown}, bad) == {"u2": None, "junk": None, "u1": grown.encode()}
    assert ledger_patch(claims, claims) == {}
    assert a.same_holding(Claim(**{**a.as_dict(), "detail": "other words"}))
    with pytest.raises(LedgerError, match="gpus must be a non-negative integer"):
        Claim(uid="u", kind="DedicatedEndpoint", namespace="n", name="x", pool="p", family="f", gpus=-1)
    with pytest.raises(LedgerError, match="unknown kind"):
        Claim(uid="u", kind="Pod", namespace="n", name="x", pool="p", family="f", gpus=1)
