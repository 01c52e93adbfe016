"""The Helm chart on the local cluster, with the real helm and kubectl binaries.

`helm lint`; bad values refused by `helm install`; `helm template` validated by the API server
(server-side dry run); `helm install` into a namespace that enforces the Pod Security
"restricted" profile; the operator ServiceAccount's permissions listed and compared, rule by rule;
the operator working with exactly the chart's identity and configuration; the admission webhooks
answering through the chart's webhook configurations and certificate; the `helm test` check;
`helm upgrade`; `helm uninstall` leaving only the user's data.

What runs where: kwok simulates the operator's pods (they are scheduled and admitted, so Pod
Security and the scheduler see them, but no container runs). So the operator runs in this test
process instead, with the chart's identity (a token of the chart's ServiceAccount, so every API
call is authorised by the chart's ClusterRole and nothing else), the chart's pools and images
ConfigMap, the chart's webhook certificate and the chart's peering object. The chart is
installed with `webhook.url=https://127.0.0.1:<port>`, the mode for an operator outside the
cluster; in a real cluster the same configurations point at the operator's Service.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from dedicated.operator.handlers.context import Options
from dedicated.operator.handlers.quota import GPU_QUOTAS, MIRROR_NAME, NAMESPACES, RESOURCE_QUOTAS
from dedicated.operator.images import image_config
from dedicated.operator.kube import CONFIGMAPS, DEDICATED_ENDPOINTS, DEPLOYMENTS, Kube
from dedicated.operator.runtime import OperatorThread, RuntimeConfig
from dedicated.operator.testing import prepare_model_namespace, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "dedicated-endpoints"
CI_VALUES = CHART / "ci" / "local-cluster-values.yaml"
RELEASE = "de"
FULLNAME = "de-dedicated-endpoints"

#: The operator ServiceAccount's permissions beyond what every authenticated identity has, as
#: `kubectl auth can-i --list` prints them: (resource, resource names, verbs).
EXPECTED_PERMISSIONS = {
    ("events", "[]", "[create]"),
    ("serviceaccounts", "[]", "[get create patch delete]"),
    ("rolebindings.rbac.authorization.k8s.io", "[]", "[get create patch delete]"),
    ("roles.rbac.authorization.k8s.io", "[]", "[get create patch delete]"),
    ("resourcequotas", "[]", "[get list create patch delete]"),
    ("configmaps", "[]", "[get list watch create patch delete]"),
    ("jobs.batch", "[]", "[get list watch create patch delete]"),
    ("services", "[]", "[get list watch create patch]"),
    ("deployments.apps", "[]", "[get list watch create patch]"),
    ("namespaces", "[]", "[get list watch]"),
    ("nodes", "[]", "[get list watch]"),
    ("pods", "[]", "[get list watch]"),
    ("dedicatedendpoints.llm.dedicated.dev", "[]", "[get list watch]"),
    ("gpuquotas.llm.dedicated.dev", "[]", "[get list watch]"),
    ("quantizedmodels.llm.dedicated.dev", "[]", "[get list watch]"),
    ("customresourcedefinitions.apiextensions.k8s.io", "[]", "[list watch]"),
    ("clusterkopfpeerings.kopf.dev", "[]", "[list watch]"),
    ("clusterkopfpeerings.kopf.dev", "[{peering}]", "[get patch]"),
    ("secrets", "[]", "[get]"),
    ("dedicatedendpoints.llm.dedicated.dev/status", "[]", "[patch]"),
    ("gpuquotas.llm.dedicated.dev/status", "[]", "[patch]"),
    ("quantizedmodels.llm.dedicated.dev/status", "[]", "[patch]"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def kube(k8s) -> Kube:
    return Kube(k8s)


@pytest.fixture(scope="module")
def site(kube, tmp_path_factory):
    """Names for this module's release: its namespace (restricted), webhook port, peering object."""
    suffix = uuid.uuid4().hex[:5]
    info = {"ns": f"dedicated-system-{suffix}", "port": free_port(), "health": free_port(),
            "peering": f"dedicated-operator-{suffix}", "tmp": tmp_path_factory.mktemp("helm"),
            "team_ns": f"helm-team-{suffix}", "quota": f"helm-team-{suffix}"}
    kube.request("POST", NAMESPACES.path(None), body={"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": info["ns"], "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                                      "pod-security.kubernetes.io/enforce-version": "latest",
                                      "pod-security.kubernetes.io/warn": "restricted",
                                      "pod-security.kubernetes.io/audit": "restricted"}}})
    yield info
    kube.delete(NAMESPACES, None, info["ns"])


