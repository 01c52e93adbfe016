"""Objects for reliability tests on the local cluster, and the invariants that must hold afterwards.

Models: endpoints serve a small dense checkpoint (Qwen3-0.6B shapes, written sparse by the
planner tests' ``modelzoo``) from a volume; its facts reach the operator through a model-facts
ConfigMap, exactly as a platform team would publish them. QuantizedModels quantize from a volume
to a volume; on the local cluster no container runs, so a test that needs a *successful*
quantization writes the program's result annotation on the Job itself (the same API write the
quantize program makes, see docs of the operator/Job contract) and says so.

Invariants (``check_*``) read the world through the admin client and return a list of
violations (empty: all good), so a test can show every problem at once.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dedicated.operator.modelfacts import FactsLocation, default_name, facts_configmap
from dedicated.operator.vram.checkpoint import read_local

GROUP, VERSION = "llm.dedicated.dev", "v1alpha1"
MANAGED = "app.kubernetes.io/managed-by=dedicated-operator"
QM_LABEL = f"{GROUP}/quantizedmodel"
GENERATION_LABEL = f"{GROUP}/generation"
RESULT_ANNOTATION = f"{GROUP}/result"
PROGRESS_ANNOTATION = f"{GROUP}/progress"
POD_ANNOTATIONS = f"{GROUP}/pod-annotations"
REPO = Path(__file__).resolve().parents[2]
CLAIM = "models"
SMALL_PATH = "qwen3-0.6b"


def modelzoo():
    """The planner tests' checkpoint writer (tests/unit/operator/modelzoo.py), loaded by path."""
    name = "dedicated_tests_modelzoo"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tests/unit/operator/modelzoo.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_FACTS_CACHE: dict[tuple[str, str], dict[str, Any]] = {}


def small_model_facts(namespace: str, claim: str = CLAIM, path: str = SMALL_PATH) -> dict[str, Any]:
    """The model-facts ConfigMap for a Qwen3-0.6B-shaped checkpoint at ``pvc://claim/path``."""
    key = (claim, path)
    if key not in _FACTS_CACHE:
        zoo = modelzoo()
        with tempfile.TemporaryDirectory(prefix="facts-") as tmp:
            root = zoo.dense(Path(tmp) / "ckpt", zoo.QWEN3_06B)
            location = FactsLocation(claim, path)
            _FACTS_CACHE[key] = facts_configmap(read_local(root), location, name=default_name(location))
    cm = json.loads(json.dumps(_FACTS_CACHE[key]))
    cm["metadata"]["namespace"] = namespace
    return cm


def apply_facts(api: client.ApiClient, namespace: str, claim: str = CLAIM, path: str = SMALL_PATH) -> None:
    cm = small_model_facts(namespace, claim, path)
    try:
        client.CoreV1Api(api).create_namespaced_config_map(namespace, cm)
    except ApiException as err:
        if err.status != 409:
            raise


def apply_volumes(api: client.ApiClient, namespace: str, claims: Iterable[str] = (CLAIM, "base")) -> None:
    """Bound PersistentVolumeClaims for ``claims`` (a hostPath PV pre-bound to each): the scheduler
    places a pod only when its claims are bound; simulated nodes never touch the path."""
    core = client.CoreV1Api(api)
    for claim in claims:
        pv_name = f"{namespace}-{claim}"[:253]
        pv = {"apiVersion": "v1", "kind": "PersistentVolume",
              "metadata": {"name": pv_name, "labels": {"dedicated.dev/test": "true"}},
              "spec": {"capacity": {"storage": "1Ti"}, "accessModes": ["ReadWriteMany"],
                       "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                       "hostPath": {"path": f"/var/lib/dedicated-test/{pv_name}"},
                       "claimRef": {"namespace": namespace, "name": claim}}}
        pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
               "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv_name,
                        "resources": {"requests": {"storage": "1Ti"}}}}
        for create in (lambda: core.create_persistent_volume(pv),
                       lambda: core.create_namespaced_persistent_volume_claim(namespace, pvc)):
            try:
                create()
            except ApiException as err:
                if err.status != 409:
                    raise


