"""Scale: many DedicatedEndpoints and QuantizedModels at once on the local cluster.

    .venv/bin/python benchmarks/bench_scale.py [--endpoints 1000] [--models 200] [--namespaces 10]
        [--running 40] [--workers 4] [--resync-seconds 90] [--state-dir DIR] [--json OUT]

What it measures, and why this way:

* The operator runs as its own process (``dedicated run --standalone``, all namespaces, the
  local cluster's pool file), talking straight to the API server.
* Endpoints: ``--running`` of them have one replica (pinned alternately to the A100 and H100
  pools, 48 simulated GPUs), so their pods really start (scheduler, kwok) and their Deployment
  status changes flow back into the operator; all others have ``replicas: 0``. A scaled-to-zero
  endpoint costs the operator exactly what a running one costs (model facts, plan, server-side
  apply of a Deployment and a Service, status, Events) but no pod: the simulated cluster has ~90
  GPUs, and a thousand pending or running pods would measure the scheduler and kwok on these two
  cores, not the operator. "Reconciled": status for the current generation, phase Ready.
* QuantizedModels (one H200 GPU each, pods kept running): each gets its ConfigMap,
  ServiceAccount, Role, RoleBinding and Job; pods beyond the pool's 24 GPUs stay Pending, as on a
  real cluster. "Reconciled": status for the current generation with ``JobCreated=True``.
* Requests: the operator's own request counters (its liveness endpoint; every request its
  reconcilers make, by verb); kopf's watch streams are not in them.
* Memory: the operator's RSS (``/proc``), sampled every second; peak is the kernel's VmHWM.
* Resync with nothing changed: after everything settled, the operator's periodic resync
  (``--resync-seconds``) re-reconciles every object; the benchmark waits for one and reports the
  requests it made. Writes must be zero.
* Invariants afterwards: one Deployment and one Service per endpoint, one Job per model.

Prints a Markdown section for docs/benchmarks.md ("Scale") and writes the raw figures as JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test helpers (support.*); never the repository root

from kubernetes import client, config  # noqa: E402

from dedicated.localcluster.cluster import LocalCluster  # noqa: E402
from dedicated.localcluster.pools import DEFAULT_POOLS_FILE  # noqa: E402
from support import world as W  # noqa: E402
from support.fixtures import prepared_namespace  # noqa: E402
from support.operator_proc import OperatorProcess  # noqa: E402

WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return (f"{cpu}, {os.cpu_count()} cores, {mem_kib / 2**20:.0f} GiB RAM, Python {platform.python_version()}, "
            f"load average at start {os.getloadavg()[0]:.1f}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler(threading.Thread):
    def __init__(self, op: OperatorProcess) -> None:
        super().__init__(daemon=True)
        self.op, self.samples, self.stop_flag = op, [], threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self.samples.append((time.monotonic(), self.op.rss_bytes()[0]))
            except (OSError, AssertionError):
                pass
            self.stop_flag.wait(1.0)


def probe(op: OperatorProcess) -> dict:
    return op.probe().get("queue") or op.probe()


#: kopf answers its liveness endpoint from a cache of this age, so counters read through it may
#: be that old; figures that must be complete wait it out first.
PROBE_MAX_AGE_SECONDS = 10.0


def fresh_probe(op: OperatorProcess) -> dict:
    time.sleep(PROBE_MAX_AGE_SECONDS + 0.5)
    return probe(op)


def requests_of(p: dict) -> Counter:
    return Counter(p.get("requests") or {})


def reconciles_of(p: dict) -> int:
    return sum((p.get("reconciles") or {}).values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--namespaces", type=int, default=10)
    ap.add_argument("--running", type=int, default=40, help="endpoints with one replica (pods really start)")
    ap.add_argument("--workers", type=int, default=4, help="the operator's reconcile workers")
    ap.add_argument("--resync-seconds", type=float, default=90.0)
    ap.add_argument("--state-dir", help="local cluster state directory (reused if running; default: a new one)")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--json", default=str(REPO / "bench-out" / "bench_scale.json"))
    args = ap.parse_args()
    assert args.running <= min(48, args.endpoints)

    started = time.monotonic()
    where = machine()
    state_dir = Path(args.state_dir) if args.state_dir else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    cluster = LocalCluster(state_dir=state_dir, log=lambda m: print(f"[cluster] {m}", flush=True))
    own_cluster = cluster.info() is None
    info = cluster.up(timeout=300)
    kubectl = str(info.binaries.kubectl)
    for crd in sorted((REPO / "crds").glob("*.yaml")):
        os.system(f"{kubectl} --kubeconfig {info.kubeconfig} apply --server-side --force-conflicts -f {crd} >/dev/null")
    api = config.new_client_from_config(config_file=str(info.kubeconfig))
    namespaces = [prepared_namespace(api, f"scale-{i}") for i in range(args.namespaces)]
    log = Path(args.json).with_suffix(".operator.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    op = OperatorProcess(info.kubeconfig, DEFAULT_POOLS_FILE, log, workers=args.workers,
                         resync_seconds=args.resync_seconds, env={**os.environ, **info.env()})
    t0 = time.monotonic()
    op.start()
    ready_after = time.monotonic() - t0
    sampler = RssSampler(op)
    sampler.start()
    time.sleep(3)
    rss_idle = op.rss_bytes()[0]
    base = probe(op)
    cpu0 = cpu_seconds(op.pid)

    # --- apply everything at once ----------------------------------------------------------
    objects: list[tuple[str, str, dict]] = []
    for i in range(args.endpoints):
        ns = namespaces[i % len(namespaces)]
        running = i < args.running
        body = W.endpoint(f"ep-{i:04d}", replicas=1 if running else 0,
                          placement={"pool": "ampere-a100" if i % 2 else "hopper-h100"})
        objects.append(("dedicatedendpoints", ns, body))
    for i in range(args.models):
        ns = namespaces[i % len(namespaces)]
        objects.append(("quantizedmodels", ns, W.quantized_model(f"qm-{i:04d}", pod_annotations=W.LONG_RUNNING)))
    co = client.CustomObjectsApi(api)
    created_at: dict[tuple[str, str, str], float] = {}

    def create(item: tuple[str, str, dict]) -> None:
        plural, ns, body = item
        co.create_namespaced_custom_object(W.GROUP, W.VERSION, ns, plural, body)
        created_at[(plural, ns, body["metadata"]["name"])] = time.monotonic()

    t_apply = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(create, objects))
    apply_seconds = time.monotonic() - t_apply
    print(f"applied {len(objects)} objects in {apply_seconds:.1f}s", flush=True)

    # --- wait until everything is reconciled -----------------------------------------------
    done_at: dict[tuple[str, str, str], float] = {}

    def reconciled(plural: str, obj: dict) -> bool:
        if not W.observed(obj):
            return False
        if plural == "dedicatedendpoints":
            return W.phase(obj) == "Ready"
        return W.condition(obj, "JobCreated").get("status") == "True"

    deadline = time.monotonic() + args.timeout
    while len(done_at) < len(objects) and time.monotonic() < deadline:
        for plural in ("dedicatedendpoints", "quantizedmodels"):
            for obj in co.list_cluster_custom_object(W.GROUP, W.VERSION, plural)["items"]:
                key = (plural, obj["metadata"]["namespace"], obj["metadata"]["name"])
                if key in created_at and key not in done_at and reconciled(plural, obj):
                    done_at[key] = time.monotonic()
        print(f"  {len(done_at)}/{len(objects)} reconciled after {time.monotonic() - t_apply:.0f}s; "
              f"operator RSS {op.rss_bytes()[0] / 2**20:.0f} MiB", flush=True)
        if len(done_at) < len(objects):
            time.sleep(3)
    all_done = max(done_at.values()) - t_apply if len(done_at) == len(objects) else None
    cpu1 = cpu_seconds(op.pid)
    after = fresh_probe(op)
    latencies = sorted(done_at[k] - created_at[k] for k in done_at)

    # --- invariants -------------------------------------------------------------------------
    apps, core, batch = client.AppsV1Api(api), client.CoreV1Api(api), client.BatchV1Api(api)
    sel = W.MANAGED
    deps = Counter(d.metadata.owner_references[0].uid for d in apps.list_deployment_for_all_namespaces(label_selector=sel).items)
    svcs = Counter(s.metadata.owner_references[0].uid for s in core.list_service_for_all_namespaces(label_selector=sel).items)
    jobs = Counter(j.metadata.owner_references[0].uid for j in batch.list_job_for_all_namespaces(label_selector=sel).items)
    invariants = {"deployments": sum(deps.values()), "services": sum(svcs.values()), "jobs": sum(jobs.values()),
                  "duplicates": sum(n - 1 for c in (deps, svcs, jobs) for n in c.values() if n > 1)}

    # --- a resync with nothing changed ------------------------------------------------------
    time.sleep(10)  # pods of the running endpoints and Jobs settle
    before_resync = fresh_probe(op)
    n_objects = len(objects)
    # The resync is seen through the cached liveness answers (10 s granularity), so only its
    # requests are reported, not its duration.
    wait_until = time.monotonic() + args.resync_seconds + 120
    while time.monotonic() < wait_until:
        time.sleep(1.0)
        if reconciles_of(probe(op)) - reconciles_of(before_resync) >= n_objects:
            break
    after_resync = fresh_probe(op)
    resync_requests = requests_of(after_resync) - requests_of(before_resync)
    resync_reconciles = reconciles_of(after_resync) - reconciles_of(before_resync)
    sampler.stop_flag.set()
    rss_now, rss_peak = op.rss_bytes()
    crash = op.crash_lines()
    op.stop()
    if own_cluster and not args.state_dir:
        cluster.down()

    reqs = requests_of(after) - requests_of(base)
    result = {
        "machine": where, "command": " ".join(["python", *sys.argv]),
        "endpoints": args.endpoints, "running": args.running, "models": args.models, "namespaces": args.namespaces,
        "operator_workers": args.workers, "operator_ready_seconds": round(ready_after, 1),
        "apply_seconds": round(apply_seconds, 1),
        "all_reconciled_seconds": round(all_done, 1) if all_done else None,
        "reconciled": len(done_at), "objects": n_objects,
        "objects_per_second": round(n_objects / all_done, 2) if all_done else None,
        "latency_median_s": round(statistics.median(latencies), 1) if latencies else None,
        "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
        "requests_by_verb": dict(reqs), "requests_per_object": round(sum(reqs.values()) / n_objects, 2),
        "writes_per_object": round(sum(reqs[v] for v in WRITE_VERBS) / n_objects, 2),
        "reconciles_per_object": round((reconciles_of(after) - reconciles_of(base)) / n_objects, 2),
        "reconcile_busy_seconds": round((after.get("busySeconds") or 0) - (base.get("busySeconds") or 0), 1),
        "failed_reconciles": (after.get("failures") or {}),
        "operator_cpu_seconds": round(cpu1 - cpu0, 1),
        "operator_cpu_ms_per_object": round((cpu1 - cpu0) * 1000 / n_objects, 1),
        "rss_idle_mib": round(rss_idle / 2**20, 1), "rss_after_mib": round(rss_now / 2**20, 1),
        "rss_peak_mib": round(rss_peak / 2**20, 1),
        "rss_per_object_kib": round((rss_now - rss_idle) / 1024 / n_objects, 1),
        "invariants": invariants,
        "resync": {"reconciles": resync_reconciles, "requests_by_verb": dict(resync_requests),
                   "writes": sum(resync_requests[v] for v in WRITE_VERBS),
                   "reads_per_object": round(sum(resync_requests[v] for v in ("GET",)) / n_objects, 2)},
        "crash_lines": crash[:5], "total_seconds": round(time.monotonic() - started, 1),
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(markdown(result))
    ok = (all_done is not None and invariants["duplicates"] == 0 and result["resync"]["writes"] == 0 and not crash)
    return 0 if ok else 1


def markdown(r: dict) -> str:
    rs = r["resync"]
    return f"""
