"""DedicatedEndpoint through the real API server: the operator runs in-process (one per module),
kubectl and the kubernetes client drive it, kwok runs the pods.

Model facts: the examples' model-facts ConfigMaps (Qwen3.6-35B-A3B in 2-bit GSQ, 4-bit AutoRound
and BF16) applied into each test namespace, with a bound ``models`` claim (nothing mounts it).
"""

from __future__ import annotations

import json
import re
import time

import pytest
import yaml

from dedicated.operator.kube import (
    CONFIGMAPS,
    DEDICATED_ENDPOINTS,
    DEPLOYMENTS,
    EVENTS,
    NAMESPACES,
    SERVICES,
    Kube,
)
from dedicated.operator.testing import (
    prepare_model_namespace,
    RestartableOperator,
    apiserver_writes,
    apply_crds,
    condition,
    example_manifests,
    settle,
    wait_for,
)

pytestmark = pytest.mark.integration

GSQ = "qwen3.6-35b-a3b-gsq-w2"
BF16 = "qwen3.6-35b-a3b-bf16"


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
    return namespace


def endpoint(name: str, namespace: str, model: dict, **spec) -> dict:
    return {"apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "DedicatedEndpoint",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"model": model, **spec}}


def volume(path: str) -> dict:
    return {"volume": {"claimName": "models", "path": path}}


def get(kube: Kube, ns: str, name: str) -> dict:
    return kube.get(DEDICATED_ENDPOINTS, ns, name)


def wait_phase(kube: Kube, ns: str, name: str, phase: str, timeout: float = 90, generation: int | None = None) -> dict:
    def probe():
        obj = get(kube, ns, name)
        st = (obj or {}).get("status") or {}
        if st.get("phase") == phase and (generation is None or st.get("observedGeneration") == generation):
            return obj
        return None

    return wait_for(probe, timeout, what=f"endpoint {ns}/{name} phase {phase} "
                                         f"(now {((get(kube, ns, name) or {}).get('status') or {}).get('phase')})")


def wait_reason(kube: Kube, ns: str, name: str, type_: str, reason: str, timeout: float = 90) -> dict:
    def probe():
        c = condition(get(kube, ns, name), type_)
        return c if c and c["reason"] == reason else None

    return wait_for(probe, timeout, what=f"{ns}/{name} {type_} reason {reason} "
                                         f"(now {condition(get(kube, ns, name), type_)})")


def table(kubectl, *args: str) -> list[dict[str, str]]:
    """``kubectl get`` output as rows keyed by the column headers kubectl printed."""
    out = kubectl("get", *args).stdout.strip().splitlines()
    header = out[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    rows = []
    for line in out[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None], strict=True)]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


# --- the examples, printer columns ---------------------------------------------------------------


