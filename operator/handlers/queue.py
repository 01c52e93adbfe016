"""A level-triggered reconcile queue: many triggers, one reconcile per object at a time.

Why not call the reconcilers straight from kopf's event handlers: an endpoint is affected by
events of *other* objects (its Deployment, its Service, the QuantizedModel it serves, a model-facts
ConfigMap), and a burst of them must become one reconcile, never two running at once for the same
object. kopf serialises handling per object, not across objects, so the handlers only ``enqueue``
a key here and this queue does the rest, like controller-runtime's work queue:

* a key waiting in the queue is not added twice (bursts coalesce);
* a key being reconciled is marked dirty and runs once more afterwards (nothing is missed);
* a failed reconcile is retried with exponential backoff per key (429, 5xx, connection loss),
  reset after a success; a 409 conflict is retried after the base delay without growing it;
* a reconcile may ask to be called again after N seconds (e.g. retrying the Hub);
* ``gate`` (peering) pauses the workers: a replica that is not the active one reconciles nothing.

Reconcilers are synchronous (the kubernetes client is), so they run in a thread pool of
``workers`` threads; the queue itself lives on the operator's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger("dedicated.operator.queue")

Key = tuple[str, str, str]  # (kind, namespace, name)
Reconciler = Callable[[str, str], "float | None"]


@dataclass
class QueueStats:
    reconciles: Counter = field(default_factory=Counter)  # by kind
    failures: Counter = field(default_factory=Counter)
    busy_seconds: float = 0.0
    last_error: str = ""


class ReconcileQueue:
    def __init__(self, reconcilers: dict[str, Reconciler], *, workers: int = 4, base_delay: float = 0.5,
                 max_delay: float = 120.0, gate: Callable[[], bool] | None = None) -> None:
        self.reconcilers = reconcilers
        self.workers = workers
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.gate = gate or (lambda: True)
        self.stats = QueueStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Queue[Key] | None = None
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: Counter = Counter()
        self._pending_before_start: list[Key] = []
        self._executor: ThreadPoolExecutor | None = None

    # -- enqueueing (event-loop thread) -------------------------------------------------------

    def enqueue(self, kind: str, namespace: str, name: str, delay: float = 0.0) -> None:
        key = (kind, namespace, name)
        if self._ready is None:
            self._pending_before_start.append(key)
            return
        if delay > 0:
            due = time.monotonic() + delay
            existing = self._timers.get(key)
            if existing is not None and existing[0] <= due:
                return
            if existing is not None:
                existing[1].cancel()
            assert self._loop is not None
            self._timers[key] = (due, self._loop.call_later(delay, self._fire, key))
            return
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.put_nowait(key)

    def enqueue_threadsafe(self, kind: str, namespace: str, name: str, delay: float = 0.0) -> None:
        if self._loop is None:
            self._pending_before_start.append((kind, namespace, name))
        else:
            self._loop.call_soon_threadsafe(self.enqueue, kind, namespace, name, delay)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.enqueue(*key)

    def depth(self) -> int:
        return len(self._queued) + len(self._active)

    def in_flight(self) -> int:
        """Reconciles running right now (a paused replica finishes those it had started)."""
        return len(self._active)

    def idle(self) -> bool:
        return not self._queued and not self._active and not self._dirty

    # -- workers ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="reconcile")
        for key in self._pending_before_start:
            self.enqueue(*key)
        self._pending_before_start.clear()
        tasks = [asyncio.create_task(self._worker(i), name=f"reconcile-worker-{i}") for i in range(self.workers)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for _, handle in self._timers.values():
                handle.cancel()
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _worker(self, index: int) -> None:
        assert self._ready is not None and self._loop is not None
        while True:
            key = await self._ready.get()
            while not self.gate():  # paused by peering: hold the key until this replica is active
                await asyncio.sleep(1.0)
            self._queued.discard(key)
            self._active.add(key)
            kind, namespace, name = key
            started = time.monotonic()
            try:
                requeue = await self._loop.run_in_executor(self._executor, self.reconcilers[kind], namespace, name)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # any failure: retry with backoff, never lose the key
                if getattr(err, "conflict", False):
                    # 409: someone wrote the object since it was read. That is not the API server
                    # failing, so the backoff does not grow: read again shortly and redo.
                    n = self._failures[key] + 1
                    delay = self.base_delay
                else:
                    self._failures[key] += 1
                    n = self._failures[key]
                    delay = min(self.max_delay, self.base_delay * 2 ** (n - 1))
                self.stats.failures[kind] += 1
                self.stats.last_error = f"{kind} {namespace}/{name}: {err}"
                level = logging.WARNING if n >= 3 else logging.INFO
                log.log(level, "reconcile of %s %s/%s failed (attempt %d, retry in %.1fs): %s",
                        kind, namespace, name, n, delay, err)
                self._active.discard(key)
                self.enqueue(kind, namespace, name, delay)
            else:
                self._failures.pop(key, None)
                self._active.discard(key)
                if requeue:
                    self.enqueue(kind, namespace, name, float(requeue))
            finally:
                self.stats.reconciles[kind] += 1
                self.stats.busy_seconds += time.monotonic() - started
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.enqueue(*key)
