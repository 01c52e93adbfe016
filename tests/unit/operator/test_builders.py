"""Serving manifests: GPUs, placement, probes, shared memory, weights, security, idempotence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import yaml

from dedicated.operator.api import DedicatedEndpointSpec
from dedicated.operator.api.common import SecretKeyRef
from dedicated.operator.api.quantizedmodel import Artifact
from dedicated.operator.builders import (
    SPEC_HASH_ANNOTATION,
    Owner,
    ResolvedModel,
    build_serving,
    resolve_model,
    selector_string,
    service_name,
    startup_budget_seconds,
)
from dedicated.operator.builders.naming import label_value
from dedicated.operator.builders.serving import VERIFY_CHECKPOINT
from dedicated.operator.images import DEFAULT_SERVING_IMAGE, ImageConfig, image_config
from dedicated.operator.vram import Plan, PlanRequest, plan

OWNER = Owner(name="qwen", uid="0b7e7c36-93c3-4b9e-9d55-1f0d2f7c6a11")
SPEC = DedicatedEndpointSpec.model_validate({
    "model": {"hub": {"repo": "example/Qwen3.6-35B-A3B-GSQ-2bit", "revision": "v1",
                      "tokenSecretRef": {"name": "hf-token", "key": "token"}}},
    "replicas": 2,
})


def _plan(profiles, pools, **kw) -> Plan:
    result = plan(profiles["humming"], PlanRequest(**kw), pools)
    assert isinstance(result, Plan), result
    return result


def _hub_model(profiles) -> ResolvedModel:
    return resolve_model(SPEC.model, endpoint_name="qwen", checkpoint_bytes=profiles["humming"].parts.total)


def _build(profiles, pools, spec=SPEC, **kw):
    p = _plan(profiles, pools, **({"pool": "hopper-h100", "gpus_per_replica": 2} | kw))
    return p, build_serving("qwen", "team-a", spec, p, _hub_model(profiles), ImageConfig(), OWNER)


def _containers(deployment: dict) -> list[dict[str, Any]]:
    pod = deployment["spec"]["template"]["spec"]
    return pod["initContainers"] + pod["containers"]


def test_gpus_placement_and_labels(profiles, pools) -> None:
    p, objs = _build(profiles, pools)
    dep = objs.deployment
    pod = dep["spec"]["template"]["spec"]
    vllm = pod["containers"][0]
    assert vllm["resources"]["requests"]["nvidia.com/gpu"] == "2" == vllm["resources"]["limits"]["nvidia.com/gpu"]
    assert pod["nodeSelector"] == {"dedicated.dev/pool": "hopper-h100"}
    assert {"key": "dedicated.dev/pool", "operator": "Equal", "value": "hopper-h100",
            "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]} in terms[0]["matchExpressions"]
    assert {"key": "nvidia.com/gpu.count", "operator": "Gt", "values": ["1"]} in terms[0]["matchExpressions"]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["selector"]["matchLabels"] == objs.service["spec"]["selector"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in dep["spec"]["selector"]["matchLabels"].items())
    assert objs.selector == selector_string("qwen") == "app.kubernetes.io/component=serving,llm.dedicated.dev/endpoint=qwen"
    assert labels["llm.dedicated.dev/pool"] == "hopper-h100"
    for obj in (dep, objs.service):
        assert obj["metadata"]["ownerReferences"] == [{"apiVersion": "llm.dedicated.dev/v1alpha1",
                                                       "kind": "DedicatedEndpoint", "name": "qwen",
                                                       "uid": OWNER.uid, "controller": True,
                                                       "blockOwnerDeletion": True}]
    svc = objs.service["spec"]
    assert svc["type"] == "ClusterIP" and svc["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert objs.url == "http://qwen.team-a.svc:8000/v1"


def test_args_come_from_the_plan_and_are_never_a_shell_string(profiles, pools) -> None:
    p, objs = _build(profiles, pools, text_only="on", context_length=32768)
    vllm = objs.deployment["spec"]["template"]["spec"]["containers"][0]
    assert vllm["command"] == ["vllm", "serve"]
    args = vllm["args"]
    assert args[:8] == ["/models/weights", "--served-model-name", "example/Qwen3.6-35B-A3B-GSQ-2bit",
                        "--host", "0.0.0.0", "--port", "8000", "--tensor-parallel-size"]
    assert args[7:] == p.vllm_args()
    assert "--language-model-only" in args and args[args.index("--max-model-len") + 1] == "32768"
    for container in _containers(objs.deployment):
        assert container["command"][0] not in ("sh", "bash", "/bin/sh", "/bin/bash")
        for arg in container["command"] + container.get("args", []):
            assert isinstance(arg, str)
            if arg is not VERIFY_CHECKPOINT:
                assert not any(tok in arg for tok in (";", "&&", "||", "|", "$(", "`", "\n")), arg


def test_hub_weights_use_a_secret_reference_and_an_init_download(profiles, pools) -> None:
    _, objs = _build(profiles, pools)
    pod = objs.deployment["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["name"] == "download-weights" and init["command"] == ["hf"]
    assert init["args"] == ["download", "example/Qwen3.6-35B-A3B-GSQ-2bit", "--local-dir", "/models/weights",
                            "--revision", "v1"]
    token = [e for e in init["env"] if e["name"] == "HF_TOKEN"]
    assert token == [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}]
    vllm_env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert "HF_TOKEN" not in vllm_env and vllm_env["HF_HUB_OFFLINE"]["value"] == "1"
    weights = next(v for v in pod["volumes"] if v["name"] == "weights")
    assert weights["emptyDir"]["sizeLimit"] == "17Gi"  # 14.9 GiB checkpoint + 10 %, rounded up
    text = json.dumps(objs.deployment)
    assert '"value": "hf_' not in text  # no token literal can appear: only a reference exists


def test_volume_weights_mount_read_only_with_a_verify_step(profiles, pools, checkpoints, tmp_path) -> None:
    spec = DedicatedEndpointSpec.model_validate({"model": {"volume": {"claimName": "models", "path": "qwen/gsq"}}})
    model = resolve_model(spec.model, endpoint_name="qwen")
    p = _plan(profiles, pools, pool="hopper-h100")
    objs = build_serving("qwen", "team-a", spec, p, model, ImageConfig(), OWNER)
    pod = objs.deployment["spec"]["template"]["spec"]
    assert {"name": "weights", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod["volumes"]
    init = pod["initContainers"][0]
    assert init["name"] == "verify-weights" and init["command"][:2] == ["python3", "-c"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "weights")
    assert mount == {"name": "weights", "mountPath": "/models/weights", "readOnly": True, "subPath": "qwen/gsq"}
    # the verify program itself, run for real against test checkpoints
    def verify(directory) -> subprocess.CompletedProcess:
        env = dict(os.environ, MODEL_DIR=str(directory), TERMINATION_LOG=str(tmp_path / "termination-log"))
        return subprocess.run([sys.executable, "-c", VERIFY_CHECKPOINT], env=env, capture_output=True, text=True)
    ok = verify(checkpoints["qwen3-0.6b"])
    assert ok.returncode == 0 and "checkpoint ok" in ok.stdout
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in checkpoints["qwen3-0.6b"].iterdir():
        (broken / f.name).symlink_to(f)
    shard = sorted(broken.glob("*.safetensors"))[0]
    shard.unlink()
    bad = verify(broken)
    assert bad.returncode != 0 and f"missing weight file {shard.name}" in (tmp_path / "termination-log").read_text()


def test_probes_startup_budget_and_shared_memory(profiles, pools) -> None:
    p, objs = _build(profiles, pools)
    vllm = objs.deployment["spec"]["template"]["spec"]["containers"][0]
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[name]["httpGet"] == {"path": "/health", "port": "http"}
    budget = startup_budget_seconds(p)
    assert 600 <= budget <= 3600
    startup = vllm["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= budget
    shm = next(v for v in objs.deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "dshm")
    assert shm == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "6Gi"}}  # 2 + 2 x TP 2
    assert {"name": "dshm", "mountPath": "/dev/shm"} in vllm["volumeMounts"]
    assert vllm["resources"]["limits"]["memory"] == "38Gi"  # 16 + 8 x 2 host + 6 shm
    # a bigger per-GPU load gets a longer budget (BF16 on one H200 GPU: ~67 GiB)
    bf16 = plan(profiles["bf16"], PlanRequest(pool="hopper-h200", gpus_per_replica=1), pools)
    assert startup_budget_seconds(bf16) > budget


def test_restricted_security_context(profiles, pools) -> None:
    _, objs = _build(profiles, pools)
    pod = objs.deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in _containers(objs.deployment):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True


def test_idempotent_and_rolls_out_only_on_spec_change(profiles, pools) -> None:
    _, a = _build(profiles, pools)
    _, b = _build(profiles, pools)
    assert json.dumps(a.deployment) == json.dumps(b.deployment)  # byte-identical, key order included
    assert yaml.safe_dump(a.service) == yaml.safe_dump(b.service)
    assert a.spec_hash == a.deployment["spec"]["template"]["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    scaled = SPEC.model_copy(update={"replicas": 5})
    _, c = _build(profiles, pools, spec=scaled)
    assert c.spec_hash == a.spec_hash and c.deployment["spec"]["replicas"] == 5  # scaling is not a rollout
    _, d = _build(profiles, pools, context_length=16384)
    assert d.spec_hash != a.spec_hash  # a different plan rolls out
    image = SPEC.model_copy(update={"image": "registry.example.com/vllm:custom-1"})
    _, e = _build(profiles, pools, spec=image)
    assert e.spec_hash != a.spec_hash
    assert e.deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/vllm:custom-1"


def test_manifests_round_trip_through_the_kubernetes_client_models(profiles, pools) -> None:
    """Every key we write is a real field: the official client's models drop unknown keys, so a
    misspelled field would not survive the round trip."""
    from kubernetes.client import ApiClient

    api = ApiClient()
    _, objs = _build(profiles, pools)

    for obj, kind in ((objs.deployment, "V1Deployment"), (objs.service, "V1Service")):
        model = api.deserialize(json.dumps(obj), kind, "application/json")
        assert api.sanitize_for_serialization(model) == obj


def test_names_for_long_or_dotted_endpoints() -> None:
    long = "a" * 100
    assert len(label_value(long)) <= 63 and label_value(long) == label_value(long)
    assert service_name("qwen") == "qwen"
    dotted = service_name("qwen.v2")
    assert dotted.startswith("qwen-v2-") and len(dotted) <= 63
    assert service_name("9lives").startswith("ep-9lives-")


def test_resolve_quantized_model_artifacts() -> None:
    spec = DedicatedEndpointSpec.model_validate({"model": {"quantizedModelRef": {"name": "qwen-gsq"}}})
    with pytest.raises(ValueError, match="no published artifact"):
        resolve_model(spec.model, endpoint_name="ep")
    pvc = resolve_model(spec.model, endpoint_name="ep",
                        artifact=Artifact(location="pvc://models/qwen/gsq-2bit", format="humming"))
    assert (pvc.claim_name, pvc.path, pvc.served_name) == ("models", "qwen/gsq-2bit", "qwen-gsq")
    hub = resolve_model(spec.model, endpoint_name="ep", artifact=Artifact(location="hf://me/qwen-gsq@abc123", format="humming"),
                        artifact_token=SecretKeyRef(name="hf"))
    assert (hub.repo, hub.revision, hub.token.name) == ("me/qwen-gsq", "abc123", "hf")
    with pytest.raises(ValueError):
        resolve_model(spec.model, endpoint_name="ep", artifact=Artifact(location="s3://bucket/x", format="humming"))
    with pytest.raises(ValueError, match="invalid"):
        resolve_model(spec.model, endpoint_name="ep", artifact=Artifact(location="pvc://models/../etc", format="humming"))


def test_image_config() -> None:
    assert image_config(env={}).serving == DEFAULT_SERVING_IMAGE
    cfg = image_config({"pullPolicy": "Always"}, env={"DEDICATED_SERVING_IMAGE": "reg.example/vllm:1.2.3"})
    assert cfg.serving == "reg.example/vllm:1.2.3" and cfg.pull_policy == "Always"
    with pytest.raises(ValueError, match="pinned"):
        image_config({"serving": "reg.example/vllm:latest"}, env={})
    with pytest.raises(ValueError, match="pinned"):
        image_config({"serving": "reg.example/vllm:1; rm -rf /"}, env={})
    with pytest.raises(ValueError, match="unknown image setting"):
        image_config({"sevring": "x/y:1"}, env={})