def values_args(site: dict, *extra: str) -> list[str]:
    return ["-f", str(CI_VALUES), "--set", f"webhook.url=https://127.0.0.1:{site['port']}",
            "--set", f"peering.name={site['peering']}", "--set", "quota.sweepSeconds=5", *extra]


# --- before installing ------------------------------------------------------------------------


def test_helm_lint(helm) -> None:
    out = helm("lint", str(CHART), "-f", str(CI_VALUES))
    assert "0 chart(s) failed" in out.stdout
    bare = helm("lint", str(CHART), check=False)  # no pools: there is no default for real hardware
    assert bare.returncode != 0 and "/pools" in bare.stdout + bare.stderr and "minItems" in bare.stdout + bare.stderr


@pytest.mark.parametrize(("bad", "message"), [
    ({"pools": [{"name": "hopper-h100", "gpuFamily": "hopper", "gpuProduct": "H100", "gpuMemoryMiB": "80GB",
                 "gpusPerNode": 8, "computeCapability": "9.0", "costPerGpuHour": 2.5,
                 "nodeSelector": {"dedicated.dev/pool": "hopper-h100"}}]}, "gpuMemoryMiB"),
    ({"images": {"serving": {"repository": "dedicated-serving", "tag": "latest"}}}, "/images/serving/tag"),
    ({"webhook": {"failurePolicy": "Sometimes"}}, "/webhook/failurePolicy"),
    ({"operator": {"replica": 3}}, "replica"),
    ({"pools": [{"name": "p", "gpuFamily": "hopper", "gpuProduct": "H100", "gpuMemoryMiB": 81559, "gpusPerNode": 8,
                 "computeCapability": "8.0", "costPerGpuHour": 2.5, "nodeSelector": {"a": "b"}}]},
     "computeCapability 8.0 is not a hopper GPU"),
    ({"pools": [{"name": "p", "gpuFamily": "hopper", "gpuProduct": "H100", "gpuMemoryMiB": 81559, "gpusPerNode": 8,
                 "computeCapability": "9.0", "costPerGpuHour": 2.5, "nodeSelector": {"a": "b"}},
                {"name": "p", "gpuFamily": "hopper", "gpuProduct": "H200", "gpuMemoryMiB": 143771, "gpusPerNode": 8,
                 "computeCapability": "9.0", "costPerGpuHour": 3.5, "nodeSelector": {"a": "c"}}]},
     "pool name \"p\" is used twice"),
])
def test_bad_values_fail_helm_install(helm, kubectl, site, bad, message) -> None:
    path = site["tmp"] / f"bad-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(bad))
    out = helm("install", "bad", str(CHART), "-n", site["ns"], *values_args(site), "-f", str(path), check=False)
    assert out.returncode != 0, out.stdout
    assert message in out.stderr, out.stderr
    assert helm("list", "-n", site["ns"], "-q").stdout.strip() == ""
    assert kubectl("get", "clusterrole", "bad-dedicated-endpoints", check=False).returncode != 0


def test_template_is_accepted_by_the_api_server(helm, kubectl, site) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))  # kopf's peering CRDs
    rendered = helm("template", RELEASE, str(CHART), "-n", site["ns"], *values_args(site), "--skip-tests").stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(rendered) if d)
    assert kinds.count("CustomResourceDefinition") == 3 and "ValidatingWebhookConfiguration" in kinds
    out = kubectl("apply", "--dry-run=server", "--server-side", "--force-conflicts", "-f", "-", input=rendered)
    assert out.stdout.count("(server dry run)") == len(kinds), out.stdout
    assert "would violate PodSecurity" not in out.stderr, out.stderr


