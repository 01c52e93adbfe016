"""The AutoRound block-resume state (``autoround_resume``) without tuning anything: auto-round's real
``ResumeState`` base class, driven the way its block loop drives it, with a stand-in shard writer.

The end-to-end check (the real Job killed mid-way, rerun, byte-identical output) is
``test_job_resume.py::test_killed_autoround_run_resumes_per_block_and_publishes_identical_bytes``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dedicated.quantize_job.autoround_resume import (
    MANIFEST,
    ResumeStateInvalid,
    block_resume,
    normalize_index,
    prepare,
    rng_state,
    set_rng_state,
)

BLOCKS = ["layers.0", "layers.1", "layers.2", "layers.3"]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in BLOCKS)


@pytest.fixture
def writer(monkeypatch):
    """Stands in for auto-round's ShardWriter singleton: the shards it has flushed so far."""
    pytest.importorskip("auto_round")
    from auto_round.compressors.shard_writer import ShardWriter

    fake = SimpleNamespace(shard_meta=[], output_dir=None)
    monkeypatch.setattr(ShardWriter, "get_shard_writer", lambda *a, **k: fake)
    return fake


def _flush(writer, export: Path, block: int) -> Path:
    """What the library does before ``mark_block_done``: the block's packed tensors to the next shard."""
    export.mkdir(parents=True, exist_ok=True)
    name = f"model-shard-{len(writer.shard_meta) + 1:05d}.safetensors"
    save_file({f"{BLOCKS[block]}.qweight": torch.full((2, 4), block, dtype=torch.int32)}, str(export / name))
    writer.shard_meta.append({"tmp_file": name, "params": [f"{BLOCKS[block]}.qweight"], "dir": str(export) + "/"})
    return export / name


def _commit_blocks(tmp_path: Path, writer, n: int, key: str = "key-1"):
    """A first process that finished ``n`` blocks and then died inside block ``n``."""
    import auto_round.utils.resume as library

    out, resume = tmp_path / "out", tmp_path / "resume"
    export = out / "tiny-w4g128"
    chains = []
    with block_resume(resume, out, Tiny(), key) as restored:
        assert restored == 0
        state = library.ResumeState(str(resume / "group_0"), "signature", BLOCKS)
        torch.manual_seed(7), random.seed(7), np.random.seed(7)
        for i in range(n):
            _flush(writer, export, i)
            chain = ([torch.randn(2, 3, 4)], [torch.randn(2, 3, 4)])
            state.mark_block_done(BLOCKS[i], *chain)
            chains.append(chain)
        draws = (random.random(), float(np.random.rand()), torch.rand(3))  # what block n starts with
        # Killed in block n: its shard half-written, its chain file not yet renamed, and an old
        # output file of an earlier, interrupted final save.
        (export / f"model-shard-{n + 1:05d}.safetensors").write_bytes(b"\x10\x00\x00")
        (resume / "group_0" / f".chain-{n + 1:05d}.pt.tmp").write_bytes(b"partial")
        (export / "config.json").write_text("{}")
    return out, resume, export, chains[-1], draws


