"""The Deployment and Service that serve one ``DedicatedEndpoint`` with vLLM.

Pure functions: same inputs, byte-identical manifests (sorted keys where order is free, no
timestamps), so a resync with nothing changed produces nothing to apply. The pod template carries
a hash of itself (``llm.dedicated.dev/spec-hash``); any change to what the pods run changes the
hash and rolls the Deployment out, and the handler can compare hashes instead of whole objects.

Choices, with their reasons:

* Startup budget: ``STARTUP_BASE_SECONDS`` plus ``STARTUP_SECONDS_PER_GIB`` per GiB of weights on
  one GPU, clamped to [10 min, 1 h]. Assumptions, not measurements: weights load at no less than
  one GiB per 30 s (~36 MB/s, a slow network volume), and torch.compile plus CUDA graph
  capture fit in the 5-minute base on a cold cache; the startup probe allows that much before the
  kubelet restarts the container.
* ``/dev/shm``: a memory-backed emptyDir of ``2 GiB + 2 GiB x TP``: NCCL and vLLM's shared-memory
  message queues between the API server and the engine/worker processes need more than the
  container runtime's 64 MiB default, and more with every tensor-parallel worker. It counts
  against the memory limit, which includes it.
* Rollout with ``maxSurge: 0``: GPUs are reserved and scarce; a surge pod would wait for GPUs that
  are not there. One replica is replaced at a time instead.
* Security: non-root, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp,
  read-only root filesystem with writable ``/tmp`` and ``/cache`` (Hugging Face, vLLM, Triton and
  torch.compile caches are pointed there), no service-account token.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from ..api.endpoint import DedicatedEndpointSpec
from ..images import ImageConfig
from ..pools import NodePool
from ..vram.memory import GIB
from ..vram.planner import Plan
from .isolation import apply_isolation
from .model_source import WEIGHTS_DIR, ResolvedModel
from .naming import (
    HTTP_PORT,
    SPEC_HASH_ANNOTATION,
    Owner,
    common_labels,
    endpoint_url,
    label_value,
    selector_labels,
    selector_string,
    service_name,
)

STARTUP_BASE_SECONDS = 300
STARTUP_SECONDS_PER_GIB = 30
STARTUP_MIN_SECONDS, STARTUP_MAX_SECONDS = 600, 3600
PROBE_PERIOD_SECONDS = 10
SHM_BASE_GIB, SHM_PER_GPU_GIB = 2, 2
#: Host memory for the vLLM processes (API server, engine core, one worker per GPU, tokenizer,
#: safetensors staging) besides /dev/shm, when spec.resources.memory is unset.
HOST_MEMORY_BASE_GIB, HOST_MEMORY_PER_GPU_GIB = 16, 8
CPU_PER_GPU, CPU_MIN = 4, 4
RUN_AS_USER = 1000
GPU_RESOURCE = "nvidia.com/gpu"

#: Checks a mounted checkpoint before vLLM starts: config.json present, every shard the index
#: names present and at least as large as its header says. A constant program reading the
#: directory from $MODEL_DIR: no value is ever interpolated into code or a shell.
VERIFY_CHECKPOINT = r"""
import json, os, struct, sys
root = os.environ["MODEL_DIR"]
def fail(msg):
    log = os.environ.get("TERMINATION_LOG", "/dev/termination-log")
    if os.path.isdir(os.path.dirname(log)):
        with open(log, "w") as fh:
            fh.write(msg)
    sys.exit(msg)
if not os.path.isfile(os.path.join(root, "config.json")):
    fail(f"no config.json in the model volume ({root})")
index = os.path.join(root, "model.safetensors.index.json")
if os.path.isfile(index):
    files = sorted(set(json.load(open(index))["weight_map"].values()))
else:
    files = sorted(f for f in os.listdir(root) if f.endswith(".safetensors"))
if not files:
    fail(f"no .safetensors files in the model volume ({root})")
