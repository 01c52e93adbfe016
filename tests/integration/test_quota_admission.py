"""GPU quotas through the real API server: the operator runs in-process (one per module, with the
quota ledger in its own namespace), endpoints and QuantizedModels are created by the kubernetes
client, kwok runs the pods, kubectl shows the printer columns.

Nothing here uses the admission webhook (tests/integration/test_helm_chart.py does): these tests
show that the reconcile side alone is authoritative, including under concurrent applies.
"""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from dedicated.operator.handlers.quota import GPU_QUOTAS, MIRROR_NAME, NAMESPACES, RESOURCE_QUOTAS
from dedicated.operator.kube import CONFIGMAPS, DEDICATED_ENDPOINTS, DEPLOYMENTS, JOBS, QUANTIZED_MODELS, Kube
from dedicated.operator.testing import (
    prepare_model_namespace,
    LOCAL_POOLS,
    apply_crds,
    condition,
    start_operator,
    wait_for,
)

pytestmark = pytest.mark.integration

GSQ = {"volume": {"claimName": "models", "path": "qwen3.6-35b-a3b-gsq-w2"}}
#: A pool in the operator's configuration that names no node (PoolHasNoNodes).
GHOST_POOL = {"name": "hopper-gh200", "gpuFamily": "hopper", "gpuProduct": "NVIDIA-GH200-480GB", "gpuMemoryMiB": 97871,
              "gpusPerNode": 1, "computeCapability": "9.0", "costPerGpuHour": 3.2,
              "nodeSelector": {"dedicated.dev/pool": "hopper-gh200"}}


def post(kube: Kube, res, obj: dict) -> dict:
    """Create a cluster-scoped object (kinds the operator's Kube.create has no mapping for)."""
    return kube.request("POST", res.path(None), body=obj, what=res.plural)


@pytest.fixture(scope="module")
def kube(k8s) -> Kube:
    return Kube(k8s)


@pytest.fixture(scope="module")
def op(local_cluster, kubectl, kube, tmp_path_factory):
    apply_crds(kubectl)
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/gpuquotas.llm.dedicated.dev")
    home = f"quota-system-{uuid.uuid4().hex[:6]}"
    post(kube, NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": home}})
    pools = yaml.safe_load(LOCAL_POOLS.read_text())
    pools["pools"].append(GHOST_POOL)
    pools_file = tmp_path_factory.mktemp("quota-op") / "pools.yaml"
    pools_file.write_text(yaml.safe_dump(pools))
    env = {"DEDICATED_OPERATOR_NAMESPACE": home, "DEDICATED_QUOTA_SWEEP_SECONDS": "2"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    thread = start_operator(local_cluster.kubeconfig, pools=pools_file, workers=8)
    thread.home = home
    try:
        yield thread
    finally:
        thread.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for q in kube.list(GPU_QUOTAS, label_selector="dedicated.dev/test=true"):
            kube.delete(GPU_QUOTAS, None, q["metadata"]["name"])
        kubectl("delete", "namespace", home, "--wait=false", check=False)


@pytest.fixture
def ns(namespace, kube, op) -> str:
    prepare_model_namespace(kube, namespace)
    return namespace


@pytest.fixture
def other_ns(kube, op):
    """A second namespace with the models volume and facts, outside every quota."""
    name = f"other-{uuid.uuid4().hex[:6]}"
    post(kube, NAMESPACES, {"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": name, "labels": {"dedicated.dev/test": "true"}}})
    prepare_model_namespace(kube, name)
    yield name
    kube.delete(NAMESPACES, None, name)


@pytest.fixture
def quotas(kube):
    """Creates GPUQuotas (cluster-scoped, so they are always deleted after the test)."""
    made: list[str] = []

    def create(name: str, limits: list[dict], namespaces: dict, **spec) -> str:
        name = f"{name}-{uuid.uuid4().hex[:5]}"
        post(kube, GPU_QUOTAS, {"apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "GPUQuota",
                     "metadata": {"name": name, "labels": {"dedicated.dev/test": "true"}},
                     "spec": {"namespaces": namespaces, "limits": limits, **spec}})
        made.append(name)
        return name

    yield create
    for name in made:
        kube.delete(GPU_QUOTAS, None, name)
    wait_for(lambda: not any(kube.get(GPU_QUOTAS, None, n) for n in made), 30, what="test quotas deleted")


def endpoint(name: str, ns: str, **spec) -> dict:
    placement = spec.pop("placement", {"gpuFamilies": ["hopper"], "gpusPerReplica": 4})
    return {"apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "DedicatedEndpoint",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"model": GSQ, "replicas": 1, "placement": placement,
                     "serving": {"contextLength": 32768, "concurrency": 4}, **spec}}


