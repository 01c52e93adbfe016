"""GPU quotas at run time: the ledger under optimistic concurrency, GPUQuota status, ResourceQuota
mirrors, and the kopf wiring.

Authoritative admission (``QuotaGate.admit``): the endpoint and QuantizedModel reconcilers call
it before they create serving pods or a quantization Job. Under one in-process lock (so the
workers of one operator do not race each other into 409s) it reads the GPU ledger ConfigMap,
decides with ``dedicated.operator.quota.decide`` and writes the new claim with the ledger's
``resourceVersion`` as a precondition. A writer that lost the race (another operator replica
during a peering hand-over, or the sweep) gets 409, re-reads and decides again on the new state,
so concurrent applies can never admit more than a quota allows. The admission webhook decides
on the same ledger but only reads: it answers fast and early, the reconcile side is the truth.

While no GPUQuota exists the feature costs one list of GPUQuotas per admission (never decide "no
quota" from a cache: a quota created a moment ago must count) and nothing else: no ledger reads
or writes, no conditions.
When the first quota appears, the sweep records what already runs (Deployments and active Jobs
the operator made) so that existing workloads count from then on; they are never evicted.

Sweep (every ``sweep_seconds`` and on every GPUQuota change): drop claims of objects that are
gone and of finished Jobs, record running workloads the ledger misses, write every quota's
status (only when it changed) and reconcile the ResourceQuota mirrors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError

from ..api.crd import GROUP, VERSION
from ..api.gpuquota import GPUQuotaSpec
from ..builders.naming import MANAGED_BY, POOL_LABEL
from ..kube import (
    CONFIGMAPS,
    DEDICATED_ENDPOINTS,
    DEPLOYMENTS,
    JOBS,
    QUANTIZED_MODELS,
    Kube,
    KubeError,
    Resource,
    merge_patch,
    needs_apply,
    with_applied_hash,
)
from ..quota import (
    ADMITTED,
    ENDPOINT_KIND,
    QUANTIZED_MODEL_KIND,
    Claim,
    Decision,
    QuotaView,
    World,
    decide,
    ledger_patch,
    mirror_limit,
    pool_capacity,
    read_ledger,
    resolve_teams,
)
from ..quota.status import MirrorState, quota_status
from .context import ENDPOINT, QUANTIZED_MODEL

log = logging.getLogger("dedicated.operator.quota")

GPU_QUOTAS = Resource(GROUP, VERSION, "gpuquotas", "GPUQuota", namespaced=False)
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
RESOURCE_QUOTAS = Resource("", "v1", "resourcequotas", "ResourceQuota")

DEFAULT_LEDGER = "dedicated-gpu-ledger"
LEDGER_LABEL = f"{GROUP}/gpu-ledger"
MIRROR_NAME = "dedicated-gpu-quota"
MIRROR_LABEL = f"{GROUP}/gpuquota"
QUOTA_CONDITION = "QuotaAdmitted"
NO_QUOTA = "NoGPUQuota"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass
class QuotaSettings:
    """Where the ledger lives and how often the sweep runs (environment: the chart sets them)."""

    namespace: str = "default"
    ledger: str = DEFAULT_LEDGER
    sweep_seconds: float = 30.0
    cache_seconds: float = 5.0
    node_cache_seconds: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> QuotaSettings:
        env = os.environ if env is None else env
        return cls(namespace=env.get("DEDICATED_OPERATOR_NAMESPACE") or env.get("POD_NAMESPACE") or "default",
                   ledger=env.get("DEDICATED_QUOTA_LEDGER") or DEFAULT_LEDGER,
                   sweep_seconds=float(env.get("DEDICATED_QUOTA_SWEEP_SECONDS") or 30.0))


@dataclass
class _Snapshot:
    at: float = -1e9
    quotas: list[QuotaView] = field(default_factory=list)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)


def _gpus_of_pod_spec(pod_spec: Mapping[str, Any]) -> int:
    total = 0
    for c in pod_spec.get("containers") or []:
        res = c.get("resources") or {}
        raw = (res.get("limits") or {}).get(GPU_RESOURCE) or (res.get("requests") or {}).get(GPU_RESOURCE) or 0
        try:
            total += int(str(raw))
        except ValueError:
            pass
    return total


def _job_active(job: Mapping[str, Any]) -> bool:
    conds = (job.get("status") or {}).get("conditions") or []
    return not any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conds)


class QuotaGate:
    """Admission into the GPU ledger, status of GPUQuotas, ResourceQuota mirrors."""

    def __init__(self, kube: Kube, pools: Any, settings: QuotaSettings | None = None) -> None:
        self.kube = kube
        self.pools = pools  # handlers.context.Pools (reloaded config) or anything with .config
        self.settings = settings or QuotaSettings.from_env()
        self._lock = threading.RLock()
        self._snap_lock = threading.Lock()
        self._snap = _Snapshot()
        self._ledger_body: dict[str, Any] | None = None
        self._nodes: tuple[float, list[dict[str, Any]]] | None = None
        #: Objects refused for lack of quota, (kind, namespace, name): reconciled again whenever
        #: GPUs may have become free (a release, a sweep), through ``on_freed``.
        self.waiting: set[tuple[str, str, str]] = set()
        #: Endpoints with dedicated-nodes isolation: their anti-affinity names their team's
        #: namespaces, so they are reconciled again when the teams change.
        self.dedicated: set[tuple[str, str]] = set()
        self._last_teams: dict[str, tuple[str, ...]] | None = None
        self.on_freed: Any = None  # callable(kind, namespace, name), set by register()

    # --- reading the world -----------------------------------------------------------------------

    def _read_quotas(self) -> tuple[list[QuotaView], dict[str, dict[str, Any]]]:
        views: list[QuotaView] = []
        bodies: dict[str, dict[str, Any]] = {}
        for body in self.kube.list(GPU_QUOTAS):
            meta = body["metadata"]
            bodies[meta["name"]] = body
            try:
                spec = GPUQuotaSpec.model_validate(body.get("spec") or {})
            except ValidationError as err:  # the CRD schema should have refused it; never fatal
                log.warning("GPUQuota %s has an unreadable spec, ignored: %s", meta["name"], err.errors()[0]["msg"])
                continue
            views.append(QuotaView(name=meta["name"], spec=spec, created=meta.get("creationTimestamp") or "",
                                   uid=meta.get("uid") or ""))
        return views, bodies

    def _read_namespaces(self) -> dict[str, dict[str, str]]:
        return {ns["metadata"]["name"]: dict(ns["metadata"].get("labels") or {}) for ns in self.kube.list(NAMESPACES)}

    def snapshot(self, *, fresh: bool = False) -> _Snapshot:
        """Quotas and namespace labels, at most ``cache_seconds`` old unless ``fresh``."""
        with self._snap_lock:
            if not fresh and time.monotonic() - self._snap.at < self.settings.cache_seconds:
                return self._snap
        quotas, bodies = self._read_quotas()
        namespaces = self._read_namespaces() if quotas else {}
        snap = _Snapshot(at=time.monotonic(), quotas=quotas, bodies=bodies, namespaces=namespaces)
        with self._snap_lock:
            self._snap = snap
        return snap

    def invalidate(self) -> None:
        """Forget the cached quotas and namespaces (a GPUQuota changed)."""
        with self._snap_lock:
            self._snap = _Snapshot()

    def team_of(self, namespace: str, *, fresh: bool = False) -> str:
        """The team of ``namespace``: its GPUQuota's name, else ``ns.<namespace>``."""
        snap = self.snapshot(fresh=fresh)
        return resolve_teams(snap.quotas, snap.namespaces).team_of(namespace)

    def team_namespaces(self, namespace: str) -> tuple[str, ...]:
        """The namespaces of ``namespace``'s team (dedicated-nodes isolation keeps every other
        namespace's workload pods off the endpoint's nodes): its GPUQuota's, else itself."""
        snap = self.snapshot()
        teams = resolve_teams(snap.quotas, snap.namespaces)
        quota = teams.quota_of(namespace)
        if quota is None:
            return (namespace,)
        return tuple(sorted(set(teams.governed.get(quota, ())) | {namespace}))

    def _capacity(self):
        """Capacity per pool from the nodes, re-listed at most every ``node_cache_seconds`` (a node
        coming or going changes what guarantees can be honoured, not a claim's own fit)."""
        now = time.monotonic()
        if self._nodes is None or now - self._nodes[0] >= self.settings.node_cache_seconds:
            self._nodes = (now, self.kube.list(NODES))
        return pool_capacity(self.pools.config, self._nodes[1])

    def _read_ledger(self) -> tuple[dict[str, Any], dict[str, Claim], list[str]]:
        s = self.settings
        body = self.kube.get(CONFIGMAPS, s.namespace, s.ledger)
        if body is None:  # the chart creates it; a development run creates it here
            body, _ = self.kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                                        "metadata": {"name": s.ledger, "namespace": s.namespace,
                                                     "labels": {LEDGER_LABEL: "true",
                                                                "app.kubernetes.io/managed-by": MANAGED_BY}}})
        claims, bad = read_ledger(body.get("data"))
        if bad:
            log.warning("GPU ledger %s/%s: dropping %d unreadable entries: %s", s.namespace, s.ledger, len(bad),
                        ", ".join(bad[:5]))
        self._ledger_body = body
        return body, claims, bad

    def _write_ledger(self, body: Mapping[str, Any], before: Mapping[str, Claim], after: Mapping[str, Claim],
                      bad: list[str]) -> bool:
        """Merge-patch the difference with the read ``resourceVersion`` as precondition.
        False on 409 (someone wrote in between: re-read and decide again)."""
        patch = ledger_patch(before, after, bad)
        if not patch:
            return True
        s = self.settings
        try:
            self._ledger_body = self.kube.merge_patch(
                CONFIGMAPS, s.namespace, s.ledger,
                {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "data": patch})
        except KubeError as err:
            if err.status == 409:
                return False
            raise
        return True

    def world(self, claims: Mapping[str, Claim], snap: _Snapshot | None = None) -> World:
        snap = snap or self.snapshot(fresh=True)
        return World(pools=self.pools.config, capacity=self._capacity(),
                     quotas={q.name: q for q in snap.quotas}, teams=resolve_teams(snap.quotas, snap.namespaces),
                     claims=dict(claims))

    # --- admission (the authoritative side) ------------------------------------------------------

    def admit(self, claim: Claim, *, had_condition: bool = False) -> Decision | None:
        """Record ``claim`` if it fits; returns the decision, or None when no GPUQuota exists
        (and the object never had a quota condition, so there is nothing to report)."""
        with self._lock:
            cached = self._ledger_body
            snap = self.snapshot()
            if not snap.quotas:
                snap = self.snapshot(fresh=True)  # never decide "no quota" from a stale cache
            if not snap.quotas:
                if had_condition:
                    return Decision(True, NO_QUOTA, "no GPUQuota exists in the cluster", f"ns.{claim.namespace}")
                return None
            if cached is not None:  # fast path: a resync of an unchanged, recorded claim reads nothing
                known, _ = read_ledger(cached.get("data"))
                if claim.same_holding(known.get(claim.uid)):
                    team = resolve_teams(snap.quotas, snap.namespaces).team_of(claim.namespace)
                    return Decision(True, ADMITTED, f"team {team}: {claim.gpus} GPUs on {claim.pool} (recorded)", team)
            snap = self.snapshot(fresh=True)
            for _attempt in range(50):
                body, claims, bad = self._read_ledger()
                world = self.world(claims, snap)
                if claim.same_holding(claims.get(claim.uid)):
                    team = world.team_of(claim)
                    return Decision(True, ADMITTED, f"team {team}: {claim.gpus} GPUs on {claim.pool} (recorded)", team)
                decision = decide(world, claim)
                if not decision.admitted:
                    self.waiting.add((claim.kind, claim.namespace, claim.name))
                    return decision
                self.waiting.discard((claim.kind, claim.namespace, claim.name))
                after = dict(claims)
                if claim.gpus:
                    after[claim.uid] = claim
                else:
                    after.pop(claim.uid, None)
                if self._write_ledger(body, claims, after, bad):
                    self._refresh_statuses(World(pools=world.pools, capacity=world.capacity, quotas=world.quotas,
                                                 teams=world.teams, claims=after), snap)
                    return decision
                log.debug("GPU ledger changed under us (409); deciding %s/%s again", claim.namespace, claim.name)
            raise KubeError(409, "Conflict", "the GPU ledger kept changing; will retry", "PATCH", self.settings.ledger)

    def wake_waiting(self) -> int:
        """Ask for another reconcile of every object refused for lack of quota."""
        waiting, self.waiting = self.waiting, set()
        if self.on_freed is not None:
            for kind, namespace, name in sorted(waiting):
                self.on_freed(kind, namespace, name)
        return len(waiting)

    def release(self, uid: str) -> bool:
        """Drop the claim of a deleted object (or a finished Job). True if one was dropped."""
        with self._lock:
            if self._ledger_body is None and not self.snapshot().quotas:
                return False
            for _attempt in range(50):
                body, claims, bad = self._read_ledger()
                if uid not in claims and not bad:
                    return False
                after = {k: v for k, v in claims.items() if k != uid}
                if self._write_ledger(body, claims, after, bad):
                    snap = self.snapshot(fresh=True)
                    if snap.quotas:
                        self._refresh_statuses(self.world(after, snap), snap)
                    if uid in claims:
                        self.wake_waiting()
                    return uid in claims
            return False

    # --- callers' helpers -----------------------------------------------------------------------

    def admit_endpoint(self, body: Mapping[str, Any], replicas: int, plan: Any | None,
                       deployment_exists: bool) -> Decision | None:
        """The endpoint reconciler's call, after planning and before applying the Deployment.

        ``plan`` None (model not ready, no fit) keeps what the endpoint holds while its old
        Deployment still serves, and releases its claim otherwise.
        """
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if ((body.get("spec") or {}).get("placement") or {}).get("isolation") == "dedicated-nodes":
            self.dedicated.add(key)
        else:
            self.dedicated.discard(key)
        had = any(c.get("type") == QUOTA_CONDITION for c in ((body.get("status") or {}).get("conditions") or []))
        if plan is None:
            if not deployment_exists:
                self.release(meta["uid"])
            return None
        gpus = plan.gpus_per_replica
        claim = Claim(uid=meta["uid"], kind=ENDPOINT_KIND, namespace=meta["namespace"], name=meta["name"],
                      pool=plan.pool.name, family=plan.pool.gpu_family, gpus=replicas * gpus,
                      detail=f"{replicas} replica{'s' if replicas != 1 else ''} x {gpus} GPU{'s' if gpus != 1 else ''}")
        return self.admit(claim, had_condition=had)

    def admit_job(self, body: Mapping[str, Any], pool: Any, gpus: int) -> Decision | None:
        """The QuantizedModel reconciler's call, right before it creates the Job."""
        meta = body["metadata"]
        had = any(c.get("type") == QUOTA_CONDITION for c in ((body.get("status") or {}).get("conditions") or []))
        claim = Claim(uid=meta["uid"], kind=QUANTIZED_MODEL_KIND, namespace=meta["namespace"], name=meta["name"],
                      pool=pool.name, family=pool.gpu_family, gpus=gpus, detail=f"{gpus} GPU{'s' if gpus != 1 else ''}")
        return self.admit(claim, had_condition=had)

    # --- status and mirrors ---------------------------------------------------------------------

    def _refresh_statuses(self, world: World, snap: _Snapshot, mirrors: Mapping[str, MirrorState] | None = None) -> None:
        """Write each quota's status where it changed (precondition: the read resourceVersion;
        on 409 read again once, otherwise leave it to the next sweep)."""
        for quota in snap.quotas:
            for _attempt in range(2):
                body = snap.bodies.get(quota.name)
                if body is None:
                    break
                status = quota_status(world, quota, body.get("status"), body["metadata"].get("generation"),
                                      (mirrors or {}).get(quota.name))
                patch = merge_patch(body.get("status") or {}, status)
                if not patch:
                    break
                try:
                    snap.bodies[quota.name] = self.kube.merge_patch(
                        GPU_QUOTAS, None, quota.name,
                        {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "status": patch},
                        subresource="status")
                    break
                except KubeError as err:
                    if err.status == 409:
                        fresh = self.kube.get(GPU_QUOTAS, None, quota.name)
                        if fresh is not None:
                            snap.bodies[quota.name] = fresh
                            continue
                    if err.status not in (404, 409, 422):
                        raise
                    log.debug("GPUQuota %s status not written (%s); the next sweep retries", quota.name, err.reason)
                    break

    def _reconcile_mirrors(self, world: World, snap: _Snapshot) -> dict[str, MirrorState]:
        desired: dict[tuple[str, str], tuple[int, QuotaView]] = {}
        states: dict[str, MirrorState] = {}
        for quota in snap.quotas:
            limit = mirror_limit(quota.spec, self.pools.config)
            governed = tuple(ns for ns in world.teams.governed.get(quota.name, ()) if ns in snap.namespaces)
            enabled = quota.spec.mirror_resource_quota
            states[quota.name] = MirrorState(enabled=enabled, limit=limit, namespaces=governed)
            if enabled and limit is not None:
                for ns in governed:
                    desired[(ns, quota.name)] = (limit, quota)
        existing = self.kube.list(RESOURCE_QUOTAS, None, label_selector=MIRROR_LABEL)
        live = {(o["metadata"]["namespace"], o["metadata"]["labels"].get(MIRROR_LABEL)): o for o in existing}
        for (ns, name), (limit, quota) in sorted(desired.items()):
            obj = {"apiVersion": "v1", "kind": "ResourceQuota",
                   "metadata": {"name": MIRROR_NAME, "namespace": ns,
                                "labels": {MIRROR_LABEL: name, "app.kubernetes.io/managed-by": MANAGED_BY},
                                "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUQuota",
                                                     "name": name, "uid": quota.uid}]},
                   "spec": {"hard": {f"requests.{GPU_RESOURCE}": str(limit)}}}
            stamped = with_applied_hash(obj)
            current = live.get((ns, name))
            if current is None:
                current = self.kube.get(RESOURCE_QUOTAS, ns, MIRROR_NAME)
            if not needs_apply(stamped, current):
                continue
            try:
                self.kube.request("PATCH", RESOURCE_QUOTAS.path(ns, MIRROR_NAME), body=stamped,
                                  query={"fieldManager": self.kube.field_manager, "force": "true"},
                                  content_type="application/apply-patch+yaml", what="resourcequotas")
            except KubeError as err:
                log.warning("ResourceQuota %s/%s for GPUQuota %s not written: %s", ns, MIRROR_NAME, name, err)
                states[name] = MirrorState(True, limit, states[name].namespaces, error=f"{ns}: {err.reason}: {err.message[:200]}")
        for key, obj in live.items():
            if key not in desired:
                self.kube.delete(RESOURCE_QUOTAS, obj["metadata"]["namespace"], obj["metadata"]["name"])
        return states

    # --- the sweep ------------------------------------------------------------------------------

    def _running_claims(self) -> tuple[set[str], dict[str, Claim], set[str]]:
        """UIDs of existing endpoints and QuantizedModels, the GPUs their workloads hold now,
        and the QuantizedModels that are done with GPUs (their Job finished, or they succeeded
        or failed). A QuantizedModel admitted a moment ago whose Job is not created yet is in
        neither set, so its claim is kept."""
        endpoints = {o["metadata"]["uid"]: o for o in self.kube.list(DEDICATED_ENDPOINTS)}
        models = {o["metadata"]["uid"]: o for o in self.kube.list(QUANTIZED_MODELS)}
        running: dict[str, Claim] = {}
        selector = f"app.kubernetes.io/managed-by={MANAGED_BY}"
        for dep in self.kube.list(DEPLOYMENTS, None, label_selector=selector):
            owner = next((r for r in dep["metadata"].get("ownerReferences") or []
                          if r.get("kind") == ENDPOINT_KIND and r.get("uid") in endpoints), None)
            pool = self.pools.config.get((dep["metadata"].get("labels") or {}).get(POOL_LABEL, ""))
            if owner is None or pool is None:
                continue
            per = _gpus_of_pod_spec(((dep.get("spec") or {}).get("template") or {}).get("spec") or {})
            replicas = int((dep.get("spec") or {}).get("replicas") or 0)
            running[owner["uid"]] = Claim(uid=owner["uid"], kind=ENDPOINT_KIND, namespace=dep["metadata"]["namespace"],
                                          name=owner["name"], pool=pool.name, family=pool.gpu_family,
                                          gpus=replicas * per, detail=f"{replicas} replicas x {per} GPUs (running)")
        done = {uid for uid, qm in models.items()
                if ((qm.get("status") or {}).get("phase") in ("Succeeded", "Failed"))}
        for job in self.kube.list(JOBS, None, label_selector=selector):
            owner = next((r for r in job["metadata"].get("ownerReferences") or []
                          if r.get("kind") == QUANTIZED_MODEL_KIND and r.get("uid") in models), None)
            if owner is None:
                continue
            if not _job_active(job):
                done.add(owner["uid"])
                continue
            done.discard(owner["uid"])  # a new generation's Job runs
            pool = self.pools.config.get((job["metadata"].get("annotations") or {}).get(f"{GROUP}/pool", ""))
            if pool is None:
                continue
            gpus = _gpus_of_pod_spec(((job.get("spec") or {}).get("template") or {}).get("spec") or {})
            running[owner["uid"]] = Claim(uid=owner["uid"], kind=QUANTIZED_MODEL_KIND,
                                          namespace=job["metadata"]["namespace"], name=owner["name"], pool=pool.name,
                                          family=pool.gpu_family, gpus=gpus, detail=f"{gpus} GPUs (running)")
        return set(endpoints) | set(models), running, done

    def sweep(self) -> None:
        """Garbage-collect and back-fill the ledger, then write every quota's status and mirrors."""
        self._nodes = None  # capacity fresh from the nodes
        with self._lock:
            snap = self.snapshot(fresh=True)
            if not snap.quotas:
                if self._ledger_body is not None or self.kube.get(CONFIGMAPS, self.settings.namespace, self.settings.ledger):
                    for _attempt in range(50):  # no quota: the ledger would only go stale
                        body, claims, bad = self._read_ledger()
                        if self._write_ledger(body, claims, {}, bad):
                            break
                self._reconcile_mirrors(self.world({}, snap), snap)
                self.wake_waiting()
                self._note_teams(snap)
                return
            for _attempt in range(50):
                existing, running, done = self._running_claims()
                body, claims, bad = self._read_ledger()
                after: dict[str, Claim] = {}
                for uid, c in claims.items():
                    if uid not in existing:
                        continue  # object deleted
                    if c.kind == QUANTIZED_MODEL_KIND and uid in done and uid not in running:
                        continue  # its Job finished: the GPUs are free
                    after[uid] = c
                for uid, c in running.items():
                    if uid not in after and c.gpus:
                        log.info("GPU ledger: recording %s %s/%s (%d GPUs on %s), which runs without a claim",
                                 c.kind, c.namespace, c.name, c.gpus, c.pool)
                        after[uid] = c
                if self._write_ledger(body, claims, after, bad):
                    break
            else:
                raise KubeError(409, "Conflict", "the GPU ledger kept changing during the sweep", "PATCH",
                                self.settings.ledger)
            world = self.world(after, snap)
            mirrors = self._reconcile_mirrors(world, snap)
            self._refresh_statuses(world, snap, mirrors)
        self.wake_waiting()  # limits may have grown, capacity come back, claims gone
        self._note_teams(snap)

    def _note_teams(self, snap: _Snapshot) -> None:
        """Reconcile dedicated endpoints again when any team's namespaces changed."""
        teams = dict(resolve_teams(snap.quotas, snap.namespaces).governed) if snap.quotas else {}
        if self._last_teams is not None and teams != self._last_teams and self.on_freed is not None:
            for namespace, name in sorted(self.dedicated):  # their anti-affinity names the team's namespaces
                self.on_freed(ENDPOINT_KIND, namespace, name)
        self._last_teams = teams