def test_examples_reach_ready_with_printer_columns(ns, kube, kubectl) -> None:
    for doc in example_manifests("endpoint-ampere.yaml", "endpoint-hopper.yaml", "endpoint-gb10.yaml", namespace=ns):
        kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    for name in ("qwen36-gsq-ampere", "qwen36-autoround-hopper", "qwen36-bf16-gb10"):
        wait_phase(kube, ns, name, "Ready", timeout=120)
    rows = {r["NAME"]: r for r in table(kubectl, "dedicatedendpoints", "-n", ns)}
    assert list(rows["qwen36-gsq-ampere"]) == ["NAME", "MODEL", "POOL", "GPU", "GPUS", "READY", "DESIRED", "PHASE", "AGE"]
    assert {k: rows["qwen36-gsq-ampere"][k] for k in ("MODEL", "POOL", "GPU", "GPUS", "READY", "DESIRED", "PHASE")} == {
        "MODEL": GSQ, "POOL": "ampere-a10", "GPU": "NVIDIA-A10", "GPUS": "2", "READY": "2", "DESIRED": "2",
        "PHASE": "Ready"}
    assert rows["qwen36-autoround-hopper"]["POOL"] == "hopper-h100" and rows["qwen36-autoround-hopper"]["GPUS"] == "1"
    assert rows["qwen36-bf16-gb10"]["GPU"] == "NVIDIA-GB10"
    wide = {r["NAME"]: r for r in table(kubectl, "dep", "-n", ns, "-o", "wide")}  # short name works too
    assert wide["qwen36-gsq-ampere"]["URL"] == f"http://qwen36-gsq-ampere.{ns}.svc:8000/v1"
    assert (wide["qwen36-gsq-ampere"]["TP"], wide["qwen36-gsq-ampere"]["MAX-LEN"]) == ("2", "65536")
    assert wide["qwen36-autoround-hopper"]["MTP"] == "true" and wide["qwen36-gsq-ampere"]["TEXT-ONLY"] == "false"
    # what actually runs: pods on the chosen pool's nodes, GPUs requested as planned
    pods = kubectl("get", "pods", "-n", ns, "-l", "llm.dedicated.dev/endpoint=qwen36-gsq-ampere", "-o", "json").stdout
    items = json.loads(pods)["items"]
    assert len(items) == 2 and all(p["spec"]["nodeName"].startswith("ampere-a10-") for p in items)
    assert all(p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2" for p in items)
    wait_for(lambda: "ReplicasReady" in (ev := kubectl("get", "events", "-n", ns, "--field-selector",
                                                       "involvedObject.name=qwen36-gsq-ampere").stdout)
             and "PlanFound" in ev, 30, what="the endpoint's Events")


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, field", [
    ({"model": volume(GSQ), "replicas": -1}, "spec.replicas"),
    ({"model": {**volume(GSQ), "hub": {"repo": "Qwen/Qwen3-8B"}}}, "spec.model"),
    ({"model": {"hub": {"repo": "x; rm -rf /"}}}, "spec.model.hub.repo"),
    ({"model": volume("../etc")}, "spec.model.volume.path"),
    ({"model": volume(GSQ), "placement": {"gpusPerReplica": 4, "maxGpusPerReplica": 2}}, "spec.placement.gpusPerReplica"),
    ({"model": volume(GSQ), "placement": {"pool": "a", "gpuFamilies": ["ampere"]}}, "spec.placement"),
    ({"model": volume(GSQ), "serving": {"mtp": {"mode": "off", "numSpeculativeTokens": 2}}},
     "spec.serving.mtp.numSpeculativeTokens"),
    ({"model": volume(GSQ), "image": "Registry/UPPER:latest;rm"}, "spec.image"),
])
def test_schema_and_cel_reject_bad_specs_naming_the_field(ns, kube, kubectl, spec, field) -> None:
    doc = {"apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "DedicatedEndpoint",
           "metadata": {"name": "bad", "namespace": ns}, "spec": spec}
    result = kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert result.returncode != 0
    assert field in result.stderr, result.stderr
    assert get(kube, ns, "bad") is None


def test_quantizedmodel_schema_rejections(ns, kubectl) -> None:
    base = {"apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "QuantizedModel", "metadata": {"name": "bad", "namespace": ns}}
    cases = [
        ({"base": {"hub": {"repo": "a/b"}}, "method": "gsq", "bits": 4, "output": {"volume": {"claimName": "m"}}},
         "spec.bits: method gsq supports 2 bits"),
        ({"base": {"hub": {"repo": "a/b"}}, "method": "rtn", "bits": 4, "output": {"volume": {"claimName": "m"}}},
         "spec.method"),
        ({"base": {"hub": {"repo": "a/b"}}, "method": "autoround", "bits": 4, "groupSize": 100,
          "output": {"volume": {"claimName": "m"}}}, "spec.groupSize"),
        ({"base": {"hub": {"repo": "a/b"}}, "method": "autoround", "bits": 4,
          "output": {"hub": {"repo": "a/c", "tokenSecretRef": {"name": "t"}}}}, "spec.output.scratchClaimName"),
    ]
    for spec, text in cases:
        result = kubectl("apply", "-f", "-", input=yaml.safe_dump({**base, "spec": spec}), check=False)
        assert result.returncode != 0 and text in result.stderr, result.stderr


BROKEN_TENSORS = json.dumps({"formatVersion": 1, "tensors": [{"name": "x"}]})


def facts_cm(ns: str, name: str, path: str, config: dict, tensors: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns,
                         "labels": {"llm.dedicated.dev/model-facts": "true", "llm.dedicated.dev/facts-claim": "models"},
                         "annotations": {"llm.dedicated.dev/claim-name": "models", "llm.dedicated.dev/path": path}},
            "data": {"config.json": json.dumps(config), "tensors.json": tensors}}


