"""Node objects for the simulated GPU pools: what a real GPU node would show the scheduler.

A real node gets its GPU labels from NVIDIA GPU Feature Discovery and its ``nvidia.com/gpu``
capacity from the device plugin; here both are written into the Node at creation, and kwok (which
manages every node carrying ``KWOK_NODE_ANNOTATION``) then keeps the node Ready and runs its pods
through the stages in kwok-stages.yaml.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from dedicated.localcluster.pools import SYSTEM_POOL, GpuPool, NodeShape, PoolFile
from dedicated.localcluster.versions import KUBERNETES_VERSION, KWOK_VERSION

GPU_RESOURCE = "nvidia.com/gpu"
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
POOL_LABEL = "dedicated.dev/pool"  # set on every simulated node, whatever the pool's nodeSelector
NODE_NETWORK = ipaddress.ip_network("198.19.0.0/24")  # node InternalIPs (never routed: RFC 2544)
POD_SUPERNET = ipaddress.ip_network("198.19.0.0/16")  # node n gets 198.19.<n+1>.0/24 for its pods


def gfd_labels(pool: GpuPool) -> dict[str, str]:
    """The GPU Feature Discovery labels a node of this pool carries (values are strings)."""
    return {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": pool.gpu_product,
        "nvidia.com/gpu.memory": str(pool.gpu_memory_mib),
        "nvidia.com/gpu.count": str(pool.gpus_per_node),
        "nvidia.com/gpu.family": pool.gpu_family,
        "nvidia.com/gpu.compute.major": str(pool.compute_major),
        "nvidia.com/gpu.compute.minor": str(pool.compute_minor),
    }


def pool_taints(pool: GpuPool) -> list[dict[str, str]]:
    """One taint per toleration: exactly what the pool's own tolerations let through.

    Why derive taints from tolerations: the file then cannot declare a taint its pods do not
    tolerate, and a pool without a toleration would attract every pod in the cluster.
    """
    if not pool.tolerations:
        raise ValueError(
            f"pool {pool.name!r} has no toleration; a simulated pool needs at least one (with an "
            "effect such as NoSchedule) so its nodes can be tainted"
        )
    taints = []
    for toleration in pool.tolerations:
        if not toleration.key or not toleration.effect:
            raise ValueError(
                f"pool {pool.name!r}: toleration {toleration.as_k8s()} needs a key and an effect "
                "to become the node taint"
            )
        taint = {"key": toleration.key, "effect": toleration.effect}
        if toleration.value:
            taint["value"] = toleration.value
        taints.append(taint)
    return taints


def node_manifest(pool: GpuPool, index: int, ordinal: int) -> dict[str, Any]:
    """The Node object for the ``index``-th node of ``pool``; ``ordinal`` numbers nodes cluster-wide."""
    labels = {**gfd_labels(pool), **pool.node_selector}
    return _node(f"{pool.name}-{index}", pool.name, pool.node, ordinal, labels, pool_taints(pool), pool.gpus_per_node)


def system_node_manifest(shape: NodeShape, index: int, ordinal: int) -> dict[str, Any]:
    """An untainted node without GPUs, for the operator and other non-GPU pods."""
    return _node(f"{SYSTEM_POOL}-{index}", SYSTEM_POOL, shape, ordinal, {}, [], 0)


def _node(
    name: str,
    pool: str,
    shape: NodeShape,
    ordinal: int,
    extra_labels: dict[str, str],
    taints: list[dict[str, str]],
    gpus: int,
) -> dict[str, Any]:
    node_ip = str(NODE_NETWORK.network_address + ordinal + 1)
    pod_cidr = str(list(POD_SUPERNET.subnets(new_prefix=24))[ordinal + 1])
    resources = {
        "cpu": shape.cpu,
        "memory": shape.memory,
        "pods": str(shape.pods),
        "ephemeral-storage": shape.ephemeralStorage,
    }
    if gpus:
        resources[GPU_RESOURCE] = str(gpus)
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": shape.arch,
        "node.kubernetes.io/instance-type": pool,
        "type": "kwok",
        POOL_LABEL: pool,
        **extra_labels,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1],
                "node.alpha.kubernetes.io/ttl": "0",
            },
        },
        "spec": {"taints": taints, "podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        # Nodes may carry status on create; kwok's node stage then adds the conditions.
        "status": {
            "capacity": resources,
            "allocatable": dict(resources),
            "addresses": [
                {"type": "InternalIP", "address": node_ip},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "architecture": shape.arch,
                "operatingSystem": "linux",
                "osImage": "kwok simulated GPU node",
                "kernelVersion": "",
                "kubeletVersion": f"{KUBERNETES_VERSION}-kwok",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": f"kwok://{KWOK_VERSION}",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        },
    }


def node_manifests(pools: PoolFile) -> list[dict[str, Any]]:
    """Every simulated node: the system nodes, then every pool's nodes in file order."""
    manifests = []
    ordinal = 0
    for index in range(pools.system_nodes.nodes):
        manifests.append(system_node_manifest(pools.system_nodes.node, index, ordinal))
        ordinal += 1
    for pool in pools.pools:
        for index in range(pool.nodes):
            manifests.append(node_manifest(pool, index, ordinal))
            ordinal += 1
    return manifests
