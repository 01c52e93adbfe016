"""The admission decision and the status figures: caps, guarantees, unlisted pools, messages."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from quota_fixtures import POOLS, claim, node, nodes, quota, world  # noqa: E402

from dedicated.operator.quota import (  # noqa: E402
    POOL_NOT_IN_QUOTA,
    QUOTA_EXCEEDED,
    RESERVED_FOR_OTHERS,
    decide,
    mirror_limit,
    overcommitted,
    pool_capacity,
    pool_problems,
    quota_usage,
    summaries,
)


def admit_all(w, claims):
    """Decide claims one after another, recording the admitted ones (what the ledger does)."""
    admitted = []
    for c in claims:
        d = decide(w, c)
        if d.admitted:
            w = replace(w, claims={**w.claims, c.uid: c})
            admitted.append(c)
    return w, admitted


def test_capacity_counts_allocatable_gpus_of_matching_schedulable_nodes() -> None:
    cap = pool_capacity(POOLS, [node("hopper-h100", 0), node("hopper-h100", 1, gpus=4),
                                node("hopper-h100", 2, unschedulable=True), node("other", 0)])
    assert (cap["hopper-h100"].gpus, cap["hopper-h100"].nodes) == (12, 2)
    assert cap["ampere-a100"].gpus == 0 and cap["ampere-a100"].nodes == 0


def test_cap_message_names_team_use_cap_family_and_need() -> None:
    q = quota("ml-research", {"gpuFamily": "hopper", "max": 16})
    w = world([q], [claim("ml-research", "hopper-h100", 8), claim("ml-research", "hopper-h200", 6)])
    d = decide(w, claim("ml-research", "hopper-h100", 4))
    assert not d.admitted and d.reason == QUOTA_EXCEEDED
    assert d.message == "team ml-research uses 14 of 16 hopper GPUs; this endpoint needs 4"
    assert decide(w, claim("ml-research", "hopper-h100", 2)).admitted


def test_twenty_claims_of_four_against_sixteen_admit_exactly_four() -> None:
    q = quota("ml-research", {"gpuFamily": "hopper", "max": 16})
    _, admitted = admit_all(world([q]), [claim("ml-research", "hopper-h100", 4) for _ in range(20)])
    assert len(admitted) == 4


def test_an_update_replaces_the_earlier_claim_and_shrinking_is_always_admitted() -> None:
    q = quota("team", {"pool": "hopper-h100", "max": 8})
    first = claim("team", "hopper-h100", 8, uid="a")
    w = world([q], [first])
    assert decide(w, replace(first, gpus=8)).admitted  # same claim again (a resync)
    assert decide(w, replace(first, gpus=4)).admitted
    grown = decide(w, replace(first, gpus=12, detail="3 replicas x 4 GPUs"))
    assert not grown.admitted
    assert grown.message == ("team team uses 8 of 8 hopper-h100 GPUs; this endpoint needs 12 (3 replicas x 4 GPUs) "
                             "instead of the 8 it holds")


def test_pool_and_family_limits_both_apply() -> None:
    q = quota("t", {"pool": "hopper-h100", "max": 4}, {"gpuFamily": "hopper", "max": 10})
    w = world([q], [claim("t", "hopper-h200", 8)])
    assert decide(w, claim("t", "hopper-h100", 2)).admitted
    d = decide(w, claim("t", "hopper-h100", 4))
    assert d.message == "team t uses 8 of 10 hopper GPUs; this endpoint needs 4"
    w2 = world([q])
    assert decide(w2, claim("t", "hopper-h100", 6)).message == "team t uses 0 of 4 hopper-h100 GPUs; this endpoint needs 6"


def test_unlisted_pools_allow_or_deny() -> None:
    allow = quota("t", {"gpuFamily": "hopper", "max": 8})
    deny = quota("t", {"gpuFamily": "hopper", "max": 8}, unlistedPools="Deny")
    assert decide(world([allow]), claim("t", "ampere-a100", 16)).admitted
    d = decide(world([deny]), claim("t", "ampere-a100", 1, kind="QuantizedModel"))
    assert not d.admitted and d.reason == POOL_NOT_IN_QUOTA
    assert "lists only hopper" in d.message and "this quantization Job needs 1" in d.message


def test_guarantees_are_kept_free_for_their_team() -> None:
    # hopper-h100: 3 nodes x 8 = 24 GPUs; team a is guaranteed 8 of them.
    a = quota("a", {"pool": "hopper-h100", "guaranteed": 8})
    b = quota("b", {"gpuFamily": "hopper"})
    w = world([a, b])
    w, got_b = admit_all(w, [claim("b", "hopper-h100", 4) for _ in range(6)])
    assert len(got_b) == 4  # 16 of 24; the other 8 are a's
    refused = decide(w, claim("b", "hopper-h100", 4))
    assert refused.reason == RESERVED_FOR_OTHERS
    assert refused.message == ("pool hopper-h100 has 24 GPUs: 16 in use and 8 reserved for other teams (a 8); "
                               "this endpoint needs 4 for team b")
    # a namespace outside every quota is refused the same way
    assert not decide(w, claim("loner", "hopper-h100", 1)).admitted
    # team a still gets all of its guarantee; beyond it, with no guarantee left at stake, physical
    # room is the scheduler's business (the pod would wait), as without quotas
    w, got_a = admit_all(w, [claim("a", "hopper-h100", 4) for _ in range(3)])
    assert len(got_a) == 3 and w.used(("pool", "hopper-h100"), team="a") == 12


def test_without_guarantees_physical_room_is_left_to_the_scheduler() -> None:
    w = world([quota("t", {"pool": "hopper-h100", "max": 1000})])
    assert decide(w, claim("t", "hopper-h100", 100)).admitted  # no reserve at stake: pods would wait
    assert decide(world([]), claim("anyone", "hopper-h100", 500)).admitted


def test_family_guarantee_protects_the_family_not_one_pool() -> None:
    # hopper: 24 (h100) + 8 (h200) = 32; team a guaranteed 16 anywhere in hopper
    a = quota("a", {"gpuFamily": "hopper", "guaranteed": 16})
    w = world([a])
    w, got = admit_all(w, [claim("x", "hopper-h100", 8), claim("x", "hopper-h200", 8), claim("x", "hopper-h100", 1)])
    assert len(got) == 2
    assert "family hopper has 32 GPUs: 16 in use and 16 reserved for other teams (a 16)" in \
        decide(w, claim("x", "hopper-h100", 1)).message


def test_inside_own_guarantee_is_first_come_when_overcommitted() -> None:
    a = quota("a", {"pool": "hopper-h200", "guaranteed": 8})
    b = quota("b", {"pool": "hopper-h200", "guaranteed": 8}, created="2026-02-01T00:00:00Z")
    w = world([a, b])  # hopper-h200 has one node: 8 GPUs, 16 guaranteed
    msgs = overcommitted(w)["a"]
    assert msgs == ["guarantees on pool hopper-h200 total 16 GPUs (a 8, b 8) but it has 8: not every team can "
                    "get its guaranteed GPUs at once"]
    assert overcommitted(w)["b"] == msgs
    w, got = admit_all(w, [claim("a", "hopper-h200", 8), claim("b", "hopper-h200", 1)])
    assert [c.namespace for c in got] == ["a"]


def test_status_figures_and_summaries() -> None:
    a = quota("a", {"gpuFamily": "hopper", "guaranteed": 8, "max": 16}, {"pool": "ampere-a100"})
    b = quota("b", {"pool": "hopper-h100", "guaranteed": 4})
    w = world([a, b], [claim("a", "hopper-h100", 6), claim("b", "hopper-h100", 2), claim("z", "hopper-h200", 8)])
    usage = quota_usage(w, a)
    hopper, ampere = usage
    assert (hopper.capacity, hopper.guaranteed, hopper.max, hopper.used) == (32, 8, 16, 6)
    # 32 - 16 held - 2 of b's reserve still unused = 14 available; the cap leaves 10
    assert hopper.free == 10
    assert (ampere.capacity, ampere.used, ampere.free, ampere.max) == (16, 0, 16, None)
    assert summaries(usage) == ("hopper 6/16, ampere-a100 0/-", "hopper 10, ampere-a100 16")


def test_pool_problems_name_unknown_pools_families_and_empty_pools() -> None:
    q = quota("t", {"pool": "hopper-h200"}, {"pool": "nope"}, {"gpuFamily": "blackwell"})
    problems = pool_problems(world([q], node_list=nodes(hopper_h100=1)), q)
    reasons = [r for r, _ in problems]
    assert reasons == ["PoolHasNoNodes", "PoolNotConfigured", "FamilyNotConfigured"]
    assert "pool hopper-h200 names no existing schedulable node (nodeSelector dedicated.dev/pool=hopper-h200)" in problems[0][1]
    assert "configured: hopper-h100, hopper-h200, ampere-a100" in problems[1][1]


@pytest.mark.parametrize(("limits", "extra", "expected"), [
    ([{"gpuFamily": "hopper", "max": 16}], {}, None),  # ampere unlisted and allowed: unbounded
    ([{"gpuFamily": "hopper", "max": 16}], {"unlistedPools": "Deny"}, 16),
    ([{"pool": "hopper-h100", "max": 4}, {"pool": "hopper-h200", "max": 4}, {"gpuFamily": "hopper", "max": 6}],
     {"unlistedPools": "Deny"}, 6),
    ([{"pool": "hopper-h100", "max": 4}, {"gpuFamily": "ampere", "max": 2}], {"unlistedPools": "Deny"}, 6),
    ([{"pool": "hopper-h100"}], {"unlistedPools": "Deny"}, None),  # no max on a listed pool
])
def test_mirror_limit_is_the_bounded_team_total(limits, extra, expected) -> None:
    assert mirror_limit(quota("t", *limits, **extra).spec, POOLS) == expected


# --- property: sequential admission never breaks a cap or another team's guarantee --------------

_POOL_NAMES = [p.name for p in POOLS.pools]
_claims = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "loner"]), st.sampled_from(_POOL_NAMES),
                             st.integers(0, 9)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(_claims, st.integers(0, 12), st.integers(0, 12), st.integers(4, 30))
def test_admitted_claims_respect_caps_and_guarantees(requests, g_a, g_b, cap_c) -> None:
    a = quota("a", {"pool": "hopper-h100", "guaranteed": g_a})
    b = quota("b", {"gpuFamily": "hopper", "guaranteed": g_b, "max": max(g_b, 20)})
    c = quota("c", {"gpuFamily": "hopper", "max": cap_c}, {"pool": "ampere-a100", "max": cap_c})
    w = world([a, b, c])
    w, _ = admit_all(w, [claim(ns, pool, n) for ns, pool, n in requests])
    used = lambda team, scope: w.used(scope, team=team)  # noqa: E731
    assert used("b", ("family", "hopper")) <= max(g_b, 20)
    assert used("c", ("family", "hopper")) <= cap_c and used("c", ("pool", "ampere-a100")) <= cap_c
    for scope in (("pool", "hopper-h100"), ("family", "hopper")):
        capacity = w.scope_capacity(scope)
        reserves = sum(w.unused_reserve(q, scope) for q in (a, b))
        guaranteed = sum(w.reserved_total(q, scope) for q in (a, b))
        if guaranteed <= capacity:  # not over-committed: every unused guarantee is still claimable
            assert w.used(scope) + reserves <= capacity or reserves == 0, (scope, w.used(scope), reserves)
