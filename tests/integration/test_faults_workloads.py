"""Faults in the world around the operator: quantize pods that fail, get evicted or run past their
deadline; Deployments and Services deleted behind its back; a QuantizedModel deleted while an
endpoint serves it.

Each test runs the real operator process against the local cluster and checks, afterwards: no
duplicate Jobs, pods or objects, no orphans, status true to the world, and an Event that tells
the user what happened. Quantize pods are simulated by kwok (no container runs here): its failure
annotations make a pod fail with a chosen termination message and exit code, exactly as the
quantize program would (`<Reason>: <message>`, exit 2 for bad input). Where a test needs a
*successful* quantization it writes the program's result annotation on the Job itself (the same
API write the program makes) and says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import world as W  # noqa: E402
from support.fixtures import *  # noqa: E402,F403
from support.fixtures import wait_for, wait_ready_endpoints  # noqa: E402

pytestmark = pytest.mark.integration


def _job_of(world: W.World, qm: str) -> dict:
    return wait_for(lambda: next((j for j in world.jobs() if j["metadata"]["name"].startswith(f"{qm}-quantize-")), None),
                    60, f"the Job of {qm}")


def _running_pod(world: W.World, job: str) -> dict:
    return wait_for(lambda: next((p for p in world.pods(f"batch.kubernetes.io/job-name={job}")
                                  if (p.get("status") or {}).get("phase") == "Running"
                                  and not p["metadata"].get("deletionTimestamp")), None), 60, f"a running pod of {job}")


def _failed_with(world: W.World, qm: str, reason: str, timeout: float = 90.0) -> dict:
    def probe():
        q = world.get_qm(qm)
        return q if W.phase(q) == "Failed" and W.condition(q, "Ready").get("reason") == reason else None

    return wait_for(probe, timeout, lambda: f"{qm} Failed/{reason}, now {world.get_qm(qm).get('status')}")


def test_quantize_pod_fails_with_input_error(world, start_operator) -> None:
    """Exit code 2 with `NoExperts: ...`: the Job fails at once (podFailurePolicy), no retry pod,
    and the model says NoExperts with the program's message."""
    op = start_operator(world.ns)
    message = "NoExperts: base model has no routed experts (mlp.experts.*); quantize dense layers instead"
    world.create(W.quantized_model("qfail", backoff_limit=3, pod_annotations={
        "dedicated.dev/simulate-failure": message, "dedicated.dev/simulate-exit-code": "2",
        "dedicated.dev/simulate-run-duration": "1s"}))
    qm = _failed_with(world, "qfail", "NoExperts")
    assert "no routed experts" in W.condition(qm, "Ready")["message"]
    job = _job_of(world, "qfail")
    assert len(world.pods(f"batch.kubernetes.io/job-name={job['metadata']['name']}")) == 1, \
        "an input error must not be retried (backoffLimit 3, exit code 2)"
    warnings = [e for e in world.events("qfail") if e["type"] == "Warning"]
    assert any(e["reason"] == "NoExperts" and "no routed experts" in e["message"] for e in warnings), warnings
    assert W.check_models(world) == []
    assert op.crash_lines() == []


def test_quantize_pod_crash_is_retried_then_reported(world, start_operator) -> None:
    """A crash (exit 1) is a real fault: retried up to backoffLimit, then JobFailed with the message."""
    op = start_operator(world.ns)
    world.create(W.quantized_model("qcrash", backoff_limit=1, pod_annotations={
        "dedicated.dev/simulate-failure": "CUDA error: an illegal memory access was encountered",
        "dedicated.dev/simulate-run-duration": "1s"}))
    qm = _failed_with(world, "qcrash", "JobFailed", timeout=120)
    assert "illegal memory access" in W.condition(qm, "Ready")["message"]
    job = _job_of(world, "qcrash")
    assert len(world.pods(f"batch.kubernetes.io/job-name={job['metadata']['name']}")) == 2  # 1 + backoffLimit
    assert len(world.jobs()) == 1
    assert W.check_models(world) == []
    assert op.crash_lines() == []


def test_evicted_quantize_pod_is_replaced_without_failing_the_model(world, start_operator) -> None:
    op = start_operator(world.ns)
    world.create(W.quantized_model("qevict", backoff_limit=0, pod_annotations=W.LONG_RUNNING))
    job = _job_of(world, "qevict")
    jname = job["metadata"]["name"]
    pod = _running_pod(world, jname)
    world.core.create_namespaced_pod_eviction(pod["metadata"]["name"], world.ns, {
        "apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": pod["metadata"]["name"], "namespace": world.ns}})
    new = wait_for(lambda: next((p for p in world.pods(f"batch.kubernetes.io/job-name={jname}")
                                 if p["metadata"]["uid"] != pod["metadata"]["uid"]
                                 and (p.get("status") or {}).get("phase") == "Running"), None), 90,
                   "a replacement pod after the eviction")
    assert new
    live = world.batch.read_namespaced_job(jname, world.ns)
    assert not (live.status.failed or 0), "an eviction counted against backoffLimit 0"
    qm = world.get_qm("qevict")
    assert W.phase(qm) in ("Pending", "Quantizing"), qm.get("status")
    assert len(world.jobs()) == 1

    world.report_result(jname)  # the program finishing on the replacement pod (simulated: see module doc)
    wait_for(lambda: W.phase(world.get_qm("qevict")) == "Succeeded", 60, "qevict Succeeded")
    assert len(world.jobs()) == 1 and W.check_models(world) == []
    assert op.crash_lines() == []


