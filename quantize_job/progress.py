"""Progress a person can read: stage, layer i of n, elapsed, time left, in the log, a file and on
the Job object.

One ``Progress`` tracker holds the state; reporters publish it. The Kubernetes reporter patches the
``llm.dedicated.dev/progress`` annotation of the Job itself, throttled by a background thread so a
40-layer run patches at most once every ``interval`` seconds while the latest state still arrives
promptly (a slow layer after a throttled update is not left unreported). A failed patch is logged
and never stops the quantization.

The estimate of time left counts only layers computed in this run: layers restored from the resume
state take no time, and averaging them in would promise a finish that never comes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("dedicated.quantize_job")

PROGRESS_ANNOTATION = "llm.dedicated.dev/progress"
RESULT_ANNOTATION = "llm.dedicated.dev/result"
STAGES: tuple[str, ...] = ("fetch", "calibrate", "quantize", "export", "validate", "publish")
#: Share of the whole run each stage is expected to take (for the overall percent only). The
#: layer-by-layer quantization dominates every real run; the rest is I/O and two forward passes.
STAGE_WEIGHTS: dict[str, float] = {"fetch": 0.05, "calibrate": 0.05, "quantize": 0.75, "export": 0.05,
                                   "validate": 0.08, "publish": 0.02}


def format_duration(seconds: float | None) -> str:
    """``1h02m``, ``4m05s``, ``12s``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


@dataclass
class ProgressSnapshot:
    stage: str
    layer: int | None
    total_layers: int | None
    percent: int
    elapsed_seconds: int
    eta_seconds: int | None
    summary: str
    resumed_from_layer: int | None
    detail: str | None = None

    def to_contract(self) -> dict[str, Any]:
        """The annotation's JSON, exactly the keys of the operator contract."""
        return {"stage": self.stage, "layer": self.layer, "totalLayers": self.total_layers,
                "percent": self.percent, "elapsedSeconds": self.elapsed_seconds,
                "etaSeconds": self.eta_seconds, "summary": self.summary,
                "resumedFromLayer": self.resumed_from_layer}

    def log_line(self) -> str:
        parts = [self.summary, f"elapsed {format_duration(self.elapsed_seconds)}"]
        if self.eta_seconds is not None:
            parts.append(f"eta {format_duration(self.eta_seconds)}")
        if self.resumed_from_layer is not None:
            parts.append(f"resumed from layer {self.resumed_from_layer}")
        if self.detail:
            parts.append(self.detail)
        return " | ".join(parts)


class Reporter(Protocol):
    def update(self, snapshot: ProgressSnapshot, *, force: bool = False) -> None: ...
    def close(self) -> None: ...


@dataclass
class Progress:
    """The run's progress state; every change goes to all reporters."""

    reporters: list[Reporter] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic
    stage: str = "fetch"
    layer: int | None = None
    total_layers: int | None = None
    resumed_from_layer: int | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        self._start = self.clock()
        self._computed_layer_seconds: list[float] = []
        self._layer_started: float | None = None
        self._complete: str | None = None

    # -- state changes ---------------------------------------------------------------------------

    def start_stage(self, stage: str, detail: str | None = None) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        self.stage, self.detail = stage, detail
        self._layer_started = self.clock()
        self._emit(force=True)

    def set_total_layers(self, total: int) -> None:
        self.total_layers = total

    def resumed(self, first_layer: int) -> None:
        """The run restored layers ``0 .. first_layer-1`` from the state dir."""
        self.resumed_from_layer = first_layer
        self.layer = first_layer
        self._layer_started = self.clock()
        log.info("resuming: layers 0..%d restored from the state dir, continuing at layer %d",
                 first_layer - 1, first_layer)
        self._emit(force=True)

    def layer_done(self, index: int, total: int, *, computed: bool = True, detail: str | None = None) -> None:
        """Layer ``index`` (0-based) of ``total`` is finished; ``computed`` is false when restored."""
        now = self.clock()
        if computed and self._layer_started is not None:
            self._computed_layer_seconds.append(now - self._layer_started)
        self._layer_started = now
        self.layer, self.total_layers, self.detail = index + 1, total, detail
        self._emit()

    def note(self, detail: str) -> None:
        self.detail = detail
        self._emit()

    # -- derived figures -------------------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        return self.clock() - self._start

    def eta(self) -> float | None:
        if self.stage != "quantize" or not self.total_layers or self.layer is None:
            return None
        if not self._computed_layer_seconds:
            return None
        per_layer = sum(self._computed_layer_seconds) / len(self._computed_layer_seconds)
        return per_layer * max(0, self.total_layers - self.layer)

    def percent(self) -> int:
        done = 0.0
        for stage in STAGES:
            if stage == self.stage:
                break
            done += STAGE_WEIGHTS[stage]
        if self.stage == "quantize" and self.total_layers and self.layer is not None:
            done += STAGE_WEIGHTS["quantize"] * self.layer / self.total_layers
        return max(0, min(100, int(round(100 * done))))

    def snapshot(self) -> ProgressSnapshot:
        pct = self.percent()
        if self._complete:
            pct = 100
            summary = f"{self._complete} (100%)"
        elif self.stage == "quantize" and self.total_layers:
            summary = f"quantize {self.layer or 0}/{self.total_layers} ({pct}%)"
        else:
            summary = f"{self.stage} ({pct}%)"
        eta = 0 if self._complete else self.eta()
        return ProgressSnapshot(
            stage=self.stage, layer=self.layer, total_layers=self.total_layers, percent=pct,
            elapsed_seconds=int(self.elapsed), eta_seconds=None if eta is None else int(round(eta)),
            summary=summary, resumed_from_layer=self.resumed_from_layer, detail=self.detail)

    def complete(self, summary: str = "published") -> None:
        """The run succeeded: 100%, nothing left."""
        self._complete = summary
        self._emit(force=True)

    def finish(self) -> None:
        """Final flush: the last state reaches every reporter, throttled or not."""
        if not self._complete:
            self._emit(force=True)
        for reporter in self.reporters:
            reporter.close()

    def _emit(self, force: bool = False) -> None:
        snap = self.snapshot()
        for reporter in self.reporters:
            try:
                reporter.update(snap, force=force)
            except Exception as exc:  # a reporter must never stop the quantization
                log.warning("progress reporter %s failed: %s", type(reporter).__name__, exc)


