"""QuantizedModel: the thin handler around ``reconcile.quantizedmodel``.

Order of writes in one pass, chosen so that a kill at any point loses nothing and duplicates
nothing: (1) remove the Jobs of older generations (a spec change supersedes them), (2) apply the
generation's ConfigMap/ServiceAccount/Role/RoleBinding (no-ops when unchanged), (3) *create* the
Job under its deterministic name (an existing one is found, never replaced), (4) write status,
(5) post Events. A restart after (3) finds the Job by name; a restart before it creates it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from ..api.crd import GROUP, VERSION
from ..api.quantizedmodel import QuantizedModelConditionType as C, QuantizedModelPhase, QuantizedModelSpec
from ..builders.naming import MANAGED_BY, label_value
from ..builders.quantize_job import GENERATION_LABEL, QM_LABEL, job_name
from ..kube import (
    CONFIGMAPS,
    JOBS,
    PODS,
    QUANTIZED_MODELS,
    ROLE_BINDINGS,
    ROLES,
    SERVICE_ACCOUNTS,
    owner_names,
    resource_of,
)
from ..modelfacts import FactsLocation
from ..quota.status import with_quota_condition
from ..reconcile.common import EventSpec, Want, apply_conditions, condition_dicts, stored_conditions
from ..reconcile.quantizedmodel import INVALID_SPEC, QMInput, desired_job, qm_status
from .context import QUANTIZED_MODEL, OperatorContext
from .endpoint import pod_annotations
from .models import Unavailable, hub_profile, read_secret_key, volume_profile

log = logging.getLogger("dedicated.operator.quantizedmodel")


def _missing_secrets(ctx: OperatorContext, namespace: str, spec: QuantizedModelSpec) -> list[str]:
    from dedicated.quantize_job.config import job_secret_env

    missing = []
    for env_name, ref in job_secret_env(spec).items():
        try:
            read_secret_key(ctx, namespace, ref, f"{env_name} (secretKeyRef {ref.name}/{ref.key})")
        except Unavailable as err:
            missing.append(err.message)
    return missing


def _base_profile(ctx: OperatorContext, namespace: str, spec: QuantizedModelSpec):
    """The base model's profile for the memory estimate, when the operator can see it (else None)."""
    if spec.resources is not None and spec.resources.pool and spec.resources.gpus:
        return None
    try:
        if spec.base.hub is not None:
            return hub_profile(ctx, spec.base.hub.repo, spec.base.hub.revision, None)
        assert spec.base.volume is not None
        return volume_profile(ctx, namespace, FactsLocation(spec.base.volume.claim_name, spec.base.volume.path or ""))
    except Unavailable:
        return None


def _delete_old_generations(ctx: OperatorContext, namespace: str, name: str, uid: str, generation: int) -> None:
    """Jobs and their ConfigMap/RBAC of earlier generations: superseded by a spec change.

    A generation's objects are created ConfigMap, ServiceAccount, Role, RoleBinding, Job (the
    handler applies the supporting ones, then creates the Job) and are deleted here in the reverse
    order. So whatever an operator killed at any point left behind, the ConfigMap or the Job is
    still there, and listing those two kinds finds every leftover: a pass killed before its Job
    existed (its ConfigMap survives), or killed half-way through this deletion (the Job survives
    until the rest is gone). Found by the random operator-kill test, which saw both leaks.
    """
    selector = f"{QM_LABEL}={label_value(name)},{GENERATION_LABEL}!={generation}"
    leftovers: dict[str, None] = {}
    for res in (JOBS, CONFIGMAPS):
        for obj in ctx.kube.list(res, namespace, label_selector=selector):
            refs = obj["metadata"].get("ownerReferences") or []
            if any(r.get("uid") == uid for r in refs):
                leftovers[obj["metadata"]["name"]] = None
    for old in leftovers:
        log.info("QuantizedModel %s/%s: deleting Job %s of an earlier generation and its objects", namespace, name, old)
        for res in (ROLE_BINDINGS, ROLES, SERVICE_ACCOUNTS, CONFIGMAPS):
            ctx.kube.delete(res, namespace, old)
        ctx.kube.delete(JOBS, namespace, old, propagation="Background")


