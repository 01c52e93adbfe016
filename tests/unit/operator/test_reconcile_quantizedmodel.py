"""The pure QuantizedModel reconciler and its Job builder: one Job per generation, the contract's
mounts/env/RBAC, and every phase and failure reason derived from a Job as the API reports it."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime

import pytest

from dedicated.operator.api.quantizedmodel import QuantizedModelSpec
from dedicated.operator.builders.quantize_job import job_name
from dedicated.operator.images import ImageConfig
from dedicated.operator.reconcile.quantizedmodel import (
    QMInput,
    choose_placement,
    desired_job,
    parse_termination,
    qm_status,
    quantize_memory_bytes,
    termination_message,
)
from dedicated.operator.vram.memory import GIB

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def spec(**over) -> QuantizedModelSpec:
    raw = {"base": {"hub": {"repo": "Qwen/Qwen3.6-35B-A3B", "tokenSecretRef": {"name": "hf", "key": "token"}}},
           "method": "gsq", "bits": 2, "output": {"volume": {"claimName": "models", "path": "qwen36-gsq"}},
           "resources": {"pool": "hopper-h100", "gpus": 1}}
    raw.update(over)
    return QuantizedModelSpec.model_validate(raw)


def make_input(pools, sp=None, **kw) -> QMInput:
    base = dict(name="qwen36-gsq", namespace="ns", uid="uid-q", generation=1, spec=sp or spec(), status=None,
                pools=pools, images=ImageConfig())
    base.update(kw)
    return QMInput(**base)


def created_job(inp: QMInput) -> dict:
    d = desired_job(inp)
    job = copy.deepcopy(d.objects.job)
    job["status"] = {}
    return job


def with_annotation(job: dict, key: str, value: dict) -> dict:
    job = copy.deepcopy(job)
    job["metadata"]["annotations"][key] = json.dumps(value)
    return job


def cond(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_job_names_are_deterministic_and_valid() -> None:
    assert job_name("qwen36-gsq", 3) == "qwen36-gsq-quantize-3"
    long = job_name("a" * 250, 12)
    assert len(long) <= 63 and long.endswith("-quantize-12") and long == job_name("a" * 250, 12)
    assert job_name("a" * 250, 12) != job_name("a" * 249 + "b", 12)
    dotted = job_name("my.model", 1)
    assert "." not in dotted and len(dotted) <= 63


def test_job_follows_the_contract(pools) -> None:
    d = desired_job(make_input(pools))
    assert d.create_job and d.blocked is None
    objs = d.objects
    name = "qwen36-gsq-quantize-1"
    assert {o["metadata"]["name"] for o in (*objs.supporting, objs.job)} == {name}
    for o in (*objs.supporting, objs.job):
        assert o["metadata"]["ownerReferences"] == [{"apiVersion": "llm.dedicated.dev/v1alpha1",
                                                     "kind": "QuantizedModel", "name": "qwen36-gsq", "uid": "uid-q",
                                                     "controller": True, "blockOwnerDeletion": True}]
    config = json.loads(objs.configmap["data"]["config.json"])
    assert config["method"] == "gsq" and config["bits"] == 2 and config["generation"] == 1
    assert config["output"]["dir"] == "/output/qwen36-gsq"
    assert config["model"]["hub"] == {"repo": "Qwen/Qwen3.6-35B-A3B", "tokenEnv": "HF_TOKEN"} | \
        {k: v for k, v in config["model"]["hub"].items() if k not in ("repo", "tokenEnv")}
    job = objs.job["spec"]
    pod = job["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] + c["args"] == ["python", "-m", "dedicated.quantize_job", "run", "--config",
                                        "/etc/dedicated/job/config.json"]
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"
    assert env["JOB_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert not any("value" in e and "hf_" in str(e["value"]).lower() for e in c["env"])  # no literal token
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/dedicated/job"]["readOnly"] is True and mounts["/output"]["readOnly"] is False
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols[mounts["/output"]["name"]]["persistentVolumeClaim"]["claimName"] == "models"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"dedicated.dev/pool": "hopper-h100"}
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == name
    assert job["backoffLimit"] == 4 and job["activeDeadlineSeconds"] == 172800
    rules = job["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "quantize", "operator": "In", "values": [2]}}
    assert rules[1]["action"] == "Ignore" and rules[1]["onPodConditions"][0]["type"] == "DisruptionTarget"
    assert objs.role["rules"] == [{"apiGroups": ["batch"], "resources": ["jobs"], "resourceNames": [name],
                                   "verbs": ["get", "patch"]}]
    assert objs.role_binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "ns"}]
    # pure: the same input gives byte-identical objects
    assert desired_job(make_input(pools)).objects == objs


def test_placement_from_estimate_when_the_spec_leaves_it_open(pools, profiles) -> None:
    sp = spec(resources=None)
    need = quantize_memory_bytes(profiles["bf16"], sp)
    assert 5 * GIB < need < 40 * GIB  # one layer at a time, not the 67 GiB model
    placement = choose_placement(sp, pools, profiles["bf16"])
    assert placement.gpus == 1 and placement.pool.name == "turing-t4" or placement.pool.gpu_memory_mib * 2**20 * 0.9 >= need
    assert "estimated peak" in placement.why
    unknown = choose_placement(sp, pools, None)
    assert "assumed peak 40 GiB" in unknown.why and unknown.pool.gpu_memory_mib >= 40 * 1024


def test_missing_secret_and_unknown_pool_block_the_job(pools) -> None:
    d = desired_job(make_input(pools, missing_secrets=["Secret 'hf' not found in namespace ns"]))
    assert d.objects is None and d.blocked[0] == "SecretNotFound"
    status, events = qm_status(make_input(pools), d, None, now=T0)
    assert status["phase"] == "Failed" and cond(status, "Ready")["reason"] == "SecretNotFound"
    assert cond(status, "JobCreated")["status"] == "False"
    assert any(e.type == "Warning" and e.reason == "SecretNotFound" for e in events)
    # once the Secret exists, the Job is made: a failure before any Job is not a finished generation
    retry = desired_job(make_input(pools, status=status))
    assert retry.create_job and retry.objects is not None
    d = desired_job(make_input(pools, spec(resources={"pool": "nope"})))
    assert d.blocked[0] == "PoolNotFound" and "nope" in d.blocked[1]


def test_pending_then_progress_then_validating(pools) -> None:
    inp = make_input(pools)
    job = created_job(inp)
    d = desired_job(make_input(pools, job=job))
    assert not d.create_job  # exists: never created again
    status, events = qm_status(make_input(pools, job=job), d, job, now=T0)
    assert status["phase"] == "Pending" and cond(status, "JobCreated")["status"] == "True"
    assert status["jobName"] == "qwen36-gsq-quantize-1"
    progress = {"stage": "quantize", "layer": 12, "totalLayers": 40, "percent": 31, "elapsedSeconds": 600,
                "etaSeconds": 1300, "summary": "quantize 12/40 (31%)", "resumedFromLayer": None}
    running = with_annotation(job, "llm.dedicated.dev/progress", progress)
    status, events = qm_status(make_input(pools, job=running, status=status), d, running, now=T0)
    assert status["phase"] == "Quantizing"
    assert status["progress"] == {"stage": "quantize", "layer": 12, "totalLayers": 40, "percent": 31,
                                  "elapsedSeconds": 600, "etaSeconds": 1300, "summary": "quantize 12/40 (31%)"}
    assert cond(status, "Progressing")["reason"] == "Quantizing"
    resumed = with_annotation(job, "llm.dedicated.dev/progress", progress | {"resumedFromLayer": 10})
    st2, _ = qm_status(make_input(pools, job=resumed, status=status), d, resumed, now=T0)
    assert cond(st2, "Progressing")["reason"] == "Resumed" and "resumed from layer 10" in cond(st2, "Progressing")["message"]
    validating = with_annotation(job, "llm.dedicated.dev/progress", progress | {"stage": "validate", "percent": 90})
    st3, events = qm_status(make_input(pools, job=validating, status=status), d, validating, now=T0)
    assert st3["phase"] == "Validating" and [e.reason for e in events] == ["Validating"]


def test_result_annotation_means_succeeded(pools) -> None:
    job = created_job(make_input(pools))
    result = {"artifact": {"location": "pvc://models/qwen36-gsq", "format": "humming", "totalBytes": 15 * GIB,
                           "revision": None},
              "quality": {"perplexityOriginal": 6.1, "perplexityQuantized": 6.9, "perplexityRatio": 1.131,
                          "loadTestPassed": True}, "manifestPath": "/output/qwen36-gsq/manifest.json"}
    done = with_annotation(job, "llm.dedicated.dev/result", result)
    done["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "completionTime": "2026-01-01T01:00:00Z",
                      "startTime": "2026-01-01T00:00:00Z"}
    status, events = qm_status(make_input(pools, job=done), desired_job(make_input(pools, job=done)), done, now=T0)
    assert status["phase"] == "Succeeded"
    assert status["artifact"] == {"location": "pvc://models/qwen36-gsq", "format": "humming", "totalBytes": 15 * GIB}
    assert status["quality"]["perplexityRatio"] == 1.131 and status["quality"]["loadTestPassed"] is True
    assert cond(status, "Validated")["status"] == "True" and cond(status, "Ready")["status"] == "True"
    assert status["completionTime"] == "2026-01-01T01:00:00Z" and status["startTime"] == "2026-01-01T00:00:00Z"
    assert any(e.reason == "Succeeded" and e.type == "Normal" for e in events)
    # the generation is finished: a deleted Job is not made again, the status stays
    gone = make_input(pools, job=None, status=status)
    assert desired_job(gone).objects is None
    kept, events = qm_status(gone, desired_job(gone), None, now=T0)
    assert kept == status and events == []


@pytest.mark.parametrize("message, reason", [
    ("NoExperts: the model has no MoE experts but spec.modules asks for experts", "NoExperts"),
    ("InvalidGroupSize: group size 256 does not divide 1408 (model.layers.0.mlp.experts.0.down_proj)", "InvalidGroupSize"),
    ("ModelUnreachable: Qwen/nope: repository not found", "ModelUnreachable"),
    ("ValidationFailed: perplexity ratio 3.2 exceeds 2.0", "ValidationFailed"),
    ("Traceback (most recent call last): boom", "JobFailed"),
])
def test_failure_reason_comes_from_the_termination_message(pools, message, reason) -> None:
    job = created_job(make_input(pools))
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                     "message": "Container quantize for pod ns/x failed with exit code 2"}]}
    pods = [{"status": {"containerStatuses": [{"name": "quantize", "state": {"terminated": {
        "exitCode": 2, "message": message, "finishedAt": "2026-01-01T00:10:00Z"}}}]}}]
    inp = make_input(pools, job=job, termination_message=termination_message(pods))
    status, events = qm_status(inp, desired_job(inp), job, now=T0)
    assert status["phase"] == "Failed" and cond(status, "Ready")["reason"] == reason
    assert cond(status, "Progressing")["status"] == "False"
    assert any(e.type == "Warning" and e.reason == reason for e in events)
    if reason == "ValidationFailed":
        assert cond(status, "Validated")["status"] == "False"


def test_deadline_exceeded_and_completed_without_result(pools) -> None:
    job = created_job(make_input(pools))
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                     "message": "Job was active longer than specified deadline"}]}
    inp = make_input(pools, job=job)
    status, _ = qm_status(inp, desired_job(inp), job, now=T0)
    assert cond(status, "Ready")["reason"] == "DeadlineExceeded" and "172800" in cond(status, "Ready")["message"]
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    status, _ = qm_status(inp, desired_job(inp), job, now=T0)
    assert status["phase"] == "Failed" and "without reporting a result" in cond(status, "Ready")["message"]


def test_garbage_annotations_never_crash(pools) -> None:
    job = created_job(make_input(pools))
    job["metadata"]["annotations"]["llm.dedicated.dev/progress"] = "{not json"
    job["metadata"]["annotations"]["llm.dedicated.dev/result"] = json.dumps({"artifact": {"format": "humming"}})
    inp = make_input(pools, job=job)
    status, _ = qm_status(inp, desired_job(inp), job, now=T0)
    assert status["phase"] == "Failed" and "malformed" in cond(status, "Ready")["message"]
    job["metadata"]["annotations"]["llm.dedicated.dev/result"] = ""
    job["metadata"]["annotations"]["llm.dedicated.dev/progress"] = json.dumps(
        {"stage": 5, "layer": -3, "percent": 1e9, "summary": "x" * 500, "etaSeconds": "soon"})
    status, _ = qm_status(inp, desired_job(inp), job, now=T0)
    assert status["progress"]["percent"] == 100 and status["progress"]["layer"] == 0
    assert len(status["progress"]["summary"]) == 128 and "etaSeconds" not in status["progress"]


def test_parse_termination() -> None:
    assert parse_termination("SecretNotFound: Secret hf not found") == ("SecretNotFound", "Secret hf not found")
    assert parse_termination("weird: thing") == ("JobFailed", "weird: thing")
    assert parse_termination("  ") is None and parse_termination(None) is None