def ep_status(kube: Kube, ns: str, name: str) -> dict:
    return (kube.get(DEDICATED_ENDPOINTS, ns, name) or {}).get("status") or {}


def quota_admitted(kube: Kube, ns: str, name: str):
    return condition(kube.get(DEDICATED_ENDPOINTS, ns, name), "QuotaAdmitted")


def deployments(kube: Kube, ns: str) -> list[dict]:
    return kube.list(DEPLOYMENTS, ns)


def gpu_requests(deps: list[dict]) -> int:
    total = 0
    for d in deps:
        per = sum(int(c["resources"]["requests"].get("nvidia.com/gpu", 0)) for c in d["spec"]["template"]["spec"]["containers"])
        total += per * d["spec"]["replicas"]
    return total


def gpuquota_row(kubectl, name: str) -> dict[str, str]:
    out = kubectl("get", "gpuquota", name, "-o", "custom-columns=USED:.status.used,FREE:.status.free,"
                  "READY:.status.conditions[?(@.type==\"Ready\")].status", "--no-headers").stdout.split("  ")
    cells = [c.strip() for c in out if c.strip()]
    return {"used": cells[0], "free": cells[1], "ready": cells[2]}


def test_twenty_parallel_applies_of_four_gpus_against_sixteen_admit_exactly_four(ns, kube, kubectl, quotas, op) -> None:
    team = quotas("par", [{"gpuFamily": "hopper", "max": 16}], {"names": [ns]})
    names = [f"ep-{i:02d}" for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:  # 20 concurrent creates through the API server
        list(pool.map(lambda n: kube.create(endpoint(n, ns)), names))

    def all_decided():
        conds = {n: quota_admitted(kube, ns, n) for n in names}
        return conds if all(conds.values()) else None

    conds = wait_for(all_decided, 120, what="a QuotaAdmitted condition on all 20 endpoints")
    admitted = sorted(n for n, c in conds.items() if c["status"] == "True")
    refused = sorted(n for n, c in conds.items() if c["status"] == "False")
    assert len(admitted) == 4 and len(refused) == 16
    deps = deployments(kube, ns)
    assert sorted(d["metadata"]["name"] for d in deps) == admitted
    assert gpu_requests(deps) == 16
    for n in refused:
        c = conds[n]
        assert c["reason"] == "QuotaExceeded"
        assert c["message"] == f"team {team} uses 16 of 16 hopper GPUs; this endpoint needs 4 (1 replica x 4 GPUs)"
        st = ep_status(kube, ns, n)
        assert st["phase"] == "Pending" and condition({"status": st}, "Ready")["reason"] == "QuotaExceeded"
    for n in admitted:
        wait_for(lambda n=n: ep_status(kube, ns, n).get("phase") == "Ready", 60, what=f"{n} Ready")
    wait_for(lambda: gpuquota_row(kubectl, team)["used"] == "hopper 16/16", 30, what="quota status used 16/16")
    assert gpuquota_row(kubectl, team) == {"used": "hopper 16/16", "free": "hopper 0", "ready": "True"}
    printed = kubectl("get", "gpuquotas", team).stdout
    assert printed.split("\n")[0].split() == ["NAME", "NAMESPACES", "USED", "FREE", "READY", "AGE"]
    assert "hopper 16/16" in printed and "hopper 0" in printed

    # freeing one endpoint's GPUs admits exactly one waiting endpoint, never more
    kube.delete(DEDICATED_ENDPOINTS, ns, admitted[0])
    wait_for(lambda: sum(1 for n in refused if (quota_admitted(kube, ns, n) or {}).get("status") == "True") == 1, 60,
             what="one waiting endpoint admitted after a release")
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        live = [d for d in deployments(kube, ns) if not d["metadata"].get("deletionTimestamp")
                and d["metadata"]["name"] != admitted[0]]
        assert len(live) <= 4 and gpu_requests(live) <= 16
        time.sleep(0.5)
    ledger = kube.get(CONFIGMAPS, op.home, "dedicated-gpu-ledger")
    assert len(ledger["data"]) == 4


def test_quantization_jobs_count_against_the_same_quota(ns, kube, quotas) -> None:
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf", "namespace": ns},
                 "stringData": {"token": "hf_not_a_real_token_0123456789"}})
    team = quotas("jobs", [{"gpuFamily": "hopper", "max": 4}], {"names": [ns]})
    kube.create(endpoint("serve", ns))
    wait_for(lambda: (quota_admitted(kube, ns, "serve") or {}).get("status") == "True", 60, what="endpoint admitted")
    kube.create({"apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "QuantizedModel",
                 "metadata": {"name": "q", "namespace": ns,
                              "annotations": {"llm.dedicated.dev/pod-annotations":
                                              '{"dedicated.dev/simulate-run-duration": "10m"}'}},
                 "spec": {"base": {"hub": {"repo": "Qwen/Qwen3.6-35B-A3B", "tokenSecretRef": {"name": "hf"}}},
                          "method": "gsq", "bits": 2, "output": {"volume": {"claimName": "models", "path": "q"}},
                          "resources": {"pool": "hopper-h100", "gpus": 1}}})

    def refused():
        c = condition(kube.get(QUANTIZED_MODELS, ns, "q"), "QuotaAdmitted")
        return c if c and c["status"] == "False" else None

    c = wait_for(refused, 60, what="the QuantizedModel refused for quota")
    assert c["message"] == f"team {team} uses 4 of 4 hopper GPUs; this quantization Job needs 1 (1 GPU)"
    qm = kube.get(QUANTIZED_MODELS, ns, "q")
    assert qm["status"]["phase"] == "Pending" and condition(qm, "Ready")["reason"] == "QuotaExceeded"
    assert kube.list(JOBS, ns) == []
    # scaling the endpoint to zero frees its GPUs: the Job is admitted and created
    kube.merge_patch(DEDICATED_ENDPOINTS, ns, "serve", {"spec": {"replicas": 0}})
    wait_for(lambda: kube.list(JOBS, ns), 60, what="the quantization Job after the endpoint scaled to zero")
    wait_for(lambda: (condition(kube.get(QUANTIZED_MODELS, ns, "q"), "QuotaAdmitted") or {}).get("status") == "True",
             30, what="QuotaAdmitted=True on the QuantizedModel")
    # and now the endpoint cannot come back while the Job holds a GPU
    kube.merge_patch(DEDICATED_ENDPOINTS, ns, "serve", {"spec": {"replicas": 1}})
    c = wait_for(lambda: (x := quota_admitted(kube, ns, "serve")) and x["status"] == "False" and x, 60,
                 what="endpoint refused while the Job runs")
    assert c["message"] == f"team {team} uses 1 of 4 hopper GPUs; this endpoint needs 4 (1 replica x 4 GPUs)"


