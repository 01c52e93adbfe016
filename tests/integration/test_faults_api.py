"""The API server misbehaving under a running operator: 409 conflicts, 429 throttling, 500s,
responses lost after the write happened, dropped connections (through the fault proxy), and the
API server and etcd themselves killed and restarted.

Afterwards: everything converges to the same state as without faults, no object exists twice
(a Job create whose response was lost must not become a second Job), the operator process never
died, and once the faults stop a quiet period writes nothing (no hot loop left behind).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import world as W  # noqa: E402
from support.controlplane import Components  # noqa: E402
from support.faultproxy import Rule  # noqa: E402
from support.fixtures import *  # noqa: E402,F403
from support.fixtures import wait_for, wait_ready_endpoints  # noqa: E402

pytestmark = pytest.mark.integration


def _converged(world: W.World) -> bool:
    eps, qms = world.endpoints(), world.models()
    return (all(W.observed(e) and W.phase(e) == "Ready" for e in eps)
            and all(W.observed(q) and W.condition(q, "JobCreated").get("status") == "True" for q in qms)
            and not W.check_all(world))


def _describe(world: W.World) -> str:
    return (f"{W.check_all(world)} / {[(e['metadata']['name'], W.phase(e)) for e in world.endpoints()]} / "
            f"{[(q['metadata']['name'], W.phase(q)) for q in world.models()]}")


def test_conflicts_throttling_errors_and_lost_responses(world, start_operator, proxy) -> None:
    rules = [
        # every Job create succeeds on the server, but the operator never sees the answer
        proxy.add_rule(Rule(verbs=frozenset({"create"}), resource="jobs", action="lose-response", status=500, times=3)),
        proxy.add_rule(Rule(verbs=frozenset({"patch"}), resource="dedicatedendpoints/status", status=409,
                            probability=0.5)),
        proxy.add_rule(Rule(verbs=frozenset({"patch"}), resource="quantizedmodels/status", status=409, probability=0.5)),
        proxy.add_rule(Rule(verbs=frozenset({"get"}), status=429, retry_after=1, probability=0.2)),
        proxy.add_rule(Rule(verbs=frozenset({"patch"}), resource="deployments", status=500, probability=0.3)),
        proxy.add_rule(Rule(verbs=frozenset({"patch"}), resource="services", action="drop", probability=0.3)),
        proxy.add_rule(Rule(verbs=frozenset({"list"}), status=503, probability=0.1,
                            predicate=lambda info: info.resource in ("configmaps", "pods", "jobs"))),
    ]
    op = start_operator(world.ns, proxy)
    for i in range(3):
        world.create(W.endpoint(f"ec{i}", replicas=1))
    for i in range(3):
        world.create(W.quantized_model(f"qc{i}", pod_annotations=W.LONG_RUNNING))
    wait_for(lambda: _converged(world), 180, lambda: _describe(world))
    fired = {f"{r.verbs and sorted(r.verbs)} {r.resource or '*'} {r.action}/{r.status}": r.fired for r in rules}
    assert rules[0].fired == 3 and sum(fired.values()) > 10, f"the faults did not happen: {fired}"

    jobs = world.jobs()
    assert len(jobs) == 3, f"a lost create response became a second Job: {[j['metadata']['name'] for j in jobs]}"
    proxy.clear_rules()
    # with the faults gone, the next reconciles settle (the Jobs' pods start, which the models'
    # status reports) and then nothing is written any more
    wait_for(lambda: all("pod running" in W.condition(q, "Ready").get("message", "") for q in world.models()), 60,
             lambda: str([W.condition(q, "Ready").get("message") for q in world.models()]))
    time.sleep(5)
    quiet = proxy.mark()
    time.sleep(15)
    writes = proxy.counts(quiet, writes_only=True)
    assert not writes, f"writes in a quiet period after the faults stopped: {dict(writes)}"
    assert op.alive() and op.crash_lines() == []


@pytest.mark.slow
def test_api_server_and_etcd_restart_under_the_operator(world, start_operator, local_cluster) -> None:
    components = Components(local_cluster.state_dir)
    op = start_operator(world.ns)
    world.create(W.endpoint("ea", replicas=1))
    world.create(W.endpoint("eb", replicas=1))
    world.create(W.quantized_model("qa", pod_annotations=W.LONG_RUNNING))
    wait_for(lambda: _converged(world), 120, lambda: _describe(world))
    job_uid = world.jobs()[0]["metadata"]["uid"]

    # etcd crashes (SIGKILL) and comes back: the API server answers errors meanwhile
    record = components.kill("etcd")
    assert not record.is_running()
    time.sleep(3)
    assert components.start(record).pid != record.pid
    components.wait_api_ready(local_cluster.api_server)
    # the API server crashes and comes back: every watch stream of the operator breaks
    record = components.kill("kube-apiserver")
    assert not record.is_running()
    time.sleep(3)
    assert components.start(record).pid != record.pid
    components.wait_api_ready(local_cluster.api_server)
    assert op.alive(), f"the operator died with the API server:\n{op.log_tail()}"

    # the operator must see changes made after the restarts (its watches came back)
    world.patch_spec("dedicatedendpoints", "ea", {"replicas": 2})
    world.create(W.endpoint("ec", replicas=1))
    world.apps.delete_namespaced_deployment("eb", world.ns)
    wait_for(lambda: _converged(world) and len(world.endpoints()) == 3 and
             (world.get_ep("ea")["status"].get("readyReplicas") == 2), 180, lambda: _describe(world))
    wait_ready_endpoints(world, ["ea", "eb", "ec"])
    assert [j["metadata"]["uid"] for j in world.jobs()] == [job_uid], "the restarts made a second Job"
    assert op.alive() and op.crash_lines() == []
