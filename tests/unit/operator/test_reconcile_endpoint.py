"""The pure DedicatedEndpoint reconciler: objects, conditions, phases and Events for each state.

Inputs are real: profiles of the sparse test checkpoints (conftest ``profiles``), the local
cluster's pools, the real builders. The "live" Deployment is the desired one with the status
fields a Deployment controller would write.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest

from dedicated.operator.api import DedicatedEndpointSpec
from dedicated.operator.builders import resolve_model
from dedicated.operator.images import ImageConfig
from dedicated.operator.reconcile.endpoint import EndpointInput, ModelState, desired_objects, endpoint_status, pod_problem

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def spec(**over) -> DedicatedEndpointSpec:
    raw = {"model": {"volume": {"claimName": "models", "path": "qwen36-humming"}}, "replicas": 2,
           "placement": {"gpuFamilies": ["ampere"]}}
    raw.update(over)
    return DedicatedEndpointSpec.model_validate(raw)


def ok_model(profiles, sp: DedicatedEndpointSpec, variant: str = "humming") -> ModelState:
    profile = profiles[variant]
    return ModelState("pvc://models/qwen36-humming", profile,
                      resolve_model(sp.model, endpoint_name="ep", checkpoint_bytes=profile.parts.total))


def make_input(pools, model: ModelState, sp: DedicatedEndpointSpec, status=None, generation=1, **kw) -> EndpointInput:
    return EndpointInput(name="ep", namespace="ns", uid="uid-1", generation=generation, spec=sp, status=status,
                         model=model, pools=pools, images=ImageConfig(), **kw)


def live(deployment: dict, *, ready: int, updated: int | None = None, total: int | None = None,
         observed: bool = True, rollout_done: bool = True) -> dict:
    """The Deployment as the API would return it after the controller did its work."""
    dep = copy.deepcopy(deployment)
    dep["metadata"]["generation"] = 3
    want = dep["spec"]["replicas"]
    dep["status"] = {"observedGeneration": 3 if observed else 2, "replicas": want if total is None else total,
                     "updatedReplicas": want if updated is None else updated, "readyReplicas": ready,
                     "availableReplicas": ready}
    if rollout_done:
        dep["status"]["conditions"] = [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]
    return dep


def cond(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_plans_and_builds_deployment_and_service(profiles, pools) -> None:
    sp = spec()
    inp = make_input(pools, ok_model(profiles, sp), sp)
    desired = desired_objects(inp)
    dep, svc = desired.objects
    assert dep["kind"] == "Deployment" and svc["kind"] == "Service"
    assert dep["spec"]["replicas"] == 2
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert dep["metadata"]["ownerReferences"][0]["controller"] is True
    assert desired.plan.pool.gpu_family == "ampere"

    status, events = endpoint_status(inp, desired, None, now=T0)
    assert status["phase"] == "Deploying"
    assert cond(status, "ModelReady")["status"] == "True"
    assert cond(status, "Planned")["reason"] == "PlanFound"
    assert cond(status, "Ready") | {} == {**cond(status, "Ready"), "status": "False", "reason": "RollingOut"}
    assert status["plan"]["pool"] == desired.plan.pool.name
    assert status["selector"] == desired.serving.selector and status["url"].startswith("http://ep.ns.svc")
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])
    assert {e.reason for e in events} >= {"ModelResolved", "PlanFound", "RollingOut"}


def test_ready_when_rollout_complete_and_resync_is_a_fixed_point(profiles, pools) -> None:
    sp = spec()
    inp = make_input(pools, ok_model(profiles, sp), sp)
    desired = desired_objects(inp)
    first, _ = endpoint_status(inp, desired, None, now=T0)
    dep = live(desired.objects[0], ready=2)
    second, events = endpoint_status(make_input(pools, inp.model, sp, status=first), desired, dep, now=T1)
    assert second["phase"] == "Ready"
    assert (second["replicas"], second["readyReplicas"]) == (2, 2)
    assert cond(second, "Ready")["status"] == "True" and cond(second, "Ready")["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    # ModelReady did not flip: its transition time is still the first one
    assert cond(second, "ModelReady")["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert [e.reason for e in events] == ["ReplicasReady"]
    # A resync with nothing changed computes the identical status and no Event.
    again = desired_objects(make_input(pools, inp.model, sp, status=second))
    assert again.objects == desired.objects
    third, events = endpoint_status(make_input(pools, inp.model, sp, status=second), again, dep,
                                    now=T1 + timedelta(hours=1))
    assert third == second and events == []


def test_partial_readiness_is_degraded_not_rolling(profiles, pools) -> None:
    sp = spec()
    inp = make_input(pools, ok_model(profiles, sp), sp)
    desired = desired_objects(inp)
    status, _ = endpoint_status(inp, desired, live(desired.objects[0], ready=1), now=T0)
    assert status["phase"] == "Degraded"
    assert cond(status, "Available")["status"] == "True"
    assert cond(status, "Ready")["reason"] == "ReplicasNotReady"
    status, _ = endpoint_status(inp, desired, live(desired.objects[0], ready=0, rollout_done=False), now=T0)
    assert status["phase"] == "Deploying"  # all pods updated, none ready yet: still the rollout
    assert cond(status, "Progressing")["reason"] == "RollingOut"


def test_spec_change_rolls_out(profiles, pools) -> None:
    sp = spec()
    inp = make_input(pools, ok_model(profiles, sp), sp)
    old = desired_objects(inp)
    running = live(old.objects[0], ready=2)
    sp2 = spec(serving={"contextLength": 8192, "concurrency": 4})
    inp2 = make_input(pools, ok_model(profiles, sp2), sp2, generation=2)
    new = desired_objects(inp2)
    assert new.serving.spec_hash != old.serving.spec_hash
    status, _ = endpoint_status(inp2, new, running, now=T0)  # the live one still has the old template
    assert status["phase"] == "Deploying" and cond(status, "Progressing")["reason"] == "RollingOut"
    assert status["observedGeneration"] == 2 and status["plan"]["maxModelLen"] == 8192


def test_scale_to_zero_is_ready_with_nothing_serving(profiles, pools) -> None:
    sp = spec(replicas=0)
    inp = make_input(pools, ok_model(profiles, sp), sp)
    desired = desired_objects(inp)
    assert desired.objects[0]["spec"]["replicas"] == 0
    status, _ = endpoint_status(inp, desired, live(desired.objects[0], ready=0), now=T0)
    assert status["phase"] == "Ready" and cond(status, "Ready")["reason"] == "ScaledToZero"
    assert cond(status, "Available")["status"] == "False"


@pytest.mark.parametrize("placement, reason", [
    ({"pool": "no-such-pool"}, "PoolNotFound"),
    ({"gpuFamilies": ["volta"]}, "NoPoolMatches"),
])
def test_plan_failure_creates_nothing_and_says_why(profiles, pools, placement, reason) -> None:
    sp = spec(placement=placement)
    inp = make_input(pools, ok_model(profiles, sp), sp)
    desired = desired_objects(inp)
    assert desired.objects == () and desired.failure.reason == reason
    status, events = endpoint_status(inp, desired, None, now=T0)
    assert status["phase"] == "Failed"
    assert cond(status, "Planned") | {} == {**cond(status, "Planned"), "status": "False", "reason": reason}
    assert cond(status, "Ready")["reason"] == reason
    assert "plan" not in status and (status["replicas"], status["readyReplicas"]) == (0, 0)
    assert any(e.type == "Warning" and e.reason == reason for e in events)


def test_insufficient_memory_names_the_shortfall(profiles, pools) -> None:
    sp = spec(placement={"pool": "ampere-a10", "gpusPerReplica": 1}, serving={"contextLength": 262144, "concurrency": 64})
    inp = make_input(pools, ok_model(profiles, sp, "bf16"), sp)
    status, _ = endpoint_status(inp, desired_objects(inp), None, now=T0)
    planned = cond(status, "Planned")
    assert planned["reason"] == "InsufficientGPUMemory" and "short by" in planned["message"] and "GiB" in planned["message"]


def test_waiting_for_a_quantized_model_is_not_a_failure(pools) -> None:
    sp = DedicatedEndpointSpec.model_validate({"model": {"quantizedModelRef": {"name": "qm"}}})
    model = ModelState("quantizedmodel/qm", reason="WaitingForQuantizedModel",
                       message="waiting for QuantizedModel qm to succeed (now Quantizing)", waiting=True)
    inp = make_input(pools, model, sp)
    desired = desired_objects(inp)
    assert desired.objects == ()
    status, events = endpoint_status(inp, desired, None, now=T0)
    assert status["phase"] == "WaitingForModel"
    assert cond(status, "ModelReady")["reason"] == "WaitingForQuantizedModel"
    assert cond(status, "Planned")["status"] == "Unknown"
    assert all(e.type == "Normal" for e in events)


def test_failure_after_serving_keeps_the_running_deployment_described(profiles, pools) -> None:
    sp = spec()
    inp = make_input(pools, ok_model(profiles, sp), sp)
    desired = desired_objects(inp)
    running = live(desired.objects[0], ready=2)
    ready_status, _ = endpoint_status(inp, desired, running, now=T0)
    gone = ModelState("quantizedmodel/qm", reason="QuantizedModelNotFound", message="QuantizedModel qm does not exist")
    inp2 = make_input(pools, gone, sp, status=ready_status)
    desired2 = desired_objects(inp2)
    assert desired2.objects == ()  # nothing is applied: the Deployment is left as it is
    status, events = endpoint_status(inp2, desired2, running, now=T1)
    assert status["phase"] == "Degraded" and status["readyReplicas"] == 2
    assert status["plan"] == ready_status["plan"] and status["url"] == ready_status["url"]
    assert cond(status, "Ready")["reason"] == "QuantizedModelNotFound"
    assert any(e.type == "Warning" and e.reason == "QuantizedModelNotFound" for e in events)


def test_pod_annotations_reach_the_template_without_touching_the_hash(profiles, pools) -> None:
    sp = spec()
    plain = desired_objects(make_input(pools, ok_model(profiles, sp), sp))
    extra = {"dedicated.dev/simulate-start-delay": "2s", "prometheus.io/scrape": "true"}
    annotated = desired_objects(make_input(pools, ok_model(profiles, sp), sp, pod_annotations=extra))
    template = annotated.objects[0]["spec"]["template"]["metadata"]["annotations"]
    assert template["prometheus.io/scrape"] == "true"
    assert template["llm.dedicated.dev/spec-hash"] == plain.serving.spec_hash


def test_progress_deadline_exceeded_is_reported(profiles, pools) -> None:
    sp = spec()
    inp = make_input(pools, ok_model(profiles, sp), sp)
    desired = desired_objects(inp)
    dep = live(desired.objects[0], ready=0)
    dep["status"]["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                    "message": 'ReplicaSet "ep-1" has timed out progressing.'}]
    status, _ = endpoint_status(inp, desired, dep, now=T0)
    assert status["phase"] == "Failed" and cond(status, "Ready")["reason"] == "ProgressDeadlineExceeded"


def test_pod_problems_explain_a_stuck_rollout(profiles, pools) -> None:
    sp = spec()
    inp = make_input(pools, ok_model(profiles, sp), sp)
    desired = desired_objects(inp)
    pending = {"metadata": {"name": "ep-1"}, "status": {"conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/18 nodes are available: 3 Insufficient nvidia.com/gpu."}]}}
    crashing = {"metadata": {"name": "ep-2"}, "status": {"containerStatuses": [
        {"name": "vllm", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
         "lastState": {"terminated": {"exitCode": 1, "message": "CUDA out of memory"}}}]}}
    assert pod_problem([]) is None
    reason, message = pod_problem([pending])
    assert reason == "Unschedulable" and "Insufficient nvidia.com/gpu" in message
    reason, message = pod_problem([pending, crashing])
    assert reason == "ContainerFailing" and "ep-2/vllm: CrashLoopBackOff: CUDA out of memory" in message
    dep = live(desired.objects[0], ready=0, rollout_done=False)
    status, events = endpoint_status(inp, desired, dep, now=T0, pods_problem=(reason, message))
    assert status["phase"] == "Failed" and cond(status, "Ready")["reason"] == "ContainerFailing"
    assert any(e.type == "Warning" for e in events)
    status, _ = endpoint_status(inp, desired, dep, now=T0, pods_problem=pod_problem([pending]))
    assert status["phase"] == "Deploying" and cond(status, "Ready")["reason"] == "Unschedulable"
