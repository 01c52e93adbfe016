"""Peak memory and wall time of the quantize Job program on tiny MoE checkpoints (CPU).

Runs ``python -m dedicated.quantize_job run`` as a child process per case and reads the child's peak
RSS from ``getrusage(RUSAGE_CHILDREN)``; a baseline child that only imports the same libraries
separates library overhead from what the run itself adds. The manifest's own ``resources`` block
(peak RSS inside the program, peak CUDA allocation when a GPU is used) is reported beside it.

Usage: ``python benchmarks/bench_quantize_job_memory.py [--out results.json]`` (minutes on a small CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [
    # name, checkpoint shape, method
    ("gsq-2L-4E", dict(layers=2, experts=4, hidden_size=128, moe_intermediate=128), "gsq"),
    ("gsq-8L-8E", dict(layers=8, experts=8, hidden_size=256, moe_intermediate=256), "gsq"),
]


def _child_peak_rss(cmd: list[str], env: dict[str, str]) -> tuple[int, float, subprocess.CompletedProcess]:
    """Peak RSS (bytes) of one child: fork a tiny wrapper so RUSAGE_CHILDREN sees only that child."""
    wrapper = ("import resource, subprocess, sys, json, time; t=time.time(); "
               "p=subprocess.run(sys.argv[1:]); "
               "print(json.dumps({'rc': p.returncode, 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
               " 's': time.time()-t}))")
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env, capture_output=True, text=True)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return info["rss"] * 1024, info["s"], proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", TERMINATION_LOG=os.devnull)
    env.pop("JOB_NAME", None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base_rss, _, _ = _child_peak_rss([sys.executable, "-c", "import torch, transformers, safetensors, "
                                          "dedicated.quantize_job.pipeline"], env)
        from dedicated.quantize_job.tiny_checkpoint import build_tiny_moe_checkpoint

        for name, shape, method in CASES:
            model = build_tiny_moe_checkpoint(tmp / f"model-{name}", train_steps=0, **shape)
            model_bytes = sum(p.stat().st_size for p in model.glob("*.safetensors"))
            out = tmp / f"out-{name}"
            cfg = tmp / f"{name}.json"
            cfg.write_text(json.dumps({
                "model": {"path": str(model)}, "method": method, "bits": 2,
                "calibration": {"numSamples": 32, "sequenceLength": 128},
                "validation": {"heldoutSamples": 8, "heldoutSequenceLength": 128, "maxPerplexityRatio": 10},
                "output": {"dir": str(out), "volume": {}},
                "runtime": {"device": "cpu", "methodOptions": {"gsq.steps": 50, "calibration.min_tokens": 32}}}))
            rss, seconds, proc = _child_peak_rss([sys.executable, "-m", "dedicated.quantize_job", "run",
                                                  "--config", str(cfg)], env)
            if proc.returncode != 0 or '"rc": 0' not in proc.stdout:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            manifest = json.loads((out / "manifest.json").read_text())
            rows.append({"case": name, "layers": shape["layers"], "experts": shape["experts"],
                         "baseModelBytes": model_bytes, "outputBytes": manifest["totalBytes"],
                         "peakRssBytes": rss, "importOnlyPeakRssBytes": base_rss,
                         "runAddsBytes": rss - base_rss, "manifestResources": manifest["resources"],
                         "wallSeconds": round(seconds, 1), "timings": manifest["timings"]})
    result = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
              "command": "python benchmarks/bench_quantize_job_memory.py", "createdAt": time.strftime("%Y-%m-%d"),
              "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