def test_each_failure_reason_is_a_condition_and_never_a_pod(ns, kube, kubectl) -> None:
    good = json.loads(kube.get(CONFIGMAPS, ns, f"{GSQ}-facts")["data"]["tensors.json"])
    kube.create(facts_cm(ns, "broken-facts", "broken", {"model_type": "x"}, BROKEN_TENSORS))
    kube.create(facts_cm(ns, "odd-facts", "odd", {"model_type": "mystery", "num_hidden_layers": 2},
                         json.dumps(good)))
    cases = {
        "pool-not-found": ({"model": volume(GSQ), "placement": {"pool": "no-such-pool"}}, "Planned", "PoolNotFound"),
        "no-pool-matches": ({"model": volume(GSQ), "placement": {"gpuFamilies": ["volta"]}}, "Planned", "NoPoolMatches"),
        "too-big": ({"model": volume(BF16), "placement": {"pool": "ampere-a10", "gpusPerReplica": 1},
                     "serving": {"contextLength": 131072, "concurrency": 32}}, "Planned", "InsufficientGPUMemory"),
        "too-long": ({"model": volume(GSQ), "serving": {"contextLength": 1048576}}, "Planned", "ContextTooLong"),
        "bad-tp": ({"model": volume(GSQ), "placement": {"gpusPerReplica": 3}}, "Planned", "IncompatibleTensorParallel"),
        "no-facts": ({"model": volume("not-described")}, "ModelReady", "ConfigUnreadable"),
        "broken-facts": ({"model": volume("broken")}, "ModelReady", "ConfigUnreadable"),
        "unsupported": ({"model": volume("odd")}, "ModelReady", "UnsupportedModel"),
        "no-secret": ({"model": {"hub": {"repo": "Qwen/Qwen3-8B", "tokenSecretRef": {"name": "absent"}}}},
                      "ModelReady", "SecretNotFound"),
        "no-qm": ({"model": {"quantizedModelRef": {"name": "absent"}}}, "ModelReady", "QuantizedModelNotFound"),
        # the Hub is unreachable from this machine (no DNS): the real lookup fails with its reason
        "hub-down": ({"model": {"hub": {"repo": "Qwen/Qwen3-0.6B"}}}, "ModelReady", "ConfigUnreadable"),
    }
    for name, (spec, _, _) in cases.items():
        kube.create(endpoint(name, ns, spec.pop("model"), **spec))
    messages = {}
    for name, (_, type_, reason) in cases.items():
        c = wait_reason(kube, ns, name, type_, reason, timeout=150)
        assert c["status"] == "False"
        ready = condition(get(kube, ns, name), "Ready")
        assert ready["status"] == "False" and ready["reason"] == reason
        assert get(kube, ns, name)["status"]["phase"] == "Failed"
        messages[name] = c["message"]
    assert "short by" in messages["too-big"] and "GiB" in messages["too-big"]
    assert "no-such-pool" in messages["pool-not-found"] and "configured:" in messages["pool-not-found"]
    assert "dedicated model-facts" in messages["no-facts"]
    assert "broken-facts" in messages["broken-facts"]
    assert "cannot reach the Hub" in messages["hub-down"]
    assert "absent" in messages["no-secret"]
    # nothing was deployed for any of them: no Deployment, no pod that could sit Pending
    assert kube.list(DEPLOYMENTS, ns) == []
    assert json.loads(kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"] == []
    wait_for(lambda: {e["reason"] for e in kube.list(EVENTS, ns) if e["type"] == "Warning"} >=
             {"PoolNotFound", "InsufficientGPUMemory", "ConfigUnreadable", "SecretNotFound"}, 30, what="Warning Events")


def test_facts_appearing_later_are_picked_up(ns, kube) -> None:
    kube.create(endpoint("late", ns, volume("late-model")))
    wait_reason(kube, ns, "late", "ModelReady", "ConfigUnreadable")
    cm = kube.get(CONFIGMAPS, ns, f"{GSQ}-facts")
    kube.create(facts_cm(ns, "late-facts", "late-model", json.loads(cm["data"]["config.json"]), cm["data"]["tensors.json"]))
    wait_phase(kube, ns, "late", "Ready")


# --- scale, rollout, deletion --------------------------------------------------------------------


def test_kubectl_scale_through_the_scale_subresource(ns, kube, kubectl) -> None:
    kube.create(endpoint("scaled", ns, volume(GSQ), replicas=1, placement={"pool": "hopper-h100"}))
    wait_phase(kube, ns, "scaled", "Ready")
    kubectl("scale", "dedicatedendpoint/scaled", "-n", ns, "--replicas=3")
    obj = wait_for(lambda: (o := get(kube, ns, "scaled"))["status"].get("readyReplicas") == 3 and
                   o["status"]["phase"] == "Ready" and o, 90, what="3 ready replicas")
    assert obj["status"]["replicas"] == 3
    assert kube.get(DEPLOYMENTS, ns, "scaled")["spec"]["replicas"] == 3
    scale = json.loads(kubectl("get", "dedicatedendpoint/scaled", "-n", ns, "--subresource=scale", "-o", "json").stdout)
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == "app.kubernetes.io/component=serving,llm.dedicated.dev/endpoint=scaled"
    pods = json.loads(kubectl("get", "pods", "-n", ns, "-l", scale["status"]["selector"], "-o", "json").stdout)["items"]
    assert len(pods) == 3
    kubectl("scale", "dedicatedendpoint/scaled", "-n", ns, "--replicas=0")
    wait_reason(kube, ns, "scaled", "Ready", "ScaledToZero")
    wait_for(lambda: not json.loads(kubectl("get", "pods", "-n", ns, "-l", scale["status"]["selector"], "-o",
                                            "json").stdout)["items"], 60, what="pods gone after scale to 0")


def test_spec_change_rolls_out(ns, kube) -> None:
    kube.create(endpoint("roll", ns, volume(GSQ), placement={"gpuFamilies": ["hopper"]},
                         serving={"contextLength": 32768}))
    first = wait_phase(kube, ns, "roll", "Ready")
    old_hash = first["status"]["specHash"]
    kube.merge_patch(DEDICATED_ENDPOINTS, ns, "roll", {"spec": {"serving": {"contextLength": 65536, "concurrency": 4}}})
    second = wait_phase(kube, ns, "roll", "Ready", generation=2)
    assert second["status"]["specHash"] != old_hash
    assert second["status"]["plan"]["maxModelLen"] == 65536
    dep = kube.get(DEPLOYMENTS, ns, "roll")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-model-len") + 1] == "65536" and args[args.index("--max-num-seqs") + 1] == "4"
    assert dep["metadata"]["annotations"]["llm.dedicated.dev/spec-hash"] == second["status"]["specHash"]
    assert all(c["observedGeneration"] == 2 for c in second["status"]["conditions"])
    wait_for(lambda: "Applied" in {e["reason"] for e in kube.list(EVENTS, ns) if e["involvedObject"]["name"] == "roll"},
             30, what="the Applied Event")


def test_deletion_garbage_collects_deployment_and_service(ns, kube) -> None:
    kube.create(endpoint("gone", ns, volume(GSQ)))
    obj = wait_phase(kube, ns, "gone", "Ready")
    assert not obj["metadata"].get("finalizers")  # nothing outside the cluster to clean up
    assert kube.get(SERVICES, ns, "gone") is not None
    kube.delete(DEDICATED_ENDPOINTS, ns, "gone")
    wait_for(lambda: kube.get(DEPLOYMENTS, ns, "gone") is None and kube.get(SERVICES, ns, "gone") is None,
             60, what="garbage collection of the Deployment and Service")


def test_deployment_deleted_behind_the_operators_back_is_recreated(ns, kube) -> None:
    kube.create(endpoint("heal", ns, volume(GSQ)))
    before = wait_phase(kube, ns, "heal", "Ready")
    kube.delete(DEPLOYMENTS, ns, "heal")
    kube.delete(SERVICES, ns, "heal")
    wait_for(lambda: kube.get(SERVICES, ns, "heal") is not None, 60, what="Service recreated")
    wait_for(lambda: (d := kube.get(DEPLOYMENTS, ns, "heal")) and d["metadata"]["uid"], 60, what="Deployment recreated")
    after = wait_phase(kube, ns, "heal", "Ready")
    assert after["status"]["specHash"] == before["status"]["specHash"]


def test_pods_that_cannot_run_are_explained(ns, kube) -> None:
    # More GB10 replicas than the pool has GPUs: the scheduler's verdict reaches the status.
    kube.create(endpoint("crowded", ns, volume(GSQ), replicas=6, placement={"pool": "blackwell-gb10"}))
    c = wait_reason(kube, ns, "crowded", "Ready", "Unschedulable", timeout=90)
    assert "nvidia.com/gpu" in c["message"] or "node" in c["message"]
    # A container that keeps failing (kwok's failure simulation): its message is shown.
    failing = endpoint("crashing", ns, volume(GSQ), placement={"pool": "hopper-h100"})
    failing["metadata"]["annotations"] = {"llm.dedicated.dev/pod-annotations": json.dumps(
        {"dedicated.dev/simulate-failure": "torch.OutOfMemoryError: CUDA out of memory", "dedicated.dev/simulate-run-duration": "1s"})}
    kube.create(failing)
    c = wait_reason(kube, ns, "crashing", "Ready", "ContainerFailing", timeout=90)
    assert "CUDA out of memory" in c["message"]
    assert get(kube, ns, "crashing")["status"]["phase"] == "Failed"
    kube.delete(DEDICATED_ENDPOINTS, ns, "crowded")
    kube.delete(DEDICATED_ENDPOINTS, ns, "crashing")


# --- idempotence ------------------------------------------------------------------------------------

WATCHED = ("dedicatedendpoints", "quantizedmodels", "deployments", "services", "configmaps", "jobs")


def _versions(kube: Kube, ns: str) -> dict[str, str]:
    out = {}
    for res in (DEDICATED_ENDPOINTS, DEPLOYMENTS, SERVICES):
        for obj in kube.list(res, ns):
            out[f"{res.plural}/{obj['metadata']['name']}"] = obj["metadata"]["resourceVersion"]
    return out


def test_resync_and_restart_write_nothing(ns, kube, op) -> None:
    names = [f"idem-{i}" for i in range(4)]
    for i, name in enumerate(names):
        kube.create(endpoint(name, ns, volume(GSQ if i % 2 else BF16), replicas=1 + i % 2,
                             placement={"pool": "hopper-h200"}))
    for name in names:
        wait_phase(kube, ns, name, "Ready")
    # Namespaces of earlier tests drain in the background (their deletions are writes too): wait.
    wait_for(lambda: [n["metadata"]["name"] for n in kube.list(NAMESPACES, label_selector="dedicated.dev/test=true")]
             == [ns], 120, what="earlier test namespaces to finish deleting")
    settle(op.thread, quiet_seconds=3)
    versions = _versions(kube, ns)
    server_before = apiserver_writes(kube, WATCHED)
    ops_before = op.ctx.kube.stats.snapshot()
    reconciles_before = op.ctx.queue.stats.reconciles["endpoint"]

    # 1. forced resync of everything the operator knows
    n = op.ctx.resync_all()
    assert n >= len(names)
    wait_for(lambda: op.ctx.queue.stats.reconciles["endpoint"] - reconciles_before >= len(names), 60,
             what="the resync to reconcile every endpoint")
    settle(op.thread)
    assert op.ctx.kube.stats.writes(ops_before) == {}, "the operator sent write requests on a resync"
    assert _versions(kube, ns) == versions

    # 2. operator restart: a new process state lists everything and reconciles it again
    op.restart()
    wait_for(lambda: op.ctx.queue.stats.reconciles["endpoint"] >= len(names), 60, what="reconciles after restart")
    settle(op.thread)
    assert op.ctx.kube.stats.writes() == {}, "the restarted operator sent write requests"
    assert _versions(kube, ns) == versions
    # the API server's own count agrees: no write to any watched kind from anyone during both
    delta = apiserver_writes(kube, WATCHED) - server_before
    assert +delta == {}, delta
