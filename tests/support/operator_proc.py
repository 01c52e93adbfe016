"""The operator as a real process (``dedicated run``), for tests that kill it, restart it and read
its log.

Why a subprocess and not ``OperatorThread``: SIGKILL at an arbitrary point is the fault under
test, and only a separate process can be killed without the test dying with it; memory (RSS) of a
process is also what the scale benchmark reports.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

#: Log lines that mean the operator itself broke (not a reconcile that failed and will be retried).
CRASH_PATTERNS = (re.compile(r"Traceback \(most recent call last\)"), re.compile(r" CRITICAL "),
                  re.compile(r" ERROR (?!kopf\.objects)"))
#: kopf logs a failed API request that it retries at ERROR ("Request attempt #1/9 failed; will
#: retry"): a transient API answer (e.g. 429 while a watch cache re-initialises), not a crash.
RETRIED = re.compile(r" ERROR kopf\._cogs\.clients\.\w+: Request attempt #\d+/\d+ failed; will retry")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OperatorProcess:
    """Start, SIGKILL, restart and inspect ``dedicated run --standalone``.

    Each start appends to the same log file (with a marker line), so a test can read what every
    incarnation said. ``starts`` counts incarnations.
    """

    def __init__(self, kubeconfig: Path | str, pools: Path | str, log_path: Path | str, *,
                 extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 resync_seconds: float = 600.0, workers: int = 4, log_level: str = "INFO") -> None:
        self.kubeconfig = Path(kubeconfig)
        self.pools = Path(pools)
        self.log_path = Path(log_path)
        self.extra_args = list(extra_args)
        self.env = dict(env or os.environ)
        self.env.pop("KUBERNETES_SERVICE_HOST", None)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.resync_seconds = resync_seconds
        self.workers = workers
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "dedicated.cli", "run", "--kubeconfig", str(self.kubeconfig),
                "--pools", str(self.pools), "--standalone", "--liveness", f"http://127.0.0.1:{self.port}/healthz",
                "--workers", str(self.workers), "--resync-seconds", str(self.resync_seconds),
                "--log-level", self.log_level, *self.extra_args]

    def start(self, wait_ready: bool = True, timeout: float = 90.0) -> OperatorProcess:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.port = _free_port()
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== test: operator start #{self.starts} ===\n".encode())
            log.flush()
            self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise AssertionError(f"the operator exited with {self.process and self.process.returncode}; "
                                     f"log tail:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"the operator was not ready in {timeout}s; log tail:\n{self.log_tail()}")

    def probe(self) -> dict:
        """kopf's liveness answer (includes the reconcile queue's depth and failure counters)."""
        return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5).json()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no handler, no cleanup, no flush. The fault under test."""
        if self.alive():
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM and wait (a graceful stop), SIGKILL if it hangs."""
        if not self.alive():
            return
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, wait_ready: bool = True) -> None:
        self.kill()
        self.start(wait_ready=wait_ready)

    def rss_bytes(self) -> tuple[int, int]:
        """(current RSS, peak RSS) of the operator process, from /proc."""
        assert self.process is not None
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        kib = lambda k: int(fields[k].split()[0]) * 1024  # noqa: E731
        return kib("VmRSS"), kib("VmHWM")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "".join(self.log_text().splitlines(True)[-lines:])

    def crash_lines(self) -> list[str]:
        """Lines that show the operator itself failing (tracebacks, ERROR/CRITICAL)."""
        return [line for line in self.log_text().splitlines()
                if any(p.search(line) for p in CRASH_PATTERNS) and not RETRIED.search(line)]

    def retried_requests(self) -> list[str]:
        """kopf's retried API requests (transient errors it recovered from)."""
        return [line for line in self.log_text().splitlines() if RETRIED.search(line)]

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
