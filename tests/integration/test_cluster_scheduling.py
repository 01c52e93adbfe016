"""The real scheduler places GPU pods by the simulated nodes' labels, taints and GPU capacity."""

from __future__ import annotations

import pytest
from kubernetes import client

from dedicated.localcluster.testing import pod_events, wait_until

pytestmark = pytest.mark.integration

POOL_KEY = "dedicated.dev/pool"


def gpu_pod(name: str, gpus: int, pool: str | None, tolerate: str | None, **extra: object) -> dict:
    spec: dict = {
        "containers": [
            {
                "name": "main",
                "image": "registry.example/serve:1",
                "resources": {"requests": {"nvidia.com/gpu": str(gpus)}, "limits": {"nvidia.com/gpu": str(gpus)}},
            }
        ],
        **extra,
    }
    if pool:
        spec["nodeSelector"] = {POOL_KEY: pool}
    if tolerate:
        spec["tolerations"] = [{"key": POOL_KEY, "operator": "Equal", "value": tolerate, "effect": "NoSchedule"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def _ready(pod: client.V1Pod) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
    )


def _ready_pod(core: client.CoreV1Api, name: str, namespace: str) -> client.V1Pod | None:
    pod = core.read_namespaced_pod(name, namespace)
    return pod if _ready(pod) else None


def test_eight_gpu_pod_lands_on_a_hopper_node_and_runs(k8s, namespace: str) -> None:
    core = client.CoreV1Api(k8s)
    core.create_namespaced_pod(namespace, gpu_pod("h100", 8, "hopper-h100", "hopper-h100"))
    pod = wait_until(
        lambda: _ready_pod(core, "h100", namespace),
        timeout=60,
        message="pod h100 Running and Ready",
    )
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.family"] == "hopper"
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert pod.status.pod_ip and pod.status.host_ip
    assert all(s.ready and s.state.running for s in pod.status.container_statuses)


def test_gpu_capacity_is_accounted_per_node(k8s, namespace: str) -> None:
    """Four 8-GPU pods on a pool of three 8-GPU nodes: three run on distinct nodes, one waits."""
    core = client.CoreV1Api(k8s)
    pool = "hopper-h200"
    nodes = core.list_node(label_selector=f"{POOL_KEY}={pool}").items
    assert len(nodes) == 3
    for i in range(len(nodes) + 1):
        core.create_namespaced_pod(namespace, gpu_pod(f"big-{i}", 8, pool, pool))

    def placed() -> list[client.V1Pod] | None:
        pods = core.list_namespaced_pod(namespace).items
        running = [p for p in pods if p.spec.node_name]
        return pods if len(running) == len(nodes) and all(_ready(p) for p in running) else None

    pods = wait_until(placed, timeout=60, message="three pods placed and ready")
    assert len({p.spec.node_name for p in pods if p.spec.node_name}) == len(nodes)
    waiting = [p for p in pods if not p.spec.node_name]
    assert len(waiting) == 1
    events = wait_until(
        lambda: [e for e in pod_events(core, namespace, waiting[0].metadata.name) if e.reason == "FailedScheduling"],
        timeout=30,
        message="a FailedScheduling event for the fourth pod",
    )
    assert "Insufficient nvidia.com/gpu" in events[-1].message


def test_pod_that_fits_nowhere_stays_pending_with_failed_scheduling(k8s, namespace: str) -> None:
    core = client.CoreV1Api(k8s)
    # 16 GPUs: more than any node has, even with a toleration for every pool.
    everything = [{"key": POOL_KEY, "operator": "Exists", "effect": "NoSchedule"}]
    core.create_namespaced_pod(namespace, gpu_pod("huge", 16, None, None, tolerations=everything))
    events = wait_until(
        lambda: [e for e in pod_events(core, namespace, "huge") if e.reason == "FailedScheduling"],
        timeout=30,
        message="FailedScheduling event for pod huge",
    )
    assert "Insufficient nvidia.com/gpu" in events[-1].message

    # The scheduler records the event and the pod's condition in separate writes: wait for the
    # condition rather than read the pod once (it was still unset in one CI run).
    def unschedulable():
        pod = core.read_namespaced_pod("huge", namespace)
        conds = pod.status.conditions or []
        return pod if any(c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
                          for c in conds) else None

    pod = wait_until(unschedulable, timeout=30, message="PodScheduled=False (Unschedulable) on pod huge")
    assert pod.status.phase == "Pending" and not pod.spec.node_name


def test_taints_keep_pods_without_the_toleration_off_a_pool(k8s, namespace: str) -> None:
    core = client.CoreV1Api(k8s)
    core.create_namespaced_pod(namespace, gpu_pod("no-toleration", 1, "hopper-h100", None))
    events = wait_until(
        lambda: [e for e in pod_events(core, namespace, "no-toleration") if e.reason == "FailedScheduling"],
        timeout=30,
        message="FailedScheduling event for pod no-toleration",
    )
    assert "untolerated taint" in events[-1].message
    assert not core.read_namespaced_pod("no-toleration", namespace).spec.node_name


def test_pods_without_gpus_run_on_the_system_nodes(k8s, namespace: str) -> None:
    core = client.CoreV1Api(k8s)
    body = {"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "c", "image": "registry.example/x:1"}]}}
    core.create_namespaced_pod(namespace, body)
    pod = wait_until(
        lambda: _ready_pod(core, "plain", namespace),
        timeout=60,
        message="pod plain Running and Ready",
    )
    assert core.read_node(pod.spec.node_name).metadata.labels[POOL_KEY] == "system"


def test_gb10_pod_selected_by_gfd_labels(k8s, namespace: str) -> None:
    """Placement by GFD labels alone (compute capability 12.1), as the operator will do it."""
    core = client.CoreV1Api(k8s)
    body = gpu_pod("spark", 1, None, "blackwell-gb10")
    body["spec"]["nodeSelector"] = {"nvidia.com/gpu.compute.major": "12", "nvidia.com/gpu.compute.minor": "1"}
    core.create_namespaced_pod(namespace, body)
    pod = wait_until(
        lambda: _ready_pod(core, "spark", namespace),
        timeout=60,
        message="pod spark Running and Ready",
    )
    labels = core.read_node(pod.spec.node_name).metadata.labels
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-GB10" and labels["kubernetes.io/arch"] == "arm64"
