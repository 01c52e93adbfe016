"""Helpers for tests that run against the local cluster (the pytest fixtures build on these).

They live in the package rather than in a conftest so every area's tests can import them
(``from dedicated.localcluster.testing import wait_until``) under pytest's importlib mode.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T], timeout: float = 60.0, interval: float = 0.25, message: str | Callable[[], str] = ""
) -> T:
    """Call ``probe`` until it returns something truthy and return that; fail with ``message``.

    Why a helper: the cluster is eventually consistent (controllers, kwok delays), so tests wait
    for a state instead of sleeping; the failure says what was awaited and what was seen last.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {text or probe!r} (last: {last!r})")
        time.sleep(interval)


class CommandRunner:
    """Runs one CLI (kubectl or helm) against the cluster and returns the completed process.

    ``check=True`` (the default) turns a non-zero exit into an AssertionError that shows the
    command, its stdout and its stderr, which is what a failing test needs to show.
    """

    def __init__(self, binary: Path, env: Mapping[str, str], prefix: Sequence[str] = ()) -> None:
        self.binary = Path(binary)
        self.env = dict(env)
        self.prefix = list(prefix)

    def __call__(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        command = [str(self.binary), *self.prefix, *map(str, args)]
        result = subprocess.run(command, env=self.env, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"`{' '.join(command)}` exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result


def cluster_env(kubeconfig: Path, bin_dir: Path, home: Path) -> dict[str, str]:
    """An environment that reaches only the test cluster: its kubeconfig, its binaries first on
    PATH, and helm's and kubectl's config and cache under ``home`` (never the user's own)."""
    env = dict(os.environ)
    env.update(
        KUBECONFIG=str(kubeconfig),
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        HELM_CONFIG_HOME=str(home / "helm-config"),
        HELM_CACHE_HOME=str(home / "helm-cache"),
        HELM_DATA_HOME=str(home / "helm-data"),
        KUBECACHEDIR=str(home / "kube-cache"),
    )
    return env


def pod_events(core: Any, namespace: str, pod: str) -> list[Any]:
    """The Events that name a pod (e.g. the scheduler's FailedScheduling)."""
    return core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod}").items
