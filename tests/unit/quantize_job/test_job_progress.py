"""Progress: readable summaries, ETA from computed layers only, throttled annotation patches."""

from __future__ import annotations

import json
import threading
import time

from dedicated.quantize_job.progress import (
    FileReporter,
    Progress,
    ThrottledPublisher,
    format_duration,
    job_identity,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Recorder:
    def __init__(self) -> None:
        self.snapshots = []

    def update(self, snapshot, *, force=False) -> None:
        self.snapshots.append(snapshot)

    def close(self) -> None:
        pass


def test_layer_progress_summary_eta_and_resume(tmp_path) -> None:
    clock, rec = FakeClock(), Recorder()
    p = Progress(reporters=[rec, FileReporter(tmp_path / "progress.json")], clock=clock)
    p.start_stage("fetch")
    clock.t += 30
    p.start_stage("quantize")
    p.set_total_layers(40)
    p.resumed(10)  # layers 0..9 restored: no time, must not shorten the estimate
    for i in range(10, 12):
        clock.t += 60
        p.layer_done(i, 40)
    snap = p.snapshot()
    assert snap.layer == 12 and snap.total_layers == 40
    assert snap.eta_seconds == 28 * 60
    assert snap.elapsed_seconds == 150
    assert snap.summary == f"quantize 12/40 ({snap.percent}%)"
    assert 10 < snap.percent < 40
    assert snap.resumed_from_layer == 10
    line = snap.log_line()
    assert "quantize 12/40" in line and "elapsed 2m30s" in line and "eta 28m00s" in line
    data = json.loads((tmp_path / "progress.json").read_text())
    assert {k: data[k] for k in ("stage", "layer", "totalLayers", "resumedFromLayer")} == {
        "stage": "quantize", "layer": 12, "totalLayers": 40, "resumedFromLayer": 10}
    assert set(data) >= {"percent", "elapsedSeconds", "etaSeconds", "summary"}


def test_restored_layers_do_not_count_toward_eta() -> None:
    clock = FakeClock()
    p = Progress(clock=clock)
    p.start_stage("quantize")
    for i in range(3):
        p.layer_done(i, 10, computed=False)
    assert p.eta() is None
    clock.t += 20
    p.layer_done(3, 10)
    assert p.eta() == 20 * 6


def test_percent_is_monotonic_over_stages() -> None:
    clock = FakeClock()
    p = Progress(clock=clock)
    seen = []
    for stage in ("fetch", "calibrate", "quantize"):
        p.start_stage(stage)
        seen.append(p.percent())
    p.set_total_layers(4)
    for i in range(4):
        p.layer_done(i, 4)
        seen.append(p.percent())
    for stage in ("export", "validate", "publish"):
        p.start_stage(stage)
        seen.append(p.percent())
    assert seen == sorted(seen) and seen[0] == 0 and seen[-1] < 100


def test_format_duration() -> None:
    assert format_duration(None) == "?"
    assert format_duration(12.4) == "12s"
    assert format_duration(245) == "4m05s"
    assert format_duration(3720) == "1h02m"


def test_throttled_publisher_sends_at_most_once_per_interval_and_the_latest_value() -> None:
    sent: list[tuple[float, int]] = []
    lock = threading.Lock()

    def send(v: int) -> None:
        with lock:
            sent.append((time.monotonic(), v))

    pub = ThrottledPublisher(send, interval=0.3)
    start = time.monotonic()
    for i in range(40):  # 40 layers finishing within ~1 s
        pub.offer(i)
        time.sleep(0.025)
    pub.offer(99)
    pub.close()
    elapsed = time.monotonic() - start
    values = [v for _, v in sent]
    assert values[-1] == 99, values  # the last state always goes out
    assert len(sent) <= elapsed / 0.3 + 2, (len(sent), elapsed)
    gaps = [b[0] - a[0] for a, b in zip(sent, sent[1:-1])]
    assert all(g >= 0.29 for g in gaps), gaps


def test_throttled_publisher_survives_send_failures() -> None:
    calls = []

    def send(v):
        calls.append(v)
        raise RuntimeError("apiserver down")

    pub = ThrottledPublisher(send, interval=0.0)
    pub.offer(1)
    pub.offer(2, force=True)
    pub.close()
    assert calls and calls[-1] == 2 and pub.sent == 0


def test_job_identity() -> None:
    assert job_identity({}) is None
    assert job_identity({"JOB_NAME": "qm-quantize-1", "JOB_NAMESPACE": "ns"}) == ("qm-quantize-1", "ns")
    assert job_identity({"JOB_NAME": "j"}) == ("j", "default")


def test_unreachable_api_server_never_stops_the_run(tmp_path, monkeypatch) -> None:
    """A real Kubernetes client against a closed port: every patch fails, the run goes on."""
    import socket

    from dedicated.quantize_job.progress import AnnotationReporter, JobAnnotator

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    annotator = JobAnnotator("qm-quantize-1", "ns")
    reporter = AnnotationReporter(annotator, interval=0.0)
    p = Progress(reporters=[reporter])
    start = time.monotonic()
    p.start_stage("quantize")
    for i in range(5):
        p.layer_done(i, 5)
    p.finish()
    assert reporter.patches_sent == 0
    assert annotator.patch_with_retry({"a": "b"}, attempts=2, delay=0.01) is False
    assert time.monotonic() - start < 60
