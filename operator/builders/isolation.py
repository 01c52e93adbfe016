"""Single-tenant placement: a team label on every pod the operator makes, and, for an endpoint
with ``spec.placement.isolation: dedicated-nodes``, a required pod anti-affinity that keeps
every other team's pods off the nodes it runs on.

Why anti-affinity rather than the operator tainting and labelling nodes: the scheduler enforces
it by itself, atomically with placement, in both directions (a required anti-affinity term of a
pod already on a node also refuses newcomers that match it, so another team's pod cannot land
next to a dedicated endpoint later), nothing has to be cleaned up when the endpoint goes away,
and the operator needs no write access to nodes (its ClusterRole only reads them). A node
belongs to a team exactly as long as that team's dedicated pods run on it.

The term selects pods that carry the team label with a different value, in all namespaces
(``namespaceSelector: {}``). Pods without the label (DaemonSets such as the NVIDIA device plugin,
other controllers' pods) are not affected: the label is what makes a pod part of a team. The
operator labels serving pods and quantization Job pods; other workloads that must stay off
dedicated nodes carry the label too (the documented contract, docs/operations.md).
"""

from __future__ import annotations

import copy
from typing import Any

from ..api.crd import GROUP
from ..api.endpoint import Isolation
from .naming import label_value

TEAM_LABEL = f"{GROUP}/team"
HOSTNAME = "kubernetes.io/hostname"


def team_labels(team: str) -> dict[str, str]:
    return {TEAM_LABEL: label_value(team)}


def dedicated_nodes_term(team: str) -> dict[str, Any]:
    """The required anti-affinity term: no pod of another team on the same node."""
    return {
        "labelSelector": {"matchExpressions": [
            {"key": TEAM_LABEL, "operator": "Exists"},
            {"key": TEAM_LABEL, "operator": "NotIn", "values": [label_value(team)]},
        ]},
        "namespaceSelector": {},
        "topologyKey": HOSTNAME,
    }


def apply_isolation(template: dict[str, Any], team: str | None, isolation: Isolation | str = Isolation.SHARED) -> dict[str, Any]:
    """A copy of the pod ``template`` (``{"metadata": ..., "spec": ...}``) with the team label and,
    for ``dedicated-nodes``, the anti-affinity term added to any affinity it already has.

    ``team`` None (unknown) leaves the template as it is; ``dedicated-nodes`` without a team is a
    programming error, since it could not say which pods to keep away.
    """
    isolation = Isolation(isolation)
    if team is None:
        if isolation == Isolation.DEDICATED_NODES:
            raise ValueError("dedicated-nodes isolation needs the team of the endpoint's namespace")
        return template
    out = copy.deepcopy(template)
    meta = out.setdefault("metadata", {})
    meta["labels"] = dict(sorted({**(meta.get("labels") or {}), **team_labels(team)}.items()))
    if isolation == Isolation.DEDICATED_NODES:
        spec = out.setdefault("spec", {})
        affinity = spec.setdefault("affinity", {})
        anti = affinity.setdefault("podAntiAffinity", {})
        required = anti.setdefault("requiredDuringSchedulingIgnoredDuringExecution", [])
        term = dedicated_nodes_term(team)
        if term not in required:
            required.append(term)
    return out


__all__ = ["HOSTNAME", "TEAM_LABEL", "apply_isolation", "dedicated_nodes_term", "team_labels"]
