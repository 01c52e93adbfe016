"""Admission webhooks: early, clear refusals (quota, unknown pools, doubly claimed namespaces) and
the team label on endpoints and QuantizedModels.

The webhooks only read. Quota enforcement that cannot be raced lives in the reconcilers
(``handlers.quota.QuotaGate``); a webhook that lets a request through because a concurrent one
was not recorded yet is corrected there (``QuotaAdmitted=False``, no pods). So a webhook outage
never breaks a quota, it only delays the feedback.

How requests reach the handlers: each handler's kopf id is also its URL path (``/<id>``), and the
webhook configurations name those paths: the chart writes them (``WEBHOOKS`` below is the one list
both use; a unit test renders the chart and compares), with the chart's certificate, so the
operator needs no permission on webhook configurations. ``DEDICATED_WEBHOOK_MODE`` selects:

* ``off`` (default, e.g. ``dedicated run`` during development): handlers registered, no server;
* ``serve``: kopf's ``WebhookServer`` on ``DEDICATED_WEBHOOK_ADDR:PORT`` (``0.0.0.0:9443``) with
  ``tls.crt``/``tls.key`` from ``DEDICATED_WEBHOOK_CERT_DIR`` (the chart's mounted Secret),
  reloaded when the files change (cert-manager renewals);
* ``managed``: kopf's self-signed server on 127.0.0.1 and kopf-managed webhook configurations
  (local development with an admin kubeconfig; the chart's RBAC does not allow it).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from ..api.crd import GROUP, VERSION
from ..api.endpoint import DedicatedEndpointSpec
from ..api.gpuquota import GPUQuotaSpec
from ..api.quantizedmodel import QuantizedModelSpec
from ..builders.isolation import TEAM_LABEL
from ..builders.naming import label_value
from ..kube import CONFIGMAPS, DEDICATED_ENDPOINTS
from ..quota import (
    ENDPOINT_KIND,
    QUANTIZED_MODEL_KIND,
    Claim,
    QuotaView,
    World,
    conflicts_for_new,
    decide,
    overcommitted,
    read_ledger,
    resolve_teams,
)

log = logging.getLogger("dedicated.operator.admission")

MANAGED_CONFIGURATION = f"dedicated-operator.{GROUP}"
FORBIDDEN = 403
INVALID = 422


@dataclass(frozen=True)
class Webhook:
    """One webhook: kopf handler id (= URL path), type, resource, subresource, operations."""

    id: str
    type: str  # validating | mutating
    plural: str
    subresource: str | None
    operations: tuple[str, ...]
    failure_policy: str  # the chart's default; values may override the validating ones

    @property
    def name(self) -> str:
        """The webhook's name in the configuration (a DNS name, unique per configuration)."""
        return f"{self.id}.{GROUP}"


WEBHOOKS: tuple[Webhook, ...] = (
    Webhook("validate-endpoint", "validating", "dedicatedendpoints", None, ("CREATE", "UPDATE"), "Fail"),
    Webhook("validate-endpoint-scale", "validating", "dedicatedendpoints", "scale", ("UPDATE",), "Fail"),
    Webhook("validate-quantizedmodel", "validating", "quantizedmodels", None, ("CREATE", "UPDATE"), "Fail"),
    Webhook("validate-gpuquota", "validating", "gpuquotas", None, ("CREATE", "UPDATE"), "Fail"),
    Webhook("mutate-endpoint-team", "mutating", "dedicatedendpoints", None, ("CREATE", "UPDATE"), "Ignore"),
    Webhook("mutate-quantizedmodel-team", "mutating", "quantizedmodels", None, ("CREATE", "UPDATE"), "Ignore"),
)
_BY_ID = {w.id: w for w in WEBHOOKS}


class _NoWebhookServer:
    """Webhooks off: kopf requires a server object when admission handlers exist; this one never
    listens and never yields a client configuration."""

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield None  # pragma: no cover (unreachable; makes this an async generator)


