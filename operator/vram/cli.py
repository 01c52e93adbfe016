"""``dedicated vram profile|plan``: the planner from the command line.

``profile`` prints a model's facts and bytes per component (text, embeddings, vision, MTP);
``plan`` prints the plan (or the failure reason) for a checkpoint directory or a Hub repo against a
pool file: the same pure functions the operator calls, for platform teams sizing pools by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..api.common import FeatureMode
from ..pools import PoolConfigError, load_pools
from .errors import CheckpointError
from .memory import GIB
from .planner import PlanRequest, plan
from .profile import ModelProfile, profile_hub, profile_local


def _profile(source: str, revision: str | None) -> ModelProfile:
    if Path(source).is_dir():
        return profile_local(source)
    # a Hub repo id; the token comes from the environment only, never from an argument
    return profile_hub(source, revision, token=os.environ.get("HF_TOKEN"))


def _run_profile(args: argparse.Namespace) -> int:
    try:
        prof = _profile(args.model, args.revision)
    except CheckpointError as err:
        print(f"{err.reason.value}: {err.message}", file=sys.stderr)
        return 1
    f = prof.facts
    out = {
        "source": prof.source,
        "modelType": f.model_type,
        "quantization": {"method": f.quant.method, "bits": f.quant.bits, "groupSize": f.quant.group_size,
                         "minComputeCapability": "%d.%d" % f.quant.min_capability},
        "layers": {kind: f.count(kind) for kind in sorted(set(f.layer_types))},
        "maxPositionEmbeddings": f.max_position_embeddings,
        "bytes": {name: part.total for name, part in sorted(prof.parts.parts.items())},
        "gib": {k: round(v, 3) for k, v in prof.component_gib().items()},
    }
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


def _run_plan(args: argparse.Namespace) -> int:
    try:
        pools = load_pools(args.pools)
        prof = _profile(args.model, args.revision)
    except (PoolConfigError, CheckpointError) as err:
        reason = getattr(err, "reason", None)
        print(f"{reason.value + ': ' if reason else ''}{getattr(err, 'message', err)}", file=sys.stderr)
        return 1
    request = PlanRequest(
        context_length=args.context_length, concurrency=args.concurrency,
        gpu_memory_utilization=args.gpu_memory_utilization, text_only=FeatureMode(args.text_only),
        mtp=FeatureMode(args.mtp), pool=args.pool,
        gpu_families=tuple(args.gpu_family) if args.gpu_family else None,
        gpus_per_replica=args.gpus_per_replica, max_gpus_per_replica=args.max_gpus_per_replica)
    result = plan(prof, request, pools)
    if not result.ok:
        print(json.dumps({"reason": result.reason.value, "message": result.message}, indent=2))
        return 2
    print(json.dumps({"plan": result.to_status().to_k8s(), "vllmArgs": result.vllm_args(),
                      "perGpuGiB": {"weights": round(result.fit.weights / GIB, 2), "kv": round(result.fit.kv / GIB, 2),
                                    "runtime": round(result.fit.runtime / GIB, 2)}}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    vram = subparsers.add_parser("vram", help="VRAM planner: profile a model, plan an endpoint")
    sub = vram.add_subparsers(dest="vram_command", metavar="ACTION", required=True)
    prof = sub.add_parser("profile", help="bytes per component of a checkpoint dir or Hub repo (JSON)")
    prof.add_argument("model", help="checkpoint directory or Hub repo id")
    prof.add_argument("--revision", default=None)
    prof.set_defaults(handler=_run_profile)
    pl = sub.add_parser("plan", help="plan serving for a model on a pool file (JSON); exit 2 if nothing fits")
    pl.add_argument("model", help="checkpoint directory or Hub repo id")
    pl.add_argument("--pools", required=True, help="node-pool configuration YAML")
    pl.add_argument("--revision", default=None)
    pl.add_argument("--context-length", type=int, default=None)
    pl.add_argument("--concurrency", type=int, default=8)
    pl.add_argument("--gpu-memory-utilization", type=float, default=None)
    pl.add_argument("--text-only", choices=[m.value for m in FeatureMode], default="auto")
    pl.add_argument("--mtp", choices=[m.value for m in FeatureMode], default="auto")
    pl.add_argument("--pool", default=None)
    pl.add_argument("--gpu-family", action="append", default=None)
    pl.add_argument("--gpus-per-replica", type=int, default=None)
    pl.add_argument("--max-gpus-per-replica", type=int, default=None)
    pl.set_defaults(handler=_run_plan)
