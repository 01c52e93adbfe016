"""The objects that run one generation of a ``QuantizedModel``: ConfigMap, ServiceAccount, Role,
RoleBinding and the Job itself (pure functions, byte-identical output for identical input).

The contract with the program (``quantize_job``) fixes the shapes: the typed config as JSON in the
ConfigMap ``<qm>-quantize-<generation>`` mounted read-only at ``/etc/dedicated/job/config.json``,
the output claim at ``/output`` (scratch at ``/scratch``), the Hub token as env ``HF_TOKEN`` from a
``secretKeyRef``, ``JOB_NAME``/``JOB_NAMESPACE`` from the downward API, progress and result written
as annotations on the Job by the pod's own service account, which may only ``get``/``patch`` that
one Job (``resourceNames``).

Failure policy: exit code 2 means bad input (the program found an error a retry cannot fix), so
``podFailurePolicy`` fails the Job at once; a pod disrupted by preemption, eviction or a node drain
(``DisruptionTarget``) is retried without counting against ``backoffLimit``, and every other
failure is retried up to ``backoffLimit``, each retry resuming from the per-layer checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api.common import SecretKeyRef
from ..api.crd import API_VERSION, GROUP, QUANTIZED_MODEL
from ..api.quantizedmodel import QuantizedModelSpec
from ..images import ImageConfig
from ..pools import NodePool
from .isolation import namespace_labels
from .naming import MANAGED_BY, label_value

QM_LABEL = f"{GROUP}/quantizedmodel"
GENERATION_LABEL = f"{GROUP}/generation"
CONTAINER = "quantize"
CONFIG_MOUNT = "/etc/dedicated/job"
CONFIG_FILE = "config.json"
INPUT_ERROR_EXIT_CODE = 2
GPU_RESOURCE = "nvidia.com/gpu"
RUN_AS_USER = 1000
#: Host memory and CPU per GPU for the Job's pod: the layer-by-layer pipeline keeps one decoder
#: layer, the calibration activations and the safetensors staging buffers in host memory.
HOST_MEMORY_BASE_GIB, HOST_MEMORY_PER_GPU_GIB = 32, 32
CPU_PER_GPU = 8


def job_name(qm_name: str, generation: int) -> str:
    """``<qm>-quantize-<generation>``: deterministic, so a restarted operator finds the Job it
    created instead of creating a second one. Shortened with a stable hash to the 63 characters a
    Job name may have (the Job controller copies it into a label)."""
    name = f"{qm_name}-quantize-{generation}"
    if len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name):
        return name
    digest = hashlib.sha256(qm_name.encode()).hexdigest()[:8]
    stem = re.sub(r"[^a-z0-9-]", "-", qm_name)[: 63 - len(f"-{digest}-quantize-{generation}")].strip("-")
    return f"{stem}-{digest}-quantize-{generation}"


@dataclass(frozen=True)
class JobOwner:
    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": QUANTIZED_MODEL.kind, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


@dataclass(frozen=True)
class JobPlacement:
    """Where the Job runs and why (the reason goes into the JobCreated condition)."""

    pool: NodePool
    gpus: int
    why: str


@dataclass(frozen=True)
class QuantizeJobObjects:
    """Everything one generation needs; ``supporting`` objects are applied, the Job is created."""

    configmap: dict[str, Any]
    service_account: dict[str, Any]
    role: dict[str, Any]
    role_binding: dict[str, Any]
    job: dict[str, Any]

    @property
    def supporting(self) -> list[dict[str, Any]]:
        return [self.configmap, self.service_account, self.role, self.role_binding]


def labels(qm_name: str, generation: int) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "quantize",
        "app.kubernetes.io/component": "quantize",
        "app.kubernetes.io/instance": label_value(qm_name),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "dedicated-endpoints",
        QM_LABEL: label_value(qm_name),
        GENERATION_LABEL: str(generation),
    }


def _meta(name: str, namespace: str, qm_name: str, generation: int, owner: JobOwner) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels(qm_name, generation),
            "ownerReferences": [owner.reference()]}


def _security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "privileged": False,
            "runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _tolerations(pool: NodePool) -> list[dict[str, Any]]:
    tolerations = pool.tolerations_k8s()
    gpu = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
    if gpu not in tolerations:
        tolerations.append(gpu)
    return tolerations


def build_quantize_job(
    *,
    qm_name: str,
    namespace: str,
    generation: int,
    spec: QuantizedModelSpec,
    config_json: str,
    secret_env: Mapping[str, SecretKeyRef],
    volume_mounts: list[tuple[str, str, bool]],
    placement: JobPlacement,
    images: ImageConfig,
    owner: JobOwner,
    pod_annotations: Mapping[str, str] | None = None,
) -> QuantizeJobObjects:
    """The ConfigMap, RBAC and Job for one generation.

    ``config_json`` is ``JobConfig.to_json()`` (``quantize_job.config.job_config_from_spec``),
    ``secret_env`` maps env names to Secret keys (``job_secret_env``), ``volume_mounts`` lists
    ``(claim, mount path, read only)`` (``job_volume_mounts``): the program's own module decides
    all three, so both sides of the contract share one definition.
    """
    name = job_name(qm_name, generation)
    meta = lambda: _meta(name, namespace, qm_name, generation, owner)  # noqa: E731 (fresh dict each time)

    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(), "data": {CONFIG_FILE: config_json}}
    service_account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(),
                       "automountServiceAccountToken": False}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(),
            "rules": [{"apiGroups": ["batch"], "resources": ["jobs"], "resourceNames": [name],
                       "verbs": ["get", "patch"]}]}
    role_binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(),
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                    "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]}

    env: list[dict[str, Any]] = [
        {"name": "JOB_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}}},
        {"name": "JOB_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    for env_name, ref in sorted(secret_env.items()):
        env.append({"name": env_name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})

    mounts: list[dict[str, Any]] = [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                    {"name": "dshm", "mountPath": "/dev/shm"}]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": name, "items": [{"key": CONFIG_FILE, "path": CONFIG_FILE}]}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "50Gi"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
    ]
    for i, (claim, path, read_only) in enumerate(volume_mounts):
        vol = f"vol-{i}"
        volumes.append({"name": vol, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}})
        mounts.append({"name": vol, "mountPath": path, "readOnly": read_only})

    gpus = placement.gpus
    memory = f"{HOST_MEMORY_BASE_GIB + HOST_MEMORY_PER_GPU_GIB * gpus}Gi"
    container = {
        "name": CONTAINER,
        "image": images.quantize,
        "imagePullPolicy": images.pull_policy,
        "command": ["python", "-m", "dedicated.quantize_job"],
        "args": ["run", "--config", f"{CONFIG_MOUNT}/{CONFIG_FILE}"],
        "env": env,
        "resources": {"requests": {"cpu": str(CPU_PER_GPU * gpus), "memory": memory, GPU_RESOURCE: str(gpus)},
                      "limits": {"memory": memory, GPU_RESOURCE: str(gpus)}},
        "volumeMounts": mounts,
        "securityContext": _security_context(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": name,
        "automountServiceAccountToken": True,  # the program patches its own Job (progress, result)
        "restartPolicy": "Never",  # required by podFailurePolicy; retries are new pods that resume
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER,
                            "fsGroup": RUN_AS_USER, "fsGroupChangePolicy": "OnRootMismatch",
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "nodeSelector": dict(sorted(placement.pool.node_selector.items())),
        "tolerations": _tolerations(placement.pool),
        "containers": [container],
        "volumes": volumes,
    }
    if images.runtime_class_name:
        pod_spec["runtimeClassName"] = images.runtime_class_name
    # the namespace label marks the pod for other teams' dedicated-nodes isolation (issue 8)
    template_meta: dict[str, Any] = {"labels": {**labels(qm_name, generation), **namespace_labels(namespace)}}
    if pod_annotations:
        template_meta["annotations"] = dict(sorted(pod_annotations.items()))
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**meta(), "annotations": {f"{GROUP}/pool": placement.pool.name,
                                               f"{GROUP}/placement": placement.why[:1024],
                                               f"{GROUP}/config-sha256": hashlib.sha256(config_json.encode()).hexdigest()}},
        "spec": {
            "backoffLimit": spec.backoff_limit,
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                      "values": [INPUT_ERROR_EXIT_CODE]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {"metadata": template_meta, "spec": pod_spec},
        },
    }
    return QuantizeJobObjects(configmap=configmap, service_account=service_account, role=role,
                              role_binding=role_binding, job=job)


def config_of(job_objects: QuantizeJobObjects) -> dict[str, Any]:
    """The rendered JobConfig (for tests and status messages)."""
    return json.loads(job_objects.configmap["data"][CONFIG_FILE])