for name in files:
    path = os.path.join(root, name)
    if "/" in name or not os.path.isfile(path):
        fail(f"missing weight file {name}")
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
    end = max([v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"] or [0])
    if os.path.getsize(path) < 8 + n + end:
        fail(f"truncated weight file {name}: {os.path.getsize(path)} of {8 + n + end} bytes")
print(f"checkpoint ok: {len(files)} files")
""".strip()


@dataclass(frozen=True)
class ServingObjects:
    """Everything the handler applies and reports for one endpoint."""

    deployment: dict[str, Any]
    service: dict[str, Any]
    selector: str
    spec_hash: str
    url: str


def _gib(n: float) -> str:
    return f"{int(math.ceil(n))}Gi"


def startup_budget_seconds(plan: Plan) -> int:
    per_gpu_gib = plan.fit.weights / GIB
    budget = STARTUP_BASE_SECONDS + STARTUP_SECONDS_PER_GIB * per_gpu_gib
    return int(min(STARTUP_MAX_SECONDS, max(STARTUP_MIN_SECONDS, budget)))


def shm_gib(tp: int) -> int:
    return SHM_BASE_GIB + SHM_PER_GPU_GIB * tp


def spec_hash(obj: Any) -> str:
    """Short, stable hash of a JSON-able object (sorted keys, no whitespace)."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "privileged": False,
            "readOnlyRootFilesystem": True, "runAsNonRoot": True, "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER, "seccompProfile": {"type": "RuntimeDefault"}}


def _cache_env() -> list[dict[str, Any]]:
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/cache/huggingface"},
        {"name": "VLLM_CACHE_ROOT", "value": "/cache/vllm"},
        {"name": "TRITON_CACHE_DIR", "value": "/cache/triton"},
        {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/cache/inductor"},
        {"name": "XDG_CACHE_HOME", "value": "/cache"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
    ]


def _model_parts(model: ResolvedModel, images: ImageConfig) -> tuple[list, list, list, str]:
    """Init containers, volumes and serving-container mounts for the weights, and the model path."""
    small_mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "cache", "mountPath": "/cache"}]
    if model.from_hub:
        size = _gib(max(1.0, model.checkpoint_bytes * 1.1 / GIB)) if model.checkpoint_bytes else None
        volume: dict[str, Any] = {"name": "weights", "emptyDir": {"sizeLimit": size} if size else {}}
        env = _cache_env()
        if model.token is not None:
            env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": model.token.name,
                                                                          "key": model.token.key}}})
        args = ["download", model.repo, "--local-dir", WEIGHTS_DIR]
        if model.revision:
            args += ["--revision", model.revision]
        init = {"name": "download-weights", "image": images.serving, "imagePullPolicy": images.pull_policy,
                "command": ["hf"], "args": args, "env": env,
                "volumeMounts": [{"name": "weights", "mountPath": WEIGHTS_DIR}, *small_mounts],
                "securityContext": _security_context(),
                "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}},
                "terminationMessagePolicy": "FallbackToLogsOnError"}
        return [init], [volume], [{"name": "weights", "mountPath": WEIGHTS_DIR, "readOnly": True}], WEIGHTS_DIR
    mount = {"name": "weights", "mountPath": WEIGHTS_DIR, "readOnly": True}
    if model.path:
        mount["subPath"] = model.path
    volume = {"name": "weights", "persistentVolumeClaim": {"claimName": model.claim_name, "readOnly": True}}
    init = {"name": "verify-weights", "image": images.serving, "imagePullPolicy": images.pull_policy,
            "command": ["python3", "-c", VERIFY_CHECKPOINT],
            "env": [{"name": "MODEL_DIR", "value": WEIGHTS_DIR}, {"name": "HOME", "value": "/tmp"}],
            "volumeMounts": [mount, {"name": "tmp", "mountPath": "/tmp"}],
            "securityContext": _security_context(),
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "256Mi"}},
            "terminationMessagePolicy": "FallbackToLogsOnError"}
    return [init], [volume], [mount], WEIGHTS_DIR


def _affinity(pool: NodePool, tp: int, endpoint: str) -> dict[str, Any]:
    """Right GPU product with enough GPUs per node; spread replicas over nodes when possible."""
    return {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
            "matchExpressions": [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": [pool.gpu_product]},
                {"key": "nvidia.com/gpu.count", "operator": "Gt", "values": [str(tp - 1)]},
            ]}]}},
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {"labelSelector": {"matchLabels": selector_labels(endpoint)},
                                "topologyKey": "kubernetes.io/hostname"}}]},
    }


def _tolerations(pool: NodePool) -> list[dict[str, Any]]:
    tolerations = pool.tolerations_k8s()
    gpu = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
    if gpu not in tolerations:
        tolerations.append(gpu)
    return tolerations


def serving_args(plan: Plan, model: ResolvedModel, model_path: str) -> list[str]:
    """``vllm serve`` arguments: model path and name, listen address, then the plan's choices."""
    return [model_path, "--served-model-name", model.served_name, "--host", "0.0.0.0",
            "--port", str(HTTP_PORT), *plan.vllm_args()]


