"""Helpers for tests and benchmarks that drive the operator against a real API server.

They live in the package (like ``dedicated.localcluster.testing``) so integration tests, the
benchmark and the demo's checks share them under pytest's importlib mode.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .handlers.context import Options
from .kube import Kube
from .runtime import OperatorThread, RuntimeConfig

REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "crds"
LOCAL_POOLS = REPO / "dedicated" / "localcluster" / "gpu-pools.yaml"
EXAMPLES = REPO / "examples"


def apply_crds(kubectl: Callable[..., subprocess.CompletedProcess], timeout: int = 60) -> None:
    """Apply ``crds/`` (server-side, idempotent) and wait until the API serves them."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    kubectl("wait", "--for=condition=Established", "--timeout", f"{timeout}s",
            "crd/dedicatedendpoints.llm.dedicated.dev", "crd/quantizedmodels.llm.dedicated.dev")


def start_operator(kubeconfig: Path, *, pools: Path = LOCAL_POOLS, volume_root: Path | None = None,
                   workers: int = 4, identity: str | None = None, standalone: bool = True,
                   namespaces: Iterable[str] = (), priority: int | None = None, **options: Any) -> OperatorThread:
    """The operator in a thread of this process, standalone unless told otherwise."""
    opts = Options(pools_file=pools, volume_root=volume_root, workers=workers, **options)
    if identity:
        opts.identity = identity
    ns = list(namespaces)
    cfg = RuntimeConfig(options=opts, kubeconfig=Path(kubeconfig), standalone=standalone, namespaces=ns,
                        all_namespaces=not ns, liveness_endpoint=None, priority=priority)
    return OperatorThread(cfg).start()


_SAMPLE = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


class RestartableOperator:
    """An in-process operator a test can stop and start again; a restart is a fresh process state
    (new queue, caches), as after a crash, while the cluster keeps everything the operator wrote."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.thread = start_operator(kubeconfig)

    def stop(self) -> None:
        self.thread.stop()

    def start(self) -> None:
        self.thread = start_operator(self.kubeconfig)

    def restart(self) -> None:
        self.stop()
        assert not self.thread.alive()
        self.start()

    @property
    def ctx(self):
        return self.thread.ctx


def apiserver_writes(kube: Kube, resources: Iterable[str]) -> Counter:
    """Write requests the API server has served, by (verb, resource[/subresource]), from its own
    ``apiserver_request_total`` metric: a count taken on the server side, covering every client."""
    wanted = set(resources)
    out: Counter = Counter()
    for line in kube.raw_get("/metrics").splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m["labels"]))
        if labels.get("verb") not in ("POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"):
            continue
        res = labels.get("resource", "")
        if res not in wanted:
            continue
        key = (labels["verb"], res + (f"/{labels['subresource']}" if labels.get("subresource") else ""))
        out[key] += int(float(m["value"]))
    return out


def wait_for(probe: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or probe!r}; last: {last!r}")


def condition(obj: Mapping[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


def make_models_volume(kube: Kube, namespace: str, claim: str = "models") -> None:
    """A bound ReadOnlyMany claim in ``namespace`` (static NFS PV that nothing mounts: the
    scheduler only needs the claim bound; kwok runs no containers)."""
    pv = f"{namespace}-{claim}"[:253]
    kube.create({"apiVersion": "v1", "kind": "PersistentVolume",
                 "metadata": {"name": pv, "labels": {"dedicated.dev/test": "true"}},
                 "spec": {"capacity": {"storage": "500Gi"}, "accessModes": ["ReadOnlyMany", "ReadWriteMany"],
                          "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "",
                          "claimRef": {"namespace": namespace, "name": claim},
                          "nfs": {"server": "nfs.example.internal", "path": f"/exports/{claim}"}}})
    kube.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": claim, "namespace": namespace},
                 "spec": {"accessModes": ["ReadOnlyMany", "ReadWriteMany"], "storageClassName": "",
                          "volumeName": pv, "resources": {"requests": {"storage": "500Gi"}}}})


def example_manifests(*names: str, namespace: str) -> list[dict[str, Any]]:
    """Documents of ``examples/<name>`` (files or folders) moved into ``namespace``."""
    import yaml

    docs: list[dict[str, Any]] = []
    for name in names:
        path = EXAMPLES / name
        files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if not doc:
                    continue
                if doc.get("kind") in ("PersistentVolume",):
                    continue
                doc.setdefault("metadata", {})["namespace"] = namespace
                docs.append(doc)
    return docs


def prepare_model_namespace(kube: Kube, namespace: str) -> None:
    """What an endpoint in ``namespace`` needs before the operator can plan it: the models volume
    and the examples' model facts (the planner reads the checkpoint's facts, not the weights)."""
    make_models_volume(kube, namespace)
    for doc in example_manifests("model-facts", namespace=namespace):
        kube.create(doc)


def settle(thread: OperatorThread, quiet_seconds: float = 2.0, timeout: float = 120.0) -> None:
    """Wait until the operator's queue has been idle for ``quiet_seconds`` in a row."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        if thread.ctx.queue.idle():
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet_seconds:
                return
        else:
            quiet_since = None
        time.sleep(0.1)
    raise AssertionError(f"the operator's queue did not settle within {timeout:.0f}s")
