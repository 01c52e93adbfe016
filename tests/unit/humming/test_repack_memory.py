"""The repack streams: its peak memory does not grow with the checkpoint's size."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import checkpoints as ck  # noqa: E402

MIB = 1 << 20


def _build(path: Path, shards: int, mib_per_shard: int) -> int:
    """A checkpoint of ``shards`` shards of large BF16 tensors plus quantized experts."""
    from safetensors.torch import save_file

    from dedicated.quantize_job import compressed_tensors_io as ct

    path.mkdir()
    weight_map = {}
    total = 0
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {f"model.layers.{i}.self_attn.o_proj.weight":
                   torch.full((mib_per_shard * MIB // 2 // 1024, 1024), float(i), dtype=torch.bfloat16)}
        for e in range(4):
            tensors.update(ct.module_tensors(ck.random_weight(512, 512, 2, 128, seed=e),
                                             f"model.layers.{i}.mlp.experts.{e}.down_proj"))
        save_file(tensors, str(path / name))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update({n: name for n in tensors})
        del tensors
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps({"quantization_config":
                                                  ct.quantization_config(2, 128)}))
    return total


def _peak_rss_mib(src: Path, dst: Path) -> tuple[float, float]:
    """(peak RSS after imports, peak RSS after the repack) of a fresh interpreter, in MiB."""
    code = textwrap.dedent(f"""
        import resource, sys
        from dedicated.quantize_job.humming import repack_checkpoint
        import torch, safetensors.torch  # everything the repack touches, loaded before measuring
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        repack_checkpoint({str(src)!r}, {str(dst)!r}, default_ignore=())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(base / 1024, peak / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=600)
    base, peak = (float(x) for x in out.stdout.split())
    return base, peak


@pytest.mark.slow
def test_peak_memory_is_bounded_by_one_tensor_not_the_checkpoint(tmp_path: Path) -> None:
    total = _build(tmp_path / "src", shards=6, mib_per_shard=32)
    assert total > 190 * MIB
    base, peak = _peak_rss_mib(tmp_path / "src", tmp_path / "dst")
    growth = peak - base
    # The largest tensor is 32 MiB; the copy streams it in 16 MiB chunks. Holding a shard (32 MiB
    # plus experts) or the checkpoint (>190 MiB) would show; allow interpreter noise on top.
    assert growth < 48, f"peak RSS grew by {growth:.0f} MiB for a {total / MIB:.0f} MiB checkpoint"
    assert len(list((tmp_path / "dst").glob("*.safetensors"))) == 6
