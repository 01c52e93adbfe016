"""DedicatedEndpoint: the thin handler (read, plan, apply what changed, write status if changed).

``reconcile_endpoint`` is level-triggered: it reads the endpoint and the world fresh, so it is
the same whether it was triggered by a spec change, a Deployment's status, a QuantizedModel
succeeding, a model-facts ConfigMap appearing, a resync or an operator restart. The kopf
registrations at the bottom only enqueue keys (``handlers.queue``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from ..api.crd import GROUP, VERSION
from ..api.endpoint import DedicatedEndpointSpec, EndpointConditionType as C, EndpointPhase
from ..builders.naming import MANAGED_BY, service_name
from ..kube import DEDICATED_ENDPOINTS, DEPLOYMENTS, PODS, SERVICES, owner_names
from ..modelfacts import FACTS_LABEL
from ..reconcile.common import EventSpec, Want, apply_conditions, condition_dicts, stored_conditions
from ..reconcile.endpoint import (
    POD_ANNOTATIONS_ANNOTATION,
    EndpointInput,
    desired_objects,
    endpoint_status,
    pod_problem,
)
from .context import ENDPOINT, OperatorContext
from .models import model_state

log = logging.getLogger("dedicated.operator.endpoint")

INVALID_SPEC = "InvalidSpec"
ROLLOUT_POLL_SECONDS = 10.0
OBJECT_CONFLICT = "ObjectConflict"
_ANNOTATION_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                             r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def pod_annotations(meta: Mapping[str, Any]) -> tuple[dict[str, str], str | None]:
    """The extra pod annotations requested on the object (JSON object of strings), or an error.
    Keys in our own ``llm.dedicated.dev/`` namespace are refused: the operator owns those."""
    raw = (meta.get("annotations") or {}).get(POD_ANNOTATIONS_ANNOTATION)
    if not raw:
        return {}, None
    try:
        value = json.loads(raw)
    except ValueError:
        return {}, f"annotation {POD_ANNOTATIONS_ANNOTATION} is not JSON"
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return {}, f"annotation {POD_ANNOTATIONS_ANNOTATION} must be a JSON object of strings"
    for key in value:
        if not _ANNOTATION_KEY.match(key) or len(key) > 316 or key.startswith(f"{GROUP}/"):
            return {}, f"annotation {POD_ANNOTATIONS_ANNOTATION}: {key!r} is not an allowed annotation key"
    return value, None


def _controlled_by(obj: Mapping[str, Any] | None, uid: str) -> bool:
    if obj is None:
        return True
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def _rollout_done(deployment: Mapping[str, Any], want: int) -> bool:
    st = deployment.get("status") or {}
    return (st.get("observedGeneration") or 0) >= (deployment["metadata"].get("generation") or 0) and \
        (st.get("readyReplicas") or 0) >= want and (st.get("updatedReplicas") or 0) >= want


def _post(ctx: OperatorContext, body: Mapping[str, Any], events: list[EventSpec]) -> None:
    for ev in events:
        ctx.kube.post_event(body, type_=ev.type, reason=ev.reason, message=ev.message, instance=ctx.options.identity)


def _write_failure(ctx: OperatorContext, body: Mapping[str, Any], reason: str, message: str) -> None:
    """Status for an object the operator cannot act on at all (invalid spec, name conflict)."""
    meta = body["metadata"]
    old = body.get("status") or {}
    conditions = apply_conditions(stored_conditions(old), [Want(C.READY, False, reason, message)],
                                  meta.get("generation"), None)
    status = {**old, "observedGeneration": meta.get("generation"), "phase": EndpointPhase.FAILED.value,
              "conditions": condition_dicts(conditions)}
    if ctx.kube.patch_status(DEDICATED_ENDPOINTS, body, status):
        _post(ctx, body, [EventSpec("Warning", reason, message)])


def reconcile_endpoint(ctx: OperatorContext, namespace: str, name: str) -> float | None:
    """One level-triggered pass; returns seconds until the next pass is wanted (or None)."""
    body = ctx.kube.get(DEDICATED_ENDPOINTS, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None  # owner references garbage-collect the Deployment and Service
    meta = body["metadata"]
    try:
        spec = DedicatedEndpointSpec.model_validate(body.get("spec") or {})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        _write_failure(ctx, body, INVALID_SPEC, f"spec.{where}: {first['msg'].removeprefix('Value error, ')}")
        return None
    extra_annotations, problem = pod_annotations(meta)
    if problem:
        _write_failure(ctx, body, INVALID_SPEC, problem)
        return None

    model, retry = model_state(ctx, namespace, name, spec)
    inp = EndpointInput(name=name, namespace=namespace, uid=meta["uid"], generation=meta.get("generation") or 0,
                        spec=spec, status=body.get("status"), model=model, pools=ctx.pools.config,
                        images=ctx.options.images, pod_annotations=extra_annotations,
                        api_version=body.get("apiVersion", f"{GROUP}/{VERSION}"),
                        team_namespaces=ctx.quota.team_namespaces(namespace) if ctx.quota is not None else None)
    desired = desired_objects(inp)

    deployment = ctx.kube.get(DEPLOYMENTS, namespace, name)
    service = ctx.kube.get(SERVICES, namespace, service_name(name))
    for live in (deployment, service):
        if not _controlled_by(live, meta["uid"]):
            kind = live["kind"] if live and "kind" in live else "object"
            _write_failure(ctx, body, OBJECT_CONFLICT,
                           f"{kind} {live['metadata']['name']} exists and is not controlled by this endpoint "
                           "(left over from a deleted endpoint of the same name, or someone else's); "
                           "waiting for it to go away")
            return 10.0
    if ctx.quota is not None:  # GPU quota: authoritative admission before any pod exists (issue 8)
        inp = replace(inp, quota=ctx.quota.admit_endpoint(body, spec.replicas, desired.plan, deployment is not None))
    rolled = False
    if desired.objects and (inp.quota is None or inp.quota.admitted):
        dep_desired, svc_desired = desired.objects
        service, _ = ctx.kube.apply_if_changed(svc_desired, service)
        deployment, rolled = ctx.kube.apply_if_changed(dep_desired, deployment)
    problem = None
    if deployment is not None and not _rollout_done(deployment, spec.replicas):
        selector = ",".join(f"{k}={v}" for k, v in sorted(
            (deployment.get("spec", {}).get("selector", {}).get("matchLabels") or {}).items()))
        problem = pod_problem(ctx.kube.list(PODS, namespace, label_selector=selector)) if selector else None
    status, events = endpoint_status(inp, desired, deployment, pods_problem=problem)
    if rolled and desired.serving is not None:
        events.insert(0, EventSpec("Normal", "Applied", f"Deployment {name} applied (spec hash "
                                                        f"{desired.serving.spec_hash}, {spec.replicas} replica(s))"))
    if ctx.kube.patch_status(DEDICATED_ENDPOINTS, body, status):
        _post(ctx, body, events)
    if deployment is not None and not _rollout_done(deployment, spec.replicas):
        # Pods are not watched (the operator would hold every pod of the cluster in memory):
        # while a rollout is not done, look again for scheduling and container problems.
        return min(retry or ROLLOUT_POLL_SECONDS, ROLLOUT_POLL_SECONDS)
    return retry


# --- kopf wiring --------------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, ctx: OperatorContext) -> None:
    """Watches: endpoints themselves, their Deployments and Services, and model-facts ConfigMaps."""

    def enqueue(namespace: str, name: str) -> None:
        ctx.queue.enqueue(ENDPOINT, namespace, name)

    @kopf.index(GROUP, VERSION, "dedicatedendpoints", id="endpoints_by_model", registry=registry)
    def endpoints_by_model(namespace: str, name: str, spec: Mapping[str, Any], **_: Any) -> dict:
        ref = ((spec or {}).get("model") or {}).get("quantizedModelRef") or {}
        return {(namespace, ref["name"]): name} if ref.get("name") else {}

    @kopf.index(GROUP, VERSION, "dedicatedendpoints", id="endpoints_by_namespace", registry=registry)
    def endpoints_by_namespace(namespace: str, name: str, **_: Any) -> dict:
        return {namespace: name}

    @kopf.on.event(GROUP, VERSION, "dedicatedendpoints", registry=registry)
    async def endpoint_event(type: str | None, namespace: str, name: str, **_: Any) -> None:  # noqa: A002
        if type == "DELETED":
            ctx.known[ENDPOINT].discard((namespace, name))
            return
        ctx.known[ENDPOINT].add((namespace, name))
        enqueue(namespace, name)

    @kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGED_BY},
                   registry=registry)
    async def deployment_event(body: Mapping[str, Any], namespace: str, **_: Any) -> None:
        for owner in owner_names(body, "DedicatedEndpoint"):
            enqueue(namespace, owner)

    @kopf.on.event("", "v1", "services", labels={"app.kubernetes.io/managed-by": MANAGED_BY}, registry=registry)
    async def service_event(body: Mapping[str, Any], namespace: str, **_: Any) -> None:
        for owner in owner_names(body, "DedicatedEndpoint"):
            enqueue(namespace, owner)

    @kopf.on.event("", "v1", "configmaps", labels={FACTS_LABEL: kopf.PRESENT}, registry=registry)
    async def facts_event(namespace: str, endpoints_by_namespace: kopf.Index, **_: Any) -> None:
        for name in endpoints_by_namespace.get(namespace, []):
            enqueue(namespace, name)

    @kopf.on.event(GROUP, VERSION, "quantizedmodels", registry=registry)
    async def model_event_for_endpoints(namespace: str, name: str, endpoints_by_model: kopf.Index, **_: Any) -> None:
        for endpoint in endpoints_by_model.get((namespace, name), []):
            enqueue(namespace, endpoint)