# --- installed --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release(helm, kubectl, kube, site):
    """`helm install` (adopting CRDs other tests applied without Helm); always uninstalled."""
    try:
        out = helm("install", RELEASE, str(CHART), "-n", site["ns"], *values_args(site), "--take-ownership",
                   "--wait", "--timeout", "180s", timeout=240)
        yield out
    finally:
        helm("uninstall", RELEASE, "-n", site["ns"], "--wait", "--timeout", "120s", check=False, timeout=180)
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):  # never leave webhooks behind
            kubectl("delete", kind, FULLNAME, "--ignore-not-found", check=False)


def test_install_runs_under_restricted_pod_security(release, kubectl, kube, site) -> None:
    assert "STATUS: deployed" in release.stdout and "helm test de" in release.stdout  # NOTES.txt
    dep = kube.get(DEPLOYMENTS, site["ns"], FULLNAME)
    assert dep["status"].get("readyReplicas") == 2
    pods = json.loads(kubectl("get", "pods", "-n", site["ns"], "-o", "json").stdout)["items"]
    assert len(pods) == 2 and all(p["spec"]["nodeName"].startswith("system-") for p in pods)
    events = kubectl("get", "events", "-n", site["ns"]).stdout
    assert "FailedCreate" not in events and "violates PodSecurity" not in events
    for crd in ("dedicatedendpoints", "quantizedmodels", "gpuquotas"):
        obj = json.loads(kubectl("get", "crd", f"{crd}.llm.dedicated.dev", "-o", "json").stdout)
        assert obj["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def _permissions(kubectl, subject: str) -> set[tuple[str, str, str]]:
    out = kubectl("auth", "can-i", "--list", f"--as={subject}").stdout.splitlines()
    rows = set()
    for line in out[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 4:  # resource rules (non-resource URLs have an empty first column)
            rows.add((cells[0], cells[2], cells[3]))
    return rows


def test_service_account_has_exactly_the_documented_permissions(release, kubectl, site) -> None:
    sa = f"system:serviceaccount:{site['ns']}:{FULLNAME}"
    kubectl("create", "serviceaccount", "baseline", "-n", site["ns"])
    baseline = _permissions(kubectl, f"system:serviceaccount:{site['ns']}:baseline")
    granted = _permissions(kubectl, sa) - baseline
    expected = {(r, n.format(peering=site["peering"]), v) for r, n, v in EXPECTED_PERMISSIONS}
    assert granted == expected, f"extra: {sorted(granted - expected)}; missing: {sorted(expected - granted)}"
    for verb, what in (("list", "secrets"), ("watch", "secrets"), ("create", "clusterroles"), ("patch", "nodes"),
                       ("bind", "clusterroles"), ("escalate", "roles"), ("impersonate", "users"),
                       ("create", "validatingwebhookconfigurations"), ("delete", "dedicatedendpoints"),
                       ("update", "deployments"), ("create", "pods")):
        assert kubectl("auth", "can-i", verb, what, f"--as={sa}", "-A", check=False).stdout.strip() == "no", (verb, what)


@pytest.fixture(scope="module")
def operator(release, kubectl, kube, site, local_cluster):
    """The operator in this process with the chart's identity, configuration and certificate."""
    tmp = site["tmp"]
    token = kubectl("create", "token", FULLNAME, "-n", site["ns"], "--duration=2h").stdout.strip()
    admin = yaml.safe_load(Path(local_cluster.kubeconfig).read_text())
    (tmp / "kubeconfig").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "local", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa"}}]}))
    config = kube.get(CONFIGMAPS, site["ns"], f"{FULLNAME}-config")
    (tmp / "pools.yaml").write_text(config["data"]["pools.yaml"])
    (tmp / "images.yaml").write_text(config["data"]["images.yaml"])
    secret = json.loads(kubectl("get", "secret", f"{FULLNAME}-webhook-tls", "-n", site["ns"], "-o", "json").stdout)
    certs = tmp / "certs"
    certs.mkdir(exist_ok=True)
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (certs / key).write_bytes(base64.b64decode(secret["data"][key]))
    env = {"DEDICATED_WEBHOOK_MODE": "serve", "DEDICATED_WEBHOOK_ADDR": "127.0.0.1",
           "DEDICATED_WEBHOOK_PORT": str(site["port"]), "DEDICATED_WEBHOOK_CERT_DIR": str(certs),
           "DEDICATED_OPERATOR_NAMESPACE": site["ns"], "DEDICATED_QUOTA_LEDGER": "dedicated-gpu-ledger",
           "DEDICATED_QUOTA_SWEEP_SECONDS": "5"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    images = yaml.safe_load(config["data"]["images.yaml"])["images"]
    options = Options(pools_file=tmp / "pools.yaml", images=image_config({k: str(v) for k, v in images.items()}),
                      workers=4, identity="test-operator")
    cfg = RuntimeConfig(options=options, kubeconfig=tmp / "kubeconfig", standalone=False, peering_name=site["peering"],
                        liveness_endpoint=f"http://127.0.0.1:{site['health']}/healthz")
    thread = OperatorThread(cfg).start()
    probe = {"apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "GPUQuota", "metadata": {"name": "webhook-probe"},
             "spec": {"namespaces": {"names": ["nowhere"]}, "limits": [{"gpuFamily": "hopper", "max": 1}]}}
    wait_for(lambda: kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False).returncode == 0,
             60, what="the admission webhook answering through the chart's configuration")
    try:
        yield thread
    finally:
        thread.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def team(operator, kube, kubectl, site):
    """A team namespace with the example model facts and a GPUQuota of 4 hopper GPUs."""
    ns = site["team_ns"]
    kube.request("POST", NAMESPACES.path(None), body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    prepare_model_namespace(kube, ns)
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "GPUQuota", "metadata": {"name": site["quota"]},
        "spec": {"namespaces": {"names": [ns]}, "limits": [{"gpuFamily": "hopper", "max": 4}], "unlistedPools": "Deny"}}))
    yield ns
    kubectl("delete", "dedicatedendpoints", "--all", "-n", ns, "--wait=true", check=False)
    kube.delete(GPU_QUOTAS, None, site["quota"])
    kube.delete(NAMESPACES, None, ns)


