"""The layer-by-layer quantization engine the quantize Job calls.

One decoder layer at a time is moved to the device, calibrated, quantized and run to produce the
next layer's inputs; then it goes back (holding its fake-quantized weights, so the model can be
evaluated as quantized), and the layer's :class:`QuantizedWeight` s and the next layer's inputs are
committed to a state directory. A restarted run verifies that the directory belongs to the same
job (model, calibration data, method and settings) and resumes after the last committed layer.

State directory (every file is written to a temporary name, fsynced, then renamed; ``state.json``
is renamed last, so a crash at any point leaves the previous consistent state)::

    state.json              {"format", "fingerprint", "num_layers", "completed", "layers": [...],
                             "inputs": {"file", "layer", "sha256"}}
    layer_0007.safetensors  "<module name>.codes" int8 [out, in], "<module name>.scales" float32
                            [out, in/group] (bf16-exact values); metadata: method, bits, group_size
    inputs.safetensors      "hidden.<batch>": the inputs of layer ``completed`` (one per batch)

Module names follow the checkpoint convention, also for fused experts: the routed experts of
``model.layers.3.mlp.experts`` (stored as ``gate_up_proj [E, 2I, H]`` / ``down_proj [E, H, I]``)
are reported as ``model.layers.3.mlp.experts.<e>.gate_proj`` / ``.up_proj`` / ``.down_proj``.
Inside a layer, gate/up are quantized first and the down projections are then calibrated on the
activations of the *quantized* gate/up (GPTQ's sequential order). All experts of a layer are
quantized by one batched call.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from dedicated.quantize_job.calibration import (
    DecoderInputs,
    FusedExpertsCapture,
    InsufficientCalibrationError,
    LinearInputCapture,
    apply_fallback,
    capture_decoder_inputs,
    expert_hessians,
    find_decoder_layers,
    run_layer,
    token_counts,
)
from dedicated.quantize_job.durable import replace_durably, sha256_file
from dedicated.quantize_job.gptq import GPTQConfig, gptq, reconstruction_error
from dedicated.quantize_job.gsq import GSQConfig, gsq
from dedicated.quantize_job.qtensor import QuantizedWeight
from dedicated.quantize_job.rtn import check_finite, check_group, dequantize, rtn

STATE_FORMAT = "dedicated.layerwise/1"
DEFAULT_EXPERT_PATTERNS = ("*.mlp.experts.*.gate_proj", "*.mlp.experts.*.up_proj", "*.mlp.experts.*.down_proj")
METHODS = {"rtn": (2, 3, 4, 8), "gptq": (2, 3, 4, 8), "gsq": (2, 3, 4)}


class NoExpertsError(ValueError):
    """Routed experts were asked for, but the model has none matching the target patterns."""


class StateMismatchError(RuntimeError):
    """The state directory holds another job's progress (different model, data or settings)."""


@dataclass(frozen=True)
class CalibrationConfig:
    batch_size: int = 8
    routing_weighted: bool = False
    min_tokens: int = 256  # experts with fewer routed tokens get the fallback Hessian
    fallback: str = "pooled"  # or "identity"
    min_total_tokens: int = 512  # below this the job refuses to run


@dataclass(frozen=True)
class LayerProgress:
    layer: int  # 0-based index of the layer just committed (or restored)
    num_layers: int
    computed: bool  # False when restored from the state directory
    layer_seconds: float
    elapsed_s: float
    eta_s: float | None


@dataclass
class LayerwiseResult:
    state_dir: Path
    num_layers: int
    layers_computed: int
    names: list[str]
    stats: list[dict] = field(default_factory=list)

    def load(self) -> dict[str, QuantizedWeight]:
        return load_quantized(self.state_dir)


# --------------------------------------------------------------------------------------------------
# Targets


@dataclass
class _FusedTarget:
    path: str
    module: nn.Module
    num_experts: int
    gate_up: bool
    down: bool
    transposed: bool

    def names(self, proj: str) -> list[str]:
        return [f"{self.path}.{e}.{proj}" for e in range(self.num_experts)]


@dataclass
class _LinearGroup:
    names: list[str]
    modules: list[nn.Linear]


