"""The reconcile queue: coalescing, one reconcile per key at a time, retries with backoff, gating."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

from dedicated.operator.handlers.context import PeeringGate
from dedicated.operator.handlers.queue import ReconcileQueue


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_bursts_coalesce_and_keys_never_run_concurrently() -> None:
    calls: Counter = Counter()
    running: set = set()
    overlap = []
    lock = threading.Lock()

    def reconcile(ns, name):
        with lock:
            if (ns, name) in running:
                overlap.append(name)
            running.add((ns, name))
        time.sleep(0.05)
        with lock:
            running.discard((ns, name))
            calls[name] += 1

    async def main():
        q = ReconcileQueue({"k": reconcile}, workers=4)
        task = asyncio.create_task(q.run())
        await asyncio.sleep(0.01)
        for _ in range(50):
            q.enqueue("k", "ns", "a")
        q.enqueue("k", "ns", "b")
        await asyncio.sleep(0.01)
        for _ in range(10):  # while "a" runs: marked dirty, runs exactly once more
            q.enqueue("k", "ns", "a")
        while not q.idle():
            await asyncio.sleep(0.01)
        task.cancel()

    run(main())
    assert overlap == []
    assert calls["b"] == 1 and calls["a"] == 2


def test_failures_retry_with_backoff_then_succeed() -> None:
    attempts: list[float] = []

    def flaky(ns, name):
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise RuntimeError("409 Conflict")

    async def main():
        q = ReconcileQueue({"k": flaky}, workers=1, base_delay=0.05)
        task = asyncio.create_task(q.run())
        q.enqueue("k", "ns", "x")
        deadline = time.monotonic() + 5
        while len(attempts) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        task.cancel()
        return q

    q = run(main())
    assert len(attempts) == 3
    assert attempts[2] - attempts[1] >= 2 * (attempts[1] - attempts[0]) * 0.8  # exponential
    assert q.stats.failures["k"] == 2 and "409" in q.stats.last_error


def test_requeue_after_and_gate() -> None:
    calls: list[float] = []
    active = {"on": False}

    def again(ns, name):
        calls.append(time.monotonic())
        return 0.1 if len(calls) < 2 else None

    async def main():
        q = ReconcileQueue({"k": again}, workers=1, gate=lambda: active["on"])
        task = asyncio.create_task(q.run())
        q.enqueue("k", "ns", "x")
        await asyncio.sleep(0.3)
        assert calls == []  # paused: nothing runs
        active["on"] = True
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        task.cancel()

    run(main())
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.09


def test_peering_gate_highest_priority_live_peer_wins() -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    old = "2000-01-01T00:00:00Z"
    gate = PeeringGate(lambda: None, "me", priority=10)
    assert gate.decide({"me": {"priority": 10, "lastseen": now, "lifetime": 60}})
    assert not gate.decide({"other": {"priority": 11, "lastseen": now, "lifetime": 60}})
    assert gate.decide({"other": {"priority": 11, "lastseen": old, "lifetime": 60}})  # dead peer
    assert gate.decide({"other": {"priority": 9, "lastseen": now, "lifetime": 60}})
    # equal priorities: the identity breaks the tie, so exactly one of two replicas is active
    a = PeeringGate(lambda: None, "a", 5).decide({"b": {"priority": 5, "lastseen": now}})
    b = PeeringGate(lambda: None, "b", 5).decide({"a": {"priority": 5, "lastseen": now}})
    assert a != b
    assert PeeringGate(None, "x", 0)()  # standalone


def test_profile_cache_computes_once_for_concurrent_misses() -> None:
    from dedicated.operator.handlers.context import TTLCache

    cache = TTLCache()
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return "profile"

    threads = [threading.Thread(target=lambda: cache.get_or_compute("k", slow, 60)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and cache.get("k") == "profile"


def test_conflicts_retry_soon_without_growing_the_backoff() -> None:
    """409s (a stale read) are redone after the base delay each time; real failures grow it."""
    from dedicated.operator.kube import KubeError

    attempts: list[float] = []

    def conflicting(ns, name):
        attempts.append(time.monotonic())
        if len(attempts) <= 5:
            raise KubeError(409, "Conflict", "the object has been modified", "PATCH", "/x")

    async def main():
        q = ReconcileQueue({"k": conflicting}, workers=1, base_delay=0.05)
        task = asyncio.create_task(q.run())
        q.enqueue("k", "ns", "a")
        while len(attempts) < 6:
            await asyncio.sleep(0.01)
        task.cancel()

    run(main())
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    # exponential growth would make the 5th gap 0.05 * 2**4 = 0.8 s
    assert max(gaps) < 0.4, gaps
