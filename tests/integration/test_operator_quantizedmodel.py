"""QuantizedModel through the real API server: one Job per generation, the Job contract, phases from
the Job's annotations and conditions, failures with their reasons, restarts without duplicates,
and an endpoint that waits for its model.

Simulated nodes run no containers: where a test needs the program's side of the contract (progress
and result annotations on the Job), it patches them exactly as the program does (the end-to-end
test in test_operator_e2e.py runs the real program instead). Pod outcomes (a failing container, its
exit code and termination message) come from kwok's failure simulation, steered by the
``llm.dedicated.dev/pod-annotations`` annotation that the operator copies to the Job's pods.
"""

from __future__ import annotations

import json

import pytest
import yaml

from dedicated.operator.kube import (
    CONFIGMAPS,
    DEDICATED_ENDPOINTS,
    DEPLOYMENTS,
    EVENTS,
    JOBS,
    PODS,
    QUANTIZED_MODELS,
    ROLE_BINDINGS,
    ROLES,
    SECRETS,
    SERVICE_ACCOUNTS,
    Kube,
)
from dedicated.operator.testing import (
    prepare_model_namespace,
    RestartableOperator,
    apply_crds,
    condition,
    settle,
    wait_for,
)

pytestmark = pytest.mark.integration

GSQ = "qwen3.6-35b-a3b-gsq-w2"
LONG_RUN = {"dedicated.dev/simulate-run-duration": "1h"}


@pytest.fixture(scope="module")
def op(local_cluster, kubectl):
    apply_crds(kubectl)
    operator = RestartableOperator(local_cluster.kubeconfig)
    yield operator
    operator.stop()


@pytest.fixture(scope="module")
def kube(k8s) -> Kube:
    return Kube(k8s)


@pytest.fixture
def ns(namespace, kube, op) -> str:
    prepare_model_namespace(kube, namespace)
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf", "namespace": namespace},
                 "stringData": {"token": "hf_not_a_real_token_0123456789"}})
    return namespace


