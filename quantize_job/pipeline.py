"""The quantize Job, stage by stage: fetch -> calibrate -> quantize -> export -> validate -> publish.

Every stage leaves what a restarted pod needs in the state dir (``<output dir>/.quantize-state``),
keyed by the config's fingerprint (model revision, method, bits, group size, module selection,
calibration, quantizer options), so a rerun of the same generation picks up where the last one
stopped and a changed spec never reuses stale layers::

    .quantize-state/
      job.json               fingerprint, model revision, when the state was started
      base/                  the Hub download (Hub sources only; resumed file by file)
      text.safetensors       the exact calibration and held-out token windows
      original.json          the base model's held-out perplexity
      layers/                the layer-by-layer engine's commits (state.json, layer_NNNN.safetensors,
                             inputs.safetensors): a rerun resumes after the last committed layer
      autoround-resume/      AutoRound's block commits (autoround_resume); its shards are in
      autoround-out/         auto-round's checkpoint; autoround.json marks it finished
      compressed-tensors/    GSQ's pack-quantized intermediate (kept only with keepIntermediate)
      validate-bf16/         the dequantized copy the load test reads (removed after validation)

Memory: the base model is loaded on the CPU (BF16, ``low_cpu_mem_usage``); the engine moves one
decoder layer at a time to the GPU. Validation loads one model at a time with
``device_map="auto"``. So GPU memory is bounded by one layer plus its calibration activations,
and CPU memory by one copy of the model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from dedicated.quantize_job import publish as publishing
from dedicated.quantize_job.calibration_data import TextData, build_text_data
from dedicated.quantize_job.config import JobConfig
from dedicated.quantize_job.errors import (
    CalibrationDataError,
    InvalidConfig,
    InvalidWeights,
    NoExperts,
    QuantizeJobError,
    StageFailed,
)
from dedicated.quantize_job.fetch import FetchedModel, fetch_model, resolve_revision
from dedicated.quantize_job.manifest import build_manifest, read_manifest, write_manifest
from dedicated.quantize_job.preflight import ModelLayout, check_finite, read_layout, selected_modules
from dedicated.quantize_job.progress import (
    RESULT_ANNOTATION,
    JobAnnotator,
    Progress,
    build_reporters,
    job_identity,
    write_json_atomic,
)

log = logging.getLogger("dedicated.quantize_job")

STATE_FORMAT = "dedicated.quantize-job-state/1"


# --- the state dir ------------------------------------------------------------------------------


class JobState:
    """The resume state of one config fingerprint."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def layers(self) -> Path:
        return self.root / "layers"

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def compressed_tensors(self) -> Path:
        return self.root / "compressed-tensors"

    @property
    def validate_dir(self) -> Path:
        return self.root / "validate-bf16"

    def claim(self, fingerprint: str, revision: str) -> bool:
        """Use the state for ``fingerprint``; a state of another config is wiped. True if resuming."""
        job_file = self.root / "job.json"
        if job_file.is_file():
            try:
                previous = json.loads(job_file.read_text())
            except (OSError, json.JSONDecodeError):
                previous = {}
            if previous.get("fingerprint") == fingerprint and previous.get("format") == STATE_FORMAT:
                return True
            log.warning("the state dir %s belongs to another config (fingerprint %s); starting over",
                        self.root, str(previous.get("fingerprint"))[:12])
            keep_base = previous.get("modelRevision") == revision
            for entry in self.root.iterdir():
                if entry.name == "base" and keep_base:
                    continue
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(job_file, {"format": STATE_FORMAT, "fingerprint": fingerprint, "modelRevision": revision,
                                     "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        return False

    def text(self, build: Callable[[], TextData]) -> TextData:
        """The token windows, built once and then read back, so every resume sees the same tokens."""
        from safetensors.torch import load_file, save_file

        path = self.root / "text.safetensors"
        if path.is_file():
            meta = json.loads((self.root / "text.json").read_text())
            t = load_file(str(path))
            return TextData(calibration=t["calibration"], heldout=t["heldout"], source=meta["source"],
                            digest=meta["digest"], stream_tokens=meta["streamTokens"], notes=tuple(meta["notes"]))
        data = build()
        tmp = path.with_name(".text.safetensors.tmp")
        save_file({"calibration": data.calibration.contiguous(), "heldout": data.heldout.contiguous()}, str(tmp))
        write_json_atomic(self.root / "text.json", {"source": data.source, "digest": data.digest,
                                                    "streamTokens": data.stream_tokens, "notes": list(data.notes)})
        tmp.replace(path)
        return data

    def cached(self, name: str, key: str, compute: Callable[[], Any]) -> Any:
        path = self.root / f"{name}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return saved["value"]
        value = compute()
        write_json_atomic(path, {"key": key, "value": value})
        return value

    def engine_completed(self) -> int:
        try:
            return int(json.loads((self.layers / "state.json").read_text())["completed"])
        except (OSError, KeyError, ValueError, json.JSONDecodeError):
            return 0


# --- helpers ------------------------------------------------------------------------------------


@contextmanager
def stage(progress: Progress, name: str, timings: dict[str, float], detail: str | None = None):
    progress.start_stage(name, detail)
    t0 = time.monotonic()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.monotonic() - t0


@dataclasses.dataclass(frozen=True)
class AutoRoundOptions:
    """Knobs of the auto-round run (``autoround.iters`` etc. in ``runtime.methodOptions``)."""

    iters: int = 200
    batch_size: int = 8
    seed: int = 42
    lr: float | None = None


def _engine_configs(options: dict[str, Any]):
    """``runtime.methodOptions`` (``"gsq.steps": 200``, ``"gptq.damp": 0.02``, ``"autoround.iters": 100``)."""
    from dedicated.quantize_job.gptq import GPTQConfig
    from dedicated.quantize_job.gsq import GSQConfig
    from dedicated.quantize_job.layerwise import CalibrationConfig as EngineCalibration

    classes = {"gptq": GPTQConfig, "gsq": GSQConfig, "calibration": EngineCalibration,
               "autoround": AutoRoundOptions}
    values: dict[str, dict[str, Any]] = {k: {} for k in classes}
    for key, value in sorted(options.items()):
        section, _, field = key.partition(".")
        cls = classes.get(section)
        fields = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
        if field not in fields or isinstance(value, (list, dict)):
            known = ", ".join(f"{s}.{f.name}" for s, c in classes.items() for f in dataclasses.fields(c))
            raise InvalidConfig(f"runtime.methodOptions: unknown option {key!r}; known: {known}")
        values[section][field] = value
    try:
        return (GPTQConfig(**values["gptq"]), GSQConfig(**values["gsq"]),
                EngineCalibration(**values["calibration"]), AutoRoundOptions(**values["autoround"]))
    except (TypeError, ValueError) as exc:
        raise InvalidConfig(f"runtime.methodOptions: {exc}") from None


def _engine_targets(modules: list[str]) -> tuple[str, ...]:
    """Exact fnmatch patterns for the engine: fused experts are selected through expert 0's name."""
    import re

    out = []
    for m in modules:
        found = re.match(r"^(.*\.experts)\.(\d+)\.([^.]+)$", m)
        if found and found.group(2) != "0":
            continue
        out.append(m)
    return tuple(out)


def load_base_model_cpu(path: Path, dtype: torch.dtype):
    """The base model on the CPU, weights memory-mapped while loading (one copy in RAM)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, low_cpu_mem_usage=True)
    model.eval()
    if getattr(model.config, "output_router_logits", False):
        model.config.output_router_logits = False
    return model


def peak_memory() -> dict[str, int | None]:
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    return {"peakRssBytes": int(rss_kib) * 1024, "peakGpuAllocatedBytes": gpu}


# --- the job ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    config: JobConfig
    progress: Progress
    annotator: JobAnnotator | None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def out_dir(self) -> Path:
        return Path(self.config.output.dir)


def _make_annotator() -> JobAnnotator | None:
    ident = job_identity()
    if ident is None:
        return None
    try:
        return JobAnnotator(*ident)
    except Exception as exc:  # no API access must not stop the quantization
        log.warning("cannot report progress on Job %s/%s (continuing without): %s", ident[1], ident[0], exc)
        return None


def run_job(config: JobConfig) -> dict[str, Any]:
    """Run the whole job; returns the result (the ``llm.dedicated.dev/result`` annotation's JSON)."""
    out_dir = Path(config.output.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    publishing.recover(out_dir, keep_state=True)
    annotator = _make_annotator()
    progress = Progress(reporters=build_reporters(out_dir, config.runtime.progress_interval_seconds, annotator))
    run = Run(config, progress, annotator)
    try:
        return _run(run)
    finally:
        progress.finish()


def _report_result(run: Run, result: dict[str, Any]) -> None:
    if run.annotator is not None:
        ok = run.annotator.patch_with_retry({RESULT_ANNOTATION: json.dumps(result, separators=(",", ":"))})
        if not ok:
            log.error("could not write the %s annotation; the result is in %s", RESULT_ANNOTATION,
                      result.get("manifestPath"))


def _run(run: Run) -> dict[str, Any]:
    cfg, progress, timings = run.config, run.progress, run.timings
    state = JobState(Path(cfg.output.state_dir))
    device = _device(cfg.runtime.device)
    dtype = torch.bfloat16 if cfg.runtime.dtype == "bfloat16" else torch.float32
    engine_configs = _engine_configs(cfg.runtime.method_options)  # a typo fails now, not after hours
    if cfg.method == "autoround" and (cfg.bits, cfg.group_size) != (AUTOROUND_BITS, AUTOROUND_GROUP):
        raise InvalidConfig(f"autoround: this Job produces W{AUTOROUND_BITS}A16 group {AUTOROUND_GROUP} "
                            f"(auto_round:auto_gptq) only, not {cfg.bits}-bit group {cfg.group_size}")

    # -- fetch ---------------------------------------------------------------------------------
    with stage(progress, "fetch", timings, cfg.model.describe()):
        revision = resolve_revision(cfg.model, attempts=cfg.runtime.fetch_attempts)
        fingerprint = cfg.fingerprint(revision)
        done = _already_published(run, fingerprint)
        if done is not None:
            log.info("this config was already published (%s); reporting the result again",
                     done["artifact"]["location"])
            _report_result(run, done)
            return done
        resuming = state.claim(fingerprint, revision)
        fetched = fetch_model(cfg.model, state.base, revision, attempts=cfg.runtime.fetch_attempts)
        layout = read_layout(fetched.path)
        modules = selected_modules(cfg, layout)
        log.info("%d Linear modules selected for %d-bit %s (group %d); %d kept in BF16%s", len(modules),
                 cfg.bits, cfg.method, cfg.group_size, len(layout.linear_modules) - len(modules),
                 " (resuming)" if resuming else "")
        if not resuming or not (state.root / "finite.ok").exists():
            check_finite(fetched.path, layout)
            (state.root / "finite.ok").write_text("ok\n")

    # -- calibrate -----------------------------------------------------------------------------
    with stage(progress, "calibrate", timings):
        tokenizer = _tokenizer(fetched.path)
        text = state.text(lambda: build_text_data(cfg.calibration, cfg.validation, tokenizer))
        log.info("calibration: %d x %d tokens from %s; held-out: %d x %d tokens", *text.calibration.shape,
                 text.source, text.heldout.shape[0], text.heldout.shape[1] if text.heldout.numel() else 0)
        ppl_original = None
        if cfg.validation.enabled:
            from dedicated.quantize_job.validate import measure

            ppl_original = state.cached("original", f"{revision}:{text.digest}",
                                        lambda: measure(fetched.path, text.heldout, device)[0])
            log.info("original held-out perplexity %.4f", ppl_original)

    # -- quantize ------------------------------------------------------------------------------
    with stage(progress, "quantize", timings):
        layers_info = _quantize(run, state, fetched, modules, text, device, dtype, engine_configs)

    # -- export --------------------------------------------------------------------------------
    with stage(progress, "export", timings):
        staging = publishing.staging_dir(run.out_dir)
        export_report = _export(run, state, fetched, layout, modules, staging)

    try:
        # -- validate --------------------------------------------------------------------------
        with stage(progress, "validate", timings):
            quality = _validate(run, state, staging, text, tokenizer, device, ppl_original)

        # -- publish ---------------------------------------------------------------------------
        with stage(progress, "publish", timings):
            manifest = build_manifest(
                staging,
                job={"name": cfg.name, "namespace": cfg.namespace, "generation": cfg.generation,
                     "configFingerprint": fingerprint},
                source={"model": fetched.source, "revision": revision},
                method=cfg.method, bits=cfg.bits, group_size=cfg.group_size, output_format=cfg.output_format,
                quantized_modules=modules, kept_modules=len(layout.linear_modules) - len(modules),
                calibration=text.summary(), quality=quality.to_manifest(), layers=layers_info, timings=timings)
            manifest["export"] = export_report
            manifest["resources"] = peak_memory()
            write_manifest(staging, manifest)
            published = publishing.publish(staging, cfg.output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    result = {"artifact": {"location": published.location, "format": cfg.output_format,
                           "totalBytes": manifest["totalBytes"], "revision": published.revision},
              "quality": quality.to_contract(), "manifestPath": str(published.path / "manifest.json")}
    manifest["result"] = result
    write_manifest(published.path, manifest)
    _cleanup(run, Path(cfg.output.state_dir))
    progress.complete()
    _report_result(run, result)
    return result


def _device(requested: str) -> torch.device:
    from dedicated.quantize_job.validate import pick_device

    try:
        return pick_device(requested)
    except RuntimeError as exc:
        raise InvalidConfig(f"runtime.device: {exc}") from None


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        raise InvalidConfig(f"the base model at {path} has no loadable tokenizer: {exc}") from None


def _already_published(run: Run, fingerprint: str) -> dict[str, Any] | None:
    manifest = read_manifest(run.out_dir)
    if not manifest or manifest.get("job", {}).get("configFingerprint") != fingerprint:
        return None
    result = manifest.get("result")
    if result is None:
        return None  # swapped in but never finished (e.g. the upload failed): publish again
    return result


def _quantize(run: Run, state: JobState, fetched: FetchedModel, modules: list[str], text: TextData,
              device: torch.device, dtype: torch.dtype, engine_configs) -> dict[str, Any]:
    cfg, progress = run.config, run.progress
    if cfg.method == "autoround":
        return _quantize_autoround(run, state, fetched, modules, text, device, dtype, engine_configs[3])
    from dedicated.quantize_job.calibration import InsufficientCalibrationError
    from dedicated.quantize_job.layerwise import NoExpertsError, StateMismatchError, quantize_model, target_names

    gptq_cfg, gsq_cfg, cal_cfg, _ = engine_configs
    model = load_base_model_cpu(fetched.path, dtype)
    targets = _engine_targets(modules)
    engine_names = set(target_names(model, targets))
    if engine_names != set(modules):
        only_engine = sorted(engine_names - set(modules))[:3]
        only_ckpt = sorted(set(modules) - engine_names)[:3]
        raise InvalidConfig(f"the module selection does not map onto the model's modules one to one "
                            f"(engine only: {only_engine}; checkpoint only: {only_ckpt})")
    resumed_from = state.engine_completed()
    if resumed_from:
        progress.resumed(resumed_from)
    counts = {"computed": 0}

    def on_layer(p) -> None:
        if p.computed:
            counts["computed"] += 1
        progress.layer_done(p.layer, p.num_layers, computed=p.computed)

    from dedicated.quantize_job.calibration import find_decoder_layers

    progress.set_total_layers(len(find_decoder_layers(model)[1]))
    kwargs = dict(method="gsq", bits=cfg.bits, state_dir=state.layers, group_size=cfg.group_size, targets=targets,
                  device=device, gptq_config=gptq_cfg, gsq_config=gsq_cfg, calibration=cal_cfg,
                  progress=on_layer, log=log.debug)
    try:
        try:
            result = quantize_model(model, text.calibration, **kwargs)
        except StateMismatchError as exc:
            log.warning("discarding the layer state (%s) and starting the layers over", exc)
            shutil.rmtree(state.layers, ignore_errors=True)
            resumed_from, counts["computed"] = 0, 0
            progress.resumed_from_layer = None
            result = quantize_model(model, text.calibration, **kwargs)
    except NoExpertsError as exc:
        raise NoExperts(str(exc)) from None
    except InsufficientCalibrationError as exc:
        raise CalibrationDataError(f"calibration data: {exc}") from None
    except FloatingPointError as exc:
        raise InvalidWeights(f"quantization hit NaN/Inf: {exc}") from None
    finally:
        del model
    return {"total": result.num_layers, "computed": result.layers_computed,
            "resumedFromLayer": resumed_from or None, "engine": "dedicated.quantize_job.layerwise"}


def _export(run: Run, state: JobState, fetched: FetchedModel, layout: ModelLayout, modules: list[str],
            staging: Path) -> dict[str, Any]:
    from dedicated.quantize_job.export import humming_ignore, repack_to_humming, write_compressed_tensors
    from dedicated.quantize_job.layerwise import iter_layer_weights

    cfg = run.config
    if cfg.method == "autoround":
        return _export_autoround(run, state, fetched, modules, staging)
    by_module: dict[str, int] = {}
    state_json = json.loads((state.layers / "state.json").read_text())
    for entry in state_json["layers"]:
        by_module.update({name: entry["index"] for name in _layer_module_names(state.layers / entry["file"])})

    def load(ms: list[str]):
        wanted = sorted({by_module[m] for m in ms if m in by_module})
        out = {}
        for _, weights in iter_layer_weights(state.layers, wanted):
            out.update({k: v for k, v in weights.items() if k in ms})
        return out

    ignore = humming_ignore(layout.linear_modules, modules)
    ct_dir = state.compressed_tensors
    shutil.rmtree(ct_dir, ignore_errors=True)
    write_compressed_tensors(fetched.path, layout, modules, load, ct_dir, bits=cfg.bits, group_size=cfg.group_size,
                             ignore=ignore, on_group=lambda i, n: run.progress.note(f"compressed-tensors shard {i}/{n}"))
    run.progress.note("repacking to Humming")
    report = repack_to_humming(ct_dir, staging, bits=cfg.bits, ignore=ignore)
    return {"intermediate": "compressed-tensors pack-quantized", "repack": report, "ignore": ignore}


# --- AutoRound ----------------------------------------------------------------------------------

#: What this Job's AutoRound path produces (the auto-round runner's scheme: W4A16, symmetric).
AUTOROUND_BITS, AUTOROUND_GROUP = 4, 128


def _autoround_keep_patterns(cfg: JobConfig, layout: ModelLayout, modules: list[str]) -> list[str]:
    """Full-match regexes for the runner: the config's keep list plus every unselected Linear by name."""
    import re

    keep = [f".*?(?:{p}).*" for p in cfg.modules.keep_bf16]  # re.search semantics under fullmatch
    keep += [re.escape(m) for m in sorted(set(layout.linear_modules) - set(modules))]
    return keep


@contextmanager
def _autoround_block_progress(on_blocks: Callable[[int, int], None]):
    """Layer progress from auto-round, which has no callback: its block loop advances a tqdm bar in
    ``auto_round.compressors.orchestrator``, so that bar is swapped for one that also reports its count.
    Read-only observation; if the library moves the bar, progress simply stays at the stage level."""
    try:
        import auto_round.compressors.orchestrator as orchestrator
    except ImportError:
        yield
        return
    original = getattr(orchestrator, "tqdm", None)
    if not isinstance(original, type):
        yield
        return

    class ReportingBar(original):  # type: ignore[misc, valid-type]
        def update(self, n=1):
            shown = super().update(n)
            try:
                on_blocks(int(self.n), int(self.total or 0))
            except Exception as exc:  # progress must never break the quantization
                log.debug("auto-round progress hook: %s", exc)
            return shown

    orchestrator.tqdm = ReportingBar
    try:
        yield
    finally:
        orchestrator.tqdm = original


def _quantize_autoround(run: Run, state: JobState, fetched: FetchedModel, modules: list[str], text: TextData,
                        device: torch.device, dtype: torch.dtype, options: AutoRoundOptions) -> dict[str, Any]:
    """auto-round W4A16 through the issue-6 runner, resumable per decoder block.

    Every finished block is committed to ``autoround-resume/`` (the chained block inputs and the RNG
    states) and its packed tensors to a shard in ``autoround-out/``; a rerun of the same config
    restores the committed blocks, tunes only the rest and saves the same bytes as an uninterrupted
    run (``dedicated.quantize_job.autoround_resume``: auto-round 0.16.1's own ``AR_RESUME_DIR``
    hook, with the RNG restore, the meta move of restored blocks and the atomic, checksummed commits
    it lacks). A finished run is not redone: ``autoround.json`` marks it.
    """
    from dedicated.quantize_job.autoround_runner import run_autoround
    from dedicated.quantize_job.calibration import find_decoder_layers

    cfg, progress = run.config, run.progress
    engine = "auto-round (dedicated.quantize_job.autoround_runner)"
    layout = read_layout(fetched.path)
    out = state.root / "autoround-out"
    resume_dir = state.root / "autoround-resume"
    done = state.root / "autoround.json"
    if done.is_file() and (Path(json.loads(done.read_text())["outputDir"]) / "config.json").is_file():
        total = json.loads(done.read_text())["layers"]
        progress.set_total_layers(total)
        progress.resumed(total)
        return {"total": total, "computed": 0, "resumedFromLayer": total, "engine": engine}
    from dedicated.quantize_job.autoround_resume import ResumeStateInvalid

    tokenizer = _tokenizer(fetched.path)
    reported = {"n": 0, "restored": 0, "total": 0}

    def on_resume(restored: int) -> None:
        reported["restored"] = restored
        if restored:
            progress.resumed(restored)

    def on_blocks(n: int, _total: int) -> None:
        while reported["n"] < min(n, reported["total"]):
            progress.layer_done(reported["n"], reported["total"], computed=reported["n"] >= reported["restored"])
            reported["n"] += 1

    for attempt in (1, 2):
        model = load_base_model_cpu(fetched.path, dtype)
        reported.update(n=0, restored=0, total=len(find_decoder_layers(model)[1]))
        progress.set_total_layers(reported["total"])
        try:
            with _autoround_block_progress(on_blocks):
                result = run_autoround(model, tokenizer, text.calibration, out, iters=options.iters,
                                       batch_size=options.batch_size, device=str(device), seed=options.seed,
                                       lr=options.lr, keep_patterns=_autoround_keep_patterns(cfg, layout, modules),
                                       low_gpu_mem_usage=device.type == "cuda", resume_dir=resume_dir,
                                       resume_key=cfg.fingerprint(fetched.revision), on_resume=on_resume)
            break
        except ResumeStateInvalid as exc:
            if attempt == 2:
                raise StageFailed(f"auto-round block state: {exc}") from None
            # The model is half-converted by auto-round by now: load it again and start over.
            log.warning("discarding the auto-round block state (%s) and quantizing all blocks again", exc)
            shutil.rmtree(resume_dir, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            progress.resumed_from_layer = None
        finally:
            del model
    total = reported["total"]
    on_blocks(total, total)
    restored = min(result.restored_blocks, total)
    write_json_atomic(done, {"outputDir": str(result.output_dir), "layers": total,
                             "keptBF16": result.kept_bf16, "inProjBa": result.in_proj_ba,
                             "settings": dict(result.settings), "seconds": result.seconds,
                             "restoredBlocks": restored})
    shutil.rmtree(resume_dir, ignore_errors=True)
    return {"total": total, "computed": total - restored, "resumedFromLayer": restored or None, "engine": engine}


def _export_autoround(run: Run, state: JobState, fetched: FetchedModel, modules: list[str],
                      staging: Path) -> dict[str, Any]:
    """Move auto-round's checkpoint into the staging dir, after checking it quantized exactly the selection."""
    import os

    from dedicated.quantize_job.export import copy_aux_files
    from dedicated.quantize_job.humming.safetensors_stream import read_header

    info = json.loads((state.root / "autoround.json").read_text())
    saved = Path(info["outputDir"])
    names = {n for shard in saved.glob("*.safetensors") for n in read_header(shard).tensors}
    quantized = sorted(n[: -len(".qweight")] for n in names if n.endswith(".qweight"))
    doubled = [m for m in quantized if f"{m}.weight" in names]
    if doubled:
        raise StageFailed(f"auto-round wrote both a qweight and a BF16 weight for {len(doubled)} module(s), "
                          f"e.g. {doubled[0]}: the checkpoint is inconsistent")
    if quantized != sorted(modules):
        missing, extra = sorted(set(modules) - set(quantized))[:3], sorted(set(quantized) - set(modules))[:3]
        raise StageFailed(f"auto-round quantized a different module set than selected (not quantized: {missing}; "
                          f"unexpectedly quantized: {extra})")
    qc = json.loads((saved / "config.json").read_text()).get("quantization_config", {})
    if qc.get("packing_format") != "auto_round:auto_gptq" or qc.get("bits") != AUTOROUND_BITS:
        raise StageFailed(f"auto-round wrote packing {qc.get('packing_format')!r} at {qc.get('bits')} bits")
    # Hard links: instant on the same volume, and the state keeps its copy until the publish succeeded.
    shutil.copytree(saved, staging, copy_function=os.link)
    for extra in ("tokenizer.json", "tokenizer_config.json"):
        if not (staging / extra).exists() and (fetched.path / extra).exists():
            copy_aux_files(fetched.path, staging)
            break
    return {"packingFormat": qc.get("packing_format"), "inProjBa": info["inProjBa"], "keptBF16": len(info["keptBF16"])}


def _layer_module_names(path: Path) -> list[str]:
    from dedicated.quantize_job.humming.safetensors_stream import read_header

    return [n[: -len(".codes")] for n in read_header(path).tensors if n.endswith(".codes")]


def _validate(run: Run, state: JobState, staging: Path, text: TextData, tokenizer, device: torch.device,
              ppl_original: float | None):
    from dedicated.quantize_job.errors import ValidationFailed
    from dedicated.quantize_job.validate import ENGINE_CHECKPOINT, Quality, judge, measure

    cfg = run.config
    if not cfg.validation.enabled:
        log.warning("validation is disabled (spec.validation.enabled=false): publishing without a load test")
        return Quality(perplexity_original=None, perplexity_quantized=None, load_test_passed=None,
                       max_perplexity_ratio=cfg.validation.max_perplexity_ratio)
    engine, note = ENGINE_CHECKPOINT, None
    try:
        if cfg.output_format == "humming":
            (ppl_q, ok, generated), engine, note = _measure_humming(run, state, staging, text, tokenizer, device)
        else:
            ppl_q, ok, generated = measure(staging, text.heldout, device, tokenizer=tokenizer,
                                           new_tokens=cfg.validation.generate_tokens)
    except QuantizeJobError:
        raise
    except Exception as exc:
        raise ValidationFailed(f"the exported checkpoint does not load or run: {type(exc).__name__}: {exc}") from None
    quality = Quality(perplexity_original=ppl_original, perplexity_quantized=ppl_q,
                      load_test_passed=ok, max_perplexity_ratio=cfg.validation.max_perplexity_ratio,
                      generated_text=generated, heldout_tokens=int(text.heldout.numel()),
                      engine=engine, engine_note=note)
    log.info("validation (%s): perplexity original %s quantized %.4f ratio %s (max %g); load test %s; generated %r",
             engine, f"{ppl_original:.4f}" if ppl_original else "n/a", ppl_q,
             f"{quality.perplexity_ratio:.4f}" if quality.perplexity_ratio else "n/a",
             cfg.validation.max_perplexity_ratio, "passed" if ok else "FAILED", generated)
    judge(quality)
    return quality


def _measure_humming(run: Run, state: JobState, staging: Path, text: TextData, tokenizer, device: torch.device):
    """Measure a Humming checkpoint packed on a GPU; dequantized to BF16 where that cannot run.

    Returns ``(measurement, engine, note)``; the note says why the packed path was not used.
    """
    from dedicated.quantize_job.packed_model import PackedModelUnsupported
    from dedicated.quantize_job.validate import (ENGINE_DEQUANTIZED, ENGINE_PACKED, dequantize_humming_checkpoint,
                                                 measure, measure_packed, release_memory)

    new_tokens = run.config.validation.generate_tokens
    if device.type != "cuda":
        note = "the packed experts run on CUDA only; this Job validates on the CPU"
    else:
        run.progress.note("loading the Humming checkpoint with its experts packed for the load test")
        try:
            return (measure_packed(staging, text.heldout, device, tokenizer=tokenizer, new_tokens=new_tokens),
                    ENGINE_PACKED, None)
        except PackedModelUnsupported as exc:
            note = f"the packed loader cannot run this model: {exc}"
        except QuantizeJobError:
            raise
        except Exception as exc:  # noqa: BLE001 - the dequantized path below still judges the checkpoint
            note = f"the packed run failed ({type(exc).__name__}: {exc})"
        log.warning("%s; validating a dequantized BF16 copy instead", note)
        release_memory()
    run.progress.note("dequantizing the Humming checkpoint for the load test")
    loadable = dequantize_humming_checkpoint(staging, state.validate_dir)
    try:
        return measure(loadable, text.heldout, device, tokenizer=tokenizer, new_tokens=new_tokens), \
            ENGINE_DEQUANTIZED, note
    finally:
        shutil.rmtree(loadable, ignore_errors=True)


def _cleanup(run: Run, state_dir: Path) -> None:
    out = run.config.output
    if out.keep_state or not state_dir.exists():
        return
    for entry in state_dir.iterdir():
        if entry.name == "compressed-tensors" and out.keep_intermediate:
            continue
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    if not any(state_dir.iterdir()):
        state_dir.rmdir()