def webhook_server_from_env(env: Mapping[str, str] | None = None) -> tuple[Any, str | None]:
    """(kopf server, managed configuration name or None) for ``DEDICATED_WEBHOOK_MODE``."""
    env = os.environ if env is None else env
    mode = (env.get("DEDICATED_WEBHOOK_MODE") or "off").lower()
    port = int(env.get("DEDICATED_WEBHOOK_PORT") or 9443)
    if mode == "off":
        return _NoWebhookServer(), None
    if mode == "serve":
        cert_dir = Path(env.get("DEDICATED_WEBHOOK_CERT_DIR") or "/etc/dedicated/webhook")
        cert, key = cert_dir / "tls.crt", cert_dir / "tls.key"
        if not cert.is_file() or not key.is_file():
            raise ValueError(f"DEDICATED_WEBHOOK_MODE=serve needs {cert} and {key} (the webhook certificate)")
        return kopf.WebhookServer(addr=env.get("DEDICATED_WEBHOOK_ADDR") or "0.0.0.0", port=port,
                                  certfile=str(cert), pkeyfile=str(key)), None
    if mode == "managed":
        return kopf.WebhookServer(addr="127.0.0.1", port=port, host="127.0.0.1"), MANAGED_CONFIGURATION
    raise ValueError(f"DEDICATED_WEBHOOK_MODE must be off, serve or managed, not {mode!r}")


# --- decisions (read-only) ----------------------------------------------------------------------


def _deny(message: str, code: int = FORBIDDEN) -> kopf.AdmissionError:
    return kopf.AdmissionError(message, code=code)


def _read_world(ctx: Any, exclude_uid: str | None = None) -> World | None:
    """The accounting as of now (ledger read, never written); None when no GPUQuota exists."""
    gate = ctx.quota
    snap = gate.snapshot(fresh=True)
    if not snap.quotas:
        return None
    ledger = ctx.kube.get(CONFIGMAPS, gate.settings.namespace, gate.settings.ledger)
    claims, _ = read_ledger((ledger or {}).get("data"))
    return gate.world(claims, snap)


def _candidate_pools(ctx: Any, pool: str | None, families: list[str] | None) -> list[Any]:
    pools = sorted(ctx.pools.config.pools, key=lambda p: (p.cost_per_gpu_hour, p.name))
    if pool is not None:
        return [p for p in pools if p.name == pool]
    if families:
        return [p for p in pools if p.gpu_family in families]
    return pools


def _check_claims(world: World | None, claims: list[Claim]) -> None:
    """Raise with the first candidate's refusal when no candidate pool admits the claim."""
    if world is None or not claims:
        return
    refusals = []
    for claim in claims:
        d = decide(world, claim)
        if d.admitted:
            return
        refusals.append(d.message)
    distinct = list(dict.fromkeys(refusals))
    more = f" (and {len(distinct) - 1} more refusal(s) on the other allowed pools)" if len(distinct) > 1 else ""
    raise _deny(distinct[0] + more)


def _pool_known(ctx: Any, pool: str | None, field: str) -> None:
    if pool is not None and ctx.pools.config.get(pool) is None:
        known = ", ".join(p.name for p in ctx.pools.config.pools)
        raise _deny(f"{field}: pool {pool!r} is not configured (configured pools: {known})", INVALID)


