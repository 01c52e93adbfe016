"""Resume after a killed pod: the real program as a subprocess, SIGKILLed after some layers, rerun.

The rerun must resume from the layer state (``resumedFromLayer`` in the progress file and the
manifest), compute only the remaining layers, and publish byte-identical checkpoint files to an
uninterrupted run of the same config. Both methods: GSQ (the layer-by-layer engine) and AutoRound
(auto-round's block loop, committed per block by ``autoround_resume``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dedicated.quantize_job.config import parse_config
from dedicated.quantize_job.pipeline import run_job
from dedicated.quantize_job.tiny_checkpoint import cached_tiny_moe_checkpoint

LAYERS = 6


def _config(model: Path, out: Path) -> dict:
    return {"model": {"path": str(model)}, "method": "gsq", "bits": 2,
            "calibration": {"numSamples": 16, "sequenceLength": 64},
            "validation": {"heldoutSamples": 4, "heldoutSequenceLength": 64, "maxPerplexityRatio": 1.5},
            "output": {"dir": str(out), "volume": {}},
            "runtime": {"device": "cpu", "progressIntervalSeconds": 0,
                        "methodOptions": {"gsq.steps": 60, "calibration.min_tokens": 16}}}


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JOB_NAME", "JOB_NAMESPACE")}
    env.update(OMP_NUM_THREADS="1", TERMINATION_LOG=str(tmp_path / "termination-log"), PYTHONUNBUFFERED="1")
    return env


def _checkpoint_bytes(out: Path) -> dict[str, str]:
    """SHA-256 of every published file: equal digests are equal bytes, and a failure prints a
    short diff instead of pytest comparing megabytes of bytes (which outran the test timeout)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())
            if p.is_file() and p.name not in ("manifest.json", "progress.json")}


def _run_until_layer(cmd: list[str], env: dict[str, str], out: Path, log: Path, layer: int) -> int | None:
    """Start the program, SIGKILL it once progress.json reports ``layer`` quantized layers."""
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        killed_at = None
        deadline = time.monotonic() + 600
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    p = json.loads((out / "progress.json").read_text())
                except (OSError, json.JSONDecodeError):
                    p = {}
                if p.get("stage") == "quantize" and (p.get("layer") or 0) >= layer:
                    proc.send_signal(signal.SIGKILL)
                    killed_at = p["layer"]
                    break
                time.sleep(0.02)
        finally:
            if proc.poll() is None and killed_at is None:
                proc.kill()
            proc.wait()
    return killed_at


def _start_and_kill(tmp_path: Path, config: dict, out: Path) -> list[str]:
    """Start the real program on ``config`` and SIGKILL it once progress shows 2 layers; its command."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "dedicated.quantize_job", "run", "--config", str(cfg)]
    killed_at = _run_until_layer(cmd, _env(tmp_path), out, tmp_path / "run1.log", 2)
    assert killed_at is not None, (tmp_path / "run1.log").read_text()[-3000:]
    return cmd


def _rerun_resumes(cmd: list[str], tmp_path: Path, committed: int) -> None:
    """Run ``cmd`` again to the end; it must say it resumed after the ``committed`` layers."""
    second = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming: layers 0..{committed - 1} restored from the state dir, continuing at layer {committed}" \
        in second.stderr


@pytest.mark.slow
def test_killed_run_resumes_and_publishes_identical_bytes(tmp_path_factory, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = cached_tiny_moe_checkpoint(tmp_path_factory.getbasetemp(), layers=LAYERS, train_steps=20)

    # Reference: the same config, never interrupted.
    ref_out = tmp_path / "reference"
    run_job(parse_config(_config(model, ref_out)))
    reference = _checkpoint_bytes(ref_out)
    assert any(name.endswith(".safetensors") for name in reference)

    out = tmp_path / "out"
    cmd = _start_and_kill(tmp_path, _config(model, out), out)
    state = json.loads((out / ".quantize-state" / "layers" / "state.json").read_text())
    committed = state["completed"]
    assert 2 <= committed < LAYERS, committed
    assert not (out / "manifest.json").exists()

    _rerun_resumes(cmd, tmp_path, committed)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layers"]["resumedFromLayer"] == committed
    assert manifest["layers"]["computed"] == LAYERS - committed  # fewer layers computed
    assert json.loads((out / "progress.json").read_text())["resumedFromLayer"] == committed
    ref_manifest = json.loads((ref_out / "manifest.json").read_text())
    assert ref_manifest["layers"]["computed"] == LAYERS
    assert _checkpoint_bytes(out) == reference  # same output bytes
    assert manifest["quality"]["perplexityQuantized"] == ref_manifest["quality"]["perplexityQuantized"]


def _autoround_config(model: Path, out: Path) -> dict:
    # 10 iterations: with 2 the tuning keeps its starting point (RTN) whatever the RNG and inputs, so
    # the bytes would match even if the resume restored the wrong chain or RNG state. Validation off:
    # this test is about the bytes, and the load test costs a model load per run.
    cfg = _config(model, out)
    cfg.update(method="autoround", bits=4, validation={"enabled": False})
    cfg["runtime"]["methodOptions"] = {"autoround.iters": 10, "autoround.batch_size": 4}
    return cfg


@pytest.mark.slow
def test_killed_autoround_run_resumes_per_block_and_publishes_identical_bytes(tmp_path_factory, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = cached_tiny_moe_checkpoint(tmp_path_factory.getbasetemp(), layers=LAYERS, train_steps=20)  # as above

    ref_out = tmp_path / "reference"
    run_job(parse_config(_autoround_config(model, ref_out)))
    reference = _checkpoint_bytes(ref_out)
    shards = sorted(name for name in reference if name.endswith(".safetensors"))
    assert len(shards) == LAYERS + 1, shards  # one per block, then the rest (embeddings, lm_head)
    ref_manifest = json.loads((ref_out / "manifest.json").read_text())
    assert ref_manifest["layers"]["computed"] == LAYERS and ref_manifest["layers"]["resumedFromLayer"] is None

    out = tmp_path / "out"
    cmd = _start_and_kill(tmp_path, _autoround_config(model, out), out)
    blocks = out / ".quantize-state" / "autoround-resume" / "group_0" / "blocks.json"
    committed = len(json.loads(blocks.read_text())["completedBlocks"])
    assert 2 <= committed < LAYERS, committed
    assert not (out / "manifest.json").exists()

    _rerun_resumes(cmd, tmp_path, committed)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layers"]["resumedFromLayer"] == committed
    assert manifest["layers"]["computed"] == LAYERS - committed  # fewer blocks tuned
    assert json.loads((out / "progress.json").read_text())["resumedFromLayer"] == committed
    assert _checkpoint_bytes(out) == reference  # same output bytes
    assert not (out / ".quantize-state").exists()  # the block state went with the rest after publishing


def test_input_error_exit_code_through_the_real_entry_point(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({**_config(Path("/nonexistent"), tmp_path / "o"), "groupSize": 100}))
    proc = subprocess.run([sys.executable, "-m", "dedicated.quantize_job", "run", "--config", str(cfg)],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "termination-log").read_text() == \
        "JobFailed: invalid job config: groupSize: 100 is not one of (32, 64, 128, 256)\n"
