"""Single-tenant placement: for an endpoint with ``spec.placement.isolation: dedicated-nodes``, a
required pod anti-affinity that keeps every other team's pods off the nodes its pods run on.

A team is a set of namespaces (the GPUQuota that governs the endpoint's namespace, or the
namespace alone when no quota does). The term matches pods in every namespace *outside* the team
(``namespaceSelector`` on the immutable ``kubernetes.io/metadata.name`` label) that are workload
pods: the operator's own (serving pods and quantization Jobs carry
``app.kubernetes.io/managed-by: dedicated-operator``), and any other pod that opts in with the
``llm.dedicated.dev/team`` label. Two terms, because required terms are ANDed and a label selector
cannot say "this label or that one".

Why anti-affinity rather than the operator tainting and labelling nodes: the scheduler enforces
it by itself, atomically with placement, and in both directions (a required anti-affinity term
of a pod already on a node also refuses newcomers that match it, so another team's pod cannot
land next to a dedicated endpoint later); nothing needs cleaning up when the endpoint goes away;
the operator needs no write access to nodes (its ClusterRole only reads them). A node belongs to
a team exactly as long as that team's dedicated pods run on it. Pods that match neither label
(DaemonSets such as the NVIDIA device plugin, monitoring agents) are not affected.

Only dedicated endpoints change: a shared endpoint's pod template is left exactly as it is, so
creating or changing GPUQuotas never rolls out endpoints that did not ask for isolation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from ..api.crd import GROUP
from ..api.endpoint import Isolation
from .naming import MANAGED_BY

TEAM_LABEL = f"{GROUP}/team"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
HOSTNAME = "kubernetes.io/hostname"


def dedicated_nodes_terms(team_namespaces: Iterable[str]) -> list[dict[str, Any]]:
    """The required anti-affinity terms: no workload pod of a namespace outside the team on the node."""
    namespaces = sorted(set(team_namespaces))
    if not namespaces:
        raise ValueError("dedicated-nodes isolation needs the team's namespaces")
    outside = {"matchExpressions": [{"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": namespaces}]}
    return [
        {"labelSelector": {"matchExpressions": [{"key": MANAGED_BY_LABEL, "operator": "In", "values": [MANAGED_BY]}]},
         "namespaceSelector": outside, "topologyKey": HOSTNAME},
        {"labelSelector": {"matchExpressions": [{"key": TEAM_LABEL, "operator": "Exists"}]},
         "namespaceSelector": copy.deepcopy(outside), "topologyKey": HOSTNAME},
    ]


def apply_isolation(template: dict[str, Any], team_namespaces: Iterable[str] | None,
                    isolation: Isolation | str = Isolation.SHARED) -> dict[str, Any]:
    """The pod ``template`` with the dedicated-nodes terms added (a copy), or itself when shared."""
    isolation = Isolation(isolation)
    if isolation == Isolation.SHARED:
        return template
    if team_namespaces is None:
        raise ValueError("dedicated-nodes isolation needs the team's namespaces")
    out = copy.deepcopy(template)
    affinity = out.setdefault("spec", {}).setdefault("affinity", {})
    required = affinity.setdefault("podAntiAffinity", {}).setdefault("requiredDuringSchedulingIgnoredDuringExecution", [])
    for term in dedicated_nodes_terms(team_namespaces):
        if term not in required:
            required.append(term)
    return out


__all__ = ["HOSTNAME", "MANAGED_BY_LABEL", "NAMESPACE_NAME_LABEL", "TEAM_LABEL", "apply_isolation",
           "dedicated_nodes_terms"]
