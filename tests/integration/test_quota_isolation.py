"""Single-tenant isolation on the simulated pools: the real kube-scheduler places the pods, kwok
runs them. Team A (a GPUQuota over two namespaces) asks for dedicated nodes; team B is a namespace
outside every quota. All endpoints use the hopper-h200 pool (3 nodes x 8 GPUs, 1 GPU per replica),
so without isolation the teams would share nodes."""

from __future__ import annotations

import os
import uuid
from collections import defaultdict

import pytest

from dedicated.operator.handlers.quota import GPU_QUOTAS, NAMESPACES
from dedicated.operator.kube import DEDICATED_ENDPOINTS, DEPLOYMENTS, EVENTS, PODS, Kube
from dedicated.operator.testing import apply_crds, prepare_model_namespace, start_operator, wait_for

pytestmark = pytest.mark.integration

GSQ = {"volume": {"claimName": "models", "path": "qwen3.6-35b-a3b-gsq-w2"}}
POOL_LABEL = "dedicated.dev/pool"


@pytest.fixture(scope="module")
def kube(k8s) -> Kube:
    return Kube(k8s)


@pytest.fixture(scope="module")
def env(local_cluster, kubectl, kube):
    """Operator, team A (GPUQuota over a1 and a2), team B (namespace b, no quota)."""
    apply_crds(kubectl)
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/gpuquotas.llm.dedicated.dev")
    suffix = uuid.uuid4().hex[:5]
    names = {"a1": f"iso-a1-{suffix}", "a2": f"iso-a2-{suffix}", "b": f"iso-b-{suffix}", "home": f"iso-op-{suffix}"}
    for ns in names.values():
        kube.request("POST", NAMESPACES.path(None), body={"apiVersion": "v1", "kind": "Namespace",
                                                         "metadata": {"name": ns, "labels": {"dedicated.dev/test": "true"}}})
    for key in ("a1", "a2", "b"):
        prepare_model_namespace(kube, names[key])
    team = f"team-a-{suffix}"
    kube.request("POST", GPU_QUOTAS.path(None), body={
        "apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "GPUQuota",
        "metadata": {"name": team, "labels": {"dedicated.dev/test": "true"}},
        "spec": {"namespaces": {"names": [names["a1"], names["a2"]]}, "limits": [{"gpuFamily": "hopper", "max": 24}]}})
    saved = os.environ.get("DEDICATED_OPERATOR_NAMESPACE")
    os.environ["DEDICATED_OPERATOR_NAMESPACE"] = names["home"]
    thread = start_operator(local_cluster.kubeconfig, workers=4)
    try:
        yield {**names, "team": team}
    finally:
        thread.stop()
        if saved is None:
            os.environ.pop("DEDICATED_OPERATOR_NAMESPACE", None)
        else:
            os.environ["DEDICATED_OPERATOR_NAMESPACE"] = saved
        kube.delete(GPU_QUOTAS, None, team)
        for ns in names.values():
            kube.delete(NAMESPACES, None, ns)


def endpoint(name: str, ns: str, replicas: int, isolation: str) -> dict:
    return {"apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "DedicatedEndpoint",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"model": GSQ, "replicas": replicas,
                     "placement": {"pool": "hopper-h200", "gpusPerReplica": 1, "isolation": isolation},
                     "serving": {"contextLength": 32768, "concurrency": 4}}}


def ready(kube: Kube, ns: str, name: str, replicas: int) -> list[dict]:
    """Wait for the endpoint Ready; its running pods. On timeout, say what its pods went through."""
    try:
        wait_for(lambda: ((kube.get(DEDICATED_ENDPOINTS, ns, name) or {}).get("status") or {}).get("phase") == "Ready",
                 120, what=f"{ns}/{name} Ready")
    except AssertionError as err:
        status = (kube.get(DEDICATED_ENDPOINTS, ns, name) or {}).get("status")
        events = [f"{e['involvedObject']['name']}: {e['reason']}: {e['message']}" for e in kube.list(EVENTS, ns)]
        raise AssertionError(f"{err}\nstatus: {status}\nevents: {events}") from None
    pods = [p for p in kube.list(PODS, ns, label_selector=f"llm.dedicated.dev/endpoint={name}")
            if p["status"].get("phase") == "Running"]
    assert len(pods) == replicas, [p["metadata"]["name"] for p in pods]
    return pods


