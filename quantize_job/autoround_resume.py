"""Per-block resume of an auto-round run: auto-round's own resume hook, made exact and crash-safe.

auto-round 0.16.1 resumes per block when ``AR_RESUME_DIR`` is set: its block loop
(``compressors/orchestrator.py::_quantize_blocks``) flushes each finished block's packed tensors to a
shard of the output dir (``model-shard-NNNNN.safetensors``) and then calls
``ResumeState.mark_block_done(block, q_input, input_ids)`` with the two chained tensors the next
block starts from; a new process skips the blocks its ``ResumeState`` lists, adopts the shards it
finds (``ShardWriter._discover_existing_shards``) and enters the loop at the first missing block with
the saved tensors. As shipped that is neither exact nor safe after a kill, which is what this module
fixes by handing the library its own ``ResumeState`` (:func:`block_resume`):

* The blocks after the resume point got different codes: every block's tuning draws its batches
  from the global ``random`` (``IndexSampler``), seeded once at start, so a resumed process entered
  block *k* with another RNG state. The ``random``/``numpy``/``torch`` (and CUDA) RNG states are saved
  with every block and restored at the resume point.
* The restored blocks' BF16 ``.weight`` s landed in the checkpoint beside their ``qweight`` s: the new
  process loaded the whole BF16 model and the final shard pass saves every non-meta tensor not yet
  written. The restored blocks are moved to the meta device when resuming (the library does the same
  to every block it flushed itself).
* Nothing was atomic: the chain tensors were written over their live names before the manifest, so
  a kill in between paired block *k*'s manifest with block *k+1*'s tensors; a shard half-written, or
  written but not yet recorded, was adopted by the next run. Here the chain file (chain tensors + RNG
  states) and the manifest are written to temporary names, fsynced and renamed, the manifest last;
  every shard is fsynced and recorded with its size and SHA-256 when its block commits; before the
  library runs, :func:`prepare` verifies all of it and deletes everything else in the output dir
  (or, on any mismatch, the whole state: the run starts over).
* The manifest is keyed on the caller's key (the Job's config fingerprint, the runner's settings,
  the calibration tokens, package versions) besides auto-round's own signature.
* A group with every block done cannot be resumed by the library (it indexes
  ``block_names[resume_index]``), so the last block is not committed: a kill after it re-tunes it.
  Shards that an interrupted final save had renamed (``model-00001-of-00005.safetensors``) are found
  by checksum and renamed back.

Shard layout: with resume on, auto-round writes one shard per block plus one for the rest (embeddings,
norms, ``lm_head``), the same in an uninterrupted and a resumed run; ``model.safetensors.index.json`` is
rewritten from the shard headers (:func:`normalize_index`) because the library's totals and name order
depend on which process wrote which shard.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from dedicated.quantize_job.durable import fsync_path, replace_durably, sha256_file

log = logging.getLogger("dedicated.quantize_job")

STATE_FORMAT = "dedicated.autoround-resume/1"
MANIFEST = "blocks.json"
SHARD_PREFIX = "model-shard-"


class ResumeStateInvalid(RuntimeError):
    """The library disagreed with a state :func:`prepare` accepted (its signature or block order)."""


# --- files ----------------------------------------------------------------------------------------


def _write_json_durably(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    replace_durably(tmp, path)


def _clear_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


# --- RNG states -----------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every RNG a block's tuning may draw from, in a form ``torch.load(weights_only=True)`` reads."""
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# --- the state before the library runs ------------------------------------------------------------


def prepare(resume_dir: Path | str, output_dir: Path | str, key: str) -> int:
    """Check what an earlier run left; returns how many blocks it committed (0: start over).

    Accepted state: every group manifest has ``key``, its chain file and every shard it lists are
    there with the recorded SHA-256. Then everything else in ``output_dir`` (a shard written but not
    committed, a half-written one, files of an interrupted final save) is deleted. Anything wrong: both
    directories are emptied and the run starts from block 0.
    """
    resume_dir, output_dir = Path(resume_dir), Path(output_dir)
    manifests = sorted(resume_dir.glob(f"group_*/{MANIFEST}"))
    keep: set[Path] = set()
    blocks = 0
    problem = None
    for path in manifests:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            problem = f"{path} is unreadable ({exc})"
            break
        if data.get("format") != STATE_FORMAT or data.get("key") != key:
            problem = f"{path} belongs to another configuration"
            break
        chain = path.parent / data["chain"]["file"]
        if not chain.is_file() or sha256_file(chain) != data["chain"]["sha256"]:
            problem = f"{chain} is missing or does not match its checksum"
            break
        keep.add(chain)
        for shard in data["shards"]:
            file = output_dir / shard["path"]
            if not file.is_file():
                _rename_back(file, shard)
            if not file.is_file() or file.stat().st_size != shard["size"] or sha256_file(file) != shard["sha256"]:
                problem = f"the committed shard {file} is missing or changed"
                break
            keep.add(file)
        if problem:
            break
        blocks += len(data["completedBlocks"])
        keep.add(path)
    if problem or not blocks:
        if problem:
            log.warning("auto-round block state unusable (%s); quantizing all blocks again", problem)
        _clear_dir(resume_dir)
        _clear_dir(output_dir)
        return 0
    for root in (resume_dir, output_dir):
        for file in sorted(root.rglob("*")):
            if file.is_file() and file not in keep:
                file.unlink()
    return blocks