def endpoint(name: str, *, replicas: int = 1, claim: str = CLAIM, path: str = SMALL_PATH,
             qm: str | None = None, pod_annotations: Mapping[str, str] | None = None,
             **spec: Any) -> dict[str, Any]:
    model = {"quantizedModelRef": {"name": qm}} if qm else {"volume": {"claimName": claim, "path": path}}
    meta: dict[str, Any] = {"name": name}
    if pod_annotations:
        meta["annotations"] = {POD_ANNOTATIONS: json.dumps(dict(pod_annotations))}
    # Pinned to the A100 pool (24 simulated GPUs): the planner's cheapest choice for this small
    # model is the GB10 pool, whose 4 GPUs a test with several endpoints would exhaust.
    spec.setdefault("placement", {"pool": "ampere-a100"})
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DedicatedEndpoint", "metadata": meta,
            "spec": {"model": model, "replicas": replicas, **spec}}


def quantized_model(name: str, *, out_path: str | None = None, pod_annotations: Mapping[str, str] | None = None,
                    backoff_limit: int = 0, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if pod_annotations:
        meta["annotations"] = {POD_ANNOTATIONS: json.dumps(dict(pod_annotations))}
    body = {"base": {"volume": {"claimName": "base", "path": "qwen3-moe"}}, "method": "autoround", "bits": 4,
            "output": {"volume": {"claimName": CLAIM, "path": out_path or f"out/{name}"}},
            "resources": {"pool": "hopper-h200", "gpus": 1}, "backoffLimit": backoff_limit}
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "QuantizedModel", "metadata": meta, "spec": body}


#: Pod annotations that keep a simulated quantize pod running (kwok completes Job pods after 2 s).
LONG_RUNNING = {"dedicated.dev/simulate-run-duration": "1h"}


class World:
    """Typed shortcuts over the admin client for one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.ns = namespace
        self.co = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)

    # custom objects
    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        plural = {"DedicatedEndpoint": "dedicatedendpoints", "QuantizedModel": "quantizedmodels"}[obj["kind"]]
        return self.co.create_namespaced_custom_object(GROUP, VERSION, self.ns, plural, dict(obj))

    def get_ep(self, name: str) -> dict[str, Any] | None:
        return self._get("dedicatedendpoints", name)

    def get_qm(self, name: str) -> dict[str, Any] | None:
        return self._get("quantizedmodels", name)

    def _get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            return self.co.get_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def endpoints(self) -> list[dict[str, Any]]:
        return self.co.list_namespaced_custom_object(GROUP, VERSION, self.ns, "dedicatedendpoints")["items"]

    def models(self) -> list[dict[str, Any]]:
        return self.co.list_namespaced_custom_object(GROUP, VERSION, self.ns, "quantizedmodels")["items"]

    def patch_spec(self, plural: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        return self.co.patch_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name, {"spec": dict(spec)})

    def delete(self, plural: str, name: str) -> None:
        try:
            self.co.delete_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name)
        except ApiException as err:
            if err.status != 404:
                raise

    # built-in objects (as plain dicts)
    def _dicts(self, items: Iterable[Any]) -> list[dict[str, Any]]:
        return [self.api.sanitize_for_serialization(i) for i in items]

    def jobs(self) -> list[dict[str, Any]]:
        return self._dicts(self.batch.list_namespaced_job(self.ns).items)

    def deployments(self) -> list[dict[str, Any]]:
        return self._dicts(self.apps.list_namespaced_deployment(self.ns).items)

    def replicasets(self) -> list[dict[str, Any]]:
        return self._dicts(self.apps.list_namespaced_replica_set(self.ns).items)

    def services(self) -> list[dict[str, Any]]:
        return self._dicts(self.core.list_namespaced_service(self.ns).items)

    def pods(self, selector: str | None = None) -> list[dict[str, Any]]:
        return self._dicts(self.core.list_namespaced_pod(self.ns, label_selector=selector).items)

    def configmaps(self) -> list[dict[str, Any]]:
        return self._dicts(self.core.list_namespaced_config_map(self.ns).items)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        selector = f"involvedObject.name={name}" if name else None
        return self._dicts(self.core.list_namespaced_event(self.ns, field_selector=selector).items)

    def event_reasons(self, name: str) -> list[str]:
        return [e.get("reason") for e in self.events(name)]

    def job_objects(self) -> dict[str, list[dict[str, Any]]]:
        """Everything the operator makes for quantization Jobs, by kind."""
        sel = MANAGED
        return {
            "Job": self._dicts(self.batch.list_namespaced_job(self.ns, label_selector=sel).items),
            "ConfigMap": self._dicts(self.core.list_namespaced_config_map(self.ns, label_selector=sel).items),
            "ServiceAccount": self._dicts(self.core.list_namespaced_service_account(self.ns, label_selector=sel).items),
            "Role": self._dicts(self.rbac.list_namespaced_role(self.ns, label_selector=sel).items),
            "RoleBinding": self._dicts(self.rbac.list_namespaced_role_binding(self.ns, label_selector=sel).items),
        }

    # simulated quantize program
    def report_result(self, job_name: str, *, location: str | None = None) -> None:
        """Write the quantize program's success annotation on its Job (what the program does last)."""
        result = {"artifact": {"location": location or f"pvc://{CLAIM}/{SMALL_PATH}", "format": "auto_round",
                               "totalBytes": 1_500_000_000},
                  "quality": {"perplexityOriginal": 10.0, "perplexityQuantized": 10.4, "perplexityRatio": 1.04,
                              "loadTestPassed": True},
                  "manifestPath": "manifest.json"}
        self.batch.patch_namespaced_job(job_name, self.ns, {"metadata": {"annotations": {
            RESULT_ANNOTATION: json.dumps(result)}}})


