"""RBAC least privilege, proven three ways against the real API server.

1. The chart's rendered ClusterRole/Roles grant nothing beyond the allow-list below (kept here, in
   the test, on purpose: widening the operator's rights must be a visible change to this file),
   with no wildcard and none of the never-allowed rights (secrets list/watch, pods create/exec,
   bind/escalate/impersonate, RBAC or webhook or CRD writes, node writes).
2. The API server agrees: ``kubectl auth can-i --list`` as the operator's ServiceAccount, with the
   chart's RBAC applied, lists nothing beyond the allow-list and Kubernetes' built-in basics.
3. The allow-list is also *enough*: the real operator runs through the fault proxy impersonating
   that ServiceAccount, drives endpoints and QuantizedModels through their lifecycle (Job
   creation with its per-Job Role, a new generation deleting the old one, a failed Job's pod
   read, a referenced Secret), and not one of its requests is refused (no 403).

Also: the per-Job ServiceAccount the operator creates may only get/patch its own Job.
"""

from __future__ import annotations

import re
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import world as W  # noqa: E402
from support.faultproxy import FaultProxy  # noqa: E402
from support.fixtures import *  # noqa: E402,F403
from support.fixtures import delete_namespace, new_namespace, prepared_namespace, wait_for, wait_ready_endpoints  # noqa: E402

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[2] / "charts" / "dedicated-endpoints"
CI_VALUES = CHART / "ci" / "local-cluster-values.yaml"
PEERING = "dedicated-operator"

R, W_, D = ("get", "list", "watch"), ("create", "patch"), ("delete",)
#: (apiGroup, resource, resourceName or "") -> verbs the operator may have. Why each exists is in
#: the chart's rbac.yaml and docs/operations.md.
ALLOWED: dict[tuple[str, str, str], frozenset[str]] = {
    ("llm.dedicated.dev", "dedicatedendpoints", ""): frozenset(R),
    ("llm.dedicated.dev", "quantizedmodels", ""): frozenset(R),
    ("llm.dedicated.dev", "gpuquotas", ""): frozenset(R),
    ("llm.dedicated.dev", "dedicatedendpoints/status", ""): frozenset({"patch"}),
    ("llm.dedicated.dev", "quantizedmodels/status", ""): frozenset({"patch"}),
    ("llm.dedicated.dev", "gpuquotas/status", ""): frozenset({"patch"}),
    ("apps", "deployments", ""): frozenset(R + W_),
    ("", "services", ""): frozenset(R + W_),
    ("batch", "jobs", ""): frozenset(R + W_ + D),
    ("", "configmaps", ""): frozenset(R + W_ + D),
    ("", "serviceaccounts", ""): frozenset({"get", *W_, *D}),
    ("rbac.authorization.k8s.io", "roles", ""): frozenset({"get", *W_, *D}),
    ("rbac.authorization.k8s.io", "rolebindings", ""): frozenset({"get", *W_, *D}),
    ("", "pods", ""): frozenset(R),
    ("", "events", ""): frozenset({"create"}),
    ("", "secrets", ""): frozenset({"get"}),
    ("", "namespaces", ""): frozenset(R),
    ("", "nodes", ""): frozenset(R),
    ("", "resourcequotas", ""): frozenset({"get", "list", *W_, *D}),
    ("apiextensions.k8s.io", "customresourcedefinitions", ""): frozenset({"list", "watch"}),
    ("kopf.dev", "clusterkopfpeerings", ""): frozenset({"list", "watch"}),
    ("kopf.dev", "clusterkopfpeerings", PEERING): frozenset({"get", "patch"}),
}
#: What every authenticated identity has in Kubernetes (system:basic-user, system:discovery,
#: system:public-info-viewer, system:service-account-issuer-discovery).
BUILTIN = {("authentication.k8s.io", "selfsubjectreviews", ""): {"create"},
           ("authorization.k8s.io", "selfsubjectaccessreviews", ""): {"create"},
           ("authorization.k8s.io", "selfsubjectrulesreviews", ""): {"create"}}
NEVER = [  # (group, resource, verb): a grant of any of these is a finding on its own
    ("", "secrets", "list"), ("", "secrets", "watch"), ("", "pods", "create"), ("", "pods/exec", "create"),
    ("", "pods/attach", "create"), ("", "nodes", "patch"), ("", "nodes", "update"),
    ("rbac.authorization.k8s.io", "clusterroles", "create"), ("rbac.authorization.k8s.io", "clusterrolebindings", "create"),
    ("rbac.authorization.k8s.io", "roles", "bind"), ("rbac.authorization.k8s.io", "roles", "escalate"),
    ("rbac.authorization.k8s.io", "clusterroles", "bind"), ("rbac.authorization.k8s.io", "clusterroles", "escalate"),
    ("", "users", "impersonate"), ("", "serviceaccounts", "impersonate"), ("", "serviceaccounts/token", "create"),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch"),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "create"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "delete"),
    ("llm.dedicated.dev", "dedicatedendpoints", "delete"), ("llm.dedicated.dev", "quantizedmodels", "delete"),
]


