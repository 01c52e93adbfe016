"""Secrets only by reference, never in logs, status, Events, ConfigMaps or workload specs.

A recognisable token is planted in a Secret; every flow that uses a Hub token runs against it with
the operator at DEBUG log level: an endpoint serving a private Hub repo (the operator reads the
token in memory to ask the Hub API, which is unreachable here, so its error path runs too), a
QuantizedModel reading a gated base model and publishing to the Hub (the Job gets the token as
``secretKeyRef``), an endpoint serving that model once it published (the operator reads the
output token), and a reference to a Secret key that does not exist. Then everything the cluster
and the operator say is searched for the token, raw and base64-encoded: the operator's log, every
object's status, all Events, every ConfigMap, every Job, Deployment, ReplicaSet and Pod (spec and
metadata). The only place it may be is the Secret itself.
"""

from __future__ import annotations

import base64
import json
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import world as W  # noqa: E402
from support.fixtures import *  # noqa: E402,F403
from support.fixtures import wait_for  # noqa: E402

pytestmark = pytest.mark.integration


def _forms(token: str) -> list[str]:
    raw = token.encode()
    forms = [token, base64.b64encode(raw).decode()]
    # base64 of the token at every alignment inside a longer blob (e.g. a whole Secret encoded)
    for pad in (b"x", b"xx"):
        enc = base64.b64encode(pad + raw).decode()
        forms.append(enc[4:-4])
    return forms


def test_hub_token_never_leaves_its_secret(k8s, world, start_operator) -> None:
    token = f"hf_PLANTED{uuid.uuid4().hex}SECRET"
    world.core.create_namespaced_secret(world.ns, {"metadata": {"name": "hf"}, "stringData": {"token": token}})
    op = start_operator(world.ns, log_level="DEBUG")

    hub_ep = W.endpoint("private")
    hub_ep["spec"]["model"] = {"hub": {"repo": "acme/private-model", "tokenSecretRef": {"name": "hf"}}}
    world.create(hub_ep)
    missing_key = W.endpoint("wrongkey")
    missing_key["spec"]["model"] = {"hub": {"repo": "acme/other", "tokenSecretRef": {"name": "hf", "key": "nope"}}}
    world.create(missing_key)
    qm = W.quantized_model("gated", pod_annotations=W.LONG_RUNNING)
    qm["spec"]["base"] = {"hub": {"repo": "acme/gated-base", "tokenSecretRef": {"name": "hf"}}}
    qm["spec"]["output"] = {"hub": {"repo": "acme/gated-base-int4", "tokenSecretRef": {"name": "hf"}},
                            "scratchClaimName": "models"}
    world.create(qm)
    world.create(W.endpoint("fromqm", qm="gated"))

    job = wait_for(lambda: next(iter(world.jobs()), None), 60, "the quantize Job")
    world.report_result(job["metadata"]["name"], location="hf://acme/gated-base-int4@main")  # simulated program
    wait_for(lambda: W.phase(world.get_qm("gated")) == "Succeeded", 60, "gated Succeeded")
    for name in ("private", "fromqm"):  # the Hub is unreachable: a condition, after the token was used
        wait_for(lambda n=name: W.condition(world.get_ep(n), "ModelReady").get("status") == "False"
                 and W.condition(world.get_ep(n), "ModelReady").get("reason") != "WaitingForQuantizedModel",
                 90, lambda n=name: f"{n}: {world.get_ep(n).get('status')}")
    wrong = wait_for(lambda: (e := world.get_ep("wrongkey")) and
                     W.condition(e, "ModelReady").get("reason") == "SecretNotFound" and e, 60, "wrongkey SecretNotFound")
    assert "'nope'" in W.condition(wrong, "ModelReady")["message"], "the message should name the missing key"

    # the Job gets the token by reference only
    pod_spec = job["spec"]["template"]["spec"]
    env = {e["name"]: e for c in pod_spec["containers"] for e in c.get("env") or []}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert "value" not in env["HF_TOKEN"]

    places: dict[str, str] = {"operator log": op.log_text()}
    assert "DEBUG" in places["operator log"], "the operator did not log at DEBUG: the search proves less"
    for kind, items in (("DedicatedEndpoint", world.endpoints()), ("QuantizedModel", world.models()),
                        ("Event", world.events()), ("ConfigMap", world.configmaps()), ("Job", world.jobs()),
                        ("Deployment", world.deployments()), ("ReplicaSet", world.replicasets()),
                        ("Pod", world.pods()), ("Service", world.services())):
        for obj in items:
            places[f"{kind} {obj['metadata']['name']}"] = json.dumps(obj)
    assert any(k.startswith("ConfigMap gated-quantize") for k in places), "the Job's config was not searched"
    leaks = [where for where, text in places.items() for form in _forms(token) if form in text]
    assert leaks == [], f"the planted token appears in: {leaks}"
    # the search works: the Secret itself does contain it
    secret = json.dumps(k8s.sanitize_for_serialization(world.core.read_namespaced_secret("hf", world.ns)))
    assert any(form in secret for form in _forms(token))
