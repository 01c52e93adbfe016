"""Issue 4.3 end to end: a QuantizedModel and a DedicatedEndpoint that references it, on the local
cluster, with the real quantize program.

Simulated nodes run no containers, so the Job's pod is kwok's (kept running by its run-duration
annotation) and the program runs here as a subprocess, exactly as the pod would run it: the
config is the one the operator rendered into the Job's ConfigMap (with the pod's mount points
``/models`` and ``/output`` mapped to local directories that stand for the ``models`` claim), env
``JOB_NAME``/``JOB_NAMESPACE`` as the downward API gives them, and a kubeconfig instead of the
in-cluster service account. Its progress and result annotations land on the real Job in the API
server; the operator turns them into status, and the endpoint becomes Ready only after that,
serving the published artifact. The operator reads the published checkpoint through
``--volume-root`` (the directory standing for the claims), as the docs describe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dedicated.operator.kube import DEDICATED_ENDPOINTS, DEPLOYMENTS, EVENTS, JOBS, CONFIGMAPS, QUANTIZED_MODELS, Kube
from dedicated.operator.testing import apply_crds, condition, make_models_volume, start_operator, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST = {"gsq.steps": 10, "calibration.min_tokens": 16}


@pytest.fixture(scope="module")
def claims(tmp_path_factory) -> Path:
    """The directory standing for every PersistentVolumeClaim: ``<root>/<claim>/<path>``."""
    return tmp_path_factory.mktemp("claims")


@pytest.fixture(scope="module")
def op(local_cluster, kubectl, claims):
    apply_crds(kubectl)
    thread = start_operator(local_cluster.kubeconfig, volume_root=claims)
    yield thread
    thread.stop()


def test_endpoint_serves_the_model_its_quantization_job_published(op, claims, namespace, k8s, local_cluster,
                                                                   tmp_path) -> None:
    import torch

    from dedicated.quantize_job.tiny_checkpoint import cached_tiny_moe_checkpoint

    kube = Kube(k8s)
    ns = namespace
    make_models_volume(kube, ns)
    torch.set_num_threads(1)
    tiny = cached_tiny_moe_checkpoint(tmp_path / "cache", layers=2, train_steps=40)
    base = claims / "models" / "tiny-base"
    base.parent.mkdir(parents=True, exist_ok=True)
    base.symlink_to(tiny, target_is_directory=True)

    kube.create({"apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "QuantizedModel",
                 "metadata": {"name": "tiny", "namespace": ns, "annotations": {
                     "llm.dedicated.dev/pod-annotations": json.dumps({"dedicated.dev/simulate-run-duration": "1h"})}},
                 "spec": {"base": {"volume": {"claimName": "models", "path": "tiny-base"}},
                          "method": "gsq", "bits": 2, "groupSize": 128,
                          "calibration": {"numSamples": 16, "sequenceLength": 64},
                          "validation": {"maxPerplexityRatio": 3.0},
                          "output": {"volume": {"claimName": "models", "path": "tiny-gsq"}},
                          "resources": {"pool": "hopper-h100", "gpus": 1}}})
    kube.create({"apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "DedicatedEndpoint",
                 "metadata": {"name": "tiny-ep", "namespace": ns},
                 "spec": {"model": {"quantizedModelRef": {"name": "tiny"}}, "placement": {"gpuFamilies": ["ampere"]}}})

    job = wait_for(lambda: kube.get(JOBS, ns, "tiny-quantize-1"), 60, what="the quantize Job")
    waiting = wait_for(lambda: (e := kube.get(DEDICATED_ENDPOINTS, ns, "tiny-ep")).get("status") and e, 60,
                       what="endpoint status")
    assert waiting["status"]["phase"] == "WaitingForModel"
    assert kube.get(DEPLOYMENTS, ns, "tiny-ep") is None

    # The pod's view of the config, with its mount points mapped to the local claim directory.
    config = json.loads(kube.get(CONFIGMAPS, ns, "tiny-quantize-1")["data"]["config.json"])
    assert config["model"]["path"] == "/models/tiny-base" and config["output"]["dir"] == "/output/tiny-gsq"
    config["model"]["path"] = str(base)
    config["output"]["dir"] = str(claims / "models" / "tiny-gsq")
    config["validation"].update(heldoutSamples=4, heldoutSequenceLength=64)
    config["runtime"] = {"device": "cpu", "progressIntervalSeconds": 0, "methodOptions": FAST}
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    env = {**os.environ, "JOB_NAME": job["metadata"]["name"], "JOB_NAMESPACE": ns,
           "KUBECONFIG": str(local_cluster.kubeconfig), "TERMINATION_LOG": str(tmp_path / "termination-log"),
           "OMP_NUM_THREADS": "1"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "dedicated.quantize_job", "run", "--config", str(config_file)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    phases = set()
    while proc.poll() is None:
        st = (kube.get(QUANTIZED_MODELS, ns, "tiny") or {}).get("status") or {}
        phases.add(st.get("phase"))
        ep = kube.get(DEDICATED_ENDPOINTS, ns, "tiny-ep")
        if st.get("phase") != "Succeeded":  # never Ready before the model succeeded
            assert (ep.get("status") or {}).get("phase") != "Ready"
            assert kube.get(DEPLOYMENTS, ns, "tiny-ep") is None
        if time.monotonic() - started > 540:
            proc.kill()
            pytest.fail("the quantize program did not finish in 9 minutes")
        time.sleep(0.5)
    output = proc.stdout.read()
    assert proc.returncode == 0, output[-4000:]
    assert phases & {"Quantizing", "Validating", "Publishing"}, (phases, output[-2000:])

    qm = wait_for(lambda: (q := kube.get(QUANTIZED_MODELS, ns, "tiny"))["status"].get("phase") == "Succeeded" and q,
                  60, what="QuantizedModel Succeeded")
    assert qm["status"]["artifact"]["location"] == "pvc://models/tiny-gsq"
    assert qm["status"]["artifact"]["format"] == "humming"
    assert qm["status"]["quality"]["loadTestPassed"] is True
    assert 0 < qm["status"]["quality"]["perplexityRatio"] <= 3.0
    assert condition(qm, "Validated")["status"] == "True"
    assert qm["status"]["progress"]["stage"] in ("validate", "publish")

    ep = wait_for(lambda: (e := kube.get(DEDICATED_ENDPOINTS, ns, "tiny-ep"))["status"].get("phase") == "Ready" and e,
                  90, what="endpoint Ready after the model succeeded")
    assert condition(ep, "ModelReady")["reason"] == "ModelResolved"
    assert ep["status"]["plan"]["gpuFamily"] == "ampere"
    pod = kube.get(DEPLOYMENTS, ns, "tiny-ep")["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "weights")
    claim = next(v for v in pod["volumes"] if v["name"] == "weights")["persistentVolumeClaim"]["claimName"]
    assert (claim, mount["subPath"]) == ("models", "tiny-gsq")  # the published artifact, nothing else
    args = pod["containers"][0]["args"]
    assert args[args.index("--quantization") + 1] == "humming"
    wait_for(lambda: {"Succeeded", "JobCreated"} <= {e["reason"] for e in kube.list(EVENTS, ns)
                                                     if e["involvedObject"]["name"] == "tiny"}, 30, what="Events")