def test_committed_blocks_come_back_with_their_chain_rng_and_meta_weights(tmp_path: Path, writer) -> None:
    import auto_round.utils.resume as library

    original = library.ResumeState
    out, resume, export, (q_input, input_ids), draws = _commit_blocks(tmp_path, writer, 2)
    assert library.ResumeState is original and "AR_RESUME_DIR" not in os.environ
    manifest = json.loads((resume / "group_0" / MANIFEST).read_text())
    assert manifest["completedBlocks"] == BLOCKS[:2]
    assert [s["path"] for s in manifest["shards"]] == [f"tiny-w4g128/model-shard-0000{i}.safetensors" for i in (1, 2)]
    assert sorted(p.name for p in (resume / "group_0").iterdir()) == \
        [".chain-00003.pt.tmp", MANIFEST, "chain-00002.pt"]  # block 1's chain replaced block 0's

    # A new process: other RNG states, the whole BF16 model loaded again.
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    model = Tiny()
    writer.shard_meta.clear()
    with block_resume(resume, out, model, "key-1") as restored:
        assert restored == 2
        # Only committed files are left for the library to adopt.
        assert sorted(p.name for p in export.iterdir()) == ["model-shard-00001.safetensors", "model-shard-00002.safetensors"]
        assert sorted(p.name for p in (resume / "group_0").iterdir()) == [MANIFEST, "chain-00002.pt"]
        assert os.environ["AR_RESUME_DIR"] == os.path.abspath(resume)
        state = library.ResumeState(str(resume / "group_0"), "signature", BLOCKS)
        assert state.resume_index == 2
        q, ids = state.load_q_input(), state.load_input_ids()
        assert torch.equal(q[0], q_input[0]) and torch.equal(ids[0], input_ids[0])
        again = (random.random(), float(np.random.rand()), torch.rand(3))
        assert again[:2] == draws[:2] and torch.equal(again[2], draws[2])
        assert [layer.weight.is_meta for layer in model.layers] == [True, True, False, False]

        # The resumed process goes on committing after the adopted shards.
        writer.shard_meta[:] = [{"tmp_file": f"model-shard-0000{i}.safetensors", "dir": str(export)} for i in (1, 2)]
        _flush(writer, export, 2)
        state.mark_block_done(BLOCKS[2], None, [torch.zeros(1)])
        manifest = json.loads((resume / "group_0" / MANIFEST).read_text())
        assert manifest["completedBlocks"] == BLOCKS[:3] and len(manifest["shards"]) == 3
        assert sorted(p.name for p in (resume / "group_0").iterdir()) == [MANIFEST, "chain-00003.pt"]
        state.clear()
        assert not any((resume / "group_0").iterdir())


@pytest.mark.parametrize("damage", ["shard changed", "shard missing", "chain changed", "other key", "manifest torn"])
def test_a_damaged_or_foreign_state_starts_over(tmp_path: Path, writer, damage: str) -> None:
    out, resume, export, _, _ = _commit_blocks(tmp_path, writer, 2)
    key = "key-1"
    if damage == "shard changed":
        path = export / "model-shard-00001.safetensors"
        path.write_bytes(path.read_bytes()[:-1] + b"\x01")
    elif damage == "shard missing":
        (export / "model-shard-00002.safetensors").unlink()
    elif damage == "chain changed":
        (resume / "group_0" / "chain-00002.pt").write_bytes(b"not the chain")
    elif damage == "other key":
        key = "key-2"
    else:
        (resume / "group_0" / MANIFEST).write_text('{"format": ')
    assert prepare(resume, out, key) == 0
    assert list(out.iterdir()) == [] and list(resume.iterdir()) == []


def test_shards_renamed_by_an_interrupted_final_save_are_taken_back(tmp_path: Path, writer) -> None:
    out, resume, export, _, _ = _commit_blocks(tmp_path, writer, 2)
    # auto-round's finalize renames model-shard-NNNNN to the published names, then writes the rest.
    (export / "model-shard-00001.safetensors").rename(export / "model-00001-of-00004.safetensors")
    (export / "model-shard-00002.safetensors").rename(export / "model-00002-of-00004.safetensors")
    (export / "model-shard-00003.safetensors").rename(export / "model-00003-of-00004.safetensors")
    (export / "model.safetensors.index.json").write_text("{}")
    assert prepare(resume, out, "key-1") == 2
    assert sorted(p.name for p in export.iterdir()) == ["model-shard-00001.safetensors", "model-shard-00002.safetensors"]


def test_the_last_block_is_never_committed(tmp_path: Path, writer) -> None:
    """auto-round cannot enter a group whose blocks are all done (it indexes block_names[done])."""
    out, resume, export, _, _ = _commit_blocks(tmp_path, writer, len(BLOCKS))
    data = json.loads((resume / "group_0" / MANIFEST).read_text())
    assert data["completedBlocks"] == BLOCKS[:-1] and len(data["shards"]) == len(BLOCKS) - 1
    assert prepare(resume, out, "key-1") == len(BLOCKS) - 1
    assert not (export / f"model-shard-{len(BLOCKS):05d}.safetensors").exists()  # re-tuned and flushed again


