"""What every handler shares: the API client, the configuration (pools, images, options), the
reconcile queue, caches of model profiles, and the peering gate.

Nothing here is global: ``build_registry(ctx)`` binds handlers to one context, so a test can run
several operators in one process, one after another (and a restarted operator starts from an
empty context, which is the point of the restart tests).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..images import ImageConfig
from ..kube import Kube
from ..pools import PoolConfig, PoolConfigError, load_pools
from .queue import ReconcileQueue

log = logging.getLogger("dedicated.operator")

ENDPOINT = "endpoint"
QUANTIZED_MODEL = "quantizedmodel"


@dataclass
class Options:
    """Operator options that are not Kubernetes connection details."""

    pools_file: Path
    images: ImageConfig = field(default_factory=ImageConfig)
    #: Directory where PVCs are visible as ``<root>/<claim>/<path>`` (a mount in the operator's
    #: pod, or on the local cluster a plain directory); unset: only model-facts ConfigMaps.
    volume_root: Path | None = None
    workers: int = 4
    #: Every object is reconciled again this often even without events (lost events, Hub retries).
    resync_seconds: float = 600.0
    hub_success_ttl: float = 3600.0
    hub_failure_ttl: float = 60.0
    identity: str = field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")


class Pools:
    """The pool configuration, reloaded when its file changes (a mounted ConfigMap is updated in
    place); a broken new version is reported and the previous one kept, so a typo in the
    ConfigMap never takes placement down."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.config: PoolConfig = load_pools(self.path)
        self._stamp = self._stat()
        self.error: str | None = None
        self.generation = 1

    def _stat(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime, st.st_size

    def refresh(self) -> bool:
        """Reload if the file changed; True when a new valid configuration was loaded."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        with self._lock:
            self._stamp = stamp
            try:
                self.config = load_pools(self.path)
            except PoolConfigError as err:
                self.error = str(err)
                log.error("pool configuration not reloaded, keeping the previous one: %s", err)
                return False
            self.error = None
            self.generation += 1
            log.info("pool configuration reloaded: %s", ", ".join(p.name for p in self.config.pools))
            return True


class TTLCache:
    """A small thread-safe cache with per-entry expiry (model profiles, Hub answers)."""

    def __init__(self, max_entries: int = 512) -> None:
        self._data: dict[Any, tuple[float, Any]] = {}
        self._inflight: dict[Any, threading.Lock] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def get(self, key: Any) -> Any:
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return None
            if hit[0] < time.monotonic():
                del self._data[key]
                return None
            return hit[1]

    def put(self, key: Any, value: Any, ttl: float) -> None:
        with self._lock:
            if len(self._data) >= self.max_entries:
                oldest = min(self._data, key=lambda k: self._data[k][0])
                del self._data[oldest]
            self._data[key] = (time.monotonic() + ttl, value)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def get_or_compute(self, key: Any, compute: Callable[[], Any], ttl: float) -> Any:
        """The cached value, or ``compute()`` stored for ``ttl`` seconds. Single flight: when many
        reconciles miss the same key at once (a hundred endpoints of one model created together),
        one computes and the others wait for its answer instead of all decoding the same facts."""
        hit = self.get(key)
        if hit is not None:
            return hit
        with self._lock:
            key_lock = self._inflight.setdefault(key, threading.Lock())
        with key_lock:
            hit = self.get(key)
            if hit is None:
                hit = compute()
                self.put(key, hit, ttl)
        with self._lock:
            self._inflight.pop(key, None)
        return hit


class PeeringGate:
    """Whether this replica may act: the highest-priority live peer in kopf's peering object.

    kopf itself pauses the watch streams of a lower-priority replica; this gate also holds the
    reconcile queue (items queued before the pause, timers, resyncs), so two replicas never both
    act. Standalone operators are always active.
    """

    def __init__(self, read_peers: Callable[[], dict[str, Any] | None] | None, identity: str, priority: int,
                 refresh_seconds: float = 5.0) -> None:
        self.read_peers = read_peers
        self.identity = identity
        self.priority = priority
        self.refresh_seconds = refresh_seconds
        self._active = read_peers is None
        self._checked = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        if self.read_peers is None:
            return True
        now = time.monotonic()
        if now - self._checked >= self.refresh_seconds:
            with self._lock:
                self._checked = now
                try:
                    peers = self.read_peers() or {}
                    self._active = self.decide(peers)
                except Exception as err:  # cannot tell: keep the last decision
                    log.warning("peering state unreadable, keeping the last decision (%s): %s",
                                "active" if self._active else "paused", err)
        return self._active

    def decide(self, peers: dict[str, Any]) -> bool:
        now = datetime.now(UTC)
        mine = (self.priority, self.identity)
        for ident, info in peers.items():
            if ident == self.identity or not isinstance(info, dict):
                continue
            try:
                seen = datetime.fromisoformat(str(info.get("lastseen")).replace("Z", "+00:00"))
                if seen.tzinfo is None:
                    seen = seen.replace(tzinfo=UTC)
                alive = (now - seen).total_seconds() < float(info.get("lifetime", 60))
                theirs = (int(info.get("priority", 0)), ident)
            except (TypeError, ValueError):
                continue
            if alive and theirs > mine:
                return False
        return True


@dataclass
class OperatorContext:
    kube: Kube
    options: Options
    pools: Pools
    queue: ReconcileQueue = field(init=False)
    profiles: TTLCache = field(default_factory=TTLCache)
    hub: TTLCache = field(default_factory=TTLCache)
    gate: Callable[[], bool] = field(default=lambda: True)
    known: dict[str, set[tuple[str, str]]] = field(default_factory=lambda: {ENDPOINT: set(), QUANTIZED_MODEL: set()})
    hub_client: Any = None  # a huggingface_hub.HfApi-like object; None: the real Hub
    quota: Any = None  # handlers.quota.QuotaGate, set by quota.register (issue 8)

    def resync_all(self) -> int:
        """Enqueue every known object (thread-safe); returns how many."""
        n = 0
        for kind, keys in self.known.items():
            for namespace, name in list(keys):
                self.queue.enqueue_threadsafe(kind, namespace, name)
                n += 1
        return n
