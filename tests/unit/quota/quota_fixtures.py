"""Shared builders for the quota tests: a small pool configuration, nodes, quotas and claims."""

from __future__ import annotations

import itertools
from typing import Any


from dedicated.operator.api.gpuquota import GPUQuotaSpec
from dedicated.operator.pools import parse_pools
from dedicated.operator.quota import Claim, QuotaView, World, pool_capacity, resolve_teams

POOLS = parse_pools({"pools": [
    {"name": "hopper-h100", "gpuFamily": "hopper", "gpuProduct": "NVIDIA-H100-80GB-HBM3", "gpuMemoryMiB": 81559,
     "gpusPerNode": 8, "computeCapability": "9.0", "costPerGpuHour": 2.5,
     "nodeSelector": {"dedicated.dev/pool": "hopper-h100"}},
    {"name": "hopper-h200", "gpuFamily": "hopper", "gpuProduct": "NVIDIA-H200", "gpuMemoryMiB": 143771,
     "gpusPerNode": 8, "computeCapability": "9.0", "costPerGpuHour": 3.5,
     "nodeSelector": {"dedicated.dev/pool": "hopper-h200"}},
    {"name": "ampere-a100", "gpuFamily": "ampere", "gpuProduct": "NVIDIA-A100-SXM4-80GB", "gpuMemoryMiB": 81920,
     "gpusPerNode": 8, "computeCapability": "8.0", "costPerGpuHour": 1.8,
     "nodeSelector": {"dedicated.dev/pool": "ampere-a100"}},
]})
FAMILY = {p.name: p.gpu_family for p in POOLS.pools}
_uids = itertools.count(1)


def node(pool: str, i: int, gpus: int = 8, unschedulable: bool = False) -> dict[str, Any]:
    return {"metadata": {"name": f"{pool}-{i}", "labels": {"dedicated.dev/pool": pool}},
            "spec": {"unschedulable": True} if unschedulable else {},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}}}


def nodes(**per_pool: int) -> list[dict[str, Any]]:
    """``nodes(hopper_h100=3)``: that many 8-GPU nodes per pool."""
    return [node(pool.replace("_", "-"), i) for pool, n in per_pool.items() for i in range(n)]


def quota(name: str, *limits: dict[str, Any], names: list[str] | None = None, selector: dict | None = None,
          created: str = "2026-01-01T00:00:00Z", **extra: Any) -> QuotaView:
    ns: dict[str, Any] = {}
    if names is not None:
        ns["names"] = names
    if selector is not None:
        ns["selector"] = selector
    if not ns:
        ns["names"] = [name]
    spec = GPUQuotaSpec.model_validate({"namespaces": ns, "limits": list(limits), **extra})
    return QuotaView(name=name, spec=spec, created=created)


def claim(namespace: str, pool: str, gpus: int, *, uid: str | None = None, name: str | None = None,
          kind: str = "DedicatedEndpoint") -> Claim:
    uid = uid or f"uid-{next(_uids)}"
    return Claim(uid=uid, kind=kind, namespace=namespace, name=name or uid, pool=pool, family=FAMILY[pool], gpus=gpus)


def world(quotas: list[QuotaView], claims: list[Claim] = (), node_list: list[dict] | None = None,
          namespaces: dict[str, dict[str, str]] | None = None) -> World:
    node_list = nodes(hopper_h100=3, hopper_h200=1, ampere_a100=2) if node_list is None else node_list
    namespaces = namespaces if namespaces is not None else {}
    teams = resolve_teams(quotas, namespaces)
    return World(pools=POOLS, capacity=pool_capacity(POOLS, node_list), quotas={q.name: q for q in quotas},
                 teams=teams, claims={c.uid: c for c in claims})



