"""Cluster bookkeeping without binaries: stale and half-written pid files, status, env, down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dedicated.localcluster.__main__ import main as localcluster_main
from dedicated.localcluster.cluster import COMPONENTS, LocalCluster
from dedicated.localcluster.procs import ProcessRecord, proc_start_ticks, start_process


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)


def test_stale_and_unreadable_pid_files_are_cleaned_with_a_message(tmp_path: Path) -> None:
    messages: list[str] = []
    cluster = LocalCluster(state_dir=tmp_path, log=messages.append)
    (tmp_path / "run").mkdir()
    ProcessRecord("etcd", _dead_pid(), 1, ("etcd",), "").save(cluster.pid_file("etcd"))
    cluster.pid_file("kwok").write_text("{not json")
    assert cluster._existing_cluster() is None
    assert any("stale pid files of etcd" in m for m in messages)
    assert any("unreadable pid file" in m and "kwok.pid" in m for m in messages)
    assert not list((tmp_path / "run").iterdir())


def test_partly_running_cluster_is_stopped_before_a_fresh_start(tmp_path: Path) -> None:
    messages: list[str] = []
    cluster = LocalCluster(state_dir=tmp_path, log=messages.append)
    (tmp_path / "run").mkdir()
    record = start_process("etcd", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "e.log", cluster.pid_file("etcd"))
    assert cluster.running()["etcd"] and not cluster.running()["kube-apiserver"]
    assert cluster.info() is None
    assert cluster._existing_cluster() is None
    assert any("found a partly running cluster" in m and "running: etcd" in m for m in messages)
    assert not record.is_running() and not cluster.pid_file("etcd").exists()


def test_status_env_and_down_without_a_cluster(tmp_path: Path, capsys) -> None:
    cluster = LocalCluster(state_dir=tmp_path, log=lambda _: None)
    status = cluster.status()
    assert status["running"] is False and set(status["components"]) == set(COMPONENTS)
    assert localcluster_main(["status", "--state-dir", str(tmp_path)]) == 3
    assert localcluster_main(["env", "--state-dir", str(tmp_path)]) == 1
    assert "no running cluster" in capsys.readouterr().err
    assert localcluster_main(["down", "--state-dir", str(tmp_path)]) == 0
    assert "nothing was running" in capsys.readouterr().err


def test_bad_pool_file_fails_before_anything_starts(tmp_path: Path, capsys) -> None:
    pools = tmp_path / "pools.yaml"
    pools.write_text("pools:\n  - name: x\n")
    rc = localcluster_main(["up", "--state-dir", str(tmp_path / "s"), "--pools", str(pools), "--no-build"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "invalid GPU pool file" in err and "pools[0] (x).gpuFamily: required field is missing" in err
    assert not (tmp_path / "s" / "run").exists()


def test_start_ticks_identify_this_process() -> None:
    import os

    assert proc_start_ticks(os.getpid()) is not None


def test_cluster_command_is_registered_in_the_main_cli() -> None:
    from dedicated.cli import COMMAND_MODULES

    assert "dedicated.localcluster.cli" in COMMAND_MODULES
