"""Benchmark of the local control plane: cold build time, warm start time, memory.

    .venv/bin/python benchmarks/bench_control_plane.py [--starts 2] [--settle 10]

- cold build: the time each binary took the first time it was built on this machine, as the
  build recorded it in its cache entry's meta.json (a cold build cannot be re-measured without
  throwing the cache away; `dedicated cluster build` after removing
  ~/.cache/dedicated-endpoints/controlplane does that);
- warm build: `ensure_binaries()` with every binary cached (what `scripts/test.sh` pays on a warm
  machine);
- start: `LocalCluster.up()` in a fresh state directory until every simulated node is Ready and
  the `default` ServiceAccount exists; the first start also makes the PKI, later ones reuse it;
- memory: RSS of each component's process group after the cluster has idled ``--settle`` seconds;
- with ``--cold-build``: first a really cold build, as on a fresh CI machine: every tool built into
  a temporary cache with an empty Go build cache and an empty Go module cache (modules downloaded
  from the proxy again), then thrown away. Takes as long as it says (tens of minutes on 2 cores).

Prints Markdown (paste into docs/benchmarks.md) with the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from dedicated.localcluster.build import build_metadata, ensure_binaries, find_go
from dedicated.localcluster.cluster import COMPONENTS, LocalCluster
from dedicated.localcluster.procs import ProcessRecord


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    go = subprocess.run([find_go(), "version"], capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_kib / 2**20:.0f} GiB RAM, {platform.system()} {platform.release()}, "
        f"{go}, Python {platform.python_version()}; load average at start {load[0]:.1f}"
    )


def group_rss_kib(pgid: int) -> int:
    """Sum of VmRSS over every process in the group (a component and anything it spawned)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total


def cold_build() -> None:
    """Build every tool from nothing (empty GOCACHE, GOMODCACHE and binary cache) and report."""
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        root = Path(tmp)
        saved = {key: os.environ.get(key) for key in ("GOCACHE", "GOMODCACHE")}
        os.environ["GOCACHE"] = str(root / "gocache")
        os.environ["GOMODCACHE"] = str(root / "gomod")
        cache = root / "controlplane"
        start = time.monotonic()
        try:
            ensure_binaries(cache=cache, log=lambda _: None)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        wall = time.monotonic() - start
        print("Cold build (empty Go build cache, empty module cache, modules downloaded from the proxy):\n")
        print("| binary | version | wall (s) | CPU (s) | 1-min load at the end |")
        print("|---|---|---|---|---|")
        cpu_total = 0.0
        for name, meta in build_metadata(cache=cache).items():
            cpu_total += meta.get("cpu_seconds", 0.0)
            print(
                f"| {name} | {meta['version']} | {meta['build_seconds']:.0f} | {meta.get('cpu_seconds', 0):.0f} | "
                f"{meta.get('load_average_1m', '?')} |"
            )
        print(f"| **all** | | **{wall:.0f}** ({wall / 60:.1f} min) | **{cpu_total:.0f}** | |\n")
        cores = os.cpu_count() or 1
        print(
            f"CPU time does not depend on the machine's load; on an idle {cores}-core machine the cold build "
            f"needs at least {cpu_total / cores / 60:.1f} min of wall time (CPU / cores).\n"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=2, help="cluster starts to time (first one makes the PKI)")
    parser.add_argument("--settle", type=float, default=10.0, help="idle seconds before measuring memory")
    parser.add_argument("--cold-build", action="store_true", help="also time a build from empty Go caches")
    args = parser.parse_args()

    print("## Control plane\n")
    print(f"Machine: {machine()}.  ")
    flags = (" --cold-build" if args.cold_build else "") + (f" --starts {args.starts}" if args.starts != 2 else "")
    print(f"Command: `.venv/bin/python benchmarks/bench_control_plane.py{flags}`\n")

    if args.cold_build:
        cold_build()
    print("First build of each binary in this machine's cache (as recorded in its meta.json; it may")
    print("have reused Go's build cache from earlier builds):\n")
    print("| binary | version | first build (s) | CPU (s) | size (MB) | built with | built at |")
    print("|---|---|---|---|---|---|---|")
    total = 0.0
    for name, meta in build_metadata().items():
        if meta is None:
            print(f"| {name} | not built | | | | | |")
            continue
        total += meta["build_seconds"]
        print(
            f"| {name} | {meta['version']} | {meta['build_seconds']:.0f} | {meta.get('cpu_seconds', '–')} | {meta['size'] / 1e6:.0f} | "
            f"{meta['go_version']}, {meta.get('host_cpus')} cores | {meta['built_at']} |"
        )
    print(f"| **all** | | **{total:.0f}** ({total / 60:.1f} min) | | | | |\n")

    start = time.monotonic()
    ensure_binaries(build=False, log=lambda _: None)
    print(f"Warm build (every binary cached, sizes checked): {(time.monotonic() - start) * 1000:.0f} ms\n")

    print("| start | PKI | seconds to all nodes Ready |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        cluster = LocalCluster(state_dir=Path(tmp), log=lambda _: None, tie_to_parent=True)
        info = None
        try:
            for attempt in range(1, args.starts + 1):
                info = cluster.up()
                print(f"| {attempt} | {'new' if attempt == 1 else 'reused'} | {info.started_seconds:.1f} |")
                if attempt < args.starts:
                    cluster.down()
            assert info is not None
            time.sleep(args.settle)
            print(f"\nMemory after {args.settle:.0f} s idle with {len(info.nodes)} simulated nodes (RSS of each process group):\n")
            print("| component | RSS (MiB) |")
            print("|---|---|")
            rss_total = 0
            for name in COMPONENTS:
                record = ProcessRecord.load(cluster.pid_file(name))
                rss = group_rss_kib(record.pid) if record and record.is_running() else 0
                rss_total += rss
                print(f"| {name} | {rss / 1024:.0f} |")
            print(f"| **total** | **{rss_total / 1024:.0f}** |")
        finally:
            cluster.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
