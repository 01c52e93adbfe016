"""Single-tenant placement: every pod the operator makes carries its namespace as a label, and an
endpoint with ``spec.placement.isolation: dedicated-nodes`` gets a required pod anti-affinity
that keeps every pod of another team off the nodes its pods run on.

A team is a set of namespaces: the GPUQuota that governs the endpoint's namespace, or the
namespace alone when no quota does. The term selects, in all namespaces, pods whose
``llm.dedicated.dev/namespace`` label names a namespace outside the team. It is written on pod
labels on purpose. The first version used ``namespaceSelector`` with ``kubernetes.io/metadata.name
NotIn <team namespaces>``; on the local cluster (kube-scheduler v1.36.3) such a term also refused
nodes whose only matching pods were in the excluded namespaces (a probe pod with that term and
nothing else stayed Pending next to a pod of an excluded namespace, while the same term with
``In <other namespace>`` or an explicit ``namespaces`` list behaved), so the team's own second
endpoint could never join its dedicated nodes. Pod labels avoid namespace-label lookups entirely
(``namespaceSelector: {}`` means all namespaces). The label never changes for a pod, so quota
changes never roll out endpoints; only a dedicated endpoint's own term changes when its team's
namespaces do.

Why anti-affinity rather than the operator tainting and labelling nodes: the scheduler enforces
it itself, atomically with placement, and in both directions (a required anti-affinity term of a
pod already on a node also refuses newcomers that match it); nothing needs cleaning up when the
endpoint goes away; the operator needs no write access to nodes (its ClusterRole only reads
them). A node belongs to a team exactly as long as that team's dedicated pods run on it.

What it does not cover: pods without the label (DaemonSets such as the NVIDIA device plugin,
other controllers' pods). Other workloads opt in by carrying ``llm.dedicated.dev/namespace:
<their namespace>``. It is a placement guarantee for the workloads of cooperating teams, not a
security boundary against someone who may create arbitrary pods with the GPU pools' tolerations
(docs/operations.md says how to close that with an admission policy).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from ..api.crd import GROUP
from ..api.endpoint import Isolation

#: The namespace of the workload, on every pod the operator makes (serving and quantization).
NAMESPACE_LABEL = f"{GROUP}/namespace"
#: Set on DedicatedEndpoints and QuantizedModels by the mutating webhook (informational).
TEAM_LABEL = f"{GROUP}/team"
HOSTNAME = "kubernetes.io/hostname"


def namespace_labels(namespace: str) -> dict[str, str]:
    return {NAMESPACE_LABEL: namespace}


def dedicated_nodes_term(team_namespaces: Iterable[str]) -> dict[str, Any]:
    """The required anti-affinity term: no labelled pod of a namespace outside the team on the node."""
    namespaces = sorted(set(team_namespaces))
    if not namespaces:
        raise ValueError("dedicated-nodes isolation needs the team's namespaces")
    return {
        "labelSelector": {"matchExpressions": [
            {"key": NAMESPACE_LABEL, "operator": "Exists"},
            {"key": NAMESPACE_LABEL, "operator": "NotIn", "values": namespaces},
        ]},
        "namespaceSelector": {},
        "topologyKey": HOSTNAME,
    }


def apply_isolation(template: dict[str, Any], namespace: str, team_namespaces: Iterable[str] | None,
                    isolation: Isolation | str = Isolation.SHARED) -> dict[str, Any]:
    """A copy of the pod ``template`` with the namespace label and, for ``dedicated-nodes``, the
    anti-affinity term added to whatever affinity it already has."""
    isolation = Isolation(isolation)
    out = copy.deepcopy(template)
    meta = out.setdefault("metadata", {})
    meta["labels"] = dict(sorted({**(meta.get("labels") or {}), **namespace_labels(namespace)}.items()))
    if isolation == Isolation.DEDICATED_NODES:
        team = set(team_namespaces or ()) | {namespace}
        affinity = out.setdefault("spec", {}).setdefault("affinity", {})
        anti = affinity.setdefault("podAntiAffinity", {})
        required = anti.setdefault("requiredDuringSchedulingIgnoredDuringExecution", [])
        term = dedicated_nodes_term(team)
        if term not in required:
            required.append(term)
    return out


__all__ = ["HOSTNAME", "NAMESPACE_LABEL", "TEAM_LABEL", "apply_isolation", "dedicated_nodes_term", "namespace_labels"]