def render(helm, release: str, namespace: str) -> list[dict]:
    out = helm("template", release, str(CHART), "-n", namespace, "-f", str(CI_VALUES)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def grants(docs: list[dict]) -> dict[tuple[str, str, str], set[str]]:
    """Every (group, resource, resourceName) -> verbs granted by the rendered (Cluster)Roles."""
    out: dict[tuple[str, str, str], set[str]] = {}
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in doc.get("rules") or []:
            assert "nonResourceURLs" not in rule, f"{doc['metadata']['name']}: non-resource URLs granted: {rule}"
            for group in rule.get("apiGroups") or [""]:
                for resource in rule.get("resources") or []:
                    for name in rule.get("resourceNames") or [""]:
                        out.setdefault((group, resource, name), set()).update(rule.get("verbs") or [])
    return out


def excess(granted: dict[tuple[str, str, str], set[str]],
           allowed: dict[tuple[str, str, str], frozenset[str] | set[str]]) -> list[str]:
    problems = []
    for key, verbs in sorted(granted.items()):
        group, resource, name = key
        if "*" in (group, resource) or "*" in verbs:
            problems.append(f"wildcard: {key} {sorted(verbs)}")
            continue
        extra = verbs - set(allowed.get(key, ()))
        if extra:
            problems.append(f"{group or 'core'}/{resource}{'[' + name + ']' if name else ''}: {sorted(extra)}")
    return problems


def never_granted(granted: dict[tuple[str, str, str], set[str]]) -> list[str]:
    return [f"{g or 'core'}/{r} {v}" for g, r, v in NEVER
            if any(k[0] == g and k[1] == r and (v in vs or "*" in vs) for k, vs in granted.items())]


def test_chart_role_is_within_the_allow_list(helm) -> None:
    docs = render(helm, "sec", "dedicated-system")
    granted = grants(docs)
    assert granted, "the chart renders no ClusterRole/Role"
    assert excess(granted, ALLOWED) == []
    assert never_granted(granted) == []
    # the check can fail: one extra verb is caught
    assert excess({**granted, ("", "secrets", ""): {"get", "list"}}, ALLOWED) == ["core/secrets: ['list']"]
    bindings = [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    for b in bindings:
        assert b["roleRef"]["name"] != "cluster-admin" and b["roleRef"]["kind"] in ("ClusterRole", "Role")
        assert all(s["kind"] == "ServiceAccount" for s in b["subjects"]), b


def _can_i_list(kubectl, user: str, namespace: str) -> dict[tuple[str, str, str], set[str]]:
    out = kubectl("auth", "can-i", "--list", f"--as={user}", "-n", namespace).stdout.splitlines()
    header = out[0]
    cols = [header.index(h) for h in ("Resources", "Non-Resource URLs", "Resource Names", "Verbs")]
    rows: dict[tuple[str, str, str], set[str]] = {}
    for line in out[1:]:
        res = line[cols[0]:cols[1]].strip()
        names = line[cols[2]:cols[3]].strip().strip("[]")
        verbs = set(line[cols[3]:].strip().strip("[]").split())
        if not res:  # non-resource URLs: discovery, health, version (built in for every user)
            assert verbs <= {"get"}, line
            continue
        base, _, sub = res.partition("/")  # e.g. dedicatedendpoints.llm.dedicated.dev/status
        resource, _, group = base.partition(".")
        resource = f"{resource}/{sub}" if sub else resource
        for name in names.split() or [""]:
            rows.setdefault((group, resource, name), set()).update(verbs)
    return rows


def test_service_account_can_do_nothing_more_in_the_api_server(k8s, helm, kubectl) -> None:
    ns = new_namespace(k8s, "sec-rbac")
    other = new_namespace(k8s, "sec-other")
    release = f"sec{uuid.uuid4().hex[:6]}"
    docs = [d for d in render(helm, release, ns) if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                                                    "Role", "RoleBinding")]
    kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(docs))
    try:
        sa = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
        user = f"system:serviceaccount:{ns}:{sa}"
        for where in (ns, other, "kube-system"):
            seen = _can_i_list(kubectl, user, where)
            assert excess(seen, {**ALLOWED, **BUILTIN}) == [], f"in namespace {where}"
            assert never_granted(seen) == [], f"in namespace {where}"
        # spot checks straight from the authorizer
        for verb, what, expect in (("list", "secrets", "no"), ("get", "secrets", "yes"), ("create", "pods", "no"),
                                   ("delete", "dedicatedendpoints.llm.dedicated.dev", "no"),
                                   ("impersonate", "serviceaccounts", "no"), ("bind", "clusterroles", "no")):
            got = kubectl("auth", "can-i", verb, what, f"--as={user}", "-n", other, check=False).stdout.strip()
            assert got == expect, f"can {user} {verb} {what}? {got}, want {expect}"
    finally:
        kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", input=yaml.safe_dump_all(
            [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]), check=False)
        delete_namespace(k8s, ns)
        delete_namespace(k8s, other)