def test_guarantees_keep_capacity_for_their_team(ns, other_ns, kube, quotas) -> None:
    other = other_ns
    owner = quotas("guard", [{"pool": "hopper-h200", "guaranteed": 16}], {"names": [ns]})
    h200 = {"pool": "hopper-h200", "gpusPerReplica": 4}
    kube.create(endpoint("big", other, replicas=3, placement=h200))  # 12 of 24, but 16 are reserved
    c = wait_for(lambda: (x := quota_admitted(kube, other, "big")) and x["status"] == "False" and x, 60,
                 what="the other namespace refused")
    assert c["reason"] == "ReservedForOtherTeams"
    assert c["message"] == (f"pool hopper-h200 has 24 GPUs: 0 in use and 16 reserved for other teams ({owner} 16); "
                            f"this endpoint needs 12 (3 replicas x 4 GPUs) for team ns.{other}")
    kube.merge_patch(DEDICATED_ENDPOINTS, other, "big", {"spec": {"replicas": 2}})
    wait_for(lambda: (quota_admitted(kube, other, "big") or {}).get("status") == "True", 60, what="8 GPUs admitted")
    kube.create(endpoint("mine", ns, replicas=4, placement=h200))  # the whole guarantee
    wait_for(lambda: (quota_admitted(kube, ns, "mine") or {}).get("status") == "True", 60, what="the guarantee")
    assert gpu_requests(deployments(kube, ns)) == 16 and gpu_requests(deployments(kube, other)) == 8