def _is_fused_experts(mod: nn.Module) -> bool:
    gu, dn = getattr(mod, "gate_up_proj", None), getattr(mod, "down_proj", None)
    return isinstance(gu, torch.Tensor) and isinstance(dn, torch.Tensor) and gu.dim() == 3 and dn.dim() == 3


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def discover_targets(layer: nn.Module, prefix: str, patterns: tuple[str, ...]) -> tuple[list[_FusedTarget], list[_LinearGroup]]:
    """The fused expert modules and the (stacked) Linear groups of one layer that ``patterns`` select."""
    fused: list[_FusedTarget] = []
    singles: dict[tuple[str, str], list[tuple[int, str, nn.Linear]]] = {}
    loose: list[_LinearGroup] = []
    for sub, mod in layer.named_modules():
        name = f"{prefix}.{sub}" if sub else prefix
        if _is_fused_experts(mod):
            e = int(mod.gate_up_proj.shape[0])
            want = {p: _matches(f"{name}.0.{p}", patterns) for p in ("gate_proj", "up_proj", "down_proj")}
            if not any(want.values()):
                continue
            if want["gate_proj"] != want["up_proj"]:
                raise ValueError(f"{name} stores gate and up fused (gate_up_proj): quantize both or neither")
            if not getattr(mod, "is_concatenated", True) or not getattr(mod, "has_gate", True):
                raise NotImplementedError(f"{name}: only concatenated gate/up expert layouts are supported")
            if getattr(mod, "has_bias", False) or any(n.endswith("bias") for n, _ in mod.named_parameters(recurse=False)):
                raise NotImplementedError(f"{name}: experts with biases are not supported")
            fused.append(_FusedTarget(name, mod, e, want["gate_proj"], want["down_proj"], bool(getattr(mod, "is_transposed", False))))
        elif isinstance(mod, nn.Linear) and _matches(name, patterns):
            m = re.match(r"^(.*\.experts)\.(\d+)\.([^.]+)$", name)
            if m:
                singles.setdefault((m.group(1), m.group(3)), []).append((int(m.group(2)), name, mod))
            else:
                loose.append(_LinearGroup([name], [mod]))
    groups = []
    for _, items in sorted(singles.items()):
        items.sort()
        shapes = {tuple(mod.weight.shape) for _, _, mod in items}
        if len(shapes) != 1:
            groups.extend(_LinearGroup([n], [m]) for _, n, m in items)
        else:
            groups.append(_LinearGroup([n for _, n, _ in items], [m for _, _, m in items]))
    return fused, groups + loose


def target_names(model: nn.Module, patterns: tuple[str, ...] = DEFAULT_EXPERT_PATTERNS) -> list[str]:
    """Every module name the engine would quantize (works on a meta-device model)."""
    path, layers = find_decoder_layers(model)
    names: list[str] = []
    for i, layer in enumerate(layers):
        fused, groups = discover_targets(layer, f"{path}.{i}", patterns)
        for f in fused:
            if f.gate_up:
                names += [n for e in range(f.num_experts) for n in (f"{f.path}.{e}.gate_proj", f"{f.path}.{e}.up_proj")]
            if f.down:
                names += f.names("down_proj")
        for g in groups:
            names += g.names
    return names


# --------------------------------------------------------------------------------------------------
# State directory


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> str:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    replace_durably(tmp, path)
    return sha256_file(path)


