"""Fixtures for integration tests: one real local control plane per test session.

The cluster starts lazily, the first time a test asks for one of these fixtures, so a run of the
unit tests never builds or starts anything. It lives in its own state directory under pytest's
tmp path (it never touches a developer's `dedicated cluster up` cluster), its processes are tied
to the pytest process (a killed pytest leaves nothing running), and it is stopped at session end
whatever happened. If it cannot be built or started, every test that needs it fails with the
reason: a missing control plane is a failure, never a skip.

Fixtures (all session-scoped unless noted):

- ``local_cluster``      ClusterInfo: kubeconfig, api_server, binaries, bin_dir, ports, nodes
- ``kubeconfig``         Path of the admin kubeconfig (a client certificate in system:masters)
- ``cluster_env``        dict: os.environ plus KUBECONFIG, PATH (kubectl/helm first) and private
                         helm/kubectl config dirs, for subprocesses such as the operator
- ``kubectl``            kubectl(*args, check=True, input=None, timeout=120) -> CompletedProcess[str]
- ``helm_bin``           Path of the pinned helm binary
- ``helm``               helm(*args, check=True, input=None, timeout=120) -> CompletedProcess[str]
- ``k8s_client_factory`` () -> kubernetes.client.ApiClient, a new client for the cluster each call
- ``k8s``                one shared kubernetes.client.ApiClient
- ``namespace``          (function scope) a fresh namespace name, ready for pods, deleted after
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dedicated.localcluster.testing import CommandRunner, cluster_env as make_cluster_env, wait_until


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator["ClusterInfo"]:  # noqa: F821
    from dedicated.localcluster.build import BuildError
    from dedicated.localcluster.cluster import ClusterError, LocalCluster
    from dedicated.localcluster.pools import PoolFileError

    state_dir = tmp_path_factory.mktemp("localcluster")
    lines: list[str] = []

    def log(message: str) -> None:
        lines.append(message)
        print(f"[local cluster] {message}", flush=True)

    cluster = LocalCluster(state_dir=state_dir, log=log, tie_to_parent=True)
    try:
        try:
            info = cluster.up(timeout=240)
        except (BuildError, ClusterError, PoolFileError, OSError) as error:
            pytest.fail(
                "the local control plane could not be built or started, so integration tests cannot run:\n"
                f"{error}\n(state and logs: {state_dir}/logs; try `dedicated cluster build` and "
                "`dedicated cluster up` by hand)",
                pytrace=False,
            )
        yield info
    finally:
        cluster.down()


@pytest.fixture(scope="session")
def kubeconfig(local_cluster) -> Path:
    return local_cluster.kubeconfig


@pytest.fixture(scope="session")
def cluster_env(local_cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_cluster_env(local_cluster.kubeconfig, local_cluster.bin_dir, tmp_path_factory.mktemp("client-home"))


@pytest.fixture(scope="session")
def kubectl(local_cluster, cluster_env) -> CommandRunner:
    return CommandRunner(local_cluster.binaries.kubectl, cluster_env, prefix=["--kubeconfig", str(local_cluster.kubeconfig)])


@pytest.fixture(scope="session")
def helm_bin(local_cluster) -> Path:
    return local_cluster.binaries.helm


@pytest.fixture(scope="session")
def helm(local_cluster, cluster_env) -> CommandRunner:
    return CommandRunner(local_cluster.binaries.helm, cluster_env, prefix=["--kubeconfig", str(local_cluster.kubeconfig)])


@pytest.fixture(scope="session")
def k8s_client_factory(local_cluster) -> Callable[[], object]:
    from kubernetes import config

    def new_client():
        return config.new_client_from_config(config_file=str(local_cluster.kubeconfig))

    return new_client


@pytest.fixture(scope="session")
def k8s(k8s_client_factory) -> Iterator[object]:
    client = k8s_client_factory()
    with client:
        yield client


@pytest.fixture()
def namespace(k8s, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace named after the test, where pods can be created right away (its `default`
    ServiceAccount exists); deleted afterwards without waiting for it to drain."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(k8s)
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"dedicated.dev/test": "true"}}})
    wait_until(
        lambda: any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items),
        timeout=60,
        message=f"the `default` ServiceAccount of namespace {name}",
    )
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as error:
        if error.status != 404:
            raise