# --- conditions ---------------------------------------------------------------------------------


def condition(obj: Mapping[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return {}


def observed(obj: Mapping[str, Any] | None) -> bool:
    """The status describes the current generation."""
    if not obj:
        return False
    return (obj.get("status") or {}).get("observedGeneration") == obj["metadata"].get("generation")


def phase(obj: Mapping[str, Any] | None) -> str | None:
    return ((obj or {}).get("status") or {}).get("phase")


# --- invariants ---------------------------------------------------------------------------------


def _owner_uids(obj: Mapping[str, Any]) -> set[str]:
    return {r.get("uid") for r in obj["metadata"].get("ownerReferences") or []}


def check_endpoints(world: World) -> list[str]:
    """One Deployment and one Service per endpoint, owned by it; no operator object without an
    owner; pods never more than replicas (once settled); status true to the Deployment."""
    problems: list[str] = []
    eps = {e["metadata"]["uid"]: e for e in world.endpoints()}
    deps = [d for d in world.deployments() if "dedicated-operator" in str(d["metadata"].get("labels"))]
    svcs = [s for s in world.services() if "dedicated-operator" in str(s["metadata"].get("labels"))]
    for kind, objs in (("Deployment", deps), ("Service", svcs)):
        by_owner = Counter(uid for o in objs for uid in _owner_uids(o))
        for o in objs:
            uids = _owner_uids(o)
            if not uids & eps.keys() and not o["metadata"].get("deletionTimestamp"):
                problems.append(f"orphaned {kind} {o['metadata']['name']} (owners {uids}, no such endpoint)")
        for uid, n in by_owner.items():
            if n > 1:
                problems.append(f"{n} {kind}s owned by endpoint {eps.get(uid, {}).get('metadata', {}).get('name', uid)}")
    for uid, ep in eps.items():
        name = ep["metadata"]["name"]
        dep = next((d for d in deps if uid in _owner_uids(d)), None)
        svc = next((s for s in svcs if uid in _owner_uids(s)), None)
        status = ep.get("status") or {}
        if status.get("phase") in ("Ready", "Deploying", "Degraded"):
            if dep is None:
                problems.append(f"endpoint {name} is {status.get('phase')} but has no Deployment")
            if svc is None:
                problems.append(f"endpoint {name} is {status.get('phase')} but has no Service")
        if dep is not None and observed(ep):
            ready = (dep.get("status") or {}).get("readyReplicas") or 0
            if status.get("readyReplicas", 0) != ready:
                problems.append(f"endpoint {name} status.readyReplicas={status.get('readyReplicas')} but its "
                                f"Deployment has {ready}")
            if status.get("phase") == "Ready" and ep["spec"].get("replicas", 1) != ready:
                problems.append(f"endpoint {name} is Ready with {ready} ready of {ep['spec'].get('replicas', 1)}")
    return problems


def check_pods_settled(world: World) -> list[str]:
    """After a rollout settled: each endpoint runs exactly ``replicas`` pods (no duplicates).

    Counted are the pods of ReplicaSets that the endpoint's *current* Deployment controls. A pod
    of a ReplicaSet whose Deployment is gone (deleted behind the operator) is the garbage
    collector's work, not the operator's: kube-controller-manager's GC was seen to leave such a
    pod for minutes after an API-server restart, so those are reported by name but not failed on.
    """
    problems = []
    replicasets = world.replicasets()
    deployments = {d["metadata"]["name"]: d["metadata"]["uid"] for d in world.deployments()}
    for ep in world.endpoints():
        name = ep["metadata"]["name"]
        dep_uid = deployments.get(name)
        current_rs = {rs["metadata"]["uid"] for rs in replicasets if dep_uid in _controller_uids(rs)}
        pods = [p for p in world.pods(f"app.kubernetes.io/component=serving,{GROUP}/endpoint={name}")
                if not p["metadata"].get("deletionTimestamp") and (p.get("status") or {}).get("phase") != "Failed"]
        live = [p for p in pods if _controller_uids(p) & current_rs]
        orphans = [p["metadata"]["name"] for p in pods if p not in live]
        want = ep["spec"].get("replicas", 1)
        if len(live) != want:
            problems.append(f"endpoint {name}: {len(live)} live pods, want {want}"
                            + (f" (and awaiting garbage collection: {orphans})" if orphans else ""))
    return problems


def _controller_uids(obj: Mapping[str, Any]) -> set[str]:
    return {r["uid"] for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")}


def check_models(world: World) -> list[str]:
    """Exactly one Job per QuantizedModel generation that started one, named as status says;
    no Job (or its ConfigMap/ServiceAccount/Role/RoleBinding) of a model that no longer exists or
    of an older generation; at most one active pod per Job."""
    problems: list[str] = []
    qms = {q["metadata"]["uid"]: q for q in world.models()}
    objs = world.job_objects()
    for kind, items in objs.items():
        for o in items:
            if o["metadata"].get("deletionTimestamp"):
                continue
            uids = _owner_uids(o)
            owner = next((qms[u] for u in uids if u in qms), None)
            name = o["metadata"]["name"]
            if owner is None:
                problems.append(f"orphaned {kind} {name} (no such QuantizedModel)")
                continue
            gen = (o["metadata"].get("labels") or {}).get(GENERATION_LABEL)
            if gen is not None and gen != str(owner["metadata"]["generation"]):
                problems.append(f"{kind} {name} belongs to generation {gen} of {owner['metadata']['name']}, "
                                f"which is at generation {owner['metadata']['generation']}")
    jobs_by_owner = Counter(u for j in objs["Job"] if not j["metadata"].get("deletionTimestamp")
                            for u in _owner_uids(j))
    for uid, qm in qms.items():
        n = jobs_by_owner.get(uid, 0)
        name = qm["metadata"]["name"]
        if n > 1:
            problems.append(f"QuantizedModel {name} has {n} Jobs")
        status = qm.get("status") or {}
        job = next((j for j in objs["Job"] if uid in _owner_uids(j)), None)
        if job is not None and observed(qm) and status.get("jobName") != job["metadata"]["name"]:
            problems.append(f"QuantizedModel {name} status.jobName={status.get('jobName')} but its Job is "
                            f"{job['metadata']['name']}")
        if job is not None:
            active = [p for p in world.pods(f"batch.kubernetes.io/job-name={job['metadata']['name']}")
                      if (p.get("status") or {}).get("phase") in ("Pending", "Running")
                      and not p["metadata"].get("deletionTimestamp")]
            if len(active) > 1:
                problems.append(f"Job {job['metadata']['name']} has {len(active)} active pods")
    return problems


def check_all(world: World, settled: bool = True) -> list[str]:
    return check_endpoints(world) + check_models(world) + (check_pods_settled(world) if settled else [])
