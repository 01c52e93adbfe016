"""`dedicated cluster build|up|down|status|env`: the local control plane from the command line."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path


def _log(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


def _cluster(args: argparse.Namespace):
    from dedicated.localcluster.cluster import LocalCluster

    return LocalCluster(state_dir=args.state_dir, pools_file=getattr(args, "pools", None), log=_log)


def _build(args: argparse.Namespace) -> int:
    from dedicated.localcluster.build import BuildError, build_metadata, ensure_binaries

    start = time.monotonic()
    try:
        binaries = ensure_binaries(verify_hash=args.verify, log=_log)
    except BuildError as error:
        _log(f"error: {error}")
        return 1
    for name, meta in build_metadata().items():
        if meta:
            _log(
                f"{name} {meta['version']}: {meta['size'] / 1e6:.0f} MB, built in {meta['build_seconds']:.0f}s "
                f"with {meta['go_version']} on {meta['built_at']}"
            )
    _log(f"control plane binaries ready in {time.monotonic() - start:.1f}s (kubectl: {binaries.kubectl})")
    return 0


def _up(args: argparse.Namespace) -> int:
    from dedicated.localcluster.build import BuildError
    from dedicated.localcluster.cluster import ClusterError
    from dedicated.localcluster.pools import PoolFileError

    try:
        info = _cluster(args).up(timeout=args.timeout, build=not args.no_build)
    except (BuildError, ClusterError, PoolFileError) as error:
        _log(f"error: {error}")
        return 1
    _log(f"use it with:  eval \"$(dedicated cluster env{_state_flag(args)})\"  then  kubectl get nodes")
    del info
    return 0


def _state_flag(args: argparse.Namespace) -> str:
    return f" --state-dir {shlex.quote(str(args.state_dir))}" if args.state_dir else ""


def _down(args: argparse.Namespace) -> int:
    _cluster(args).down()
    return 0


def _status(args: argparse.Namespace) -> int:
    status = _cluster(args).status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(f"state dir: {status['state_dir']}")
        for name, component in status["components"].items():
            where = f" pid {component['pid']}" if component.get("pid") else ""
            port = (status.get("ports") or {}).get(name) or (status.get("ports") or {}).get(f"{name}-client")
            print(f"  {name:<24} {'running' if component['running'] else 'stopped'}{where}{f' port {port}' if port else ''}")
        if status["running"]:
            print(f"API server {status.get('api_server')}: {'ready' if status.get('api_server_ready') else 'NOT ready'}")
            print(f"kubeconfig: {status.get('kubeconfig')}  ({status.get('nodes')} simulated nodes)")
    return 0 if status["running"] and status.get("api_server_ready") else 3


def _env(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    info = cluster.info()
    if info is None:
        _log(f"no running cluster in {cluster.state_dir}; start it with `dedicated cluster up{_state_flag(args)}`")
        return 1
    print(f"export KUBECONFIG={shlex.quote(str(info.kubeconfig))}")
    print(f"export PATH={shlex.quote(str(info.bin_dir))}:\"$PATH\"")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cluster",
        help="local Kubernetes control plane with simulated GPU node pools",
        description="A real etcd/kube-apiserver/controller-manager/scheduler on 127.0.0.1 with kwok-simulated "
        "GPU nodes (docs/local-cluster.md).",
    )
    commands = parser.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)

    def with_state(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            help="cluster state (certificates, logs, kubeconfig); default $DEDICATED_CLUSTER_DIR or <repo>/.cache/localcluster",
        )
        return sub

    build = commands.add_parser("build", help="build the binaries, or check the cached ones")
    build.add_argument("--verify", action="store_true", help="also check the cached binaries' checksums")
    build.set_defaults(handler=_build)

    up = with_state(commands.add_parser("up", help="start the cluster (no-op when it already runs)"))
    up.add_argument("--pools", type=Path, default=None, help="GPU pool file (default: the packaged gpu-pools.yaml)")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for everything to be ready")
    up.add_argument("--no-build", action="store_true", help="fail instead of building missing binaries")
    up.set_defaults(handler=_up)

    with_state(commands.add_parser("down", help="stop every component and discard the cluster's objects")).set_defaults(
        handler=_down
    )

    status = with_state(commands.add_parser("status", help="what runs, where (exit 0 only when ready)"))
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)

    with_state(commands.add_parser("env", help="print `export KUBECONFIG=... PATH=...` for eval")).set_defaults(
        handler=_env
    )