def _rename_back(file: Path, shard: dict[str, Any]) -> None:
    """A kill during auto-round's final save may have renamed committed shards to their published
    names (``model-00003-of-00007.safetensors``): the one with the recorded checksum gets its old name."""
    if not file.parent.is_dir():
        return
    for other in sorted(file.parent.glob("model*.safetensors")):
        if other.name.startswith(SHARD_PREFIX) or other.stat().st_size != shard["size"]:
            continue
        if sha256_file(other) == shard["sha256"]:
            os.replace(other, file)
            return


# --- the library's ResumeState, replaced ----------------------------------------------------------


def _resume_state_class(base: type, *, key: str, model: torch.nn.Module, output_dir: Path):
    """A ``ResumeState`` (auto_round.utils.resume) that commits blocks atomically with their RNG states."""

    class JobResumeState(base):  # type: ignore[misc, valid-type]
        def __init__(self, resume_dir: str, signature: str, block_names: list[str]) -> None:
            self._manifest: dict[str, Any] | None = None
            self._chain: dict[str, Any] | None = None
            self._warned = False
            super().__init__(resume_dir, signature, block_names)  # calls _load()

        # -- reading (a new process, resuming) --------------------------------------------------

        def _load(self) -> None:
            path = self.dir / MANIFEST
            if not path.is_file():
                return
            data = json.loads(path.read_text())  # prepare() checked it
            done = list(data["completedBlocks"])
            if data.get("signature") != self.signature:
                raise ResumeStateInvalid(f"{path}: auto-round's run signature changed")
            if done != self.block_names[: len(done)]:
                raise ResumeStateInvalid(f"{path}: the committed blocks are not a prefix of {self.block_names[:3]}...")
            self._manifest, self.completed_blocks = data, done
            log.info("auto-round: %d of %d blocks restored from %s", len(done), len(self.block_names), self.dir)

        def _chain_file(self) -> dict[str, Any]:
            if self._chain is None:
                assert self._manifest is not None
                self._chain = torch.load(self.dir / self._manifest["chain"]["file"], map_location="cpu",
                                         weights_only=True)
            return self._chain

        def load_q_input(self):
            return self._chain_file()["q_input"] if self.completed_blocks else None

        def load_input_ids(self):
            """The library's last call before it enters the loop at the first missing block."""
            if not self.completed_blocks:
                return None
            chain = self._chain_file()
            # The restored blocks hold the BF16 weights this process loaded; their packed tensors are in
            # the adopted shards. On meta, the final shard pass skips them (as it skips every block the
            # library flushed itself).
            for name in self.completed_blocks:
                model.get_submodule(name).to("meta")
            set_rng_state(chain["rng"])
            input_ids = chain["input_ids"]
            self._chain = None
            return input_ids

        # -- writing (after every block) -----------------------------------------------------------

        def mark_block_done(self, block_name: str, q_input, input_ids) -> None:
            expected = self.block_names[len(self.completed_blocks)]
            if block_name != expected:
                raise ResumeStateInvalid(f"auto-round finished {block_name!r}, expected {expected!r}")
            rng = rng_state()  # first: the next block must start from exactly this state
            self.completed_blocks.append(block_name)
            if len(self.completed_blocks) == len(self.block_names):
                # Not committed: auto-round 0.16.1 cannot resume a group with every block done (it
                # indexes ``block_names[resume_index]``). A kill from here to the end of the save
                # re-tunes this one block; its shard is then deleted by prepare() or, if another
                # group committed it meanwhile, kept and the re-tuned copy skipped as already saved.
                return
            shards = self._committed_shards()
            if shards is None:
                return
            chain_name = f"chain-{len(self.completed_blocks):05d}.pt"
            chain_path = self.dir / chain_name
            tmp = self.dir / f".{chain_name}.tmp"
            torch.save({"q_input": _to_cpu(q_input), "input_ids": _to_cpu(input_ids), "rng": rng}, tmp)
            replace_durably(tmp, chain_path)
            previous = self._manifest["chain"]["file"] if self._manifest else None
            self._manifest = {"format": STATE_FORMAT, "key": key, "signature": self.signature,
                              "completedBlocks": list(self.completed_blocks), "shards": shards,
                              "chain": {"file": chain_name, "sha256": sha256_file(chain_path)}}
            _write_json_durably(self.dir / MANIFEST, self._manifest)
            if previous and previous != chain_name:
                (self.dir / previous).unlink(missing_ok=True)

        def _committed_shards(self) -> list[dict[str, Any]] | None:
            """Every shard the library has flushed so far, fsynced, with size and checksum."""
            from auto_round.compressors.shard_writer import ShardWriter

            writer = ShardWriter.get_shard_writer()
            meta = list(getattr(writer, "shard_meta", None) or [])
            if not meta:
                if not self._warned:
                    log.warning("auto-round keeps finished blocks in memory only (no immediate saving): "
                                "this run cannot be resumed per block")
                    self._warned = True
                return None
            known = {s["path"]: s for s in (self._manifest or {}).get("shards", [])}
            out = []
            for m in meta:
                file = Path(os.path.abspath(Path(m.get("dir") or writer.output_dir) / m["tmp_file"]))
                rel = os.path.relpath(file, output_dir)
                if rel.startswith(".."):
                    if not self._warned:
                        log.warning("auto-round flushed %s outside %s: this run cannot be resumed per block",
                                    file, output_dir)
                        self._warned = True
                    return None
                if rel not in known:
                    fsync_path(file)
                    known[rel] = {"path": rel, "size": file.stat().st_size, "sha256": sha256_file(file)}
                out.append(known[rel])
            fsync_path(file.parent)
            return out

        def clear(self) -> None:
            for file in self.dir.iterdir():
                if file.is_file():
                    file.unlink()

    return JobResumeState


