"""Node manifests: GFD labels, pool label and taint, GPU capacity, unique never-routed addresses."""

from __future__ import annotations

import ipaddress

import pytest

from dedicated.localcluster.nodes import GPU_RESOURCE, node_manifests, pool_taints
from dedicated.localcluster.pools import GpuPool, load_pools


def test_every_node_carries_gfd_labels_taint_and_gpu_capacity() -> None:
    pools = load_pools()
    manifests = node_manifests(pools)
    assert len(manifests) == sum(pool.nodes for pool in pools.pools) + pools.system_nodes.nodes
    by_pool = {pool.name: pool for pool in pools.pools}
    system = [n for n in manifests if n["metadata"]["labels"]["dedicated.dev/pool"] == "system"]
    assert len(system) == pools.system_nodes.nodes >= 1
    for node in system:  # no GPU, no taint, no GFD label: where non-GPU pods go
        assert node["spec"]["taints"] == [] and GPU_RESOURCE not in node["status"]["capacity"]
        assert not any(key.startswith("nvidia.com/") for key in node["metadata"]["labels"])
    for node in (n for n in manifests if n not in system):
        labels = node["metadata"]["labels"]
        pool = by_pool[labels["dedicated.dev/pool"]]
        assert node["metadata"]["name"].startswith(pool.name + "-")
        assert labels["nvidia.com/gpu.product"] == pool.gpu_product
        assert labels["nvidia.com/gpu.memory"] == str(pool.gpu_memory_mib)
        assert labels["nvidia.com/gpu.count"] == str(pool.gpus_per_node)
        assert labels["nvidia.com/gpu.family"] == pool.gpu_family
        assert (labels["nvidia.com/gpu.compute.major"], labels["nvidia.com/gpu.compute.minor"]) == tuple(
            pool.compute_capability.split(".")
        )
        assert labels["kubernetes.io/arch"] == pool.node.arch
        assert node["spec"]["taints"] == [{"key": "dedicated.dev/pool", "value": pool.name, "effect": "NoSchedule"}]
        for key in ("capacity", "allocatable"):
            assert node["status"][key][GPU_RESOURCE] == str(pool.gpus_per_node)
            assert node["status"][key]["memory"] == pool.node.memory
        assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
        assert all(isinstance(v, str) for v in labels.values())


def test_addresses_are_unique_and_never_routed() -> None:
    manifests = node_manifests(load_pools())
    ips = [n["status"]["addresses"][0]["address"] for n in manifests]
    cidrs = [n["spec"]["podCIDR"] for n in manifests]
    assert len(set(ips)) == len(ips) and len(set(cidrs)) == len(cidrs)
    bench = ipaddress.ip_network("198.18.0.0/15")
    assert all(ipaddress.ip_address(ip) in bench for ip in ips)
    nets = [ipaddress.ip_network(c) for c in cidrs]
    assert all(net.subnet_of(bench) for net in nets)
    assert not any(ipaddress.ip_address(ip) in net for ip in ips for net in nets), "node IPs outside pod ranges"


def _pool(**changes: object) -> GpuPool:
    base = load_pools().pools[0].model_dump(by_alias=True)
    base.update(changes)
    return GpuPool.model_validate(base)


def test_a_pool_without_a_usable_toleration_cannot_be_simulated() -> None:
    with pytest.raises(ValueError, match="has no toleration"):
        pool_taints(_pool(tolerations=[]))
    with pytest.raises(ValueError, match="needs a key and an effect"):
        pool_taints(_pool(tolerations=[{"key": "dedicated.dev/pool", "operator": "Exists"}]))