def validate_endpoint(ctx: Any, body: Mapping[str, Any], old: Mapping[str, Any] | None) -> None:
    try:
        spec = DedicatedEndpointSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return  # the CRD schema reports spec errors itself, with the field
    placement = spec.placement
    _pool_known(ctx, placement.pool, "spec.placement.pool")
    if placement.gpu_families:
        families = {p.gpu_family for p in ctx.pools.config.pools}
        unknown = sorted(set(placement.gpu_families) - families)
        if unknown:
            raise _deny(f"spec.placement.gpuFamilies: no configured pool has GPU family {', '.join(unknown)} "
                        f"(configured families: {', '.join(sorted(families))})", INVALID)
    if spec.replicas == 0:
        return
    meta = body.get("metadata") or {}
    world = _read_world(ctx)
    if world is None:
        return
    uid = meta.get("uid") or f"admission:{meta.get('namespace')}/{meta.get('name')}"
    plan = ((old or {}).get("status") or {}).get("plan") if old else None
    claims: list[Claim] = []
    if plan and (placement.pool in (None, plan.get("pool"))) and placement.gpus_per_replica in (None, plan.get("gpusPerReplica")):
        gpus = int(plan.get("gpusPerReplica") or 1)
        pool = ctx.pools.config.get(plan.get("pool"))
        if pool is not None:
            claims.append(Claim(uid=uid, kind=ENDPOINT_KIND, namespace=meta.get("namespace", ""), name=meta.get("name", ""),
                                pool=pool.name, family=pool.gpu_family, gpus=spec.replicas * gpus,
                                detail=f"{spec.replicas} replicas x {gpus} GPUs"))
    if not claims:  # not planned yet: the least it could need on each pool it may use
        gpus = placement.gpus_per_replica or 1
        for pool in _candidate_pools(ctx, placement.pool, placement.gpu_families):
            claims.append(Claim(uid=uid, kind=ENDPOINT_KIND, namespace=meta.get("namespace", ""), name=meta.get("name", ""),
                                pool=pool.name, family=pool.gpu_family, gpus=spec.replicas * gpus,
                                detail=f"at least {spec.replicas} replica{'s' if spec.replicas != 1 else ''} x {gpus} GPU"
                                       f"{'s' if gpus != 1 else ''}"))
    _check_claims(world, claims)


def validate_scale(ctx: Any, body: Mapping[str, Any], old: Mapping[str, Any] | None, namespace: str, name: str) -> None:
    replicas = int(((body.get("spec") or {}).get("replicas")) or 0)
    before = int((((old or {}).get("spec")) or {}).get("replicas") or 0)
    if replicas <= before:
        return
    endpoint = ctx.kube.get(DEDICATED_ENDPOINTS, namespace, name)
    plan = ((endpoint or {}).get("status") or {}).get("plan")
    if endpoint is None or not plan:
        return
    pool = ctx.pools.config.get(plan.get("pool"))
    world = _read_world(ctx)
    if pool is None or world is None:
        return
    gpus = int(plan.get("gpusPerReplica") or 1)
    meta = endpoint["metadata"]
    _check_claims(world, [Claim(uid=meta["uid"], kind=ENDPOINT_KIND, namespace=namespace, name=name, pool=pool.name,
                                family=pool.gpu_family, gpus=replicas * gpus, detail=f"{replicas} replicas x {gpus} GPUs")])


def validate_quantizedmodel(ctx: Any, body: Mapping[str, Any]) -> None:
    try:
        spec = QuantizedModelSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return
    res = spec.resources
    if res is None:
        return
    _pool_known(ctx, res.pool, "spec.resources.pool")
    if res.pool is None:
        return
    world = _read_world(ctx)
    if world is None:
        return
    meta = body.get("metadata") or {}
    pool = ctx.pools.config.get(res.pool)
    gpus = res.gpus or 1
    _check_claims(world, [Claim(uid=meta.get("uid") or "admission", kind=QUANTIZED_MODEL_KIND,
                                namespace=meta.get("namespace", ""), name=meta.get("name", ""), pool=pool.name,
                                family=pool.gpu_family, gpus=gpus, detail=f"{gpus} GPU{'s' if gpus != 1 else ''}")])


def validate_gpuquota(ctx: Any, body: Mapping[str, Any], warnings: list[str]) -> None:
    meta = body.get("metadata") or {}
    try:
        spec = GPUQuotaSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return
    config = ctx.pools.config
    families = {p.gpu_family for p in config.pools}
    for i, limit in enumerate(spec.limits):
        if limit.pool is not None:
            _pool_known(ctx, limit.pool, f"spec.limits[{i}].pool")
        elif limit.gpu_family not in families:
            raise _deny(f"spec.limits[{i}].gpuFamily: no configured pool has GPU family {limit.gpu_family} "
                        f"(configured families: {', '.join(sorted(families))})", INVALID)
    gate = ctx.quota
    snap = gate.snapshot(fresh=True)
    namespaces = snap.namespaces or gate._read_namespaces()
    candidate = QuotaView(name=meta.get("name", ""), spec=spec, created=meta.get("creationTimestamp") or "9999",
                          uid=meta.get("uid") or "")
    others = [q for q in snap.quotas if q.name != candidate.name]
    problems = conflicts_for_new(candidate, others, namespaces)
    if problems:
        raise _deny(f"GPUQuota {candidate.name}: {'; '.join(problems)}; a namespace can belong to one team only")
    quotas = others + [candidate]
    world = World(pools=config, capacity=gate._capacity(), quotas={q.name: q for q in quotas},
                  teams=resolve_teams(quotas, namespaces), claims={})
    warnings.extend(overcommitted(world).get(candidate.name, []))


