"""Authentication and RBAC are really on: a service account's token gets only what it is bound to."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dedicated.localcluster.testing import wait_until

pytestmark = pytest.mark.integration


def _client_with_token(k8s, token: str) -> client.ApiClient:
    config = client.Configuration()
    config.host = k8s.configuration.host
    config.ssl_ca_cert = k8s.configuration.ssl_ca_cert
    config.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(config)


def test_service_account_without_binding_is_forbidden(k8s, kubectl, namespace: str) -> None:
    core, rbac = client.CoreV1Api(k8s), client.RbacAuthorizationV1Api(k8s)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    token = core.create_namespaced_service_account_token(
        "reader", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    with _client_with_token(k8s, token) as as_reader:
        reader_core = client.CoreV1Api(as_reader)
        with pytest.raises(ApiException) as denied:
            reader_core.list_namespaced_pod(namespace)
        assert denied.value.status == 403
        assert f"system:serviceaccount:{namespace}:reader" in denied.value.body

        rbac.create_namespaced_role(
            namespace,
            {"metadata": {"name": "pod-reader"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]},
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
            },
        )
        wait_until(lambda: reader_core.list_namespaced_pod(namespace) is not None, timeout=30, message="list allowed")
        with pytest.raises(ApiException) as still_denied:
            reader_core.list_namespaced_secret(namespace)
        assert still_denied.value.status == 403

    answer = kubectl("auth", "can-i", "create", "pods", "-n", namespace, f"--as=system:serviceaccount:{namespace}:reader", check=False)
    assert answer.stdout.strip() == "no" and answer.returncode == 1


def test_anonymous_requests_are_refused(local_cluster) -> None:
    import ssl

    import httpx

    ca = ssl.create_default_context(cafile=str(local_cluster.state_dir / "pki" / "ca.crt"))
    response = httpx.get(f"{local_cluster.api_server}/api/v1/namespaces", verify=ca, timeout=10)
    assert response.status_code == 403 and "system:anonymous" in response.text