# --- kopf wiring --------------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, ctx: Any) -> QuotaGate:
    """Create the gate on ``ctx.quota`` and wire: GPUQuota changes -> sweep; deleted endpoints and
    QuantizedModels -> release; a periodic sweep while this replica is the active one."""
    gate = QuotaGate(ctx.kube, ctx.pools)
    ctx.quota = gate
    kinds = {ENDPOINT_KIND: ENDPOINT, QUANTIZED_MODEL_KIND: QUANTIZED_MODEL}
    gate.on_freed = lambda kind, namespace, name: ctx.queue.enqueue_threadsafe(kinds[kind], namespace, name)
    wake = asyncio.Event()
    tasks: list[asyncio.Task] = []

    async def sweeper() -> None:
        while True:
            try:
                await asyncio.wait_for(wake.wait(), timeout=gate.settings.sweep_seconds)
            except TimeoutError:
                pass
            wake.clear()
            await asyncio.sleep(0.5)  # coalesce bursts of quota events
            if not ctx.gate():
                continue
            try:
                await asyncio.to_thread(gate.sweep)
            except Exception as err:  # noqa: BLE001 (logged; the next sweep retries)
                log.warning("quota sweep failed: %s", err)

    @kopf.on.startup(id="quota-sweeper", registry=registry)
    async def start_sweeper(**_: Any) -> None:
        tasks.append(asyncio.create_task(sweeper(), name="quota-sweeper"))
        wake.set()

    @kopf.on.cleanup(id="quota-sweeper-stop", registry=registry)
    async def stop_sweeper(**_: Any) -> None:
        for task in tasks:
            task.cancel()

    @kopf.on.event(GROUP, VERSION, "gpuquotas", id="gpuquota-event", registry=registry)
    async def quota_event(**_: Any) -> None:
        gate.invalidate()
        wake.set()

    @kopf.on.event(GROUP, VERSION, "dedicatedendpoints", id="quota-endpoint-deleted", registry=registry)
    async def endpoint_deleted(type: str | None, uid: str, **_: Any) -> None:  # noqa: A002
        if type == "DELETED" and ctx.gate():
            await asyncio.to_thread(gate.release, uid)

    @kopf.on.event(GROUP, VERSION, "quantizedmodels", id="quota-model-deleted", registry=registry)
    async def model_deleted(type: str | None, uid: str, **_: Any) -> None:  # noqa: A002
        if type == "DELETED" and ctx.gate():
            await asyncio.to_thread(gate.release, uid)

    return gate


__all__ = ["GPU_QUOTAS", "MIRROR_LABEL", "MIRROR_NAME", "NAMESPACES", "NODES", "QUOTA_CONDITION", "RESOURCE_QUOTAS",
           "QuotaGate", "QuotaSettings", "register"]