def test_no_commit_without_flushed_shards(tmp_path: Path, writer) -> None:
    """Without immediate saving the finished blocks exist only in memory: nothing to resume from."""
    import auto_round.utils.resume as library

    out, resume = tmp_path / "out", tmp_path / "resume"
    with block_resume(resume, out, Tiny(), "k"):
        state = library.ResumeState(str(resume / "group_0"), "signature", BLOCKS)
        state.mark_block_done(BLOCKS[0], None, [torch.zeros(1)])
        state.mark_block_done(BLOCKS[1], None, [torch.zeros(1)])  # the order check still holds
        with pytest.raises(ResumeStateInvalid, match="expected 'layers.2'"):
            state.mark_block_done(BLOCKS[3], None, [torch.zeros(1)])
    assert not (resume / "group_0" / MANIFEST).exists()
    assert prepare(resume, out, "k") == 0


def test_the_library_signature_must_match(tmp_path: Path, writer) -> None:
    import auto_round.utils.resume as library

    out, resume, _, _, _ = _commit_blocks(tmp_path, writer, 1)
    with block_resume(resume, out, Tiny(), "key-1") as restored:
        assert restored == 1
        with pytest.raises(ResumeStateInvalid, match="signature"):
            library.ResumeState(str(resume / "group_0"), "another signature", BLOCKS)


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.randn(3).tolist(), torch.randn(3))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.randn(3).tolist(), torch.randn(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_normalize_index_depends_only_on_the_shards(tmp_path: Path) -> None:
    save_file({"b.qweight": torch.zeros(2, 4, dtype=torch.int32), "a.scales": torch.zeros(3, dtype=torch.bfloat16)},
              str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"c.weight": torch.zeros(5, dtype=torch.float32)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": {
        "c.weight": "model-00002-of-00002.safetensors", "b.qweight": "model-00001-of-00002.safetensors",
        "a.scales": "model-00001-of-00002.safetensors"}}))
    normalize_index(tmp_path)
    data = json.loads(index.read_text())
    assert data["metadata"] == {"format": "safetensors", "total_shards": 2, "total_parameters": 16,
                                "total_size": 32 + 6 + 20}
    assert list(data["weight_map"]) == ["a.scales", "b.qweight", "c.weight"]
    first = index.read_bytes()
    normalize_index(tmp_path)
    assert index.read_bytes() == first


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_a_state_auto_round_refuses_is_discarded_and_the_job_starts_over(tmp_path_factory, tmp_path: Path,
                                                                          monkeypatch) -> None:
    """If auto-round's own checks reject a state the Job accepted, the Job must not fail on every
    restart: it wipes the block state and quantizes all blocks again."""
    import dedicated.quantize_job.autoround_resume as resume_module
    from dedicated.quantize_job.config import parse_config
    from dedicated.quantize_job.pipeline import run_job
    from dedicated.quantize_job.tiny_checkpoint import cached_tiny_moe_checkpoint

    torch.set_num_threads(1)
    model = cached_tiny_moe_checkpoint(tmp_path_factory.getbasetemp(), layers=2, train_steps=40)
    out = tmp_path / "out"
    cfg = {"model": {"path": str(model)}, "method": "autoround", "bits": 4,
           "calibration": {"numSamples": 16, "sequenceLength": 64}, "validation": {"enabled": False},
           "output": {"dir": str(out), "volume": {}},
           "runtime": {"device": "cpu", "progressIntervalSeconds": 0,
                       "methodOptions": {"autoround.iters": 2, "autoround.batch_size": 4}}}

    real = resume_module._resume_state_class

    def dying_after_one_block(base, **kwargs):
        cls = real(base, **kwargs)

        class Dying(cls):
            def mark_block_done(self, *args):
                super().mark_block_done(*args)
                raise _Killed

        return Dying

    monkeypatch.setattr(resume_module, "_resume_state_class", dying_after_one_block)
    with pytest.raises(_Killed):
        run_job(parse_config(cfg))
    monkeypatch.setattr(resume_module, "_resume_state_class", real)
    manifest = out / ".quantize-state" / "autoround-resume" / "group_0" / MANIFEST
    data = json.loads(manifest.read_text())
    assert data["completedBlocks"] == ["model.layers.0"]
    manifest.write_text(json.dumps({**data, "signature": "from another auto-round"}))

    run_job(parse_config(cfg))
    layers = json.loads((out / "manifest.json").read_text())["layers"]
    assert (layers["computed"], layers["resumedFromLayer"]) == (2, None)
    assert json.loads((out / "progress.json").read_text())["resumedFromLayer"] is None
