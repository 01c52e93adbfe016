"""Two operator replicas with kopf peering: only the highest-priority one acts; when it stops, the
other takes over from the world as it is."""

from __future__ import annotations

import pytest
import yaml

from dedicated.operator.kube import DEDICATED_ENDPOINTS, DEPLOYMENTS, Kube
from dedicated.operator.runtime import PEERING_CRDS, PEERING_NAME
from dedicated.operator.testing import (
    prepare_model_namespace,
    apply_crds,
    start_operator,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def peering(local_cluster, kubectl):
    apply_crds(kubectl)
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(PEERING_CRDS))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/clusterkopfpeerings.kopf.dev")
    kubectl("apply", "-f", "-", input=yaml.safe_dump(
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING_NAME}}))
    yield
    kubectl("delete", "clusterkopfpeering", PEERING_NAME, "--ignore-not-found")


def phase(kube: Kube, ns: str, name: str) -> str | None:
    return ((kube.get(DEDICATED_ENDPOINTS, ns, name) or {}).get("status") or {}).get("phase")


def _record_keys(op) -> list[tuple[str, str]]:
    """Wrap the replica's endpoint reconciler to record which (namespace, name) it reconciles."""
    seen: list[tuple[str, str]] = []
    inner = op.ctx.queue.reconcilers["endpoint"]

    def recording(namespace: str, name: str):
        seen.append((namespace, name))
        return inner(namespace, name)

    op.ctx.queue.reconcilers["endpoint"] = recording
    return seen


def test_only_the_highest_priority_replica_acts_and_the_other_takes_over(peering, local_cluster, namespace, k8s) -> None:
    kube = Kube(k8s)
    prepare_model_namespace(kube, namespace)
    low = start_operator(local_cluster.kubeconfig, standalone=False, identity="replica-low", priority=10)
    high = start_operator(local_cluster.kubeconfig, standalone=False, identity="replica-high", priority=20)
    try:
        # both registered in the peering object; the low one's gate closes
        wait_for(lambda: not low.ctx.gate() and high.ctx.gate(), 60, what="the low replica to pause")
        # The replicas watch every namespace of the shared test cluster, so the low one may have
        # reconciled other tests' endpoints before the high one joined: count this test's only.
        low_reconciled = _record_keys(low)
        wait_for(lambda: not low.ctx.queue.in_flight(), 60, what="the low replica's in-flight reconciles to finish")
        low_writes_before = low.ctx.kube.stats.snapshot()
        ep = {"apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "DedicatedEndpoint",
              "metadata": {"name": "peer", "namespace": namespace},
              "spec": {"model": {"volume": {"claimName": "models", "path": "qwen3.6-35b-a3b-gsq-w2"}},
                       "placement": {"pool": "hopper-h100"}}}
        kube.create(ep)
        wait_for(lambda: phase(kube, namespace, "peer") == "Ready", 90, what="endpoint Ready")
        assert high.ctx.queue.stats.reconciles["endpoint"] >= 1
        assert low_reconciled == [], "the paused replica reconciled"
        assert low.ctx.kube.stats.writes(low_writes_before) == {}, "the paused replica wrote something"

        high.stop()  # a graceful stop removes it from the peering object
        wait_for(lambda: low.ctx.gate(), 60, what="the low replica to take over")
        kube.merge_patch(DEDICATED_ENDPOINTS, namespace, "peer", {"spec": {"replicas": 2}})
        wait_for(lambda: (kube.get(DEPLOYMENTS, namespace, "peer") or {}).get("spec", {}).get("replicas") == 2,
                 90, what="the taken-over replica to act on a change")
        wait_for(lambda: phase(kube, namespace, "peer") == "Ready" and
                 kube.get(DEDICATED_ENDPOINTS, namespace, "peer")["status"]["readyReplicas"] == 2, 90,
                 what="Ready with 2 replicas")
        assert (namespace, "peer") in low_reconciled
    finally:
        high.stop()
        low.stop()
