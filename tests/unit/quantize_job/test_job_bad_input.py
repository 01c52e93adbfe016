"""Bad input: each case exits 2 (the Job is not retried) with one specific ``<Reason>: <message>``
line in the termination log, and no traceback. Runs the real CLI entry in-process.

The Hugging Face Hub cannot be reached from here: the "repo needs a token" case uses a local HTTP
server that answers like the Hub does for a gated/private repo (401), and the "unreachable" case a
closed local port; the real huggingface_hub client talks to both.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import threading
from pathlib import Path

import pytest
import torch

from dedicated.quantize_job.cli import main
from dedicated.quantize_job.tiny_checkpoint import cached_tiny_moe_checkpoint


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return cached_tiny_moe_checkpoint(tmp_path_factory.getbasetemp(), layers=2, train_steps=40)


def run_cli(tmp_path: Path, monkeypatch, config: dict, capsys=None) -> tuple[int, str]:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    term = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_LOG", str(term))
    monkeypatch.delenv("JOB_NAME", raising=False)
    rc = main(["run", "--config", str(cfg)])
    line = term.read_text() if term.exists() else ""
    if capsys is not None:
        err = capsys.readouterr().err
        assert "Traceback" not in err
    assert line.count("\n") <= 1
    return rc, line.strip()


def _cfg(model: dict, out: Path, **over) -> dict:
    cfg = {"model": model, "method": "gsq", "bits": 2,
           "calibration": {"numSamples": 8, "sequenceLength": 64},
           "output": {"dir": str(out), "volume": {}},
           "runtime": {"device": "cpu", "fetchAttempts": 1, "progressIntervalSeconds": 0}}
    cfg.update(over)
    return cfg


def test_unknown_method(tmp_path, monkeypatch, capsys) -> None:
    rc, line = run_cli(tmp_path, monkeypatch, _cfg({"path": "/m"}, tmp_path / "o", method="awq"), capsys)
    assert rc == 2
    assert line == "JobFailed: invalid job config: method: unknown method 'awq'; expected one of gsq, autoround"


def test_bits_the_method_does_not_support(tmp_path, monkeypatch, capsys) -> None:
    rc, line = run_cli(tmp_path, monkeypatch, _cfg({"path": "/m"}, tmp_path / "o", bits=4), capsys)
    assert rc == 2 and line == "JobFailed: invalid job config: bits: method gsq supports 2 bits, not 4"


def test_group_size_that_does_not_divide_an_input_dimension(tiny_moe, tmp_path, monkeypatch, capsys) -> None:
    rc, line = run_cli(tmp_path, monkeypatch, _cfg({"path": str(tiny_moe)}, tmp_path / "o", groupSize=256), capsys)
    assert rc == 2
    assert line.startswith("InvalidGroupSize: group size 256 does not divide the input dimension of 24 selected module(s): ")
    assert "model.layers.0.mlp.experts.0.down_proj has input dimension 128 (weight [128, 128])" in line


def test_dense_model_when_experts_are_asked_for(tmp_path, monkeypatch, capsys) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dense = tmp_path / "dense"
    Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(dense)
    rc, line = run_cli(tmp_path, monkeypatch, _cfg({"path": str(dense)}, tmp_path / "o"), capsys)
    assert rc == 2
    assert line.startswith("NoExperts: the model has no MoE experts (no Linear named '…mlp.experts.<i>.<proj>' "
                           "among its 8 Linear weights)")


def test_nan_in_the_base_weights(tiny_moe, tmp_path, monkeypatch, capsys) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_moe, broken)
    index = json.loads((broken / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.layers.1.mlp.experts.3.up_proj.weight"
    shard = broken / index[name]
    tensors = load_file(str(shard))
    tensors[name][5, 7] = float("nan")
    save_file(tensors, str(shard), metadata={"format": "pt"})
    rc, line = run_cli(tmp_path, monkeypatch, _cfg({"path": str(broken)}, tmp_path / "o"), capsys)
    assert rc == 2
    assert line == (f"JobFailed: base model tensor {name} (in {shard.name}) has 1 NaN/Inf value(s), first at "
                    "(5, 7); refusing to quantize a broken checkpoint")


def test_model_path_that_does_not_exist(tmp_path, monkeypatch, capsys) -> None:
    rc, line = run_cli(tmp_path, monkeypatch, _cfg({"path": str(tmp_path / "nope")}, tmp_path / "o"), capsys)
    assert rc == 2 and line.startswith(f"ModelUnreachable: base model {tmp_path / 'nope'} does not exist")


def test_missing_token_secret(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    model = {"hub": {"repo": "org/private-model", "tokenEnv": "HF_TOKEN"}}
    rc, line = run_cli(tmp_path, monkeypatch, _cfg(model, tmp_path / "o"), capsys)
    assert rc == 2
    assert line.startswith("SecretNotFound: hf://org/private-model needs a Hub token, but the environment "
                           "variable HF_TOKEN is empty")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub(tmp_path, monkeypatch, capsys) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    rc, line = run_cli(tmp_path, monkeypatch, _cfg({"hub": {"repo": "org/model"}}, tmp_path / "o"), capsys)
    assert rc == 2
    assert line.startswith("ModelUnreachable: hf://org/model: the Hub is unreachable:")


class _GatedHub(http.server.BaseHTTPRequestHandler):
    """Answers every request the way the Hub answers anonymous requests for a private repo."""

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"error": "Invalid username or password."}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("X-Error-Message", "Invalid username or password.")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args) -> None:
        pass


def test_repo_that_needs_a_token(tmp_path, monkeypatch, capsys) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GatedHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        rc, line = run_cli(tmp_path, monkeypatch, _cfg({"hub": {"repo": "org/gated"}}, tmp_path / "o"), capsys)
    finally:
        server.shutdown()
        server.server_close()
    assert rc == 2
    assert line == ("ModelUnreachable: hf://org/gated: the Hub refused anonymous access (the repo is private, "
                    "gated, or does not exist); set spec.base.hub.tokenSecretRef to a Secret holding a read token")


def test_missing_calibration_file(tiny_moe, tmp_path, monkeypatch, capsys) -> None:
    cfg = _cfg({"path": str(tiny_moe)}, tmp_path / "o",
               calibration={"file": str(tmp_path / "calib.jsonl"), "numSamples": 8, "sequenceLength": 64})
    rc, line = run_cli(tmp_path, monkeypatch, cfg, capsys)
    assert rc == 2 and line == f"JobFailed: calibration file {tmp_path / 'calib.jsonl'} does not exist (is the volume mounted?)"


def test_unknown_method_option(tiny_moe, tmp_path, monkeypatch, capsys) -> None:
    cfg = _cfg({"path": str(tiny_moe)}, tmp_path / "o")
    cfg["runtime"]["methodOptions"] = {"gsq.stepz": 3}
    rc, line = run_cli(tmp_path, monkeypatch, cfg, capsys)
    assert rc == 2 and line.startswith("JobFailed: runtime.methodOptions: unknown option 'gsq.stepz'; known: ")