def team_label_patch(ctx: Any, namespace: str, labels: Mapping[str, str] | None) -> str | None:
    """The team label value to set, or None when it is already right."""
    team = label_value(ctx.quota.team_of(namespace, fresh=True))
    return None if (labels or {}).get(TEAM_LABEL) == team else team


# --- kopf wiring --------------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, ctx: Any) -> None:
    """Admission handlers (needs ``ctx.quota``: register ``handlers.quota`` first)."""

    def opts(webhook_id: str) -> dict[str, Any]:
        w = _BY_ID[webhook_id]
        return {"id": w.id, "operations": list(w.operations), "registry": registry,
                "ignore_failures": w.failure_policy == "Ignore",
                **({"subresource": w.subresource} if w.subresource else {})}

    @kopf.on.startup(id="admission-server", registry=registry)
    def configure_admission(settings: kopf.OperatorSettings, **_: Any) -> None:
        try:
            server, managed = webhook_server_from_env()
        except ValueError as err:  # a configuration error: stop, do not retry
            raise kopf.PermanentError(str(err)) from None
        settings.admission.server = server
        settings.admission.managed = managed

    @kopf.on.validate(GROUP, VERSION, "dedicatedendpoints", **opts("validate-endpoint"))
    def endpoint_webhook(body: kopf.Body, old: kopf.Body | None, **_: Any) -> None:
        validate_endpoint(ctx, body, old)

    @kopf.on.validate(GROUP, VERSION, "dedicatedendpoints", **opts("validate-endpoint-scale"))
    def endpoint_scale_webhook(body: kopf.Body, old: kopf.Body | None, namespace: str, name: str, **_: Any) -> None:
        validate_scale(ctx, body, old, namespace, name)

    @kopf.on.validate(GROUP, VERSION, "quantizedmodels", **opts("validate-quantizedmodel"))
    def quantizedmodel_webhook(body: kopf.Body, **_: Any) -> None:
        validate_quantizedmodel(ctx, body)

    @kopf.on.validate(GROUP, VERSION, "gpuquotas", **opts("validate-gpuquota"))
    def gpuquota_webhook(body: kopf.Body, warnings: list[str], **_: Any) -> None:
        validate_gpuquota(ctx, body, warnings)

    def label(patch: kopf.Patch, namespace: str, labels: Mapping[str, str]) -> None:
        team = team_label_patch(ctx, namespace, labels)
        if team is not None:
            patch.setdefault("metadata", {}).setdefault("labels", {})[TEAM_LABEL] = team

    @kopf.on.mutate(GROUP, VERSION, "dedicatedendpoints", **opts("mutate-endpoint-team"))
    def endpoint_team(patch: kopf.Patch, namespace: str, labels: Mapping[str, str], **_: Any) -> None:
        label(patch, namespace, labels)

    @kopf.on.mutate(GROUP, VERSION, "quantizedmodels", **opts("mutate-quantizedmodel-team"))
    def quantizedmodel_team(patch: kopf.Patch, namespace: str, labels: Mapping[str, str], **_: Any) -> None:
        label(patch, namespace, labels)


__all__ = ["MANAGED_CONFIGURATION", "WEBHOOKS", "Webhook", "register", "validate_endpoint", "validate_gpuquota",
           "validate_quantizedmodel", "validate_scale", "webhook_server_from_env"]
