"""``GPUQuota.status`` from the accounting (pure): figures per limit, summaries for the printer
columns, and the conditions, with the transition times kept where nothing flipped so that a
resync with nothing changed writes nothing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..api.gpuquota import GPUQuotaConditionType as C, GPUQuotaReason as R
from ..reconcile.common import EventSpec, Want, apply_conditions, condition_dicts, stored_conditions, transition_events
from .accounting import World, overcommitted, pool_problems, quota_usage, summaries
from .teams import QuotaView


@dataclass(frozen=True)
class MirrorState:
    """What happened to the ResourceQuota mirrors of one quota."""

    enabled: bool
    limit: int | None  # None: the team's total is unbounded
    namespaces: tuple[str, ...] = ()
    error: str = ""


def quota_status(world: World, quota: QuotaView, old_status: Mapping[str, Any] | None, generation: int | None,
                 mirror: MirrorState | None, *, now: datetime | None = None) -> dict[str, Any]:
    """The status to store for ``quota``; ``mirror`` None keeps the stored mirror condition (a quick
    refresh right after an admission does not look at ResourceQuotas)."""
    usage = quota_usage(world, quota)
    used, free = summaries(usage)
    governed = list(world.teams.governed.get(quota.name, ()))
    conflicts = list(world.teams.conflicts.get(quota.name, ()))
    problems = pool_problems(world, quota)
    over = overcommitted(world).get(quota.name, [])

    wants = [
        Want(C.NAMESPACE_CONFLICT, bool(conflicts), R.NAMESPACE_CLAIMED_TWICE if conflicts else R.NO_CONFLICT,
             "; ".join(conflicts)[:4096] if conflicts else "every namespace of this quota belongs to it alone"),
        Want(C.POOLS_RESOLVED, not problems, problems[0][0] if problems else R.POOLS_FOUND,
             "; ".join(m for _, m in problems)[:4096] if problems else "every pool and family of the limits has nodes"),
        Want(C.OVERCOMMITTED, bool(over), R.GUARANTEES_EXCEED_CAPACITY if over else R.WITHIN_CAPACITY,
             "; ".join(over)[:4096] if over else "all guarantees fit the capacity of their pools"),
    ]
    if mirror is None:
        pass
    elif not mirror.enabled:
        wants.append(Want(C.RESOURCE_QUOTA_MIRRORED, False, R.MIRROR_DISABLED, "spec.mirrorResourceQuota is false"))
    elif mirror.error:
        wants.append(Want(C.RESOURCE_QUOTA_MIRRORED, False, R.DEGRADED, mirror.error[:4096]))
    elif mirror.limit is None:
        wants.append(Want(C.RESOURCE_QUOTA_MIRRORED, False, R.UNBOUNDED,
                          "the team's total is unbounded (a usable pool or family has no max), so no "
                          "namespace-wide GPU cap can be written"))
    else:
        wants.append(Want(C.RESOURCE_QUOTA_MIRRORED, True, R.MIRRORED,
                          f"requests.nvidia.com/gpu <= {mirror.limit} in {len(mirror.namespaces)} namespace(s)"))
    if conflicts:
        ready = Want(C.READY, False, R.NAMESPACE_CLAIMED_TWICE, conflicts[0])
    elif problems:
        ready = Want(C.READY, False, problems[0][0], problems[0][1])
    elif over:
        ready = Want(C.READY, False, R.GUARANTEES_EXCEED_CAPACITY, over[0])
    else:
        ready = Want(C.READY, True, R.ENFORCED, f"enforced in {len(governed)} namespace(s): {used}"[:4096])
    wants.insert(0, ready)

    conditions = apply_conditions(stored_conditions(old_status), wants, generation, now)
    claims = [c for c in world.claims.values() if world.team_of(c) == quota.name and c.gpus]
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": condition_dicts(conditions),
        "namespaces": governed[:1024],
        "namespaceCount": len(governed),
        "usage": [u.to_k8s() for u in usage],
        "used": used[:1024],
        "free": free[:1024],
        "usedGpus": sum(c.gpus for c in claims),
        "claims": len(claims),
    }
    if generation is None:
        status.pop("observedGeneration")
    return status


#: The condition every quota-governed endpoint and QuantizedModel carries (issue 8).
QUOTA_ADMITTED = "QuotaAdmitted"


def with_quota_condition(status: Mapping[str, Any], decision: Any, generation: int | None,
                         *, now: datetime | None = None) -> tuple[dict[str, Any], list[EventSpec]]:
    """``status`` with the ``QuotaAdmitted`` condition set from ``decision`` (a
    ``quota.Decision``), and the Event its transition deserves. A refusal also makes ``Ready``
    false with the quota's reason and the phase ``Pending`` (nothing runs yet; it will once GPUs
    are free). For reconcilers that build their status without knowing about quotas."""
    out = dict(status)
    old = stored_conditions(out)
    wants = [Want(QUOTA_ADMITTED, decision.admitted, decision.reason, decision.message[:4096])]
    if not decision.admitted:
        wants.append(Want("Ready", False, decision.reason, decision.message[:4096]))
        out["phase"] = "Pending"
    conditions = apply_conditions(old, wants, generation, now)
    out["conditions"] = condition_dicts(conditions)
    events = transition_events(old, conditions, (QUOTA_ADMITTED,),
                               frozenset({"QuotaExceeded", "ReservedForOtherTeams", "PoolNotInQuota"}))
    return out, events
