"""Process records and ports: stale pid files are recognised, groups are stopped, ports are free."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from dedicated.localcluster.procs import (
    ProcessRecord,
    free_ports,
    port_in_use,
    proc_start_ticks,
    start_process,
    stop_process,
)


def test_start_and_stop_a_process_group(tmp_path: Path) -> None:
    # The "component" starts a grandchild in its group; stopping the component must end both.
    script = "import subprocess,sys,time; subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']); time.sleep(60)"
    record = start_process("sleeper", [sys.executable, "-c", script], tmp_path / "s.log", tmp_path / "s.pid")
    assert record.is_running()
    assert ProcessRecord.load(tmp_path / "s.pid") == record
    time.sleep(0.3)
    group = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == record.pid]
    assert len(group) >= 2, "the grandchild runs in the component's process group"
    message = stop_process(record, timeout=5)
    assert "stopped" in message
    time.sleep(0.2)
    assert not record.is_running()
    assert not [p for p in group if proc_start_ticks(int(p)) is not None]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_process_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    script = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('sig' + 'term ignored', flush=True); time.sleep(60)"
    record = start_process("stubborn", [sys.executable, "-c", script], tmp_path / "x.log", tmp_path / "x.pid")
    deadline = time.monotonic() + 10
    while "sigterm ignored" not in (tmp_path / "x.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "killed after" in stop_process(record, timeout=0.5)
    assert not record.is_running()


def test_stale_record_is_not_running_and_reused_pid_is_not_ours(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)
    stale = ProcessRecord("etcd", dead_pid, 12345, ("etcd",), str(tmp_path / "etcd.log"))
    assert not stale.is_running()
    assert "not running" in stop_process(stale)
    # Our own pid with a wrong start time: a pid reused by an unrelated process is never signalled.
    reused = ProcessRecord("etcd", os.getpid(), (proc_start_ticks(os.getpid()) or 0) + 1, ("etcd",), "")
    assert not reused.is_running()
    assert "not running" in stop_process(reused)  # and we are still alive to assert it


def test_half_written_pid_file_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "kwok.pid"
    path.write_text('{"name": "kwok", "pid": 12')
    assert ProcessRecord.load(path) is None
    assert ProcessRecord.load(tmp_path / "absent.pid") is None


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(6)
    assert len(set(ports)) == 6
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_port_in_use() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(port)


def test_zombie_counts_as_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            break
        time.sleep(0.02)
    assert proc_start_ticks(child.pid) is None
    child.wait()
    os.kill(os.getpid(), 0)  # (sanity: signalling ourselves works, so the checks above were real)
    assert signal.SIGTERM


def test_tied_process_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """What the pytest fixture relies on: a SIGKILLed test session leaves no component running."""
    parent_code = (
        "import sys, time; from pathlib import Path; from dedicated.localcluster.procs import start_process; "
        f"r = start_process('child', [sys.executable, '-c', 'import time; time.sleep(60)'], Path({str(tmp_path / 'c.log')!r}), "
        f"Path({str(tmp_path / 'c.pid')!r}), tie_to_parent=True); print('started', flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout.readline().strip() == "started"
    child = ProcessRecord.load(tmp_path / "c.pid")
    assert child is not None and child.is_running()
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while child.is_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not child.is_running()