def test_quantize_job_past_its_deadline(world, start_operator) -> None:
    """The CRD's smallest deadline is 10 minutes; the Job's own activeDeadlineSeconds is mutable,
    so the test shortens it on the live Job: the Job controller then fails it as it would."""
    op = start_operator(world.ns)
    world.create(W.quantized_model("qlate", pod_annotations=W.LONG_RUNNING))
    jname = _job_of(world, "qlate")["metadata"]["name"]
    _running_pod(world, jname)
    world.batch.patch_namespaced_job(jname, world.ns, {"spec": {"activeDeadlineSeconds": 1}})
    qm = _failed_with(world, "qlate", "DeadlineExceeded")
    assert "activeDeadlineSeconds" in W.condition(qm, "Ready")["message"]
    assert any(e["reason"] == "DeadlineExceeded" and e["type"] == "Warning" for e in world.events("qlate"))
    # no second Job: a failed generation is final until the spec changes
    assert [j["metadata"]["name"] for j in world.jobs()] == [jname]
    assert W.check_models(world) == []
    assert op.crash_lines() == []


def test_deployment_and_service_deleted_behind_the_operators_back(world, start_operator) -> None:
    op = start_operator(world.ns)
    world.create(W.endpoint("eb", replicas=2))
    wait_ready_endpoints(world, ["eb"])
    dep = world.apps.read_namespaced_deployment("eb", world.ns)
    applied_before = world.event_reasons("eb").count("Applied")

    world.apps.delete_namespaced_deployment("eb", world.ns)
    wait_for(lambda: any(d["metadata"]["uid"] != dep.metadata.uid for d in world.deployments()), 60,
             "a new Deployment for eb")
    wait_ready_endpoints(world, ["eb"])
    assert world.event_reasons("eb").count("Applied") > applied_before, "the user was not told of the re-apply"

    svc = world.core.read_namespaced_service("eb", world.ns)
    world.core.delete_namespaced_service("eb", world.ns)
    wait_for(lambda: any(s["metadata"]["name"] == "eb" and s["metadata"]["uid"] != svc.metadata.uid
                         for s in world.services()), 60, "a new Service for eb")
    wait_ready_endpoints(world, ["eb"])
    wait_for(lambda: not W.check_all(world), 60, lambda: str(W.check_all(world)))
    assert len(world.deployments()) == 1
    assert op.crash_lines() == []


def test_quantized_model_deleted_while_an_endpoint_serves_it(world, start_operator) -> None:
    op = start_operator(world.ns)
    world.create(W.quantized_model("qsrc", pod_annotations=W.LONG_RUNNING))
    world.create(W.endpoint("eq", qm="qsrc"))
    wait_for(lambda: W.phase(world.get_ep("eq")) == "WaitingForModel", 60, "eq WaitingForModel")
    assert W.condition(world.get_ep("eq"), "ModelReady").get("reason") == "WaitingForQuantizedModel"
    assert world.deployments() == [], "nothing may be deployed before the model succeeded"

    world.report_result(_job_of(world, "qsrc")["metadata"]["name"])  # simulated program success
    wait_ready_endpoints(world, ["eq"])
    dep_uid = world.apps.read_namespaced_deployment("eq", world.ns).metadata.uid

    world.delete("quantizedmodels", "qsrc")

    def told() -> dict | None:
        ep = world.get_ep("eq")
        return ep if W.condition(ep, "Ready").get("reason") == "QuantizedModelNotFound" else None

    ep = wait_for(told, 60, lambda: f"eq status after the delete: {world.get_ep('eq').get('status')}")
    assert W.phase(ep) == "Degraded", "a serving endpoint whose model vanished keeps serving, degraded"
    assert W.condition(ep, "Available").get("status") == "True"
    assert world.apps.read_namespaced_deployment("eq", world.ns).metadata.uid == dep_uid, "serving was disrupted"
    assert any(e["reason"] == "QuantizedModelNotFound" and e["type"] == "Warning" for e in world.events("eq"))
    # the model's Job, ConfigMap, ServiceAccount, Role and RoleBinding go with it (owner references)
    wait_for(lambda: not any(world.job_objects().values()), 90,
             lambda: f"leftovers: { {k: [o['metadata']['name'] for o in v] for k, v in world.job_objects().items()} }")
    assert W.check_all(world) == []
    assert op.crash_lines() == []