def qm(name: str, ns: str, *, pod_annotations: dict | None = LONG_RUN, **spec) -> dict:
    body = {"base": {"hub": {"repo": "Qwen/Qwen3.6-35B-A3B", "tokenSecretRef": {"name": "hf", "key": "token"}}},
            "method": "gsq", "bits": 2, "output": {"volume": {"claimName": "models", "path": name}},
            "resources": {"pool": "hopper-h100", "gpus": 1}}
    body.update(spec)
    meta = {"name": name, "namespace": ns}
    if pod_annotations:
        meta["annotations"] = {"llm.dedicated.dev/pod-annotations": json.dumps(pod_annotations)}
    return {"apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "QuantizedModel", "metadata": meta, "spec": body}


def get(kube: Kube, ns: str, name: str) -> dict:
    return kube.get(QUANTIZED_MODELS, ns, name)


def wait_phase(kube: Kube, ns: str, name: str, phase: str, timeout: float = 90) -> dict:
    return wait_for(lambda: (o := get(kube, ns, name)) and (o.get("status") or {}).get("phase") == phase and o,
                    timeout, what=f"QuantizedModel {ns}/{name} phase {phase} (now "
                                  f"{((get(kube, ns, name) or {}).get('status') or {}).get('phase')})")


def jobs_of(kube: Kube, ns: str, name: str) -> list[dict]:
    return kube.list(JOBS, ns, label_selector=f"llm.dedicated.dev/quantizedmodel={name}")


def annotate_job(kube: Kube, ns: str, job: str, key: str, value: dict) -> None:
    """What the program does (contract): patch its own Job's annotations."""
    kube.merge_patch(JOBS, ns, job, {"metadata": {"annotations": {key: json.dumps(value)}}})


PROGRESS = {"stage": "quantize", "layer": 12, "totalLayers": 40, "percent": 31, "elapsedSeconds": 600,
            "etaSeconds": 1300, "summary": "quantize 12/40 (31%)", "resumedFromLayer": None}


def result(path: str) -> dict:
    return {"artifact": {"location": f"pvc://models/{path}", "format": "humming", "totalBytes": 16035504736,
                         "revision": None},
            "quality": {"perplexityOriginal": 6.11, "perplexityQuantized": 6.93, "perplexityRatio": 1.134,
                        "loadTestPassed": True}, "manifestPath": f"/output/{path}/manifest.json"}


def test_job_contract_phases_and_printer_columns(ns, kube, kubectl) -> None:
    kube.create(qm("q1", ns))
    job = wait_for(lambda: kube.get(JOBS, ns, "q1-quantize-1"), 60, what="the Job")
    pending = wait_phase(kube, ns, "q1", "Pending")
    assert pending["status"]["jobName"] == "q1-quantize-1"
    assert condition(pending, "JobCreated")["status"] == "True"
    # the contract: config in a ConfigMap, per-Job RBAC limited to this Job, token by reference
    config = json.loads(kube.get(CONFIGMAPS, ns, "q1-quantize-1")["data"]["config.json"])
    assert config["method"] == "gsq" and config["generation"] == 1 and config["output"]["dir"] == "/output/q1"
    role = kube.get(ROLES, ns, "q1-quantize-1")
    assert role["rules"] == [{"apiGroups": ["batch"], "resources": ["jobs"], "resourceNames": ["q1-quantize-1"],
                              "verbs": ["get", "patch"]}]
    assert kube.get(ROLE_BINDINGS, ns, "q1-quantize-1") and kube.get(SERVICE_ACCOUNTS, ns, "q1-quantize-1")
    pod_spec = job["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod_spec["containers"][0]["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    assert "hf_not_a_real_token" not in json.dumps(job)
    assert job["spec"]["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    pods = wait_for(lambda: kube.list(PODS, ns, label_selector="batch.kubernetes.io/job-name=q1-quantize-1"), 60,
                    what="the Job's pod")
    assert pods[0]["spec"]["nodeSelector"] == {"dedicated.dev/pool": "hopper-h100"}

    annotate_job(kube, ns, "q1-quantize-1", "llm.dedicated.dev/progress", PROGRESS)
    quantizing = wait_phase(kube, ns, "q1", "Quantizing")
    assert quantizing["status"]["progress"]["summary"] == "quantize 12/40 (31%)"
    rows = kubectl("get", "quantizedmodels", "-n", ns).stdout.splitlines()
    assert rows[0].split() == ["NAME", "METHOD", "BITS", "PHASE", "PROGRESS", "AGE"]
    assert rows[1].split()[:7] == ["q1", "gsq", "2", "Quantizing", "quantize", "12/40", "(31%)"]

    annotate_job(kube, ns, "q1-quantize-1", "llm.dedicated.dev/progress", {**PROGRESS, "stage": "validate",
                                                                            "percent": 90, "summary": "validate"})
    wait_phase(kube, ns, "q1", "Validating")
    annotate_job(kube, ns, "q1-quantize-1", "llm.dedicated.dev/result", result("q1"))
    done = wait_phase(kube, ns, "q1", "Succeeded")
    assert done["status"]["artifact"]["location"] == "pvc://models/q1"
    assert done["status"]["quality"]["perplexityRatio"] == 1.134
    assert condition(done, "Ready")["status"] == "True" and condition(done, "Validated")["status"] == "True"
    wide = kubectl("get", "qm", "q1", "-n", ns, "-o", "wide").stdout
    assert "ARTIFACT" in wide and "pvc://models/q1" in wide
    wait_for(lambda: {"JobCreated", "Quantizing", "Validating", "Succeeded"} <=
             {e["reason"] for e in kube.list(EVENTS, ns) if e["involvedObject"]["name"] == "q1"}, 30,
             what="the model's Events")


def test_spec_change_on_a_finished_model_starts_a_new_generation(ns, kube) -> None:
    kube.create(qm("q2", ns))
    wait_for(lambda: kube.get(JOBS, ns, "q2-quantize-1"), 60, what="the first Job")
    annotate_job(kube, ns, "q2-quantize-1", "llm.dedicated.dev/result", result("q2"))
    wait_phase(kube, ns, "q2", "Succeeded")
    kube.merge_patch(QUANTIZED_MODELS, ns, "q2", {"spec": {"calibration": {"numSamples": 64}}})
    wait_for(lambda: kube.get(JOBS, ns, "q2-quantize-2"), 60, what="the second generation's Job")
    st = wait_for(lambda: (o := get(kube, ns, "q2"))["status"].get("observedGeneration") == 2 and o["status"], 60,
                  what="status of generation 2")
    assert st["jobName"] == "q2-quantize-2" and st["phase"] == "Pending"
    assert "artifact" not in st  # the new generation has not published anything yet
    wait_for(lambda: [j["metadata"]["name"] for j in jobs_of(kube, ns, "q2")
                      if not j["metadata"].get("deletionTimestamp")] == ["q2-quantize-2"], 60,
             what="the old generation's Job removed")
    assert kube.get(CONFIGMAPS, ns, "q2-quantize-1") is None
    assert json.loads(kube.get(CONFIGMAPS, ns, "q2-quantize-2")["data"]["config.json"])["calibration"]["numSamples"] == 64


def test_no_duplicate_job_across_restarts_and_a_crash_after_create(ns, kube, op) -> None:
    # A crash between "Job created" and "status written": stop the operator, then leave the world
    # exactly as that operator would have (QuantizedModel without status, its Job created).
    op.stop()
    try:
        kube.create(qm("q3", ns))
        body = get(kube, ns, "q3")
        from dedicated.operator.api.quantizedmodel import QuantizedModelSpec
        from dedicated.operator.images import ImageConfig
        from dedicated.operator.pools import load_pools
        from dedicated.operator.reconcile.quantizedmodel import QMInput, desired_job
        from dedicated.operator.testing import LOCAL_POOLS

        inp = QMInput(name="q3", namespace=ns, uid=body["metadata"]["uid"], generation=1,
                      spec=QuantizedModelSpec.model_validate(body["spec"]), status=None, pools=load_pools(LOCAL_POOLS),
                      images=ImageConfig(), pod_annotations=LONG_RUN)
        objects = desired_job(inp).objects
        for obj in objects.supporting:
            kube.create(obj)
        created, _ = kube.create(objects.job)
        assert "status" not in get(kube, ns, "q3")
    finally:
        op.start()
    st = wait_phase(kube, ns, "q3", "Pending")
    assert st["status"]["jobName"] == "q3-quantize-1"
    jobs = jobs_of(kube, ns, "q3")
    assert [j["metadata"]["uid"] for j in jobs] == [created["metadata"]["uid"]]  # adopted, not replaced
    # and restarts while it runs never add one
    annotate_job(kube, ns, "q3-quantize-1", "llm.dedicated.dev/progress", PROGRESS)
    wait_phase(kube, ns, "q3", "Quantizing")
    for _ in range(2):
        op.stop()
        op.start()
        wait_for(lambda: op.ctx.queue.stats.reconciles["quantizedmodel"] >= 1, 60, what="a reconcile after restart")
        settle(op.thread)
        assert [j["metadata"]["uid"] for j in jobs_of(kube, ns, "q3")] == [created["metadata"]["uid"]]
        assert get(kube, ns, "q3")["status"]["phase"] == "Quantizing"
        assert op.ctx.kube.stats.writes() == {}, "a restart with nothing changed wrote something"


def test_missing_secret_blocks_the_job_until_it_exists(ns, kube) -> None:
    body = qm("q4", ns)
    body["spec"]["base"]["hub"]["tokenSecretRef"] = {"name": "later", "key": "token"}
    kube.create(body)
    failed = wait_phase(kube, ns, "q4", "Failed")
    ready = condition(failed, "Ready")
    assert ready["reason"] == "SecretNotFound" and "later" in ready["message"]
    assert jobs_of(kube, ns, "q4") == []
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "later", "namespace": ns},
                 "stringData": {"token": "hf_x"}})
    wait_for(lambda: kube.get(JOBS, ns, "q4-quantize-1"), 60, what="the Job once the Secret exists")
    wait_phase(kube, ns, "q4", "Pending")


