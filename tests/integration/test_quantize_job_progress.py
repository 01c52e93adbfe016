"""The quantize Job program reports on its own Job through the real API server.

Simulated nodes do not run containers, so the program runs here as a subprocess with ``JOB_NAME`` /
``JOB_NAMESPACE`` and a kubeconfig for a service account that may only ``get,patch`` that one Job
(the RBAC the contract gives the pod); its annotations land on the real Job object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client

pytestmark = pytest.mark.integration


def _service_account_kubeconfig(k8s, namespace: str, job: str, api_server: str, ca: str | None, path: Path) -> Path:
    core, rbac = client.CoreV1Api(k8s), client.RbacAuthorizationV1Api(k8s)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "quantize"}})
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "quantize-progress"},
        "rules": [{"apiGroups": ["batch"], "resources": ["jobs"], "resourceNames": [job], "verbs": ["get", "patch"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "quantize-progress"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "quantize-progress"},
        "subjects": [{"kind": "ServiceAccount", "name": "quantize", "namespace": namespace}]})
    token = core.create_namespaced_service_account_token(
        "quantize", namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    cluster = {"server": api_server}
    if ca:
        cluster["certificate-authority-data"] = ca
    else:
        cluster["insecure-skip-tls-verify"] = True
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa", "namespace": namespace}}]}))
    return path


def test_progress_and_result_annotations_land_on_the_job(local_cluster, k8s, namespace, tmp_path, tmp_path_factory):
    import yaml

    from dedicated.quantize_job.tiny_checkpoint import cached_tiny_moe_checkpoint

    batch = client.BatchV1Api(k8s)
    job = "tiny-quantize-1"
    batch.create_namespaced_job(namespace, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": job},
        "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never",
                                                        "containers": [{"name": "q", "image": "quantize:test"}]}}}})
    admin = yaml.safe_load(Path(local_cluster.kubeconfig).read_text())
    ca = admin["clusters"][0]["cluster"].get("certificate-authority-data")
    kubeconfig = _service_account_kubeconfig(k8s, namespace, job, admin["clusters"][0]["cluster"]["server"], ca,
                                             tmp_path / "sa-kubeconfig")

    model = cached_tiny_moe_checkpoint(tmp_path_factory.getbasetemp(), layers=2, train_steps=40)
    out = tmp_path / "out"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "name": "tiny", "namespace": namespace, "generation": 1,
        "model": {"path": str(model)}, "method": "gsq", "bits": 2,
        "calibration": {"numSamples": 16, "sequenceLength": 64},
        "validation": {"heldoutSamples": 4, "heldoutSequenceLength": 64, "maxPerplexityRatio": 1.5},
        "output": {"dir": str(out), "volume": {"claimName": "models", "path": "tiny"}},
        "runtime": {"device": "cpu", "progressIntervalSeconds": 1,
                    "methodOptions": {"gsq.steps": 10, "calibration.min_tokens": 16}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(KUBECONFIG=str(kubeconfig), JOB_NAME=job, JOB_NAMESPACE=namespace, OMP_NUM_THREADS="1",
               TERMINATION_LOG=str(tmp_path / "termination-log"))
    proc = subprocess.run([sys.executable, "-m", "dedicated.quantize_job", "run", "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "could not publish progress" not in proc.stderr and "patching" not in proc.stderr

    annotations = batch.read_namespaced_job(job, namespace).metadata.annotations
    progress = json.loads(annotations["llm.dedicated.dev/progress"])
    assert progress == {"stage": "publish", "layer": 2, "totalLayers": 2, "percent": 100,
                        "elapsedSeconds": progress["elapsedSeconds"], "etaSeconds": 0,
                        "summary": "published (100%)", "resumedFromLayer": None}
    result = json.loads(annotations["llm.dedicated.dev/result"])
    assert result["artifact"]["location"] == "pvc://models/tiny" and result["artifact"]["format"] == "humming"
    assert result["quality"]["loadTestPassed"] is True
    assert result["manifestPath"] == str(out / "manifest.json")
    assert json.loads((out / "manifest.json").read_text())["result"] == result
