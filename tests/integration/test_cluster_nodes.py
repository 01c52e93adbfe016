"""The simulated pools as kubectl and helm see them."""

from __future__ import annotations

import json

import pytest

from dedicated.localcluster.pools import load_pools
from dedicated.localcluster.versions import HELM_VERSION, KUBERNETES_VERSION

pytestmark = pytest.mark.integration


def test_kubectl_shows_every_pool_with_gfd_columns(kubectl) -> None:
    out = kubectl("get", "nodes", "-L", "nvidia.com/gpu.product,nvidia.com/gpu.family").stdout
    header, *rows = out.strip().splitlines()
    assert header.split()[-2:] == ["GPU.PRODUCT", "GPU.FAMILY"]
    pools = load_pools()
    assert len(rows) == sum(p.nodes for p in pools.pools) + pools.system_nodes.nodes
    assert all(" Ready " in f" {row} " for row in rows), out
    for pool in pools.pools:
        matching = [row for row in rows if row.startswith(f"{pool.name}-")]
        assert len(matching) == pool.nodes
        assert all(row.split()[-2:] == [pool.gpu_product, pool.gpu_family] for row in matching), matching


def test_node_reports_gpu_capacity_and_taint(kubectl) -> None:
    gpus = kubectl("get", "node", "hopper-h100-0", "-o", "jsonpath={.status.allocatable.nvidia\\.com/gpu}").stdout
    taint = kubectl("get", "node", "hopper-h100-0", "-o", "jsonpath={.spec.taints[0].key}={.spec.taints[0].value}:{.spec.taints[0].effect}").stdout
    assert gpus == "8" and taint == "dedicated.dev/pool=hopper-h100:NoSchedule"


def test_client_and_server_versions(kubectl, helm) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["clientVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert version["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert HELM_VERSION in helm("version", "--short").stdout


def test_helm_installs_and_uninstalls_a_chart(helm, kubectl, namespace: str, tmp_path) -> None:
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\ndata:\n  pool: {{ .Values.pool | quote }}\n"
    )
    (chart / "values.yaml").write_text("pool: hopper-h100\n")
    helm("install", "probe", str(chart), "-n", namespace, "--wait", "--timeout", "60s")
    assert kubectl("get", "configmap", "probe-cm", "-n", namespace, "-o", "jsonpath={.data.pool}").stdout == "hopper-h100"
    helm("uninstall", "probe", "-n", namespace, "--wait")
    assert kubectl("get", "configmap", "probe-cm", "-n", namespace, check=False).returncode != 0
