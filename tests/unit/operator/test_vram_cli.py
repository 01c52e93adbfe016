"""`dedicated vram profile|plan`: the planner from the command line."""

from __future__ import annotations

import argparse
import json

from dedicated.operator.vram import cli as vram_cli



def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dedicated")
    vram_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_profile_and_plan(checkpoints, tmp_path, capsys) -> None:
    pools_file = tmp_path / "pools.yaml"
    pools_file.write_text("""
pools:
  - {name: ampere-a10, gpuFamily: ampere, gpuProduct: NVIDIA-A10, gpuMemoryMiB: 23028, gpusPerNode: 4,
     computeCapability: "8.6", costPerGpuHour: 0.75, nodeSelector: {pool: a10}}
""")
    assert _main(["vram", "profile", str(checkpoints["llama8b"])]) == 0
    out = json.loads(capsys.readouterr().out)
    assert abs(out["gib"]["total"] - 14.958) < 0.01 and out["modelType"] == "llama"
    assert out["layers"] == {"full_attention": 32} and out["quantization"]["method"] == "bf16"
    assert _main(["vram", "profile", str(checkpoints["humming"])]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["layers"] == {"full_attention": 10, "linear_attention": 30}
    assert out["quantization"] == {"method": "humming", "bits": 2, "groupSize": 128, "minComputeCapability": "8.0"}
    assert _main(["vram", "plan", str(checkpoints["llama8b"]), "--pools", str(pools_file), "--context-length", "8192"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["plan"]["pool"] == "ampere-a10" and "--max-model-len" in result["vllmArgs"]
    assert _main(["vram", "plan", str(checkpoints["llama8b"]), "--pools", str(pools_file),
                  "--gpus-per-replica", "1", "--context-length", "131072"]) == 2
    assert json.loads(capsys.readouterr().out)["reason"] == "InsufficientGPUMemory"
    assert _main(["vram", "plan", str(checkpoints["llama8b"]), "--pools", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err