def _write_json(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    replace_durably(tmp, path)


def _load_verified(path: Path, sha: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.exists():
        raise StateMismatchError(f"{path} is listed in state.json but missing")
    if sha256_file(path) != sha:
        raise StateMismatchError(f"{path} does not match the checksum in state.json (corrupted or edited)")
    return load_file(str(path))


def load_quantized(state_dir: Path | str, layers: list[int] | None = None) -> dict[str, QuantizedWeight]:
    """All committed :class:`QuantizedWeight` s of a state directory, by module name."""
    out: dict[str, QuantizedWeight] = {}
    for _, weights in iter_layer_weights(state_dir, layers):
        out.update(weights)
    return out


def iter_layer_weights(state_dir: Path | str, layers: list[int] | None = None) -> Iterator[tuple[int, dict[str, QuantizedWeight]]]:
    """Layer by layer (bounded memory), ``(layer index, {name: QuantizedWeight})``."""
    state_dir = Path(state_dir)
    state = json.loads((state_dir / "state.json").read_text())
    for entry in state["layers"]:
        if layers is not None and entry["index"] not in layers:
            continue
        yield entry["index"], _weights_from_tensors(_load_verified(state_dir / entry["file"], entry["sha256"]), state)


def _weights_from_tensors(tensors: dict[str, torch.Tensor], state: dict) -> dict[str, QuantizedWeight]:
    fp = state["fingerprint"]
    out = {}
    for key in tensors:
        if key.endswith(".codes"):
            name = key[: -len(".codes")]
            out[name] = QuantizedWeight(codes=tensors[key], scales=tensors[f"{name}.scales"], bits=fp["bits"], group_size=fp["group_size"])
    return out


# --------------------------------------------------------------------------------------------------
# Quantizing one batch of same-shaped weights


def _quantize(w: torch.Tensor, h: torch.Tensor | None, method: str, bits: int, group_size: int,
              gptq_cfg: GPTQConfig, gsq_cfg: GSQConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    stats: dict = {}
    if method == "rtn":
        codes, scales = rtn(w, bits, group_size)
    else:
        res = gptq(w, h, bits, group_size, gptq_cfg)
        codes, scales = res.codes, res.scales
        if float(res.damp.max()) > gptq_cfg.damp:
            stats["extra_damping"] = {str(e): float(d) for e, d in enumerate(res.damp.tolist()) if d > gptq_cfg.damp}
        if method == "gsq":
            cfg = GSQConfig(**{**asdict(gsq_cfg), "seed": seed})
            g = gsq(w, h, codes, scales, bits, group_size, cfg)
            codes, scales = g.codes, g.scales
            stats["gsq"] = g.stats
    if h is not None:
        err = reconstruction_error(w, dequantize(codes, scales, group_size), h)
        ref = reconstruction_error(torch.zeros_like(w), w, h)
        stats["rel_error"] = float(err.sum() / ref.sum().clamp_min(1e-30))
    if not torch.isfinite(scales).all():
        raise FloatingPointError("quantizer produced non-finite scales")
    return codes, scales, stats


# --------------------------------------------------------------------------------------------------
# The engine


def quantize_model(
    model: nn.Module,
    calib_ids: torch.Tensor,
    *,
    method: str,
    bits: int,
    state_dir: Path | str,
    group_size: int = 128,
    targets: tuple[str, ...] = DEFAULT_EXPERT_PATTERNS,
    device: torch.device | str | None = None,
    gptq_config: GPTQConfig = GPTQConfig(),
    gsq_config: GSQConfig = GSQConfig(),
    calibration: CalibrationConfig = CalibrationConfig(),
    progress: Callable[[LayerProgress], None] | None = None,
    materialize: Callable[[int, nn.Module, torch.device], None] | None = None,
    offload: Callable[[int, nn.Module], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> LayerwiseResult:
    """Quantize the ``targets`` of ``model`` layer by layer; resumable through ``state_dir``.

    ``model`` lives on the CPU (or on ``meta`` with ``materialize`` filling each layer on the device);
    only the embeddings and one decoder layer are ever moved to ``device``. ``progress`` is called
    after each layer is committed (an exception raised there stops the run; the state stays valid).
    ``offload(i, layer)`` puts a finished layer away (default: move it to the CPU). On return the
    model's target weights hold their dequantized values.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    if bits not in METHODS[method]:
        raise ValueError(f"{method} does not support {bits}-bit; supported: {METHODS[method]}")
    targets = tuple(targets)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    log = log or (lambda msg: None)
    calib_ids = torch.as_tensor(calib_ids)
    if calib_ids.dim() != 2:
        raise InsufficientCalibrationError(f"calibration ids must be [samples, tokens], got {tuple(calib_ids.shape)}")
    if calib_ids.numel() < calibration.min_total_tokens and method != "rtn":
        raise InsufficientCalibrationError(
            f"{calib_ids.numel()} calibration tokens is too little (need at least {calibration.min_total_tokens})"
        )

    path, layers = find_decoder_layers(model)
    names = target_names(model, targets)
    if not names:
        if targets == DEFAULT_EXPERT_PATTERNS:
            raise NoExpertsError(
                f"{type(model).__name__} has no routed-expert modules ({', '.join(targets)}); "
                "it is not a mixture-of-experts model, so there is nothing to quantize with the expert defaults"
            )
        raise NoExpertsError(f"no module of {type(model).__name__} matches the target patterns {targets}")
    for n in names:  # every group size problem surfaces before any work
        check_group(_in_features(model, n), group_size)

    fingerprint = {
        "format": STATE_FORMAT,
        "method": method,
        "bits": bits,
        "group_size": group_size,
        "targets": list(targets),
        "gptq": asdict(gptq_config),
        "gsq": asdict(gsq_config) if method == "gsq" else None,
        "calibration": asdict(calibration),
        "calib_sha256": hashlib.sha256(calib_ids.to(torch.int64).numpy().tobytes()).hexdigest(),
        "calib_shape": list(calib_ids.shape),
        "model": hashlib.sha256(model.config.to_json_string(use_diff=False).encode()).hexdigest()
        if hasattr(model, "config") else type(model).__name__,
        "num_layers": len(layers),
    }
    fingerprint = json.loads(json.dumps(fingerprint))  # tuples -> lists, as they come back from disk
    state_file = state_dir / "state.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if state.get("fingerprint") != fingerprint:
            diff = sorted(k for k in fingerprint if state.get("fingerprint", {}).get(k) != fingerprint[k])
            raise StateMismatchError(f"{state_dir} holds another job's state (differs in: {', '.join(diff)}); use an empty directory")
    else:
        state = {"format": STATE_FORMAT, "fingerprint": fingerprint, "num_layers": len(layers), "completed": 0, "layers": [], "inputs": None}

    n_layers = len(layers)
    start = time.time()
    computed_times: list[float] = []
    completed = int(state["completed"])
    all_stats: list[dict] = [e.get("stats", {}) for e in state["layers"]]

    # Restore committed layers into the model.
    for entry in state["layers"]:
        i = entry["index"]
        weights = _weights_from_tensors(_load_verified(state_dir / entry["file"], entry["sha256"]), state)
        _apply_weights(layers[i], f"{path}.{i}", weights, targets, materialize, offload, i, device)
        if progress:
            progress(LayerProgress(i, n_layers, False, 0.0, time.time() - start, None))
    if completed >= n_layers:
        return LayerwiseResult(state_dir, n_layers, 0, names, all_stats)

    inputs = capture_decoder_inputs(model, calib_ids, device=device, batch_size=calibration.batch_size)
    if completed > 0:
        meta = state["inputs"]
        if not meta or meta["layer"] != completed:
            raise StateMismatchError(f"{state_dir}: saved inputs do not belong to layer {completed}")
        saved = _load_verified(state_dir / meta["file"], meta["sha256"])
        inputs.hidden = [saved[f"hidden.{b}"].to(device) for b in range(len(inputs.hidden))]

    for i in range(completed, n_layers):
        t0 = time.time()
        layer = layers[i]
        if materialize is not None:
            materialize(i, layer, device)
        else:
            layer.to(device)
        weights, stats = _quantize_layer(
            layer, f"{path}.{i}", inputs, targets, method, bits, group_size, gptq_config, gsq_config, calibration, device,
            seed=gsq_config.seed * 10007 + i,
        )
        next_hidden = run_layer(layer, inputs, device=device) if i + 1 < n_layers else []
        if offload is not None:
            offload(i, layer)
        else:
            layer.to("cpu")
        # Commit: layer file, next inputs, then state.json.
        tensors = {}
        for name, qw in weights.items():
            tensors[f"{name}.codes"] = qw.codes
            tensors[f"{name}.scales"] = qw.scales
        fname = f"layer_{i:04d}.safetensors"
        sha = _save_tensors(tensors, state_dir / fname, {"method": method, "bits": str(bits), "group_size": str(group_size)})
        if next_hidden:
            in_sha = _save_tensors({f"hidden.{b}": h for b, h in enumerate(next_hidden)}, state_dir / "inputs.safetensors")
            state["inputs"] = {"file": "inputs.safetensors", "layer": i + 1, "sha256": in_sha}
        seconds = time.time() - t0
        stats["seconds"] = round(seconds, 3)
        state["layers"].append({"index": i, "file": fname, "sha256": sha, "seconds": round(seconds, 3), "stats": stats})
        state["completed"] = i + 1
        _write_json(state, state_file)
        all_stats.append(stats)
        computed_times.append(seconds)
        inputs.hidden = next_hidden
        log(f"[layerwise] layer {i + 1}/{n_layers} done in {seconds:.1f}s")
        if progress:
            eta = sum(computed_times) / len(computed_times) * (n_layers - i - 1)
            progress(LayerProgress(i, n_layers, True, seconds, time.time() - start, eta))
    return LayerwiseResult(state_dir, n_layers, len(computed_times), names, all_stats)


def _in_features(model: nn.Module, name: str) -> int:
    m = re.match(r"^(.*)\.(\d+)\.(gate_proj|up_proj|down_proj)$", name)
    if m:
        parent = model.get_submodule(m.group(1))
        if _is_fused_experts(parent):
            t = getattr(parent, "is_transposed", False)
            p = parent.gate_up_proj if m.group(3) != "down_proj" else parent.down_proj
            return int(p.shape[1] if t else p.shape[2])
    return int(model.get_submodule(name).weight.shape[1])


def _fused_weights(t: _FusedTarget) -> tuple[torch.Tensor, torch.Tensor]:
    gu, dn = t.module.gate_up_proj, t.module.down_proj
    if t.transposed:
        gu, dn = gu.transpose(1, 2), dn.transpose(1, 2)
    return gu.detach().float(), dn.detach().float()


def _write_fused(t: _FusedTarget, which: str, w: torch.Tensor) -> None:
    p = getattr(t.module, which)
    with torch.no_grad():
        p.copy_((w.transpose(1, 2) if t.transposed else w).to(p.dtype))


def _apply_gate(experts: nn.Module, gate_up_out: torch.Tensor) -> torch.Tensor:
    if hasattr(experts, "_apply_gate"):
        return experts._apply_gate(gate_up_out)
    gate, up = gate_up_out.chunk(2, dim=-1)
    return experts.act_fn(gate) * up


def _quantize_layer(layer, prefix, inputs: DecoderInputs, targets, method, bits, group_size, gptq_cfg, gsq_cfg,
                    calib: CalibrationConfig, device, seed: int) -> tuple[dict[str, QuantizedWeight], dict]:
    fused, groups = discover_targets(layer, prefix, targets)
    for t in fused:  # bad weights get named before they poison the calibration activations
        check_finite(f"{t.path}.gate_up_proj", t.module.gate_up_proj)
        check_finite(f"{t.path}.down_proj", t.module.down_proj)
    for g in groups:
        for n, m in zip(g.names, g.modules):
            check_finite(f"{n}.weight", m.weight)
    weights: dict[str, QuantizedWeight] = {}
    stats: dict = {"units": {}}
    need_calib = method != "rtn"
    captures = [FusedExpertsCapture(t.module) for t in fused]
    lin = LinearInputCapture({n: m for g in groups for n, m in zip(g.names, g.modules)})
    if need_calib:
        for c in captures:
            c.__enter__()
        lin.__enter__()
        try:
            run_layer(layer, inputs, device=device)
        finally:
            for c in captures:
                c.__exit__(None, None, None)
            lin.__exit__(None, None, None)

    def record(names: list[str], codes: torch.Tensor, scales: torch.Tensor) -> None:
        for e, name in enumerate(names):
            weights[name] = QuantizedWeight(codes=codes[e].cpu().contiguous(), scales=scales[e].cpu().contiguous(),
                                            bits=bits, group_size=group_size)

    unit = 0
    for t, cap in zip(fused, captures):
        w_gu, w_dn = _fused_weights(t)
        E, two_i, _ = w_gu.shape
        half = two_i // 2
        counts = token_counts(cap.batches, E) if need_calib else torch.zeros(E, dtype=torch.int64)
        tstats: dict = {"tokens_per_expert": counts.tolist()}
        if t.gate_up:
            h = None
            if need_calib:
                S, c = expert_hessians(cap.batches, E, routing_weighted=calib.routing_weighted)
                h, rep = apply_fallback(S, c, min_tokens=calib.min_tokens, mode=calib.fallback, raw_counts=counts)
                tstats["gate_up_fallback"] = rep.as_dict()
            codes, scales, st = _quantize(w_gu.to(device), h, method, bits, group_size, gptq_cfg, gsq_cfg, seed * 100 + unit)
            unit += 1
            tstats["gate_up"] = st
            record(t.names("gate_proj"), codes[:, :half], scales[:, :half])
            record(t.names("up_proj"), codes[:, half:], scales[:, half:])
            w_gu = dequantize(codes, scales, group_size)
            _write_fused(t, "gate_up_proj", w_gu)
            del h
        if t.down:
            h = None
            if need_calib:
                wq = w_gu.to(device)

                def features(e: int, x: torch.Tensor) -> torch.Tensor:
                    return _apply_gate(t.module, x.float() @ wq[e].T)

                S, c = expert_hessians(cap.batches, E, features, dim=w_dn.shape[-1], routing_weighted=calib.routing_weighted)
                h, rep = apply_fallback(S, c, min_tokens=calib.min_tokens, mode=calib.fallback, raw_counts=counts)
                tstats["down_fallback"] = rep.as_dict()
            codes, scales, st = _quantize(w_dn.to(device), h, method, bits, group_size, gptq_cfg, gsq_cfg, seed * 100 + unit)
            unit += 1
            tstats["down"] = st
            record(t.names("down_proj"), codes, scales)
            _write_fused(t, "down_proj", dequantize(codes, scales, group_size))
            del h
        cap.batches.clear()
        stats["units"][t.path] = tstats

    for g in groups:
        w = torch.stack([m.weight.detach().float() for m in g.modules]).to(device)
        h = None
        gstats: dict = {}
        if need_calib:
            raw = torch.tensor([lin.counts[n] for n in g.names], dtype=torch.float64)
            if len(g.names) == 1 and raw[0] == 0:
                raise InsufficientCalibrationError(f"{g.names[0]} received no calibration tokens")
            S = torch.stack([lin.S.get(n, torch.zeros(w.shape[-1], w.shape[-1], device=device)) for n in g.names])
            h, rep = apply_fallback(S, raw, min_tokens=calib.min_tokens if len(g.names) > 1 else 0, mode=calib.fallback)
            gstats["tokens"] = raw.tolist()
            gstats["fallback"] = rep.as_dict()
        codes, scales, st = _quantize(w, h, method, bits, group_size, gptq_cfg, gsq_cfg, seed * 100 + unit)
        unit += 1
        gstats.update(st)
        record(g.names, codes, scales)
        deq = dequantize(codes, scales, group_size)
        with torch.no_grad():
            for e, m in enumerate(g.modules):
                m.weight.copy_(deq[e].to(m.weight.dtype))
        stats["units"][g.names[0] if len(g.names) == 1 else g.names[0].rsplit(".", 2)[0] + ".*." + g.names[0].rsplit(".", 1)[1]] = gstats
    return weights, stats


def _apply_weights(layer: nn.Module, prefix: str, weights: dict[str, QuantizedWeight], targets, materialize, offload,
                   index: int, device: torch.device) -> None:
    """Write committed weights (dequantized) into a restored layer."""
    if materialize is not None:
        materialize(index, layer, device)
    fused, groups = discover_targets(layer, prefix, targets)
    for t in fused:
        if t.gate_up:
            gate = torch.stack([weights[n].dequantize() for n in t.names("gate_proj")])
            up = torch.stack([weights[n].dequantize() for n in t.names("up_proj")])
            _write_fused(t, "gate_up_proj", torch.cat([gate, up], dim=1).to(t.module.gate_up_proj.device))
        if t.down:
            _write_fused(t, "down_proj", torch.stack([weights[n].dequantize() for n in t.names("down_proj")]).to(t.module.down_proj.device))
    for g in groups:
        with torch.no_grad():
            for n, m in zip(g.names, g.modules):
                m.weight.copy_(weights[n].dequantize().to(m.weight.dtype).to(m.weight.device))
    if materialize is not None:
        if offload is not None:
            offload(index, layer)
        else:
            layer.to("cpu")
