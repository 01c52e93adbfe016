"""GPU accounting and the admission decision: pure functions of (pools, node capacity, quotas,
teams, claims).

Scopes: a limit covers one pool (``("pool", name)``) or every pool of a GPU family
(``("family", name)``). A claim on pool P of family F counts in both.

The rules, for a claim of ``n`` GPUs by team T on pool P (an update replaces T's earlier claim):

1. **Cap**: for every limit of T's quota whose scope contains P, T's other claims in that scope
   plus ``n`` must not exceed ``max``. On a pool that no limit covers, ``unlistedPools: Deny``
   refuses, ``Allow`` lets rule 2 alone decide.
2. **Unused guarantees stay free**: in the pool and in its family, what everyone holds plus
   ``n`` plus every team's guaranteed-but-unused GPUs (after the claim) must fit the scope's
   capacity. A team's unused reserve in a family is the larger of its family guarantee minus its
   family use and the sum of its unused pool guarantees there. Where no guarantee is at stake,
   physical room is left to the scheduler, as without quotas. A claim wholly absorbed by T's own
   unused reserve only has to fit physically, so an over-committed scope still serves guarantees
   first come, first served.

Namespaces outside every quota are teams without limits: only rule 2 applies to them. Nothing is
checked against a scope whose nodes carry no GPUs (the capacity is unknown; the quota's
``PoolsResolved`` condition says so), and shrinking a claim is always admitted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..api.gpuquota import GPUQuotaSpec, QuotaLimit, ScopeUsage, UnlistedPools
from ..pools import PoolConfig
from .ledger import Claim
from .teams import QuotaView, TeamMap

Scope = tuple[str, str]  # ("pool", name) | ("family", name)
GPU_RESOURCE = "nvidia.com/gpu"

ADMITTED = "Admitted"
QUOTA_EXCEEDED = "QuotaExceeded"
POOL_NOT_IN_QUOTA = "PoolNotInQuota"
RESERVED_FOR_OTHERS = "ReservedForOtherTeams"


@dataclass(frozen=True)
class PoolCapacity:
    """GPUs on a pool's schedulable nodes (allocatable ``nvidia.com/gpu``)."""

    name: str
    family: str
    gpus: int
    nodes: int


