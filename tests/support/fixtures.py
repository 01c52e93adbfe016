"""pytest fixtures for the reliability, fuzz and security tests (``from support.fixtures import *``).

They build on the session cluster of ``tests/integration/conftest.py`` (``local_cluster``,
``k8s``, ``kubectl``) and add: the CRDs installed, namespaces with bound volumes and model facts,
and a way to run the real operator process (directly or through the fault proxy), restricted to
the test's namespaces so operators started by other tests never act on them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dedicated.localcluster.pools import DEFAULT_POOLS_FILE
from dedicated.localcluster.testing import wait_until

from . import world as W
from .faultproxy import FaultProxy
from .operator_proc import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
#: CRDs the operator watches.
CRD_FILES = ("dedicatedendpoints.llm.dedicated.dev.yaml", "quantizedmodels.llm.dedicated.dev.yaml",
             "gpuquotas.llm.dedicated.dev.yaml")


@pytest.fixture(scope="session")
def crds(kubectl) -> None:
    for name in CRD_FILES:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds" / name))
    for name in CRD_FILES:
        kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name.removesuffix('.yaml')}")


def new_namespace(api: client.ApiClient, stem: str, labels: dict[str, str] | None = None) -> str:
    core = client.CoreV1Api(api)
    stem = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"dedicated.dev/test": "true", **(labels or {})}}})
    wait_until(lambda: any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items),
               timeout=60, message=f"the default ServiceAccount of {name}")
    return name


def delete_namespace(api: client.ApiClient, name: str) -> None:
    try:
        client.CoreV1Api(api).delete_namespace(name)
    except ApiException as err:
        if err.status != 404:
            raise


def prepared_namespace(api: client.ApiClient, stem: str, labels: dict[str, str] | None = None) -> str:
    """A namespace with the bound claims ``models`` and ``base`` and the small model's facts."""
    ns = new_namespace(api, stem, labels)
    W.apply_volumes(api, ns)
    W.apply_facts(api, ns)
    return ns


@pytest.fixture()
def ns(k8s, crds, request: pytest.FixtureRequest) -> Iterator[str]:
    name = prepared_namespace(k8s, request.node.name)
    yield name
    delete_namespace(k8s, name)


@pytest.fixture()
def world(k8s, ns) -> W.World:
    return W.World(k8s, ns)


OperatorFactory = Callable[..., OperatorProcess]


@pytest.fixture()
def start_operator(local_cluster, cluster_env, tmp_path: Path) -> Iterator[OperatorFactory]:
    """``start_operator(namespaces, proxy=None, **kw)``: the real operator, watching only
    ``namespaces``, through ``proxy`` when given; stopped at teardown."""
    started: list[OperatorProcess] = []

    def start(namespaces: list[str] | str, proxy: FaultProxy | None = None, *, wait: bool = True,
              **kw) -> OperatorProcess:
        if isinstance(namespaces, str):
            namespaces = [namespaces]
        kubeconfig = proxy.kubeconfig_for(tmp_path / f"proxy-{len(started)}.kubeconfig") if proxy \
            else local_cluster.kubeconfig
        args = [a for n in namespaces for a in ("--namespace", n)]
        op = OperatorProcess(kubeconfig, kw.pop("pools", DEFAULT_POOLS_FILE), tmp_path / f"operator-{len(started)}.log",
                             extra_args=[*args, *kw.pop("extra_args", [])], env=cluster_env, **kw)
        started.append(op)
        return op.start(wait_ready=wait)

    yield start
    for op in started:
        op.stop()


@pytest.fixture()
def proxy(local_cluster) -> Iterator[FaultProxy]:
    with FaultProxy(local_cluster.kubeconfig) as p:
        yield p


def wait_for(probe, timeout: float = 90.0, message: str | Callable[[], str] = "", interval: float = 0.5):
    return wait_until(probe, timeout=timeout, interval=interval, message=message)


def wait_ready_endpoints(world: W.World, names: list[str], timeout: float = 120.0) -> None:
    def ready() -> bool:
        return all(W.phase(world.get_ep(n)) == "Ready" and W.observed(world.get_ep(n)) for n in names)

    wait_for(ready, timeout, lambda: "endpoints Ready: " + ", ".join(
        f"{n}={W.phase(world.get_ep(n))}/{W.condition(world.get_ep(n), 'Ready').get('reason')}" for n in names))


__all__ = ["crds", "ns", "world", "start_operator", "proxy", "prepared_namespace", "new_namespace",
           "delete_namespace", "wait_for", "wait_ready_endpoints"]
