"""A ResourceQuota on requests.nvidia.com/gpu is enforced by the real API server's admission."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dedicated.localcluster.testing import wait_until

pytestmark = pytest.mark.integration


def _pod(name: str, gpus: int) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"dedicated.dev/pool": "ampere-a100"},
            "tolerations": [{"key": "dedicated.dev/pool", "operator": "Equal", "value": "ampere-a100", "effect": "NoSchedule"}],
            "containers": [
                {
                    "name": "main",
                    "image": "registry.example/quantize:1",
                    "resources": {"requests": {"nvidia.com/gpu": str(gpus)}, "limits": {"nvidia.com/gpu": str(gpus)}},
                }
            ],
        },
    }


def test_gpu_quota_refuses_the_pod_that_exceeds_it(k8s, namespace: str) -> None:
    core = client.CoreV1Api(k8s)
    core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": "team-gpus"}, "spec": {"hard": {"requests.nvidia.com/gpu": "8"}}}
    )
    # Admission only enforces a quota once the quota controller has computed its status.
    wait_until(
        lambda: (core.read_namespaced_resource_quota("team-gpus", namespace).status.hard or {}).get("requests.nvidia.com/gpu"),
        timeout=60,
        message="quota status computed by the controller manager",
    )
    core.create_namespaced_pod(namespace, _pod("first", 6))
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, _pod("second", 4))
    assert refused.value.status == 403
    assert "exceeded quota: team-gpus" in refused.value.body
    assert "requests.nvidia.com/gpu" in refused.value.body
    core.create_namespaced_pod(namespace, _pod("fits", 2))  # exactly up to the limit is allowed
    used = wait_until(
        lambda: (core.read_namespaced_resource_quota("team-gpus", namespace).status.used or {}).get("requests.nvidia.com/gpu") == "8",
        timeout=60,
        message="quota usage 8",
    )
    assert used
