"""Calibration for layer-by-layer quantization of MoE (and dense) decoders.

Three jobs, all driven by the model's own modules so that nothing about routing is re-implemented:

1. :func:`capture_decoder_inputs` runs the model up to its first decoder layer (a stand-in layer
   records the hidden states and the keyword arguments the model builds for its layers: rotary
   position embeddings, masks) and stops there. Each later layer's inputs are the previous layer's
   outputs (:func:`run_layer`), so only one decoder layer ever needs to be on the device.
2. :class:`FusedExpertsCapture` hooks a fused experts module (``gate_up_proj [E, 2I, H]`` /
   ``down_proj [E, H, I]``, the layout of transformers 5 MoE classes) and records what the model's
   router sent it: token states, top-k expert indices and routing weights. Each expert's Hessian
   then sums only over the tokens routed to it (:func:`expert_hessians`).
   :class:`LinearInputCapture` does the same for plain ``nn.Linear`` targets (dense layers, or
   experts stored as one module per expert, whose forward only ever sees their routed tokens).
3. :func:`apply_fallback` handles experts that received too few tokens for a trustworthy Hessian.

Routing weights. ``routing_weighted=True`` weights each token by the square of its routing weight:
the expert's contribution to the block output is ``r * expert(x)``, so its quantization error
reaches the output scaled by ``r`` and its squared error by ``r^2``. The default is ``False``
(every routed token counts once, as in GPTQ's reference); ``benchmarks/bench_quality.py`` measures
both on the tiny MoE, and docs/benchmarks-quality.md reports which is better.

Starved experts. An expert with ``n < min_tokens`` routed tokens gets, with ``fallback="pooled"``,
``H = (S_e + (m - n) * H_pool) / m`` where ``S_e`` sums its own outer products and ``H_pool`` is
the per-token average over every token the layer's experts saw: its own evidence, topped up with
the layer-wide input statistics (an expert with no tokens gets exactly ``H_pool``). With
``fallback="identity"`` a starved expert gets ``mean(diag H_pool) * I``, i.e. plain RTN with a
scale search. Nothing is silent: the per-expert token counts and the experts that fell back are in
every layer's stats in the state directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


class InsufficientCalibrationError(ValueError):
    """Too little calibration data to quantize anything meaningfully."""


class _StopForward(Exception):
    pass


@dataclass
class DecoderInputs:
    """Per calibration batch: the hidden states entering a decoder layer and the layer kwargs."""

    hidden: list[torch.Tensor]
    kwargs: list[dict[str, Any]]

    @property
    def num_tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder layer list and its dotted path (e.g. ``model.layers``)."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    text_cfg = getattr(getattr(model, "config", None), "text_config", None)
    if n_layers is None and text_cfg is not None:
        n_layers = getattr(text_cfg, "num_hidden_layers", None)
    for path in ("model.layers", "model.language_model.layers", "language_model.model.layers", "transformer.h"):
        mod: Any = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if isinstance(mod, nn.ModuleList) and (n_layers is None or len(mod) == n_layers):
            return path, mod
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.endswith("layers") and len(mod) == n_layers:
            return name, mod
    raise ValueError(f"cannot find the decoder layer list of {type(model).__name__}")


class _Catcher(nn.Module):
    """Stands in for decoder layer 0: records its inputs, then stops the forward pass."""

    def __init__(self, layer: nn.Module, sink: DecoderInputs, store: torch.device):
        super().__init__()
        self.wrapped = layer
        self.sink = sink
        self.store = store

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.wrapped, name)

    def forward(self, hidden_states, *args, **kwargs):
        if args:
            raise TypeError("decoder layers called with extra positional arguments are not supported")
        self.sink.hidden.append(hidden_states.detach().to(self.store))
        kept = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value", "use_cache")}
        self.sink.kwargs.append(kept)
        raise _StopForward


@torch.no_grad()
def capture_decoder_inputs(
    model: nn.Module,
    calib_ids: torch.Tensor,
    *,
    device: torch.device | str,
    batch_size: int = 8,
    store: torch.device | str | None = None,
) -> DecoderInputs:
    """Hidden states and layer kwargs entering decoder layer 0, per batch of ``calib_ids`` ``[N, T]``."""
    if calib_ids.dim() != 2 or calib_ids.numel() == 0:
        raise InsufficientCalibrationError(f"calibration ids must be a non-empty [N, T] tensor, got {tuple(calib_ids.shape)}")
    device = torch.device(device)
    store = torch.device(store) if store is not None else device
    path, layers = find_decoder_layers(model)
    base = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    # Everything the base model runs before layer 0 (embeddings, rotary tables) goes to the device.
    moved = [m for n, m in base.named_children() if m is not layers]
    originals = [next(m.parameters(), next(m.buffers(), None)) for m in moved]
    homes = [t.device if t is not None else torch.device("cpu") for t in originals]
    for m in moved:
        m.to(device)
    sink = DecoderInputs(hidden=[], kwargs=[])
    first = layers[0]
    layers[0] = _Catcher(first, sink, store)
    try:
        for start in range(0, calib_ids.shape[0], batch_size):
            batch = calib_ids[start : start + batch_size].to(device)
            try:
                base(input_ids=batch, use_cache=False)
            except _StopForward:
                pass
            else:
                raise RuntimeError("the model finished its forward pass without calling decoder layer 0")
    finally:
        layers[0] = first
        for m, home in zip(moved, homes):
            m.to(home)
    sink.kwargs = [_to_device(kw, device) for kw in sink.kwargs]
    return sink


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def run_layer(layer: nn.Module, inputs: DecoderInputs, *, device: torch.device, store: torch.device | None = None) -> list[torch.Tensor]:
    """The layer's outputs for every batch (the next layer's inputs); raises on NaN/Inf."""
    outs = []
    for h, kw in zip(inputs.hidden, inputs.kwargs):
        out = layer(h.to(device), **kw)
        out = out[0] if isinstance(out, tuple) else out
        if not torch.isfinite(out).all():
            raise FloatingPointError("a decoder layer produced NaN/Inf activations on the calibration data")
        outs.append(out.detach().to(store or device))
    return outs


# --------------------------------------------------------------------------------------------------
# Routed-expert inputs


@dataclass
class RoutedBatch:
    x: torch.Tensor  # [T, H] token states entering the experts
    index: torch.Tensor  # [T, k] expert ids chosen by the router
    weight: torch.Tensor  # [T, k] routing weights


class FusedExpertsCapture:
    """Forward pre-hook on a fused experts module: ``forward(hidden, top_k_index, top_k_weights)``."""

    def __init__(self, experts: nn.Module):
        self.experts = experts
        self.batches: list[RoutedBatch] = []
        self._handle = None

    def __enter__(self) -> "FusedExpertsCapture":
        def hook(module, args, kwargs):
            names = ("hidden_states", "top_k_index", "top_k_weights")
            vals = list(args) + [kwargs[n] for n in names[len(args):] if n in kwargs]
            if len(vals) < 3:
                raise TypeError(f"{type(module).__name__}.forward was not called as (hidden, top_k_index, top_k_weights)")
            x, idx, w = vals[:3]
            self.batches.append(RoutedBatch(x.detach().reshape(-1, x.shape[-1]), idx.detach(), w.detach().float()))

        self._handle = self.experts.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()


def routed_tokens(batch: RoutedBatch, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens the router sent to ``expert`` and their routing weights."""
    tok, slot = torch.where(batch.index == expert)
    return batch.x[tok], batch.weight[tok, slot]