def test_unknown_pool_is_a_condition(ns, kube) -> None:
    kube.create(qm("q5", ns, resources={"pool": "no-such-pool", "gpus": 1}))
    st = wait_phase(kube, ns, "q5", "Failed")
    assert condition(st, "Ready")["reason"] == "PoolNotFound" and "no-such-pool" in condition(st, "Ready")["message"]
    assert jobs_of(kube, ns, "q5") == []


@pytest.mark.parametrize("message, exit_code, reason, pods", [
    # input error: exit code 2, podFailurePolicy fails the Job at once (one pod, no retry)
    ("NoExperts: Qwen/Qwen3-8B has no MoE experts but spec.modules selects experts", 2, "NoExperts", 1),
    ("InvalidGroupSize: group size 256 does not divide 1408 (layers.0.mlp.down_proj)", 2, "InvalidGroupSize", 1),
    # a real fault: retried up to backoffLimit (1 here), then the last message is reported
    ("JobFailed: CUDA error: an illegal memory access was encountered", 1, "JobFailed", 2),
])
def test_failures_carry_the_pods_reason(ns, kube, message, exit_code, reason, pods) -> None:
    name = f"fail-{reason.lower()}"
    kube.create(qm(name, ns, backoffLimit=1, pod_annotations={
        "dedicated.dev/simulate-failure": message, "dedicated.dev/simulate-exit-code": str(exit_code),
        "dedicated.dev/simulate-run-duration": "1s"}))
    st = wait_phase(kube, ns, name, "Failed", timeout=120)
    ready = condition(st, "Ready")
    assert ready["reason"] == reason and message.split(": ", 1)[1] in ready["message"]
    created = kube.list(PODS, ns, label_selector=f"batch.kubernetes.io/job-name={name}-quantize-1")
    assert len(created) == pods