def reconcile_quantizedmodel(ctx: OperatorContext, namespace: str, name: str) -> float | None:
    body = ctx.kube.get(QUANTIZED_MODELS, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    meta = body["metadata"]
    generation = meta.get("generation") or 0
    try:
        spec = QuantizedModelSpec.model_validate(body.get("spec") or {})
        extra, problem = pod_annotations(meta)
        if problem:
            raise ValueError(problem)
    except (ValidationError, ValueError) as err:
        _fail_invalid(ctx, body, str(err).splitlines()[0] if isinstance(err, ValueError) else str(err))
        return None

    jname = job_name(name, generation)
    job = ctx.kube.get(JOBS, namespace, jname)
    status = body.get("status") or {}
    if job is None or status.get("observedGeneration") != generation:
        _delete_old_generations(ctx, namespace, name, meta["uid"], generation)

    missing: list[str] = []
    base = None
    termination = None
    if job is None:
        missing = _missing_secrets(ctx, namespace, spec)
        if not missing:
            base = _base_profile(ctx, namespace, spec)
    else:
        conds = (job.get("status") or {}).get("conditions") or []
        if any(c.get("type") in ("Failed", "FailureTarget") and c.get("status") == "True" for c in conds):
            pods = ctx.kube.list(PODS, namespace, label_selector=f"batch.kubernetes.io/job-name={jname}")
            from ..reconcile.quantizedmodel import termination_message

            termination = termination_message(pods)

    inp = QMInput(name=name, namespace=namespace, uid=meta["uid"], generation=generation, spec=spec, status=status,
                  pools=ctx.pools.config, images=ctx.options.images, job=job, missing_secrets=missing,
                  base_profile=base, termination_message=termination, pod_annotations=extra)
    desired = desired_job(inp)
    quota = None
    if desired.objects is not None and desired.create_job and ctx.quota is not None:
        # GPU quota: authoritative admission before the Job exists (issue 8)
        quota = ctx.quota.admit_job(body, desired.placement.pool, desired.placement.gpus)
    if desired.objects is not None and (quota is None or quota.admitted):
        for obj in desired.objects.supporting:
            live = ctx.kube.get(resource_of(obj), namespace, obj["metadata"]["name"])
            ctx.kube.apply_if_changed(obj, live)
        if desired.create_job:
            job, created = ctx.kube.create(desired.objects.job)
            if created:
                log.info("QuantizedModel %s/%s: created Job %s (%s)", namespace, name, jname, desired.placement.why)
    new_status, events = qm_status(inp, desired, job)
    if quota is not None:
        new_status, quota_events = with_quota_condition(new_status, quota, generation)
        events = [*events, *quota_events]
    if ctx.kube.patch_status(QUANTIZED_MODELS, body, new_status):
        for ev in events:
            ctx.kube.post_event(body, type_=ev.type, reason=ev.reason, message=ev.message, instance=ctx.options.identity)
    if missing:
        return 30.0  # Secrets are not watched (the operator should not see every Secret): look again
    return None


def _fail_invalid(ctx: OperatorContext, body: Mapping[str, Any], message: str) -> None:
    meta = body["metadata"]
    old = body.get("status") or {}
    conditions = apply_conditions(stored_conditions(old), [Want(C.READY, False, INVALID_SPEC, message)],
                                  meta.get("generation"), None)
    status = {**old, "observedGeneration": meta.get("generation"), "phase": QuantizedModelPhase.FAILED.value,
              "conditions": condition_dicts(conditions)}
    if ctx.kube.patch_status(QUANTIZED_MODELS, body, status):
        ev = EventSpec("Warning", INVALID_SPEC, message)
        ctx.kube.post_event(body, type_=ev.type, reason=ev.reason, message=ev.message, instance=ctx.options.identity)


# --- kopf wiring --------------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, ctx: OperatorContext) -> None:
    @kopf.on.event(GROUP, VERSION, "quantizedmodels", registry=registry)
    async def quantizedmodel_event(type: str | None, namespace: str, name: str, **_: Any) -> None:  # noqa: A002
        if type == "DELETED":
            ctx.known[QUANTIZED_MODEL].discard((namespace, name))
            return
        ctx.known[QUANTIZED_MODEL].add((namespace, name))
        ctx.queue.enqueue(QUANTIZED_MODEL, namespace, name)

    @kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/managed-by": MANAGED_BY}, registry=registry)
    async def job_event(body: Mapping[str, Any], namespace: str, **_: Any) -> None:
        for owner in owner_names(body, "QuantizedModel"):
            ctx.queue.enqueue(QUANTIZED_MODEL, namespace, owner)