def _gpus_of(node: Mapping[str, Any]) -> int:
    raw = ((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE, "0")
    try:
        return max(0, int(str(raw)))
    except ValueError:
        return 0


def pool_capacity(pools: PoolConfig, nodes: Iterable[Mapping[str, Any]]) -> dict[str, PoolCapacity]:
    """Capacity per configured pool: nodes whose labels include the pool's nodeSelector and that
    are not cordoned (a cordoned node's GPUs cannot back a new guarantee)."""
    nodes = list(nodes)
    out: dict[str, PoolCapacity] = {}
    for pool in pools.pools:
        gpus = count = 0
        for node in nodes:
            labels = (node.get("metadata") or {}).get("labels") or {}
            if (node.get("spec") or {}).get("unschedulable"):
                continue
            if all(labels.get(k) == v for k, v in pool.node_selector.items()):
                gpus += _gpus_of(node)
                count += 1
        out[pool.name] = PoolCapacity(pool.name, pool.gpu_family, gpus, count)
    return out


def scope_label(scope: Scope) -> str:
    return scope[1]


def limit_scope(limit: QuotaLimit) -> Scope:
    return limit.scope  # type: ignore[return-value]


@dataclass(frozen=True)
class World:
    """Everything a decision depends on, read at one moment."""

    pools: PoolConfig
    capacity: Mapping[str, PoolCapacity]
    quotas: Mapping[str, QuotaView]
    teams: TeamMap
    claims: Mapping[str, Claim] = field(default_factory=dict)

    # --- scopes ---

    def family_of_pool(self, pool: str) -> str | None:
        cfg = self.pools.get(pool)
        if cfg is not None:
            return cfg.gpu_family
        cap = self.capacity.get(pool)
        return cap.family if cap else None

    def in_scope(self, claim: Claim, scope: Scope) -> bool:
        return claim.pool == scope[1] if scope[0] == "pool" else claim.family == scope[1]

    def scope_capacity(self, scope: Scope) -> int:
        if scope[0] == "pool":
            cap = self.capacity.get(scope[1])
            return cap.gpus if cap else 0
        return sum(c.gpus for c in self.capacity.values() if c.family == scope[1])

    def scope_pools(self, scope: Scope) -> list[str]:
        if scope[0] == "pool":
            return [scope[1]]
        return [p.name for p in self.pools.pools if p.gpu_family == scope[1]]

    # --- usage ---

    def team_of(self, claim: Claim) -> str:
        return self.teams.team_of(claim.namespace)

    def quota_for_team(self, team: str) -> QuotaView | None:
        return self.quotas.get(team)

    def used(self, scope: Scope, *, team: str | None = None, exclude: str | None = None) -> int:
        return sum(c.gpus for uid, c in self.claims.items()
                   if uid != exclude and self.in_scope(c, scope) and (team is None or self.team_of(c) == team))

    def unused_reserve(self, quota: QuotaView, scope: Scope, *, exclude: str | None = None,
                       extra: Claim | None = None) -> int:
        """GPUs ``quota``'s team is guaranteed in ``scope`` but does not hold (see module doc)."""
        team = quota.name

        def use(s: Scope) -> int:
            n = self.used(s, team=team, exclude=exclude)
            if extra is not None and self.in_scope(extra, s):
                n += extra.gpus
            return n

        pool_part = 0
        family_part = 0
        for limit in quota.spec.limits:
            if not limit.guaranteed:
                continue
            s = limit_scope(limit)
            if s[0] == "pool" and (s == scope or (scope[0] == "family" and self.family_of_pool(s[1]) == scope[1])):
                pool_part += max(0, limit.guaranteed - use(s))
            elif s[0] == "family" and s == scope:
                family_part = max(0, limit.guaranteed - use(s))
        return max(pool_part, family_part)

    def reserved_total(self, quota: QuotaView, scope: Scope) -> int:
        """GPUs ``quota`` guarantees inside ``scope`` in total (used or not)."""
        pool_part = sum(l.guaranteed for l in quota.spec.limits
                        if l.pool is not None and (limit_scope(l) == scope or (
                            scope[0] == "family" and self.family_of_pool(l.pool) == scope[1])))
        family_part = sum(l.guaranteed for l in quota.spec.limits
                          if l.gpu_family is not None and limit_scope(l) == scope)
        return max(pool_part, family_part)


@dataclass(frozen=True)
class Decision:
    admitted: bool
    reason: str
    message: str
    team: str


def _needs(claim: Claim) -> str:
    detail = f" ({claim.detail})" if claim.detail else ""
    return f"this {claim.noun} needs {claim.gpus}{detail}"


def decide(world: World, claim: Claim) -> Decision:
    """Admit or refuse ``claim`` (which replaces any earlier claim with the same UID)."""
    team = world.team_of(claim)
    before = world.claims.get(claim.uid)
    if before is not None and before.pool == claim.pool and claim.gpus <= before.gpus:
        return Decision(True, ADMITTED, f"team {team}: {claim.gpus} GPUs on {claim.pool} (not more than before)", team)
    if claim.gpus == 0:
        return Decision(True, ADMITTED, f"team {team}: no GPUs needed", team)
    quota = world.quota_for_team(team)
    scopes: list[Scope] = [("pool", claim.pool), ("family", claim.family)]

    # 1. the team's own caps
    if quota is not None:
        covering = [l for l in quota.spec.limits if world.in_scope(claim, limit_scope(l))]
        if not covering and quota.spec.unlisted_pools == UnlistedPools.DENY:
            listed = ", ".join(scope_label(limit_scope(l)) for l in quota.spec.limits)
            return Decision(False, POOL_NOT_IN_QUOTA,
                            f"team {team} has no GPUs on pool {claim.pool} ({claim.family}): its GPUQuota "
                            f"lists only {listed} and denies unlisted pools; {_needs(claim)}", team)
        for limit in covering:
            if limit.max is None:
                continue
            s = limit_scope(limit)
            used = world.used(s, team=team, exclude=claim.uid)
            if used + claim.gpus > limit.max:
                holds = before.gpus if before is not None and world.in_scope(before, s) else 0
                return Decision(False, QUOTA_EXCEEDED,
                                f"team {team} uses {used + holds} of {limit.max} {scope_label(s)} GPUs; {_needs(claim)}"
                                + (f" instead of the {holds} it holds" if holds else ""), team)

    # 2. unused guarantees (other teams' and the team's own elsewhere in the scope) stay free
    for s in scopes:
        capacity = world.scope_capacity(s)
        if capacity <= 0:
            continue
        held = world.used(s, exclude=claim.uid)
        others: list[tuple[str, int]] = []
        for q in world.quotas.values():
            if q.name == team:
                continue
            r = world.unused_reserve(q, s, exclude=claim.uid)
            if r:
                others.append((q.name, r))
        reserved = sum(r for _, r in others)
        own_before = world.unused_reserve(quota, s, exclude=claim.uid) if quota is not None else 0
        own_after = world.unused_reserve(quota, s, exclude=claim.uid, extra=claim) if quota is not None else 0
        if not reserved + own_after:
            continue  # no guarantee at stake: physical room is the scheduler's business
        if held + claim.gpus + reserved + own_after <= capacity:
            continue
        if own_before - own_after >= claim.gpus and held + claim.gpus <= capacity:
            continue  # wholly inside the team's own guarantee: first come, first served if over-committed
        who = ", ".join(f"{name} {r}" for name, r in sorted(others))
        what = "pool" if s[0] == "pool" else "family"
        parts = [f"{held} in use"]
        if reserved:
            parts.append(f"{reserved} reserved for other teams ({who})")
        if own_after:
            parts.append(f"{own_after} of team {team}'s own guarantee kept for its other pools")
        return Decision(False, RESERVED_FOR_OTHERS if reserved else QUOTA_EXCEEDED,
                        f"{what} {scope_label(s)} has {capacity} GPUs: {' and '.join(parts)}; "
                        f"{_needs(claim)} for team {team}", team)
    return Decision(True, ADMITTED, f"team {team}: {claim.gpus} GPUs on {claim.pool}", team)


# --- figures for GPUQuota.status -----------------------------------------------------------------


def quota_usage(world: World, quota: QuotaView) -> list[ScopeUsage]:
    """Capacity, guarantee, cap, use and what is still free, per limit (spec order)."""
    out: list[ScopeUsage] = []
    for limit in quota.spec.limits:
        s = limit_scope(limit)
        capacity = world.scope_capacity(s)
        used = world.used(s, team=quota.name)
        held = world.used(s)
        reserved_others = sum(world.unused_reserve(q, s) for q in world.quotas.values() if q.name != quota.name)
        own = world.unused_reserve(quota, s)
        # what the team can still take: outside reserves, plus its own unused reserve, within capacity
        available = max(0, capacity - held - reserved_others)
        available = max(available, min(own, max(0, capacity - held)))
        free = available if limit.max is None else min(available, max(0, limit.max - used))
        out.append(ScopeUsage(pool=limit.pool, gpu_family=limit.gpu_family, capacity=capacity,
                              guaranteed=limit.guaranteed, max=limit.max, used=used, free=free))
    return out


def summaries(usage: list[ScopeUsage]) -> tuple[str, str]:
    """``("hopper 14/16, ampere-a100 0/-", "hopper 2, ampere-a100 24")`` for the printer columns."""
    used = ", ".join(f"{u.pool or u.gpu_family} {u.used}/{u.max if u.max is not None else '-'}" for u in usage)
    free = ", ".join(f"{u.pool or u.gpu_family} {u.free}" for u in usage)
    return used, free


def overcommitted(world: World) -> dict[str, list[str]]:
    """Per quota, a message for every scope where the guarantees of all teams exceed capacity."""
    scopes: set[Scope] = set()
    for q in world.quotas.values():
        for l in q.spec.limits:
            if l.guaranteed:
                s = limit_scope(l)
                scopes.add(s)
                if s[0] == "pool":
                    family = world.family_of_pool(s[1])
                    if family:
                        scopes.add(("family", family))
    out: dict[str, list[str]] = {}
    for s in sorted(scopes):
        per = {q.name: world.reserved_total(q, s) for q in world.quotas.values()}
        per = {k: v for k, v in per.items() if v}
        total = sum(per.values())
        capacity = world.scope_capacity(s)
        if total <= capacity:
            continue
        who = ", ".join(f"{k} {v}" for k, v in sorted(per.items()))
        what = "pool" if s[0] == "pool" else "family"
        msg = (f"guarantees on {what} {s[1]} total {total} GPUs ({who}) but it has {capacity}: "
               "not every team can get its guaranteed GPUs at once")
        for name in per:
            out.setdefault(name, []).append(msg)
    return out


def pool_problems(world: World, quota: QuotaView) -> list[tuple[str, str]]:
    """(reason, message) for limits naming an unknown pool/family or a pool without nodes."""
    problems: list[tuple[str, str]] = []
    families = {p.gpu_family for p in world.pools.pools}
    for limit in quota.spec.limits:
        if limit.pool is not None:
            cfg = world.pools.get(limit.pool)
            if cfg is None:
                known = ", ".join(p.name for p in world.pools.pools)
                problems.append(("PoolNotConfigured", f"pool {limit.pool} is not in the operator's pool "
                                                      f"configuration (configured: {known})"))
                continue
            cap = world.capacity.get(limit.pool)
            if cap is None or cap.nodes == 0:
                sel = ",".join(f"{k}={v}" for k, v in sorted(cfg.node_selector.items()))
                problems.append(("PoolHasNoNodes", f"pool {limit.pool} names no existing schedulable node "
                                                   f"(nodeSelector {sel}); its GPUs cannot be guaranteed"))
        else:
            if limit.gpu_family not in families:
                problems.append(("FamilyNotConfigured", f"no configured pool has GPU family {limit.gpu_family} "
                                                        f"(configured families: {', '.join(sorted(families))})"))
            elif world.scope_capacity(("family", limit.gpu_family or "")) == 0:
                problems.append(("PoolHasNoNodes", f"no node of GPU family {limit.gpu_family} exists"))
    return problems


def mirror_limit(spec: GPUQuotaSpec, pools: PoolConfig) -> int | None:
    """The team's total GPU bound over every configured pool, or None when unbounded.

    This is what a namespace's ResourceQuota can enforce: one number, no pools. A team with
    several namespaces gets the whole bound in each (ResourceQuota cannot share a budget across
    namespaces), so the mirror is a backstop, not the quota itself.
    """
    pool_max = {l.pool: l.max for l in spec.limits if l.pool is not None}
    family_max = {l.gpu_family: l.max for l in spec.limits if l.gpu_family is not None}
    total = 0.0
    for family in sorted({p.gpu_family for p in pools.pools}):
        members = [p.name for p in pools.pools if p.gpu_family == family]
        pool_caps = 0.0
        for name in members:
            if name in pool_max:
                pool_caps += math.inf if pool_max[name] is None else pool_max[name]
            elif family in family_max:
                pool_caps += math.inf  # bounded by the family cap below
            else:
                pool_caps += 0 if spec.unlisted_pools == UnlistedPools.DENY else math.inf
        cap = family_max.get(family, math.inf) if family in family_max else math.inf
        if cap is None:
            cap = math.inf
        total += min(cap, pool_caps)
    return None if math.isinf(total) else int(total)
