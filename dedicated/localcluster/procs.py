"""Starting, finding and stopping the control-plane processes, and picking free ports.

Why pid files carry the process start time: after a crash or a reboot a recorded pid may belong
to an unrelated process; comparing the kernel's start time (``/proc/<pid>/stat``) tells a live
component from a reused pid, so ``down`` never signals a stranger and ``up`` recognises a stale
record. Every component runs in its own session (process group), and ``stop`` signals the group,
so nothing it spawned survives it.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def proc_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when there is no live process.

    Zombies count as gone: a component that exited but was not reaped yet is not running.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    state, start = fields[0], fields[19]
    if state in ("Z", "X"):
        return None
    return int(start)


@dataclass(frozen=True)
class ProcessRecord:
    """What a pid file holds: enough to find the process again and to tell it from a reused pid."""

    name: str
    pid: int
    start_ticks: int
    argv: tuple[str, ...]
    log: str

    def is_running(self) -> bool:
        return proc_start_ticks(self.pid) == self.start_ticks

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ProcessRecord | None:
        """The record in ``path``, or None when the file is missing or not a record (half-written)."""
        try:
            data = json.loads(path.read_text())
            return cls(
                name=str(data["name"]),
                pid=int(data["pid"]),
                start_ticks=int(data["start_ticks"]),
                argv=tuple(data["argv"]),
                log=str(data["log"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the process that started it dies.

    Used by the test fixture, so a killed pytest cannot leave a control plane behind.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def start_process(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    pid_path: Path,
    env: Mapping[str, str] | None = None,
    tie_to_parent: bool = False,
) -> ProcessRecord:
    """Start ``argv`` detached in its own session, output appended to ``log_path``; record it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent if tie_to_parent else None,
        )
    ticks = proc_start_ticks(process.pid)
    if ticks is None:  # exited already; keep a record anyway so the caller's check reports it
        ticks = -1
    record = ProcessRecord(name, process.pid, ticks, tuple(argv), str(log_path))
    record.save(pid_path)
    return record


def _reap(pid: int) -> None:
    """Collect an exited child of this process (the fixture's case), so it is not a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_process(record: ProcessRecord, timeout: float = 15.0) -> str:
    """SIGTERM the component's process group, then SIGKILL what is left after ``timeout``.

    Returns what happened, for the caller's log. A record whose process is gone is a no-op.
    """
    if not record.is_running():
        _reap(record.pid)
        return f"{record.name}: not running (pid {record.pid})"
    try:
        os.killpg(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        return f"{record.name}: exited"
    except PermissionError as error:
        raise RuntimeError(f"cannot signal {record.name} (pid {record.pid}): {error}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not record.is_running():
            _kill_group_leftovers(record.pid)
            return f"{record.name}: stopped (pid {record.pid})"
        time.sleep(0.05)
    try:
        os.killpg(record.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for _ in range(100):
        _reap(record.pid)
        if not record.is_running():
            break
        time.sleep(0.05)
    return f"{record.name}: killed after {timeout:.0f}s (pid {record.pid})"


def _kill_group_leftovers(pgid: int) -> None:
    """Anything still in the group after its leader exited (helpers it spawned) gets SIGKILL."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def free_ports(count: int, avoid: set[int] | None = None) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now.

    The kernel picks them (bind to port 0); a component that still loses the race reports
    "address already in use", which the caller answers by picking again.
    """
    ports: list[int] = []
    sockets = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
            port = sock.getsockname()[1]
            if port not in (avoid or set()) and port not in ports:
                ports.append(port)
    finally:
        for sock in sockets:
            sock.close()
    return ports


def port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (a connect succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(("127.0.0.1", port))
            return True
        except OSError:
            return False


def log_tail(path: str | Path, lines: int = 20) -> str:
    """The last lines of a component's log, for error messages."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "".join(text.splitlines(True)[-lines:])