`{r['command']}` on {r['machine']}; the local cluster (etcd, API server, controllers, scheduler,
kwok) on the same cores. {r['endpoints']} DedicatedEndpoints ({r['running']} with one running replica, the
rest at `replicas: 0`) and {r['models']} QuantizedModels (one Job each, pods kept running; beyond the
H200 pool's 24 GPUs they stay Pending) over {r['namespaces']} namespaces, created at once; the operator
as its own process with {r['operator_workers']} reconcile workers, watching all namespaces.

| figure | value |
|---|---|
| creating the {r['objects']} objects (8 client threads) | {r['apply_seconds']} s |
| all reconciled (endpoints Ready, models with their Job) after | **{r['all_reconciled_seconds']} s** ({r['objects_per_second']} objects/s) |
| create-to-reconciled latency, median / p95 | {r['latency_median_s']} s / {r['latency_p95_s']} s |
| operator API requests per object (its reconcilers; kopf's watches not counted) | {r['requests_per_object']} ({', '.join(f'{k} {v}' for k, v in sorted(r['requests_by_verb'].items()))}) |
| of which writes per object | {r['writes_per_object']} |
| reconciles per object; time inside reconciles, summed over workers | {r['reconciles_per_object']}; {r['reconcile_busy_seconds']} s |
| operator CPU time (user + system) | {r['operator_cpu_seconds']} s ({r['operator_cpu_ms_per_object']} ms per object) |
| operator memory (RSS): idle / after / peak | {r['rss_idle_mib']} / {r['rss_after_mib']} / {r['rss_peak_mib']} MiB ({r['rss_per_object_kib']} KiB per object) |
| objects made: Deployments / Services / Jobs; duplicates | {r['invariants']['deployments']} / {r['invariants']['services']} / {r['invariants']['jobs']}; {r['invariants']['duplicates']} |
| periodic resync with nothing changed: reconciles | {rs['reconciles']} |
| periodic resync: requests ({', '.join(f'{k} {v}' for k, v in sorted(rs['requests_by_verb'].items()))}) | **{rs['writes']} writes**, {rs['reads_per_object']} reads per object |
"""


if __name__ == "__main__":
    sys.exit(main())