def build_deployment(name: str, namespace: str, spec: DedicatedEndpointSpec, plan: Plan, model: ResolvedModel,
                     images: ImageConfig, owner: Owner, team_namespaces: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The serving Deployment (``spec.replicas`` pods of ``plan.gpus_per_replica`` GPUs each)."""
    images = images.with_serving(spec.image)
    tp = plan.tensor_parallel_size
    pool = plan.pool
    init, volumes, mounts, model_path = _model_parts(model, images)
    shm = shm_gib(tp)
    res = spec.resources
    memory = res.memory if res and res.memory else _gib(HOST_MEMORY_BASE_GIB + HOST_MEMORY_PER_GPU_GIB * tp + shm)
    cpu = res.cpu if res and res.cpu else str(max(CPU_MIN, CPU_PER_GPU * tp))
    budget = startup_budget_seconds(plan)
    probe = {"httpGet": {"path": "/health", "port": "http"}, "timeoutSeconds": 5}
    container = {
        "name": "vllm",
        "image": images.serving,
        "imagePullPolicy": images.pull_policy,
        "command": ["vllm", "serve"],
        "args": serving_args(plan, model, model_path),
        "env": [*_cache_env(), {"name": "HF_HUB_OFFLINE", "value": "1"}],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": cpu, "memory": memory, GPU_RESOURCE: str(tp)},
                      "limits": {"memory": memory, GPU_RESOURCE: str(tp)}},
        "startupProbe": {**probe, "periodSeconds": PROBE_PERIOD_SECONDS,
                         "failureThreshold": math.ceil(budget / PROBE_PERIOD_SECONDS)},
        "readinessProbe": {**probe, "periodSeconds": PROBE_PERIOD_SECONDS, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 30, "failureThreshold": 5},
        "volumeMounts": [*mounts, {"name": "dshm", "mountPath": "/dev/shm"},
                         {"name": "tmp", "mountPath": "/tmp"}, {"name": "cache", "mountPath": "/cache"}],
        "securityContext": _security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER,
                            "fsGroup": RUN_AS_USER, "fsGroupChangePolicy": "OnRootMismatch",
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "nodeSelector": dict(sorted(pool.node_selector.items())),
        "tolerations": _tolerations(pool),
        "affinity": _affinity(pool, tp, name),
        "initContainers": init,
        "containers": [container],
        "volumes": [*volumes,
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _gib(shm)}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}},
                    {"name": "cache", "emptyDir": {"sizeLimit": "20Gi"}}],
    }
    if images.runtime_class_name:
        pod_spec["runtimeClassName"] = images.runtime_class_name
    labels = common_labels(name, pool.name)
    template = {"metadata": {"labels": labels}, "spec": pod_spec}
    template = apply_isolation(template, namespace, team_namespaces, spec.placement.isolation)  # issue 8
    digest = spec_hash(template)
    template["metadata"]["annotations"] = {SPEC_HASH_ANNOTATION: digest}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "annotations": {SPEC_HASH_ANNOTATION: digest}, "ownerReferences": [owner.reference()]},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": budget + 600,
            "template": template,
        },
    }


def build_service(name: str, namespace: str, owner: Owner) -> dict[str, Any]:
    """ClusterIP Service on port 8000 (``http``) in front of the serving pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(name), "namespace": namespace, "labels": common_labels(name),
                     "ownerReferences": [owner.reference()]},
        "spec": {"type": "ClusterIP", "selector": selector_labels(name),
                 "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}]},
    }


def build_serving(name: str, namespace: str, spec: DedicatedEndpointSpec, plan: Plan, model: ResolvedModel,
                  images: ImageConfig, owner: Owner, team_namespaces: tuple[str, ...] | None = None) -> ServingObjects:
    """Deployment, Service, scale selector, spec hash and URL for one endpoint."""
    deployment = build_deployment(name, namespace, spec, plan, model, images, owner, team_namespaces)
    return ServingObjects(
        deployment=deployment,
        service=build_service(name, namespace, owner),
        selector=selector_string(name),
        spec_hash=deployment["spec"]["template"]["metadata"]["annotations"][SPEC_HASH_ANNOTATION],
        url=endpoint_url(name, namespace),
    )


__all__ = ["ServingObjects", "build_deployment", "build_service", "build_serving", "label_value",
           "serving_args", "shm_gib", "spec_hash", "startup_budget_seconds"]
