"""DedicatedEndpoint: (spec + what the handler observed) -> objects to apply + status + Events.

Pure: no API calls, no clock except the ``now`` passed in. The handler reads the endpoint, the
model facts and the live Deployment, calls ``desired_objects``, applies what changed, then calls
``endpoint_status`` with the Deployment as it is after the apply.

Rules worth knowing (docs/operations.md has the table of conditions):

* Nothing is created before the model is known and a plan fits: a model that is missing,
  unreadable or still being quantized, and a plan that fits nowhere, are conditions with a
  specific reason; no Deployment means no Pending pod.
* A failure *after* the endpoint was serving (the QuantizedModel was deleted, the pool was removed
  from the configuration, a spec change that does not fit) leaves the running Deployment as it is:
  the status says why nothing new was rolled out, and what still serves is reported truthfully.
* ``status.replicas``/``readyReplicas`` come from the Deployment, ``status.selector`` from the
  builders, so ``kubectl scale`` and HPAs see the truth through the scale subresource.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..api.conditions import ConditionStatus
from ..api.endpoint import DedicatedEndpointSpec, EndpointConditionType as C, EndpointPhase, EndpointReason as R
from ..builders import SPEC_HASH_ANNOTATION, Owner, ServingObjects, build_serving
from ..builders.model_source import ResolvedModel
from ..images import ImageConfig
from ..pools import PoolConfig
from ..vram.errors import PlanFailure
from ..vram.planner import Plan, plan_endpoint
from ..vram.profile import ModelProfile
from .common import EventSpec, Want, apply_conditions, condition_dicts, stored_conditions, transition_events

#: Reasons that mean "a person has to act": Warning Events, phase Failed.
FAILURE_REASONS = frozenset({
    R.QUANTIZED_MODEL_FAILED, R.QUANTIZED_MODEL_NOT_FOUND, R.MODEL_NOT_FOUND, R.CONFIG_UNREADABLE,
    R.SECRET_NOT_FOUND, R.POOL_NOT_FOUND, R.NO_POOL_MATCHES, R.INSUFFICIENT_GPU_MEMORY,
    R.UNSUPPORTED_COMPUTE_CAPABILITY, R.INCOMPATIBLE_TENSOR_PARALLEL, R.CONTEXT_TOO_LONG,
    R.FEATURE_UNAVAILABLE, R.UNSUPPORTED_MODEL, "Unschedulable", "ContainerFailing", "ProgressDeadlineExceeded",
    "QuotaExceeded", "ReservedForOtherTeams", "PoolNotInQuota",  # GPU quota refusals (issue 8)
})
#: Condition type of the GPU quota admission (issue 8): present once a GPUQuota is involved.
QUOTA_ADMITTED = "QuotaAdmitted"
#: Reason of Progressing/Ready when the Deployment reports ProgressDeadlineExceeded.
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
EVENT_CONDITIONS = (C.MODEL_READY.value, C.PLANNED.value, C.READY.value)
#: Annotation on the endpoint whose JSON object is added to the serving pods' annotations
#: (e.g. monitoring scrape hints; on the local cluster, the kwok simulation knobs).
POD_ANNOTATIONS_ANNOTATION = "llm.dedicated.dev/pod-annotations"


@dataclass(frozen=True)
class ModelState:
    """What the handler found out about ``spec.model`` (all I/O happened before)."""

    display: str
    profile: ModelProfile | None = None
    resolved: ResolvedModel | None = None
    reason: str | None = None  # set when the model is not usable (yet)
    message: str = ""
    waiting: bool = False  # waiting for a QuantizedModel: not a failure

    @property
    def ok(self) -> bool:
        return self.profile is not None and self.resolved is not None and self.reason is None


@dataclass(frozen=True)
class EndpointInput:
    name: str
    namespace: str
    uid: str
    generation: int
    spec: DedicatedEndpointSpec
    status: Mapping[str, Any] | None
    model: ModelState
    pools: PoolConfig
    images: ImageConfig
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    api_version: str = "llm.dedicated.dev/v1alpha1"
    #: Issue 8: the namespaces of the endpoint's team (dedicated-nodes isolation) and the GPU quota
    #: decision (handlers.quota.QuotaGate.admit_endpoint; None: no GPUQuota involved).
    team_namespaces: tuple[str, ...] | None = None
    quota: Any = None


@dataclass(frozen=True)
class Desired:
    """The outcome of planning: objects to apply (possibly none) and why."""

    objects: tuple[dict[str, Any], ...] = ()
    serving: ServingObjects | None = None
    plan: Plan | None = None
    failure: PlanFailure | None = None


def desired_objects(inp: EndpointInput) -> Desired:
    """Plan and build; no objects when the model is not usable or no plan fits."""
    if not inp.model.ok:
        return Desired()
    assert inp.model.profile is not None and inp.model.resolved is not None
    result = plan_endpoint(inp.spec, inp.model.profile, inp.pools)
    if isinstance(result, PlanFailure):
        return Desired(failure=result)
    owner = Owner(name=inp.name, uid=inp.uid, api_version=inp.api_version)
    serving = build_serving(inp.name, inp.namespace, inp.spec, result, inp.model.resolved, inp.images, owner,
                            team_namespaces=inp.team_namespaces)
    deployment = serving.deployment
    if inp.pod_annotations:
        template_meta = deployment["spec"]["template"]["metadata"]
        extra = {k: v for k, v in inp.pod_annotations.items() if k != SPEC_HASH_ANNOTATION}
        template_meta["annotations"] = dict(sorted({**extra, **template_meta.get("annotations", {})}.items()))
    return Desired(objects=(deployment, serving.service), serving=serving, plan=result)


def _deployment_facts(dep: Mapping[str, Any] | None) -> dict[str, Any]:
    if dep is None:
        return {}
    status = dep.get("status") or {}
    spec = dep.get("spec") or {}
    progressing = next((c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), None)
    return {
        "want": int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1),
        "observed": (status.get("observedGeneration") or 0) >= (dep.get("metadata", {}).get("generation") or 0),
        "replicas": int(status.get("replicas") or 0),
        "updated": int(status.get("updatedReplicas") or 0),
        "ready": int(status.get("readyReplicas") or 0),
        "available": int(status.get("availableReplicas") or 0),
        "hash": ((spec.get("template") or {}).get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION),
        # The Deployment controller's own verdict: NewReplicaSetAvailable once a rollout finished.
        "rollout_done": progressing is not None and progressing.get("reason") == "NewReplicaSetAvailable",
        "deadline": progressing is not None and progressing.get("reason") == "ProgressDeadlineExceeded",
        "deadline_message": (progressing or {}).get("message", ""),
    }


#: Reasons derived from the serving pods while a rollout is not complete.
UNSCHEDULABLE = "Unschedulable"
CONTAINER_FAILING = "ContainerFailing"


def pod_problem(pods: list[Mapping[str, Any]]) -> tuple[str, str] | None:
    """Why serving pods do not become ready, as (reason, message): the scheduler cannot place them
    (no free GPUs of the planned kind), or a container keeps failing (with its termination
    message). ``None`` when nothing is wrong beyond waiting."""
    unschedulable = []
    failing = []
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                unschedulable.append(f"{name}: {c.get('message', '')}".strip())
        statuses = (pod.get("status") or {}).get("initContainerStatuses") or []
        statuses += (pod.get("status") or {}).get("containerStatuses") or []
        for cs in statuses:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in ("CrashLoopBackOff", "CreateContainerConfigError", "ImagePullBackOff",
                                         "ErrImagePull", "CreateContainerError"):
                last = ((cs.get("lastState") or {}).get("terminated") or {}).get("message") or waiting.get("message") or ""
                failing.append(f"{name}/{cs.get('name')}: {waiting['reason']}" + (f": {last.strip()}" if last else ""))
    if failing:
        return CONTAINER_FAILING, "; ".join(sorted(failing))[:2048]
    if unschedulable:
        return UNSCHEDULABLE, "; ".join(sorted(unschedulable))[:2048]
    return None


def _model_wants(model: ModelState) -> list[Want]:
    if model.ok:
        return [Want(C.MODEL_READY, True, R.MODEL_RESOLVED, model.message or f"serving {model.display}")]
    reason = model.reason or R.MODEL_NOT_FOUND
    return [Want(C.MODEL_READY, False, reason, model.message),
            Want(C.PLANNED, ConditionStatus.UNKNOWN, reason, "waiting for the model before planning")]


def endpoint_status(inp: EndpointInput, desired: Desired, deployment: Mapping[str, Any] | None,
                    *, now: datetime | None = None,
                    pods_problem: tuple[str, str] | None = None) -> tuple[dict[str, Any], list[EventSpec]]:
    """The status to store and the Events its transitions deserve.

    ``deployment`` is the live Deployment after any apply (or ``None``): a Deployment applied
    moments ago reports the previous generation until its controller catches up, which reads as
    "rolling out", exactly what it is.
    """
    old_status = dict(inp.status or {})
    old_conditions = stored_conditions(old_status)
    d = _deployment_facts(deployment)
    wants: list[Want] = _model_wants(inp.model)
    blocked = None  # why nothing new can be rolled out
    if not inp.model.ok:
        blocked = (inp.model.reason or R.MODEL_NOT_FOUND, inp.model.message)
    elif desired.failure is not None:
        f = desired.failure
        wants.append(Want(C.PLANNED, False, f.reason, f.message))
        blocked = (f.reason.value if hasattr(f.reason, "value") else str(f.reason), f.message)
    else:
        assert desired.plan is not None
        wants.append(Want(C.PLANNED, True, R.PLAN_FOUND, desired.plan.explanation[:4096]))
    quota_blocked = False
    if inp.quota is not None and desired.plan is not None:  # GPU quota admission (issue 8)
        wants.append(Want(QUOTA_ADMITTED, inp.quota.admitted, inp.quota.reason, inp.quota.message[:4096]))
        if not inp.quota.admitted and blocked is None:
            blocked, quota_blocked = (inp.quota.reason, inp.quota.message), True

    want_replicas = inp.spec.replicas
    current = desired.serving is not None and d and d["hash"] == desired.serving.spec_hash
    complete = bool(d) and current and d["observed"] and d["updated"] == want_replicas and \
        d["replicas"] == want_replicas and d["available"] >= want_replicas and d["ready"] >= want_replicas
    serving_now = d.get("available", 0) if d else 0

    if blocked is not None:
        reason, message = blocked
        if d:
            note = f"the existing Deployment keeps serving its previous configuration ({serving_now} available)"
            wants += [Want(C.PROGRESSING, False, reason, note),
                      Want(C.AVAILABLE, serving_now > 0, R.REPLICAS_READY if serving_now else R.REPLICAS_NOT_READY,
                           f"{serving_now}/{d['want']} replicas available"),
                      Want(C.READY, False, reason, message)]
        else:
            wants += [Want(C.PROGRESSING, False, reason, "nothing deployed"),
                      Want(C.AVAILABLE, False, reason, "nothing deployed"),
                      Want(C.READY, False, reason, message)]
        phase = EndpointPhase.DEGRADED if serving_now else \
            EndpointPhase.WAITING_FOR_MODEL if inp.model.waiting else \
            EndpointPhase.PENDING if quota_blocked else EndpointPhase.FAILED
    else:
        counts = f"{d.get('ready', 0)}/{want_replicas} ready, {d.get('updated', 0)} updated" if d else "creating"
        if want_replicas == 0 and complete:
            wants += [Want(C.PROGRESSING, False, R.SCALED_TO_ZERO, "scaled to zero replicas"),
                      Want(C.AVAILABLE, False, R.SCALED_TO_ZERO, "scaled to zero replicas"),
                      Want(C.READY, True, R.SCALED_TO_ZERO, "scaled to zero replicas: nothing to serve")]
            phase = EndpointPhase.READY
        elif complete:
            wants += [Want(C.PROGRESSING, False, R.ROLLOUT_COMPLETE, f"{want_replicas} replica(s) serve the current spec"),
                      Want(C.AVAILABLE, True, R.REPLICAS_READY, f"{serving_now}/{want_replicas} replicas available"),
                      Want(C.READY, True, R.REPLICAS_READY, f"{want_replicas}/{want_replicas} replicas ready")]
            phase = EndpointPhase.READY
        else:
            rolling = not d or not current or not d["observed"] or d["updated"] < want_replicas or \
                d["replicas"] > want_replicas or not d["rollout_done"]
            if d and d["deadline"]:
                prog = Want(C.PROGRESSING, False, PROGRESS_DEADLINE_EXCEEDED, d["deadline_message"])
                ready = Want(C.READY, False, PROGRESS_DEADLINE_EXCEEDED, d["deadline_message"] or counts)
            elif pods_problem is not None:
                prog = Want(C.PROGRESSING, True, R.ROLLING_OUT, counts)
                ready = Want(C.READY, False, pods_problem[0], f"{counts}: {pods_problem[1]}")
            elif rolling:
                prog = Want(C.PROGRESSING, True, R.ROLLING_OUT, counts)
                ready = Want(C.READY, False, R.ROLLING_OUT, counts)
            else:
                prog = Want(C.PROGRESSING, False, R.ROLLOUT_COMPLETE, counts)
                ready = Want(C.READY, False, R.REPLICAS_NOT_READY, counts)
            avail = Want(C.AVAILABLE, serving_now > 0, R.REPLICAS_READY if serving_now else R.REPLICAS_NOT_READY,
                         f"{serving_now}/{want_replicas} replicas available")
            wants += [prog, avail, ready]
            phase = EndpointPhase.DEPLOYING if rolling or not serving_now else EndpointPhase.DEGRADED
            if pods_problem is not None and pods_problem[0] == CONTAINER_FAILING:
                phase = EndpointPhase.DEGRADED if serving_now else EndpointPhase.FAILED
            if d and d["deadline"]:
                phase = EndpointPhase.DEGRADED if serving_now else EndpointPhase.FAILED

    conditions = apply_conditions(old_conditions, wants, inp.generation, now)
    status: dict[str, Any] = {
        "observedGeneration": inp.generation,
        "phase": phase.value,
        "conditions": condition_dicts(conditions),
        "model": inp.model.display[:512],
        "replicas": d.get("replicas", 0) if d else 0,
        "readyReplicas": d.get("ready", 0) if d else 0,
    }
    if desired.serving is not None and desired.plan is not None:
        status["selector"] = desired.serving.selector
        status["url"] = desired.serving.url
        status["plan"] = desired.plan.to_status().to_k8s()
        status["specHash"] = desired.serving.spec_hash
    elif d:  # keep describing what still runs
        for key in ("selector", "url", "plan", "specHash"):
            if key in old_status:
                status[key] = old_status[key]
    events = transition_events(old_conditions, conditions, EVENT_CONDITIONS, FAILURE_REASONS)
    if old_status.get("phase") != status["phase"] and not events:
        events.append(EventSpec("Normal", status["phase"], f"phase {old_status.get('phase') or 'none'} -> {status['phase']}"))
    return status, events