def endpoint(name: str, ns: str, **placement) -> dict:
    return {"apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "DedicatedEndpoint", "metadata": {"name": name, "namespace": ns},
            "spec": {"model": {"volume": {"claimName": "models", "path": "qwen3.6-35b-a3b-gsq-w2"}},
                     "placement": placement or {"gpuFamilies": ["hopper"], "gpusPerReplica": 4},
                     "serving": {"contextLength": 32768, "concurrency": 4}}}


def test_the_charts_identity_serves_an_endpoint_to_ready(team, operator, kube, kubectl, site) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(endpoint("chat", team)))
    wait_for(lambda: ((kube.get(DEDICATED_ENDPOINTS, team, "chat") or {}).get("status") or {}).get("phase") == "Ready",
             120, what="the endpoint Ready under the chart's ServiceAccount")
    assert kube.get(DEPLOYMENTS, team, "chat") is not None
    # the mutating webhook labelled it with its team; the quota mirror and status are in place
    labels = kube.get(DEDICATED_ENDPOINTS, team, "chat")["metadata"]["labels"]
    assert labels["llm.dedicated.dev/team"] == site["quota"]
    assert wait_for(lambda: kube.get(RESOURCE_QUOTAS, team, MIRROR_NAME), 30, what="ResourceQuota mirror")
    row = wait_for(lambda: (o := kube.get(GPU_QUOTAS, None, site["quota"])) and (o.get("status") or {}).get("used") == "hopper 4/4" and o,
                   30, what="the quota's status")
    assert row["status"]["free"] == "hopper 0"
    # the operator reached peering (it is the active replica) and nothing was refused by RBAC
    assert operator.ctx.gate() is True
    stats = operator.ctx.queue.stats
    assert "Forbidden" not in stats.last_error and "403" not in stats.last_error, stats.last_error
    health = httpx.get(f"http://127.0.0.1:{site['health']}/healthz", timeout=10)
    assert health.status_code == 200 and '"active": true' in health.text


