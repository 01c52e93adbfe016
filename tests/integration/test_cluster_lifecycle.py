"""`dedicated cluster up/status/env/down` as a user runs them: idempotent start, recovery after a
crashed component or stale pid files, and no process left behind. This test starts its own
cluster (in its own state directory) three times, independent of the session cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dedicated.localcluster.cluster import COMPONENTS
from dedicated.localcluster.procs import ProcessRecord

pytestmark = pytest.mark.integration


def cli(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dedicated.localcluster", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=400,
    )


def records(state: Path) -> dict[str, ProcessRecord | None]:
    return {name: ProcessRecord.load(state / "run" / f"{name}.pid") for name in COMPONENTS}


def test_up_twice_crash_recovery_stale_pids_and_clean_down(tmp_path: Path) -> None:
    state = tmp_path / "cluster"
    seen: list[ProcessRecord] = []
    try:
        first = cli("up", state=state)
        assert first.returncode == 0, first.stderr
        seen += [r for r in records(state).values() if r]
        assert len(seen) == len(COMPONENTS) and all(r.is_running() for r in seen)

        again = cli("up", state=state)
        assert again.returncode == 0 and "already running" in again.stderr, again.stderr
        assert records(state) == {r.name: r for r in seen}, "a second `up` must not start anything"

        status = cli("status", "--json", state=state)
        assert status.returncode == 0 and json.loads(status.stdout)["api_server_ready"] is True
        env = cli("env", state=state)
        assert f"export KUBECONFIG={state / 'kubeconfig'}" in env.stdout and f"{state / 'bin'}" in env.stdout

        # A component crashes: status says so, `up` notices and starts a clean cluster.
        scheduler = records(state)["kube-scheduler"]
        os.kill(scheduler.pid, signal.SIGKILL)
        assert cli("status", state=state).returncode == 3
        recovered = cli("up", state=state)
        assert recovered.returncode == 0, recovered.stderr
        assert "found a partly running cluster" in recovered.stderr
        seen += [r for r in records(state).values() if r]
        assert all(r and r.is_running() for r in records(state).values())

        # Stop everything, then leave stale pid files behind as a reboot would.
        assert cli("down", state=state).returncode == 0
        assert not any(r.is_running() for r in seen)
        dead = ProcessRecord("etcd", scheduler.pid, scheduler.start_ticks, ("etcd",), "")
        dead.save(state / "run" / "etcd.pid")
        (state / "run" / "kwok.pid").write_text("{half a record")
        after_stale = cli("up", state=state)
        assert after_stale.returncode == 0, after_stale.stderr
        assert "stale pid files of etcd" in after_stale.stderr and "unreadable pid file" in after_stale.stderr
        seen += [r for r in records(state).values() if r]
    finally:
        down = cli("down", state=state)
    assert down.returncode == 0, down.stderr
    leftovers = [r for r in seen if r.is_running()]
    assert not leftovers, f"processes left running after down: {leftovers}"
    assert cli("env", state=state).returncode == 1


def test_port_taken_between_choosing_and_binding_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first set of ports handed to `up` has etcd's client port already in use by someone else:
    etcd dies with "address already in use", and `up` starts again on new ports."""
    import socket

    from dedicated.localcluster import cluster as cluster_module
    from dedicated.localcluster.cluster import LocalCluster
    from dedicated.localcluster.procs import free_ports

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    calls: list[list[int]] = []

    def ports_with_one_taken(count: int) -> list[int]:
        ports = free_ports(count, avoid={taken})
        if not calls:
            ports[0] = taken  # PORT_NAMES[0] is etcd's client port
        calls.append(ports)
        return ports

    monkeypatch.setattr(cluster_module, "free_ports", ports_with_one_taken)
    messages: list[str] = []
    cluster = LocalCluster(state_dir=tmp_path / "c", log=messages.append, tie_to_parent=True)
    try:
        info = cluster.up(timeout=240)
        assert len(calls) == 2 and info.ports["etcd-client"] != taken
        assert any("port was taken meanwhile; retrying on new ports" in m for m in messages), messages
        assert all(cluster.running().values())
    finally:
        cluster.down()
        squatter.close()
    assert not any(cluster.running().values())
