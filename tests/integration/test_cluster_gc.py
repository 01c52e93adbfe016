"""The controller manager's deployment, replicaset and garbage-collector controllers really run."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dedicated.localcluster.testing import wait_until

pytestmark = pytest.mark.integration


def test_deployment_creates_pods_and_garbage_collection_removes_them(k8s, namespace: str) -> None:
    apps, core = client.AppsV1Api(k8s), client.CoreV1Api(k8s)
    labels = {"app": "endpoint"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "endpoint"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "registry.example/x:1"}]}},
            },
        },
    )
    wait_until(
        lambda: (apps.read_namespaced_deployment("endpoint", namespace).status.ready_replicas or 0) == 2,
        timeout=90,
        message="2 ready replicas",
    )
    (rs,) = apps.list_namespaced_replica_set(namespace).items
    assert rs.metadata.owner_references[0].kind == "Deployment"
    apps.delete_namespaced_deployment("endpoint", namespace, propagation_policy="Background")
    wait_until(lambda: not apps.list_namespaced_replica_set(namespace).items, timeout=60, message="ReplicaSet collected")
    wait_until(lambda: not core.list_namespaced_pod(namespace).items, timeout=60, message="pods collected")


def test_owner_reference_cascades_to_any_object(k8s, namespace: str) -> None:
    core = client.CoreV1Api(k8s)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "owned", "ownerReferences": [ref]}})
    core.delete_namespaced_config_map("owner", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_config_map("owned", namespace)
        except ApiException as error:
            return error.status == 404
        return False

    wait_until(gone, timeout=60, message="owned ConfigMap garbage-collected")
