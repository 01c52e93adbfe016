"""The quality benchmark's --smoke path end to end on the CPU (train, every method, the table)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_quality_smoke(tmp_path):
    bench = _load("bench_quality")
    rc = bench.main(["--smoke", "--device", "cpu", "--out-json", str(tmp_path / "q.json"), "--out-md", str(tmp_path / "q.md")])
    data = json.loads((tmp_path / "q.json").read_text())
    assert rc == 0, [r.get("error") for r in data["rows"]]
    methods = [(r["method"], r["bits"]) for r in data["rows"]]
    assert ("bf16", None) in methods and ("gsq", 2) in methods and ("autoround", 4) in methods
    assert all(math.isfinite(r["ppl"]) for r in data["rows"])
    assert data["meta"]["corpus"]["heldout_files"] > 0
    table = (tmp_path / "q.md").read_text()
    assert table.startswith("| method | bits | held-out ppl") and "GSQ" in table


def test_method_specs_parse_overrides():
    bench = _load("bench_quality")
    from dedicated.quantize_job.gptq import GPTQConfig
    from dedicated.quantize_job.gsq import GSQConfig
    from dedicated.quantize_job.layerwise import CalibrationConfig

    s = bench.parse_spec("gsq:2@gsq.learn_scales=false,gsq.tau=1.0:0.1,cal.fallback=identity,calib=4,label=x",
                         GPTQConfig(), GSQConfig(), CalibrationConfig())
    assert (s.method, s.bits, s.gsq.learn_scales, s.gsq.tau, s.cal.fallback, s.calib_samples, s.label) == (
        "gsq", 2, False, (1.0, 0.1), "identity", 4, "x")
    with pytest.raises(ValueError, match="unknown override"):
        bench.parse_spec("gptq:2@gsq.nope=1", GPTQConfig(), GSQConfig(), CalibrationConfig())


@pytest.mark.slow
def test_throughput_smoke(tmp_path):
    bench = _load("bench_quant_throughput")
    assert bench.main(["--smoke", "--device", "cpu", "--out-json", str(tmp_path / "t.json")]) == 0
    data = json.loads((tmp_path / "t.json").read_text())
    assert [r["method"] for r in data["results"]] == ["gptq", "gsq"]
    assert all(r["layer_seconds"] > 0 and r["projected_model_hours"] > 0 for r in data["results"])