def test_deadline_exceeded(ns, kube) -> None:
    kube.create(qm("q6", ns))
    wait_for(lambda: kube.get(JOBS, ns, "q6-quantize-1"), 60, what="the Job")
    wait_phase(kube, ns, "q6", "Pending")
    # the CRD's minimum deadline is 10 minutes; shorten the Job's own (a mutable field) instead
    kube.merge_patch(JOBS, ns, "q6-quantize-1", {"spec": {"activeDeadlineSeconds": 1}})
    st = wait_phase(kube, ns, "q6", "Failed", timeout=120)
    assert condition(st, "Ready")["reason"] == "DeadlineExceeded"


def _endpoint(name: str, ns: str, model: str) -> dict:
    return {"apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "DedicatedEndpoint",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"model": {"quantizedModelRef": {"name": model}}, "placement": {"gpuFamilies": ["hopper"]}}}


def test_endpoint_waits_for_its_quantized_model(ns, kube) -> None:
    kube.create(qm("served", ns, output={"volume": {"claimName": "models", "path": GSQ}}))
    kube.create(_endpoint("ep", ns, "served"))
    waiting = wait_for(lambda: ((o := kube.get(DEDICATED_ENDPOINTS, ns, "ep")).get("status") or {}).get("phase")
                       == "WaitingForModel" and o, 60, what="endpoint WaitingForModel")
    assert condition(waiting, "ModelReady")["reason"] == "WaitingForQuantizedModel"
    assert kube.get(DEPLOYMENTS, ns, "ep") is None
    wait_for(lambda: kube.get(JOBS, ns, "served-quantize-1"), 60, what="the Job")
    annotate_job(kube, ns, "served-quantize-1", "llm.dedicated.dev/progress", PROGRESS)
    wait_for(lambda: "quantize 12/40" in condition(kube.get(DEDICATED_ENDPOINTS, ns, "ep"), "ModelReady")["message"],
             60, what="the endpoint to mirror the model's progress")
    # the program publishes: the endpoint reacts (watch on QuantizedModels, index by reference)
    annotate_job(kube, ns, "served-quantize-1", "llm.dedicated.dev/result", result(GSQ))
    ready = wait_for(lambda: ((o := kube.get(DEDICATED_ENDPOINTS, ns, "ep")).get("status") or {}).get("phase")
                     == "Ready" and o, 90, what="endpoint Ready after the model succeeded")
    assert condition(ready, "ModelReady")["reason"] == "ModelResolved"
    pod = kube.get(DEPLOYMENTS, ns, "ep")["spec"]["template"]["spec"]
    weights = next(v for v in pod["volumes"] if v["name"] == "weights")
    assert weights["persistentVolumeClaim"]["claimName"] == "models"
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "weights")
    assert mount["subPath"] == GSQ and mount["readOnly"] is True
    # the model is deleted behind the endpoint's back: it keeps serving and says why it cannot change
    kube.delete(QUANTIZED_MODELS, ns, "served")
    degraded = wait_for(lambda: ((o := kube.get(DEDICATED_ENDPOINTS, ns, "ep")).get("status") or {}).get("phase")
                        == "Degraded" and o, 60, what="endpoint Degraded after its model was deleted")
    assert condition(degraded, "ModelReady")["reason"] == "QuantizedModelNotFound"
    assert degraded["status"]["readyReplicas"] == 1 and kube.get(DEPLOYMENTS, ns, "ep") is not None


def test_endpoint_of_a_failed_model_says_so(ns, kube) -> None:
    kube.create(qm("bad", ns, pod_annotations={"dedicated.dev/simulate-failure": "NoExperts: dense model",
                                               "dedicated.dev/simulate-exit-code": "2",
                                               "dedicated.dev/simulate-run-duration": "1s"}))
    kube.create(_endpoint("ep2", ns, "bad"))
    wait_phase(kube, ns, "bad", "Failed", timeout=120)
    st = wait_for(lambda: (c := condition(kube.get(DEDICATED_ENDPOINTS, ns, "ep2"), "ModelReady")) and
                  c["reason"] == "QuantizedModelFailed" and kube.get(DEDICATED_ENDPOINTS, ns, "ep2"), 60,
                  what="endpoint QuantizedModelFailed")
    assert "NoExperts" in condition(st, "ModelReady")["message"] and st["status"]["phase"] == "Failed"


def test_secret_values_never_leave_the_secret(ns, kube, kubectl) -> None:
    kube.create(qm("q7", ns))
    wait_phase(kube, ns, "q7", "Pending")
    everything = kubectl("get", "qm,jobs,configmaps,events,pods,deployments,dep", "-n", ns, "-o", "yaml").stdout
    assert "hf_not_a_real_token" not in everything
    assert yaml.safe_load(everything)["items"]
    assert kube.get(SECRETS, ns, "hf")  # the Secret itself is untouched