@contextmanager
def block_resume(resume_dir: Path | str, output_dir: Path | str, model: torch.nn.Module, key: str) -> Iterator[int]:
    """Run auto-round inside this to resume per block; yields the number of blocks restored.

    Sets ``AR_RESUME_DIR`` and swaps ``auto_round.utils.resume.ResumeState`` (looked up by the library
    when its block loop starts) for the duration.
    """
    import auto_round.utils.resume as resume_module

    resume_dir, output_dir = Path(os.path.abspath(resume_dir)), Path(os.path.abspath(output_dir))
    restored = prepare(resume_dir, output_dir, key)
    original = resume_module.ResumeState
    previous_env = os.environ.get("AR_RESUME_DIR")
    resume_module.ResumeState = _resume_state_class(original, key=key, model=model, output_dir=output_dir)
    os.environ["AR_RESUME_DIR"] = str(resume_dir)
    try:
        yield restored
    except BaseException:
        # auto-round's ShardWriter is a process-wide singleton that only resets itself when a save
        # finishes; a retry in this process must not inherit this run's model and shard list.
        from auto_round.compressors.shard_writer import ShardWriter

        ShardWriter.reset()
        raise
    finally:
        resume_module.ResumeState = original
        if previous_env is None:
            os.environ.pop("AR_RESUME_DIR", None)
        else:
            os.environ["AR_RESUME_DIR"] = previous_env


def normalize_index(saved_dir: Path | str) -> None:
    """Rewrite ``model.safetensors.index.json`` from the shard headers, names sorted, so it does not
    depend on which process wrote which shard. No index (one shard): nothing to do."""
    import math

    from dedicated.quantize_job.humming.safetensors_stream import read_header

    saved_dir = Path(saved_dir)
    index = saved_dir / "model.safetensors.index.json"
    if not index.is_file():
        return
    weight_map: dict[str, str] = {}
    size = params = 0
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    for shard in shards:
        for name, info in read_header(saved_dir / shard).tensors.items():
            params += math.prod(info.shape)
            size += info.end - info.begin
            weight_map[name] = shard
    data = {"metadata": {"format": "safetensors", "total_shards": len(shards), "total_parameters": params,
                         "total_size": size},
            "weight_map": dict(sorted(weight_map.items()))}
    tmp = index.with_name(f".{index.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, index)