def test_webhooks_refuse_early_with_the_reason(team, operator, kubectl, site) -> None:
    def refused(obj: dict, *args: str) -> str:
        out = kubectl(*(args or ("apply", "-f", "-")), input=json.dumps(obj) if obj else None, check=False)
        assert out.returncode != 0, out.stdout
        return out.stderr

    err = refused(endpoint("second", team))
    assert 'admission webhook "validate-endpoint.llm.dedicated.dev" denied the request' in err
    assert f"team {site['quota']} uses 4 of 4 hopper GPUs; this endpoint needs 4" in err
    err = refused(endpoint("lost", team, pool="no-such-pool"))
    assert "spec.placement.pool: pool 'no-such-pool' is not configured (configured pools: ampere-a100" in err
    err = refused({}, "scale", "dedicatedendpoint/chat", "-n", team, "--replicas=2")
    assert 'admission webhook "validate-endpoint-scale.llm.dedicated.dev" denied the request' in err
    assert "this endpoint needs 8 (2 replicas x 4 GPUs) instead of the 4 it holds" in err
    err = refused({"apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "GPUQuota", "metadata": {"name": "thief"},
                   "spec": {"namespaces": {"names": [team]}, "limits": [{"gpuFamily": "ampere", "max": 1}]}})
    assert f"GPUQuota thief: namespace {team} already belongs to GPUQuota {site['quota']}" in err
    # the CRD's own rules still come first, with the field
    err = refused({"apiVersion": "llm.dedicated.dev/v1alpha1", "kind": "GPUQuota", "metadata": {"name": "bad.name"},
                   "spec": {"namespaces": {"names": ["x"]}, "limits": [{"gpuFamily": "hopper", "max": 1}]}})
    assert "metadata.name: a GPUQuota is named after its team" in err


def _hook(helm, site) -> tuple[str, dict[str, str]]:
    """The `helm test` pod's program and environment, as the chart renders them."""
    rendered = helm("template", RELEASE, str(CHART), "-n", site["ns"], *values_args(site),
                    "--show-only", "templates/tests/test-operator.yaml").stdout
    pod = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Pod")
    container = pod["spec"]["containers"][0]
    assert container["command"][:2] == ["python", "-c"]
    return container["command"][2], {e["name"]: e["value"] for e in container["env"]}


def test_helm_test_check_passes_against_the_operator_and_fails_without_it(helm, team, operator, kubectl, site,
                                                                         local_cluster) -> None:
    """kwok cannot run the hook pod's container, so its program runs here: same code, same
    environment, the health URL and API server reached from this machine instead of the pod."""
    program, env = _hook(helm, site)
    assert env["HEALTH_URL"].endswith(f".svc:8080/healthz")
    sa_dir = site["tmp"] / "hook-sa"
    sa_dir.mkdir(exist_ok=True)
    kubectl("create", "serviceaccount", "hook", "-n", site["ns"])  # no permissions at all, like the hook's
    (sa_dir / "token").write_text(kubectl("create", "token", "hook", "-n", site["ns"]).stdout.strip())
    admin = yaml.safe_load(Path(local_cluster.kubeconfig).read_text())["clusters"][0]["cluster"]
    (sa_dir / "ca.crt").write_bytes(base64.b64decode(admin["certificate-authority-data"]))
    run_env = {**os.environ, **env, "SA_DIR": str(sa_dir), "API_SERVER": admin["server"],
               "HEALTH_URL": f"http://127.0.0.1:{site['health']}/healthz"}
    ok = subprocess.run([sys.executable, "-c", program], env=run_env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok: operator healthy; the API serves dedicatedendpoints, gpuquotas, quantizedmodels" in ok.stdout
    down = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
                          env={**run_env, "HEALTH_URL": f"http://127.0.0.1:{free_port()}/healthz"})
    assert down.returncode == 1 and "FAIL: health endpoint" in down.stdout


