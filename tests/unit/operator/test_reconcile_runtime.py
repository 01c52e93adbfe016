"""The runtime's kopf settings and the ``dedicated run`` command line (no cluster needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kopf
import yaml

from dedicated.cli import main as cli
from dedicated.operator.handlers import build_registry
from dedicated.operator.handlers.context import Options
from dedicated.operator.runtime import PEERING_CRDS, RuntimeConfig, build_context, configure

POOLS = Path(__file__).resolve().parents[3] / "dedicated" / "localcluster" / "gpu-pools.yaml"


def test_settings_keep_kopf_state_under_our_prefix_and_select_owned_objects() -> None:
    settings = kopf.OperatorSettings()
    cfg = RuntimeConfig(options=Options(pools_file=POOLS), standalone=False, extra={"priority": 7})
    configure(settings, cfg)
    assert settings.peering.mandatory and not settings.peering.standalone and settings.peering.clusterwide
    assert settings.peering.name == "dedicated-operator" and settings.peering.priority == 7
    assert settings.persistence.progress_storage.prefix == "llm.dedicated.dev"
    assert settings.persistence.diffbase_storage.prefix == "llm.dedicated.dev"
    assert settings.persistence.finalizer.startswith("llm.dedicated.dev/")
    assert settings.posting.reporting_component == "dedicated-operator"
    selectors = {str(k): v for k, v in settings.watching.label_selectors.items()}
    assert sorted(selectors.values()).count("app.kubernetes.io/managed-by=dedicated-operator") == 3
    assert "llm.dedicated.dev/model-facts" in selectors.values()
    standalone = kopf.OperatorSettings()
    configure(standalone, RuntimeConfig(options=Options(pools_file=POOLS), standalone=True))
    assert standalone.peering.standalone and not standalone.peering.mandatory


def test_registry_has_no_change_detecting_handlers() -> None:
    """Event handlers only: kopf then stores nothing on our objects (no diff-base annotation,
    no progress annotations, no finalizer), which is part of "a resync writes nothing"."""
    from kubernetes.client import ApiClient

    ctx = build_context(RuntimeConfig(options=Options(pools_file=POOLS), standalone=True), api=ApiClient())
    registry = build_registry(ctx)
    assert registry._changing.get_all_handlers() == []
    assert registry._spawning.get_all_handlers() == []
    assert len(registry._watching.get_all_handlers()) >= 7
    assert {h.id for h in registry._indexing.get_all_handlers()} >= {"endpoints_by_model", "endpoints_by_namespace"}


def test_cli_prints_peering_crds(capsys) -> None:
    assert cli(["run", "--print-peering-crds"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"]["name"] for d in docs] == [c["metadata"]["name"] for c in PEERING_CRDS] == [
        "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]


def test_cli_refuses_a_bad_pool_file(tmp_path, capsys) -> None:
    bad = tmp_path / "pools.yaml"
    bad.write_text("pools:\n  - {name: x, gpuFamily: hopper, gpuProduct: H, gpuMemoryMiB: 1, gpusPerNode: 1,\n"
                   "     computeCapability: 9.0, costPerGpuHour: 1, nodeSelector: {a: b}}\n")
    assert cli(["run", "--pools", str(bad), "--standalone", "--kubeconfig", str(tmp_path / "none")]) == 2
    assert "computeCapability" in capsys.readouterr().err


def test_lean_entry_point_does_not_import_torch() -> None:
    code = ("import sys, runpy; sys.argv=['x', '--help']\n"
            "try:\n runpy.run_module('dedicated.operator.runtime', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_cli_refuses_missing_credentials(tmp_path, capsys) -> None:
    empty = tmp_path / "kubeconfig"
    empty.write_text("")
    assert cli(["run", "--pools", str(POOLS), "--standalone", "--kubeconfig", str(empty)]) == 2
    assert "no usable Kubernetes credentials" in capsys.readouterr().err
