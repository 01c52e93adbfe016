"""Jobs complete through the kwok stages, and the failure annotation fails pods with a reason."""

from __future__ import annotations

import pytest
from kubernetes import client

from dedicated.localcluster.testing import wait_until

pytestmark = pytest.mark.integration

A10 = {"key": "dedicated.dev/pool", "operator": "Equal", "value": "ampere-a10", "effect": "NoSchedule"}


def _job(name: str, annotations: dict[str, str] | None = None) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"dedicated.dev/pool": "ampere-a10"},
                    "tolerations": [A10],
                    "containers": [
                        {
                            "name": "quantize",
                            "image": "registry.example/quantize:1",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
        },
    }


def _condition(job: client.V1Job, kind: str) -> bool:
    return any(c.type == kind and c.status == "True" for c in job.status.conditions or [])


def test_job_pod_completes_and_job_reaches_complete(k8s, namespace: str) -> None:
    batch, core = client.BatchV1Api(k8s), client.CoreV1Api(k8s)
    batch.create_namespaced_job(namespace, _job("ok", {"dedicated.dev/simulate-run-duration": "1s"}))
    wait_until(
        lambda: _condition(batch.read_namespaced_job("ok", namespace), "Complete"), timeout=90, message="Job ok Complete"
    )
    job = batch.read_namespaced_job("ok", namespace)
    assert job.status.succeeded == 1
    (pod,) = core.list_namespaced_pod(namespace, label_selector="job-name=ok").items
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0 and terminated.reason == "Completed"


def test_failure_annotation_fails_the_pod_with_its_message(k8s, namespace: str) -> None:
    batch, core = client.BatchV1Api(k8s), client.CoreV1Api(k8s)
    message = "CUDA out of memory while quantizing layer 17"
    annotations = {"dedicated.dev/simulate-failure": message, "dedicated.dev/simulate-exit-code": "3",
                   "dedicated.dev/simulate-run-duration": "500ms"}
    batch.create_namespaced_job(namespace, _job("boom", annotations))
    wait_until(
        lambda: _condition(batch.read_namespaced_job("boom", namespace), "Failed"),
        timeout=90,
        message="Job boom Failed",
    )
    (pod,) = core.list_namespaced_pod(namespace, label_selector="job-name=boom").items
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason, terminated.message) == (3, "Error", message)


def test_failure_annotation_on_a_restarting_pod_gives_crash_loop(k8s, namespace: str) -> None:
    core = client.CoreV1Api(k8s)
    body = {
        "metadata": {"name": "server", "annotations": {"dedicated.dev/simulate-failure": "model weights not found",
                                                        "dedicated.dev/simulate-run-duration": "200ms"}},
        "spec": {"containers": [{"name": "vllm", "image": "registry.example/vllm:1"}]},
    }
    core.create_namespaced_pod(namespace, body)

    def crashed() -> client.V1ContainerStatus | None:
        status = (core.read_namespaced_pod("server", namespace).status.container_statuses or [None])[0]
        return status if status and status.state.waiting and status.state.waiting.reason == "CrashLoopBackOff" else None

    status = wait_until(crashed, timeout=60, message="container in CrashLoopBackOff")
    assert status.restart_count == 1 and not status.ready
    assert status.last_state.terminated.message == "model weights not found"
    assert status.last_state.terminated.exit_code == 1
    assert core.read_namespaced_pod("server", namespace).status.phase == "Running"


def test_start_delay_annotation_holds_readiness(k8s, namespace: str) -> None:
    core = client.CoreV1Api(k8s)
    body = {
        "metadata": {"name": "slow", "annotations": {"dedicated.dev/simulate-start-delay": "4s"}},
        "spec": {"containers": [{"name": "c", "image": "registry.example/x:1"}]},
    }
    core.create_namespaced_pod(namespace, body)
    wait_until(lambda: core.read_namespaced_pod("slow", namespace).status.pod_ip, timeout=30, message="pod IP")
    assert core.read_namespaced_pod("slow", namespace).status.phase == "Pending"
    wait_until(lambda: core.read_namespaced_pod("slow", namespace).status.phase == "Running", timeout=30, message="Running")