def test_upgrade_keeps_the_certificate_and_the_ledger(helm, team, operator, kube, kubectl, site) -> None:
    before_secret = json.loads(kubectl("get", "secret", f"{FULLNAME}-webhook-tls", "-n", site["ns"], "-o", "json").stdout)
    before_ledger = kube.get(CONFIGMAPS, site["ns"], "dedicated-gpu-ledger")
    assert len(before_ledger.get("data") or {}) == 1  # the endpoint's claim
    before_dep = kube.get(DEPLOYMENTS, site["ns"], FULLNAME)
    extra = site["tmp"] / "upgrade.yaml"
    pools = yaml.safe_load(CI_VALUES.read_text())["pools"]
    pools[2]["costPerGpuHour"] = 2.2
    extra.write_text(yaml.safe_dump({"pools": pools, "operator": {"replicas": 1, "logLevel": "DEBUG"},
                                     "webhook": {"failurePolicy": "Ignore"}}))
    out = helm("upgrade", RELEASE, str(CHART), "-n", site["ns"], *values_args(site), "-f", str(extra),
               "--wait", "--timeout", "180s", timeout=240)
    assert "STATUS: deployed" in out.stdout and "REVISION: 2" in out.stdout
    after_secret = json.loads(kubectl("get", "secret", f"{FULLNAME}-webhook-tls", "-n", site["ns"], "-o", "json").stdout)
    assert after_secret["data"] == before_secret["data"], "the webhook certificate changed on upgrade"
    after_ledger = kube.get(CONFIGMAPS, site["ns"], "dedicated-gpu-ledger")
    assert after_ledger["data"] == before_ledger["data"], "helm upgrade touched the ledger's data"
    config = kube.get(CONFIGMAPS, site["ns"], f"{FULLNAME}-config")
    assert "costPerGpuHour: 2.2" in config["data"]["pools.yaml"]
    dep = kube.get(DEPLOYMENTS, site["ns"], FULLNAME)
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != \
        before_dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    hooks = json.loads(kubectl("get", "validatingwebhookconfiguration", FULLNAME, "-o", "json").stdout)["webhooks"]
    assert {w["failurePolicy"] for w in hooks} == {"Ignore"}
    # still served: the webhook answers with the kept certificate
    err = kubectl("apply", "-f", "-", input=json.dumps(endpoint("second", team)), check=False).stderr
    assert "uses 4 of 4 hopper GPUs" in err


def test_uninstall_leaves_only_the_users_data(helm, team, operator, kube, kubectl, site) -> None:
    # the user's own clean-up first: endpoints and quotas are their data (kept with the CRDs)
    kubectl("delete", "dedicatedendpoints", "--all", "-n", team, "--wait=true", "--timeout=60s")
    wait_for(lambda: kube.get(DEPLOYMENTS, team, "chat") is None, 60, what="the endpoint's Deployment garbage-collected")
    kube.delete(GPU_QUOTAS, None, site["quota"])
    wait_for(lambda: kube.get(RESOURCE_QUOTAS, team, MIRROR_NAME) is None, 60, what="the ResourceQuota mirror collected")
    operator.stop()
    helm("uninstall", RELEASE, "-n", site["ns"], "--wait", "--timeout", "120s", timeout=180)
    ours = ("configmap/kube-root-ca.crt", "serviceaccount/default", "serviceaccount/baseline", "serviceaccount/hook")

    def leftovers() -> list[str]:
        names = kubectl("get", "all,configmaps,secrets,serviceaccounts,roles,rolebindings,poddisruptionbudgets,"
                        "resourcequotas", "-n", site["ns"], "-o", "name").stdout.split()
        return [x for x in names if not x.startswith(ours)]

    wait_for(lambda: not leftovers(), 60, what=f"nothing of the release left in {site['ns']} (now {leftovers()})")
    for kind, name in (("clusterrole", FULLNAME), ("clusterrolebinding", FULLNAME),
                       ("validatingwebhookconfiguration", FULLNAME), ("mutatingwebhookconfiguration", FULLNAME),
                       ("clusterkopfpeering", site["peering"])):
        assert kubectl("get", kind, name, check=False).returncode != 0, f"{kind}/{name} left behind"
    # kept on purpose: the CRDs (deleting them would delete every endpoint, model and quota) and the
    # user's volume claim; nothing of the operator's blocks deleting what is left
    for crd in ("dedicatedendpoints", "quantizedmodels", "gpuquotas"):
        assert kubectl("get", "crd", f"{crd}.llm.dedicated.dev", check=False).returncode == 0
    assert kubectl("get", "pvc", "models", "-n", team, check=False).returncode == 0
    kubectl("apply", "-f", "-", input=json.dumps(endpoint("after", team)))  # no webhook left to call
    kubectl("delete", "dedicatedendpoint", "after", "-n", team, "--timeout=30s")