def expert_hessians(
    batches: list[RoutedBatch],
    num_experts: int,
    features: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    *,
    dim: int | None = None,
    routing_weighted: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-expert sums ``S_e = sum_t c_t * f_e(x_t) f_e(x_t)^T`` over the tokens routed to ``e``.

    ``features(e, x)`` maps an expert's routed token states to that linear's inputs (identity for
    gate/up; the gated activation for down). Returns ``(S [E, D, D], counts [E])``, where counts are
    token counts (or the sum of ``c_t`` when weighted, so ``S / counts`` is always an average).
    """
    if not batches:
        raise InsufficientCalibrationError("no calibration tokens reached the experts")
    device = batches[0].x.device
    dim = dim or batches[0].x.shape[-1]
    S = torch.zeros(num_experts, dim, dim, dtype=torch.float32, device=device)
    counts = torch.zeros(num_experts, dtype=torch.float64, device=device)
    for b in batches:
        present = torch.unique(b.index)
        for e in present.tolist():
            if e < 0 or e >= num_experts:
                continue  # some routers use an out-of-range id for dropped tokens
            x, r = routed_tokens(b, e)
            f = (features(e, x) if features is not None else x).float()
            if not torch.isfinite(f).all():
                raise FloatingPointError(f"expert {e} calibration inputs contain NaN/Inf")
            c = r.square() if routing_weighted else torch.ones_like(r)
            S[e] += (f * c.unsqueeze(-1)).T @ f
            counts[e] += c.double().sum()
    return S, counts


def token_counts(batches: list[RoutedBatch], num_experts: int) -> torch.Tensor:
    counts = torch.zeros(num_experts, dtype=torch.int64)
    for b in batches:
        ids = b.index.reshape(-1).cpu()
        ids = ids[(ids >= 0) & (ids < num_experts)]
        counts += torch.bincount(ids, minlength=num_experts)
    return counts


@dataclass
class FallbackReport:
    mode: str
    min_tokens: float
    starved: list[int] = field(default_factory=list)
    empty: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"mode": self.mode, "min_tokens": self.min_tokens, "starved": self.starved, "empty": self.empty}


def apply_fallback(
    S: torch.Tensor, counts: torch.Tensor, *, min_tokens: float, mode: str = "pooled", raw_counts: torch.Tensor | None = None
) -> tuple[torch.Tensor, FallbackReport]:
    """Turn per-expert sums into Hessians ``2 * average outer product``, topping up starved experts.

    ``counts`` are the (possibly weighted) normalisers of ``S``; ``raw_counts`` the routed-token
    counts that decide who is starved (defaults to ``counts``).
    """
    if mode not in ("pooled", "identity"):
        raise ValueError(f"unknown starved-expert fallback {mode!r}; expected 'pooled' or 'identity'")
    raw = (raw_counts if raw_counts is not None else counts).to(S.device).double()
    counts = counts.to(S.device).double()
    total = counts.sum()
    if float(total) <= 0:
        raise InsufficientCalibrationError("no calibration tokens reached any expert of this layer")
    pooled = (S.sum(0) / total).float()
    report = FallbackReport(mode=mode, min_tokens=float(min_tokens))
    H = torch.empty_like(S)
    eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
    iso = torch.diagonal(pooled).mean() * eye
    for e in range(S.shape[0]):
        n, c = float(raw[e]), float(counts[e])
        own = S[e] / c if c > 0 else torch.zeros_like(pooled)
        if n >= min_tokens:
            H[e] = own
            continue
        report.starved.append(e)
        if n == 0:
            report.empty.append(e)
        if mode == "identity":
            H[e] = iso
        else:
            frac = n / min_tokens  # share of the evidence that is the expert's own
            H[e] = frac * own + (1 - frac) * pooled
    return 2 * H, report


class LinearInputCapture:
    """Forward pre-hooks on ``nn.Linear`` modules accumulating ``sum x x^T`` and token counts."""

    def __init__(self, modules: dict[str, nn.Linear]):
        self.modules = modules
        self.S: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {n: 0 for n in modules}
        self._handles: list = []

    def __enter__(self) -> "LinearInputCapture":
        for name, mod in self.modules.items():
            def hook(module, args, name=name):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                if not torch.isfinite(x).all():
                    raise FloatingPointError(f"calibration inputs of {name} contain NaN/Inf")
                if name not in self.S:
                    self.S[name] = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float32, device=x.device)
                self.S[name] += x.T @ x
                self.counts[name] += x.shape[0]

            self._handles.append(mod.register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