def pods_by_node(kube: Kube, namespaces: list[str]) -> dict[str, set[str]]:
    """Node -> namespaces of the running serving pods on it."""
    out: dict[str, set[str]] = defaultdict(set)
    for ns in namespaces:
        for p in kube.list(PODS, ns):
            if p["spec"].get("nodeName") and p["status"].get("phase") in ("Running", "Pending"):
                out[p["spec"]["nodeName"]].add(ns)
    return out


def test_dedicated_nodes_keep_other_teams_off_in_both_directions(env, kube) -> None:
    a1, a2, b = env["a1"], env["a2"], env["b"]
    kube.create(endpoint("b-first", b, 1, "shared"))
    b_node = ready(kube, b, "b-first", 1)[0]["spec"]["nodeName"]

    kube.create(endpoint("a-dedicated", a1, 2, "dedicated-nodes"))
    a_pods = ready(kube, a1, "a-dedicated", 2)
    a_nodes = {p["spec"]["nodeName"] for p in a_pods}
    assert b_node not in a_nodes, "a dedicated pod landed next to another team's pod"
    dep = kube.get(DEPLOYMENTS, a1, "a-dedicated")
    terms = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["labelSelector"]["matchExpressions"][1]["values"] == sorted([a1, a2])
    assert all(p["metadata"]["labels"]["llm.dedicated.dev/namespace"] == a1 for p in a_pods)

    # the other direction: B's new pods avoid every node that runs A's dedicated pods
    kube.create(endpoint("b-second", b, 3, "shared"))
    b_pods = ready(kube, b, "b-second", 3)
    assert not {p["spec"]["nodeName"] for p in b_pods} & a_nodes

    # team A's other namespace may use A's nodes; its dedicated pods still avoid B's
    kube.create(endpoint("a2-dedicated", a2, 1, "dedicated-nodes"))
    a2_node = ready(kube, a2, "a2-dedicated", 1)[0]["spec"]["nodeName"]
    assert a2_node != b_node

    nodes = pods_by_node(kube, [a1, a2, b])
    for node, namespaces in nodes.items():
        if namespaces & {a1, a2}:
            assert b not in namespaces, f"{node} runs pods of team A (dedicated) and of {b}"


def test_a_pod_of_another_team_pinned_to_a_dedicated_node_stays_pending(env, kube) -> None:
    a1, b = env["a1"], env["b"]
    if kube.get(DEDICATED_ENDPOINTS, a1, "a-dedicated") is None:
        kube.create(endpoint("a-dedicated", a1, 2, "dedicated-nodes"))
    node = ready(kube, a1, "a-dedicated", 2)[0]["spec"]["nodeName"]
    # a workload of team B that opted in with the namespace label, forced onto that node by affinity
    kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "intruder", "namespace": b,
                                                                "labels": {"llm.dedicated.dev/namespace": b}},
                 "spec": {"containers": [{"name": "c", "image": "busybox:1.37"}],
                          "tolerations": [{"key": POOL_LABEL, "operator": "Exists"}],
                          "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                              "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                                                      "values": [node]}]}]}}}}})

    def refused():
        events = [e for e in kube.list(EVENTS, b, field_selector="involvedObject.name=intruder")
                  if e.get("reason") == "FailedScheduling"]
        return events[-1] if events else None

    event = wait_for(refused, 60, what="FailedScheduling for the pod pinned to a dedicated node")
    assert "anti-affinity" in event["message"], event["message"]
    pod = kube.get(PODS, b, "intruder")
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