# --- reporters ----------------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON beside ``path`` and rename over it, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


class LogReporter:
    """One log line per change (layers, stages); the first thing a person reads in ``kubectl logs``."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger

    def update(self, snapshot: ProgressSnapshot, *, force: bool = False) -> None:
        self.logger.info("[%s] %s", snapshot.stage, snapshot.log_line())

    def close(self) -> None:
        pass


class FileReporter:
    """``progress.json`` in the output dir, rewritten atomically on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def update(self, snapshot: ProgressSnapshot, *, force: bool = False) -> None:
        data = snapshot.to_contract()
        data["detail"] = snapshot.detail
        data["updatedAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json_atomic(self.path, data)

    def close(self) -> None:
        pass


class ThrottledPublisher:
    """Sends the latest value through ``send`` at most once per ``interval`` seconds.

    A daemon thread owns the sending, so ``offer`` never blocks the quantization on the network and
    the newest value always goes out, ``interval`` after the previous one at the latest.
    """

    def __init__(self, send: Callable[[Any], None], interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send, self.interval, self._clock = send, interval, clock
        self._pending: Any = None
        self._has_pending = False
        self._last_sent = float("-inf")
        self._cond = threading.Condition()
        self._closed = False
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="progress-publisher", daemon=True)
        self._thread.start()

    def offer(self, value: Any, *, force: bool = False) -> None:
        with self._cond:
            self._pending, self._has_pending = value, True
            if force:
                self._last_sent = float("-inf")
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._has_pending and not self._closed:
                    self._cond.wait()
                if not self._has_pending and self._closed:
                    return
                wait = self._last_sent + self.interval - self._clock()
                if wait > 0 and not self._closed:
                    self._cond.wait(timeout=wait)
                    continue
                value, self._has_pending = self._pending, False
                self._last_sent = self._clock()
            self._deliver(value)

    def _deliver(self, value: Any) -> None:
        try:
            self._send(value)
            self.sent += 1
        except Exception as exc:
            log.warning("could not publish progress (continuing): %s", exc)

    def close(self, timeout: float = 30.0) -> None:
        """Flush the pending value now (ignoring the interval) and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)


class JobAnnotator:
    """Patches annotations on the Job this pod belongs to (in-cluster, or KUBECONFIG for tests).

    RBAC gives the pod only ``get,patch`` on its own Job, which is all a merge patch of
    ``metadata.annotations`` needs.
    """

    def __init__(self, name: str, namespace: str) -> None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            # KUBECONFIG read now: the client library reads it once, when it is first imported.
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
        self._api = client.BatchV1Api()
        self.name, self.namespace = name, namespace

    def patch(self, annotations: dict[str, str]) -> None:
        self._api.patch_namespaced_job(self.name, self.namespace,
                                       {"metadata": {"annotations": annotations}})

    def patch_with_retry(self, annotations: dict[str, str], attempts: int = 5, delay: float = 1.0) -> bool:
        for attempt in range(1, attempts + 1):
            try:
                self.patch(annotations)
                return True
            except Exception as exc:
                log.warning("patching %s/%s failed (attempt %d/%d): %s", self.namespace, self.name,
                            attempt, attempts, _short(exc))
                if attempt < attempts:
                    time.sleep(delay * attempt)
        return False


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class AnnotationReporter:
    """The ``llm.dedicated.dev/progress`` annotation, throttled to one patch per ``interval``."""

    def __init__(self, annotator: JobAnnotator, interval: float) -> None:
        self.annotator = annotator
        self._publisher = ThrottledPublisher(self._send, interval)

    def _send(self, data: dict[str, Any]) -> None:
        self.annotator.patch({PROGRESS_ANNOTATION: json.dumps(data, separators=(",", ":"))})

    def update(self, snapshot: ProgressSnapshot, *, force: bool = False) -> None:
        self._publisher.offer(snapshot.to_contract(), force=force)

    @property
    def patches_sent(self) -> int:
        return self._publisher.sent

    def close(self) -> None:
        self._publisher.close()


def job_identity(environ: dict[str, str] | None = None) -> tuple[str, str] | None:
    """``(JOB_NAME, JOB_NAMESPACE)`` when the program runs as a Job; ``None`` for local runs."""
    env = os.environ if environ is None else environ
    name = env.get("JOB_NAME", "").strip()
    if not name:
        return None
    return name, env.get("JOB_NAMESPACE", "").strip() or "default"


def build_reporters(output_dir: Path, interval: float, annotator: JobAnnotator | None) -> list[Reporter]:
    reporters: list[Reporter] = [LogReporter(), FileReporter(output_dir / "progress.json")]
    if annotator is not None:
        reporters.append(AnnotationReporter(annotator, interval))
    return reporters


