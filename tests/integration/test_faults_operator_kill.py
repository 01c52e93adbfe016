"""SIGKILL the operator in the middle of its work: nothing is lost, nothing is duplicated.

The two windows the design names are hit deterministically with the fault proxy: the status
write (QuantizedModel) or the Deployment apply (endpoint) is made to fail, so the operator is
stuck exactly between "created the Job / applied the Service" and the next write when it is
killed. A third test kills it at random moments while objects change under it, repeatedly, and
checks the invariants afterwards (stronger: it does not rely on knowing where the windows are).

After each: exactly one Job per QuantizedModel generation (the same Job object as before the kill),
one Deployment and one Service per endpoint (the same objects), the right number of pods, status
true to the world, and the restarted operator made no create for what already existed.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import world as W  # noqa: E402
from support.faultproxy import Rule  # noqa: E402
from support.fixtures import *  # noqa: E402,F403
from support.fixtures import wait_for, wait_ready_endpoints  # noqa: E402

pytestmark = pytest.mark.integration


def test_kill_between_job_creation_and_status_write(world, start_operator, proxy) -> None:
    stuck = proxy.add_rule(Rule(verbs=frozenset({"patch"}), resource="quantizedmodels/status", name="qa", status=500))
    op = start_operator(world.ns, proxy)
    world.create(W.quantized_model("qa", pod_annotations=W.LONG_RUNNING))
    job = wait_for(lambda: next(iter(world.jobs()), None), 60, "the Job of qa")
    wait_for(lambda: stuck.fired >= 1, 30, "a status write of qa (made to fail)")
    assert not (world.get_qm("qa").get("status") or {}).get("jobName"), "the status write should have failed"
    op.kill()

    proxy.remove_rule(stuck)
    since = proxy.mark()
    op.start()
    qm = wait_for(lambda: (q := world.get_qm("qa")) and W.observed(q) and q["status"].get("jobName") and q, 60,
                  lambda: f"qa status after restart: {world.get_qm('qa').get('status')}")
    jobs = world.jobs()
    assert [j["metadata"]["uid"] for j in jobs] == [job["metadata"]["uid"]], "the restart made a second Job"
    assert qm["status"]["jobName"] == job["metadata"]["name"]
    assert W.condition(qm, "JobCreated").get("status") == "True"
    assert qm["status"]["phase"] in ("Pending", "Quantizing")
    assert proxy.counts(since, writes_only=True)[("create", "jobs")] == 0, "the restarted operator POSTed a Job"
    assert W.check_models(world) == []
    assert "JobCreated" in world.event_reasons("qa"), "the user was never told a Job was created"
    assert op.crash_lines() == []


def test_kill_between_service_and_deployment(world, start_operator, proxy) -> None:
    stuck = proxy.add_rule(Rule(verbs=frozenset({"patch"}), resource="deployments", name="ea", status=500))
    op = start_operator(world.ns, proxy)
    world.create(W.endpoint("ea"))
    svc = wait_for(lambda: next(iter(s for s in world.services() if s["metadata"]["name"] == "ea"), None), 60,
                   "the Service of ea")
    wait_for(lambda: stuck.fired >= 1, 30, "the Deployment apply of ea (made to fail)")
    assert world.deployments() == []
    op.kill()

    proxy.remove_rule(stuck)
    op.start()
    wait_ready_endpoints(world, ["ea"])
    services = [s for s in world.services() if s["metadata"]["name"] == "ea"]
    assert [s["metadata"]["uid"] for s in services] == [svc["metadata"]["uid"]], "the Service was replaced"
    assert len(world.deployments()) == 1 and len(world.replicasets()) == 1
    assert W.check_all(world) == []
    assert op.crash_lines() == []


def _mutate(world: W.World, rng: random.Random, step: int) -> str:
    """One change a user or the cluster might make while the operator is down or busy."""
    choice = rng.choice(["scale", "qm-spec", "delete-deployment", "new-endpoint", "delete-job-pod"])
    eps = [e["metadata"]["name"] for e in world.endpoints()]
    qms = [q["metadata"]["name"] for q in world.models()]
    if choice == "scale" and eps:
        name = rng.choice(eps)
        world.patch_spec("dedicatedendpoints", name, {"replicas": rng.choice([0, 1, 2])})
        return f"scale {name}"
    if choice == "qm-spec" and qms:
        name = rng.choice(qms)
        world.patch_spec("quantizedmodels", name, {"calibration": {"numSamples": rng.randint(8, 256)}})
        return f"new generation of {name}"
    if choice == "delete-deployment":
        deps = world.deployments()
        if deps:
            name = rng.choice(deps)["metadata"]["name"]
            world.apps.delete_namespaced_deployment(name, world.ns)
            return f"delete Deployment {name}"
    if choice == "delete-job-pod":
        pods = world.pods("app.kubernetes.io/component=quantize")
        if pods:
            name = rng.choice(pods)["metadata"]["name"]
            world.core.delete_namespaced_pod(name, world.ns)
            return f"delete pod {name}"
    world.create(W.endpoint(f"late-{step}", replicas=1))
    return f"create late-{step}"


@pytest.mark.slow
def test_kill_at_random_points_keeps_invariants(world, start_operator) -> None:
    seed = int(os.environ.get("DEDICATED_FAULT_SEED") or random.randrange(2**32))
    print(f"random kill schedule seed: {seed}")
    rng = random.Random(seed)
    for i in range(4):
        world.create(W.endpoint(f"e{i}", replicas=1 + i % 2))
    for i in range(3):
        world.create(W.quantized_model(f"q{i}", pod_annotations=W.LONG_RUNNING))
    op = start_operator(world.ns)
    history = []
    for step in range(6):
        history.append(_mutate(world, rng, step))
        op.restart(wait_ready=False)
        op.wait_ready()
        delay = rng.uniform(0.05, 2.5)
        history.append(f"kill after {delay:.2f}s")
        time.sleep(delay)
        op.kill()
    op.start()

    def converged() -> bool:
        eps, qms = world.endpoints(), world.models()
        ok_eps = all(W.observed(e) and W.phase(e) == "Ready" for e in eps)
        ok_qms = all(W.observed(q) and q["status"].get("jobName") for q in qms)
        return ok_eps and ok_qms and not W.check_all(world)

    wait_for(converged, 180, lambda: f"seed {seed}, history {history}: "
             f"{W.check_all(world)} / {[(e['metadata']['name'], W.phase(e)) for e in world.endpoints()]} / "
             f"{[(q['metadata']['name'], (q.get('status') or {}).get('jobName')) for q in world.models()]}")
    for q in world.models():
        gen = q["metadata"]["generation"]
        jobs = [j for j in world.jobs() if j["metadata"]["labels"].get(W.GENERATION_LABEL) == str(gen)
                and j["metadata"]["ownerReferences"][0]["uid"] == q["metadata"]["uid"]]
        assert len(jobs) == 1, f"{q['metadata']['name']} generation {gen}: {len(jobs)} Jobs (seed {seed})"
    assert op.crash_lines() == [], f"seed {seed}"
