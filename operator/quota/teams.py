"""Which team (GPUQuota) governs which namespace, and which quotas claim the same namespace.

A namespace belongs to at most one team. When two quotas claim it (by name or by selector), the
older quota keeps it (creation time, then name, so the answer never flips between resyncs) and
the younger one reports a ``NamespaceConflict`` condition; the admission webhook refuses a quota
that would create such a conflict in the first place, so this only happens through namespace
labels changing later or webhooks being off.

A namespace outside every quota is its own team, ``ns.<namespace>``: the dot cannot appear in a
quota's name (a DNS label), so the two kinds of team name never collide.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..api.gpuquota import GPUQuotaSpec
from .selectors import matches

FALLBACK_PREFIX = "ns."


@dataclass(frozen=True)
class QuotaView:
    """A GPUQuota as the accounting needs it: name, validated spec and age."""

    name: str
    spec: GPUQuotaSpec
    created: str = ""  # metadata.creationTimestamp (RFC 3339 sorts as text)
    uid: str = ""

    @property
    def precedence(self) -> tuple[str, str]:
        return (self.created or "9999", self.name)


@dataclass(frozen=True)
class TeamMap:
    """The resolution of every quota's namespaces against the namespaces that exist."""

    owner: dict[str, str] = field(default_factory=dict)  # namespace -> governing quota
    governed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # quota -> namespaces
    conflicts: dict[str, tuple[str, ...]] = field(default_factory=dict)  # quota -> messages

    def quota_of(self, namespace: str) -> str | None:
        return self.owner.get(namespace)

    def team_of(self, namespace: str) -> str:
        """The team name: the governing quota's name, else ``ns.<namespace>``."""
        quota = self.owner.get(namespace)
        return quota if quota is not None else fallback_team(namespace)


def fallback_team(namespace: str) -> str:
    """``ns.<namespace>``, shortened with a stable hash to fit a 63-character label value."""
    name = f"{FALLBACK_PREFIX}{namespace}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(namespace.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-.')}-{digest}"


def claimed_namespaces(spec: GPUQuotaSpec, namespaces: Mapping[str, Mapping[str, str]]) -> set[str]:
    """Namespaces ``spec`` claims: listed names (existing or not) plus existing ones the selector matches."""
    out = set(spec.namespaces.names or [])
    selector = spec.namespaces.selector
    if selector is not None:
        out |= {ns for ns, labels in namespaces.items() if matches(selector, labels or {})}
    return out


def resolve_teams(quotas: Iterable[QuotaView], namespaces: Mapping[str, Mapping[str, str]]) -> TeamMap:
    """Assign each namespace to its oldest claiming quota; record the losers' conflicts.

    ``namespaces`` maps every existing namespace to its labels. Listed names that do not exist
    yet are assigned too (an endpoint cannot be in them before they exist, but a quota created
    ahead of its namespaces must govern them from their first moment).
    """
    owner: dict[str, str] = {}
    governed: dict[str, list[str]] = {}
    conflicts: dict[str, list[str]] = {}
    for quota in sorted(quotas, key=lambda q: q.precedence):
        mine = governed.setdefault(quota.name, [])
        for ns in sorted(claimed_namespaces(quota.spec, namespaces)):
            holder = owner.get(ns)
            if holder is None:
                owner[ns] = quota.name
                mine.append(ns)
            else:
                conflicts.setdefault(quota.name, []).append(
                    f"namespace {ns} is already governed by GPUQuota {holder} (older); this quota "
                    "does not apply there")
                conflicts.setdefault(holder, []).append(
                    f"namespace {ns} is also claimed by GPUQuota {quota.name}; this (older) quota keeps it")
    return TeamMap(owner=owner, governed={k: tuple(v) for k, v in governed.items()},
                   conflicts={k: tuple(v) for k, v in conflicts.items()})


def conflicts_for_new(candidate: QuotaView, others: Iterable[QuotaView],
                      namespaces: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Why ``candidate`` (being created or changed) would claim a namespace another quota claims.

    For the admission webhook: a listed name or a selector match that overlaps another quota's
    claim, plus a selector identical to another quota's (which would overlap on the first
    namespace that gets the labels, even if none has them today).
    """
    mine = claimed_namespaces(candidate.spec, namespaces)
    problems: list[str] = []
    for other in sorted(others, key=lambda q: q.name):
        if other.name == candidate.name:
            continue
        theirs = claimed_namespaces(other.spec, namespaces)
        both = sorted(mine & theirs)
        if both:
            shown = ", ".join(both[:5]) + (f" and {len(both) - 5} more" if len(both) > 5 else "")
            problems.append(f"namespace{'s' if len(both) > 1 else ''} {shown} already belong"
                            f"{'' if len(both) > 1 else 's'} to GPUQuota {other.name}")
        elif (candidate.spec.namespaces.selector is not None
              and candidate.spec.namespaces.selector == other.spec.namespaces.selector):
            problems.append(f"GPUQuota {other.name} has the same namespace selector")
    return problems