def test_bad_quotas_become_conditions(ns, kube, quotas) -> None:
    older = quotas("first", [{"gpuFamily": "ampere", "max": 8}], {"names": [ns]})
    time.sleep(1.1)  # creation timestamps have second resolution: the older one must be older
    younger = quotas("second", [{"gpuFamily": "ampere", "max": 8}], {"names": [ns, "elsewhere"]})
    over = quotas("over", [{"pool": "hopper-h200", "guaranteed": 100}], {"names": ["over-ns"]})
    ghost = quotas("ghost", [{"pool": "hopper-gh200", "max": 2}, {"pool": "no-such-pool", "max": 1}],
                   {"names": ["ghost-ns"]})

    def cond(name, type_):
        return condition(kube.get(GPU_QUOTAS, None, name), type_)

    def settled(name, type_, status):
        return wait_for(lambda: (c := cond(name, type_)) and c["status"] == status and c, 60,
                        what=f"{name} {type_}={status} (now {cond(name, type_)})")

    c = settled(younger, "NamespaceConflict", "True")
    assert c["message"] == f"namespace {ns} is already governed by GPUQuota {older} (older); this quota does not apply there"
    assert cond(younger, "Ready")["reason"] == "NamespaceClaimedTwice"
    assert kube.get(GPU_QUOTAS, None, younger)["status"]["namespaces"] == ["elsewhere"]
    assert settled(older, "NamespaceConflict", "True")["message"].startswith(f"namespace {ns} is also claimed by")
    assert kube.get(GPU_QUOTAS, None, older)["status"]["namespaces"] == [ns]

    c = settled(over, "Overcommitted", "True")
    assert c["message"].startswith("guarantees on family hopper total 100 GPUs") or \
        c["message"].startswith("guarantees on pool hopper-h200 total 100 GPUs")
    assert "pool hopper-h200 total 100 GPUs" in c["message"] and "but it has 24" in c["message"]
    assert cond(over, "Ready")["reason"] == "GuaranteesExceedCapacity"

    c = settled(ghost, "PoolsResolved", "False")
    assert c["reason"] == "PoolHasNoNodes"
    assert "pool hopper-gh200 names no existing schedulable node (nodeSelector dedicated.dev/pool=hopper-gh200)" in c["message"]
    assert "pool no-such-pool is not in the operator's pool configuration" in c["message"]
    assert cond(ghost, "Ready")["status"] == "False"


def test_resource_quota_mirror_follows_the_team(ns, kube, quotas) -> None:
    team = quotas("mirror", [{"gpuFamily": "hopper", "max": 8}, {"pool": "ampere-a100", "max": 2}],
                  {"names": [ns]}, unlistedPools="Deny")
    rq = wait_for(lambda: kube.get(RESOURCE_QUOTAS, ns, MIRROR_NAME), 60, what="the ResourceQuota mirror")
    assert rq["spec"]["hard"] == {"requests.nvidia.com/gpu": "10"}
    assert [(r["kind"], r["name"]) for r in rq["metadata"]["ownerReferences"]] == [("GPUQuota", team)]
    cond = wait_for(lambda: (c := condition(kube.get(GPU_QUOTAS, None, team), "ResourceQuotaMirrored"))
                    and c["status"] == "True" and c, 30, what="mirrored condition")
    assert cond["message"] == "requests.nvidia.com/gpu <= 10 in 1 namespace(s)"
    # unbounded (unlisted pools allowed): no mirror, and the condition says why
    kube.merge_patch(GPU_QUOTAS, None, team, {"spec": {"unlistedPools": "Allow"}})
    wait_for(lambda: kube.get(RESOURCE_QUOTAS, ns, MIRROR_NAME) is None, 60, what="the mirror removed")
    # the mirror is deleted before the status is written: wait for the condition as well
    wait_for(lambda: condition(kube.get(GPU_QUOTAS, None, team), "ResourceQuotaMirrored").get("reason") == "Unbounded",
             30, what="the condition to say Unbounded")
