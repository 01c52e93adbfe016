"""Pods the product runs pass Pod Security "restricted", enforced for real by the local API server;
serving pods' network exposure is stated and checked.

* Workloads: the operator runs endpoints (volume and Hub weights) and a QuantizedModel in a
  namespace labelled ``pod-security.kubernetes.io/enforce=restricted``; the ReplicaSet and Job
  controllers' pod creations are admitted (pods exist, no FailedCreate). A deliberately
  non-compliant pod is refused in the same namespace, so the label is known to bite.
* The operator's own pod (from the Helm chart) is submitted as a Pod (server-side dry run) to
  the same namespace.
* Exposure: each endpoint gets one ClusterIP Service on port 8000 and nothing else (no NodePort,
  LoadBalancer, external IPs, host ports or host network); the operator makes no NetworkPolicy,
  and the serving pods carry stable labels a platform team's NetworkPolicy can select (docs say
  so); the operator leaves such a policy alone. The local cluster has no network plugin, so
  whether traffic is *blocked* is not tested here.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import world as W  # noqa: E402
from support.fixtures import *  # noqa: E402,F403
from support.fixtures import delete_namespace, prepared_namespace, wait_for  # noqa: E402

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[2] / "charts" / "dedicated-endpoints"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest",
              "pod-security.kubernetes.io/warn": "restricted"}


@pytest.fixture()
def restricted(k8s, crds):
    ns = prepared_namespace(k8s, "psa-restricted", RESTRICTED)
    yield W.World(k8s, ns)
    delete_namespace(k8s, ns)


def _dry_run_pod(world: W.World, name: str, pod_spec: dict, labels: dict | None = None) -> None:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": copy.deepcopy(pod_spec)}
    world.core.create_namespaced_pod(world.ns, body, dry_run="All")


def test_enforcement_is_real(restricted) -> None:
    bad = {"containers": [{"name": "c", "image": "busybox:1.36", "securityContext": {"privileged": True}}]}
    with pytest.raises(ApiException) as err:
        _dry_run_pod(restricted, "privileged", bad)
    assert err.value.status == 403 and "violates PodSecurity" in err.value.body


def test_serving_and_quantize_pods_are_admitted_under_restricted(restricted, start_operator) -> None:
    world = restricted
    world.core.create_namespaced_secret(world.ns, {"metadata": {"name": "hf"}, "stringData": {"token": "x"}})
    op = start_operator(world.ns)
    world.create(W.endpoint("vol", replicas=1))
    world.create(W.quantized_model("quant", pod_annotations=W.LONG_RUNNING))
    pods = wait_for(lambda: (p := world.pods()) and len({x["metadata"]["name"].split("-")[0] for x in p}) >= 2 and p,
                    90, lambda: f"pods of vol and quant; events: "
                    f"{[(e['reason'], e['message'][:200]) for e in world.events() if e['type'] == 'Warning']}")
    assert {p["metadata"]["labels"].get("app.kubernetes.io/component") for p in pods} >= {"serving", "quantize"}
    failed = [e["message"] for e in world.events() if e["reason"] == "FailedCreate"]
    assert failed == [], failed
    # Hub-weights pods (download init container) are checked by a dry run: the Hub is unreachable
    # here, so no Deployment for a Hub endpoint exists; the template is the live volume one's
    # builder output with Hub weights, rendered by the same builders.
    dep = world.apps.read_namespaced_deployment("vol", world.ns)
    template = world.api.sanitize_for_serialization(dep.spec.template)
    _dry_run_pod(world, "vol-copy", template["spec"], template["metadata"].get("labels"))
    job = world.jobs()[0]
    _dry_run_pod(world, "quant-copy", job["spec"]["template"]["spec"])
    assert op.crash_lines() == []


def test_hub_weights_pod_is_restricted(restricted) -> None:
    """The Hub variant's pod template (init container downloading with the token from a Secret),
    rendered by the real builders and submitted to the restricted namespace."""
    from dedicated.localcluster.pools import DEFAULT_POOLS_FILE
    from dedicated.operator.api import DedicatedEndpointSpec
    from dedicated.operator.builders import resolve_model
    from dedicated.operator.images import ImageConfig
    from dedicated.operator.pools import load_pools
    from dedicated.operator.reconcile.endpoint import EndpointInput, ModelState, desired_objects
    from dedicated.operator.vram import profile_local
    import tempfile

    zoo = W.modelzoo()
    root = zoo.dense(Path(tempfile.mkdtemp(prefix="psa-")) / "m", zoo.QWEN3_06B)
    profile = profile_local(root)
    spec = DedicatedEndpointSpec.model_validate({"model": {"hub": {"repo": "acme/m", "tokenSecretRef": {"name": "hf"}}}})
    resolved = resolve_model(spec.model, endpoint_name="hubpod", checkpoint_bytes=profile.parts.total)
    desired = desired_objects(EndpointInput(name="hubpod", namespace=restricted.ns, uid="u", generation=1, spec=spec,
                                            status=None, model=ModelState("acme/m", profile, resolved),
                                            pools=load_pools(DEFAULT_POOLS_FILE), images=ImageConfig()))
    pod = desired.objects[0]["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["name"] == "download-weights"
    _dry_run_pod(restricted, "hubpod", pod)


def test_operator_pod_from_the_chart_is_restricted(restricted, helm) -> None:
    out = helm("template", "psa", str(CHART), "-n", restricted.ns, "-f",
               str(CHART / "ci" / "local-cluster-values.yaml")).stdout
    deployments = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
    assert deployments
    for dep in deployments:
        spec = dep["spec"]["template"]["spec"]
        spec.pop("serviceAccountName", None)  # the ServiceAccount is not installed here
        _dry_run_pod(restricted, dep["metadata"]["name"], spec)


def test_serving_network_exposure_is_cluster_internal_and_selectable(world, start_operator) -> None:
    op = start_operator(world.ns)
    world.create(W.endpoint("net", replicas=1))
    wait_for(lambda: W.phase(world.get_ep("net")) == "Ready", 90, "net Ready")
    services = world.services()
    assert [s["metadata"]["name"] for s in services] == ["net"]
    svc = services[0]["spec"]
    assert svc["type"] == "ClusterIP" and not svc.get("externalIPs") and not svc.get("loadBalancerIP")
    assert [(p["port"], p["protocol"]) for p in svc["ports"]] == [(8000, "TCP")]
    for pod in world.pods("app.kubernetes.io/component=serving"):
        spec = pod["spec"]
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        assert all(not p.get("hostPort") for c in spec["containers"] for p in c.get("ports") or [])
        assert pod["metadata"]["labels"][f"{W.GROUP}/endpoint"] == "net"
        assert spec["automountServiceAccountToken"] is False, "serving pods need no API credentials"
    from kubernetes import client

    net = client.NetworkingV1Api(world.api)
    assert net.list_namespaced_network_policy(world.ns).items == [], "the operator made a NetworkPolicy"
    # a platform team's policy, selecting the serving pods by their stable label, is left alone
    net.create_namespaced_network_policy(world.ns, {
        "metadata": {"name": "only-gateway"},
        "spec": {"podSelector": {"matchLabels": {f"{W.GROUP}/endpoint": "net"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "gateway"}}}],
                              "ports": [{"port": 8000}]}]}})
    world.patch_spec("dedicatedendpoints", "net", {"replicas": 2})
    wait_for(lambda: (world.get_ep("net").get("status") or {}).get("readyReplicas") == 2, 90, "net at 2 replicas")
    assert [p.metadata.name for p in net.list_namespaced_network_policy(world.ns).items] == ["only-gateway"]
    selected = world.pods(f"{W.GROUP}/endpoint=net")
    assert len([p for p in selected if p["status"].get("phase") == "Running"]) == 2
    assert op.crash_lines() == []