def test_operator_works_with_exactly_the_chart_permissions(k8s, crds, helm, kubectl, local_cluster,
                                                           start_operator) -> None:
    sys_ns = new_namespace(k8s, "sec-operator")
    ns = prepared_namespace(k8s, "sec-workload")
    release = f"sec{uuid.uuid4().hex[:6]}"
    docs = [d for d in render(helm, release, sys_ns) if d["kind"] in ("ServiceAccount", "ClusterRole",
                                                                        "ClusterRoleBinding")]
    kubectl("apply", "-n", sys_ns, "-f", "-", input=yaml.safe_dump_all(docs))
    sa = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
    world = W.World(k8s, ns)
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{sys_ns}", "system:authenticated"]
    try:
        with FaultProxy(local_cluster.kubeconfig, impersonate=f"system:serviceaccount:{sys_ns}:{sa}",
                        impersonate_groups=groups) as proxy:
            op = start_operator(ns, proxy)
            world.core.create_namespaced_secret(ns, {"metadata": {"name": "hf"}, "stringData": {"token": "hf_x"}})
            world.create(W.endpoint("er", replicas=1))
            world.create(W.quantized_model("qr", pod_annotations=W.LONG_RUNNING))
            world.create(W.quantized_model("qf", pod_annotations={
                "dedicated.dev/simulate-failure": "ValidationFailed: perplexity ratio 3.1 > 1.5",
                "dedicated.dev/simulate-exit-code": "2", "dedicated.dev/simulate-run-duration": "1s"}))
            hub_endpoint = W.endpoint("ehub")
            hub_endpoint["spec"]["model"] = {"hub": {"repo": "org/private-model", "tokenSecretRef": {"name": "hf"}}}
            world.create(hub_endpoint)
            wait_ready_endpoints(world, ["er"])
            wait_for(lambda: W.phase(world.get_qm("qf")) == "Failed", 90, "qf Failed")
            wait_for(lambda: (world.get_qm("qr").get("status") or {}).get("jobName"), 60, "qr's Job")
            # a new generation: the operator deletes the old Job, ConfigMap, ServiceAccount, Role, RoleBinding
            world.patch_spec("quantizedmodels", "qr", {"calibration": {"numSamples": 16}})
            wait_for(lambda: [j["metadata"]["name"] for j in world.jobs() if j["metadata"]["name"].startswith("qr-")]
                     == ["qr-quantize-2"], 60, lambda: str([j["metadata"]["name"] for j in world.jobs()]))
            wait_for(lambda: W.condition(world.get_ep("ehub"), "ModelReady").get("status") == "False", 60,
                     "ehub's model state (the Hub is unreachable here)")
            world.delete("dedicatedendpoints", "er")
            wait_for(lambda: not world.deployments() or all(d["metadata"]["name"] != "er" for d in world.deployments()),
                     60, "er's Deployment garbage-collected")
            refused = [f"{r.info.method} {r.info.path} -> {r.status}" for r in proxy.records() if r.status == 403]
            assert refused == [], "the chart's RBAC is not enough for the operator:\n" + "\n".join(refused)
            assert len(proxy.records()) > 50, "the operator made suspiciously few requests"
            # the impersonation is real: the same path refuses what the chart does not grant
            assert httpx.get(f"{proxy.url}/api/v1/secrets", timeout=10).status_code == 403
            assert W.check_models(world) == []
            assert op.crash_lines() == []
    finally:
        kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", input=yaml.safe_dump_all(
            [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]), check=False)
        delete_namespace(k8s, ns)
        delete_namespace(k8s, sys_ns)


def test_quantize_job_service_account_may_only_touch_its_own_job(world, start_operator, kubectl) -> None:
    start_operator(world.ns)
    world.create(W.quantized_model("qsa", pod_annotations=W.LONG_RUNNING))
    job = wait_for(lambda: next(iter(world.jobs()), None), 60, "the Job")
    name = job["metadata"]["name"]
    sa = job["spec"]["template"]["spec"]["serviceAccountName"]
    user = f"system:serviceaccount:{world.ns}:{sa}"
    seen = _can_i_list(kubectl, user, world.ns)
    assert excess(seen, {("batch", "jobs", name): frozenset({"get", "patch"}), **BUILTIN}) == []
    assert seen.get(("batch", "jobs", name)) == {"get", "patch"}
    for verb, what in (("get", f"jobs/{name}"), ("patch", f"jobs/{name}")):
        assert kubectl("auth", "can-i", verb, what, f"--as={user}", "-n", world.ns).stdout.strip() == "yes"
    for verb, what in (("get", "jobs/other"), ("delete", f"jobs/{name}"), ("get", "secrets"), ("list", "pods")):
        assert kubectl("auth", "can-i", verb, what, f"--as={user}", "-n", world.ns,
                       check=False).stdout.strip() == "no", f"{verb} {what}"
    assert re.fullmatch(r"[a-z0-9-]+", sa)
