"""Choose pool, GPUs/TP, context, concurrency, memory share, text-only and MTP for an endpoint.

Decision order (each step is explained in ``Plan.explanation``):

1. Candidate pools: the named pool, or pools of the allowed families, or all pools; then only
   those whose compute capability the checkpoint's format supports.
2. Candidate (pool, TP) options: TP from 1 to the pool's GPUs per node (or exactly
   ``gpusPerReplica``), keeping only sizes the model's shapes allow (attention/KV heads, linear-
   attention heads, expert and MLP widths per shard vs. the quantization group).
3. The *cheapest* option (cost per GPU-hour x GPUs, then fewer GPUs, then more headroom) on which
   the *required* configuration fits: the requested (or smallest automatic) context for
   ``concurrency`` sequences, with only the features the user turned ``on``.
4. On that option, ``auto`` features are turned on when they still fit (vision first: dropping it
   loses a capability, dropping MTP only speed), then an automatic context grows to the largest
   standard length that fits.

A plan that fits nowhere is a ``PlanFailure`` naming the closest option and the shortfall in GiB.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..api.common import FeatureMode
from ..api.endpoint import DedicatedEndpointSpec, EndpointReason, PlanStatus
from ..pools import NodePool, PoolConfig
from .errors import PlanFailure
from .facts import ModelFacts
from .memory import (
    GIB,
    MAX_NUM_BATCHED_TOKENS,
    default_utilization,
    kv_shape,
    runtime_bytes,
)
from .profile import ModelProfile

#: Context lengths tried, largest first, when the user leaves ``contextLength`` unset.
STANDARD_CONTEXTS = (1048576, 524288, 262144, 131072, 65536, 32768, 16384, 8192, 4096, 2048)
#: An automatic context never goes below this (or the model's maximum, if smaller).
MIN_AUTO_CONTEXT = 4096
#: Draft tokens per step when the user does not say: vLLM's Qwen3.5 recipe recommends MTP-1
#: (the second position's acceptance rate is lower and adds latency variance).
DEFAULT_SPECULATIVE_TOKENS = 1
MAX_TP = 16


@dataclass(frozen=True)
class PlanRequest:
    """What the endpoint spec asks of the planner."""

    context_length: int | None = None
    concurrency: int = 8
    gpu_memory_utilization: float | None = None
    text_only: FeatureMode = FeatureMode.AUTO
    mtp: FeatureMode = FeatureMode.AUTO
    num_speculative_tokens: int | None = None
    pool: str | None = None
    gpu_families: tuple[str, ...] | None = None
    gpus_per_replica: int | None = None
    max_gpus_per_replica: int | None = None

    @classmethod
    def from_spec(cls, spec: DedicatedEndpointSpec) -> PlanRequest:
        s, p = spec.serving, spec.placement
        return cls(
            context_length=s.context_length, concurrency=s.concurrency,
            gpu_memory_utilization=s.gpu_memory_utilization, text_only=s.text_only, mtp=s.mtp.mode,
            num_speculative_tokens=s.mtp.num_speculative_tokens, pool=p.pool,
            gpu_families=tuple(p.gpu_families) if p.gpu_families else None,
            gpus_per_replica=p.gpus_per_replica, max_gpus_per_replica=p.max_gpus_per_replica,
        )


@dataclass(frozen=True)
class Fit:
    """Per-GPU memory of one configuration on one option."""

    weights: float
    kv: float
    runtime: float
    usable: float
    utilization: float

    @property
    def need(self) -> float:
        return self.weights + self.kv + self.runtime

    @property
    def fits(self) -> bool:
        return self.need <= self.usable

    def describe(self) -> str:
        return (f"{self.need / GIB:.1f} GiB per GPU (weights {self.weights / GIB:.1f} + KV cache/state "
                f"{self.kv / GIB:.1f} + runtime {self.runtime / GIB:.1f})")


@dataclass(frozen=True)
class Plan:
    """A serving plan: vLLM arguments and the figures behind them."""

    pool: NodePool
    tensor_parallel_size: int
    max_model_len: int
    max_num_seqs: int
    gpu_memory_utilization: float
    vision_loaded: bool
    model_has_vision: bool
    mtp: bool
    num_speculative_tokens: int | None
    quantization: str | None
    weights_bytes: int
    fit: Fit
    explanation: str
    notes: tuple[str, ...] = field(default=())

    ok = True

    @property
    def gpus_per_replica(self) -> int:
        return self.tensor_parallel_size

    @property
    def text_only(self) -> bool:
        """Serves text only: the vision encoder is skipped, or the model has none."""
        return not self.vision_loaded

    @property
    def cost_per_hour(self) -> float:
        return round(self.pool.cost_per_gpu_hour * self.tensor_parallel_size, 4)

    def vllm_args(self) -> list[str]:
        """Serving arguments decided by the plan (the builder adds model, name, host and port)."""
        args = [
            "--tensor-parallel-size", str(self.tensor_parallel_size),
            "--max-model-len", str(self.max_model_len),
            "--max-num-seqs", str(self.max_num_seqs),
            "--max-num-batched-tokens", str(MAX_NUM_BATCHED_TOKENS),
            "--gpu-memory-utilization", f"{self.gpu_memory_utilization:.2f}",
        ]
        if self.model_has_vision and not self.vision_loaded:
            args.append("--language-model-only")
        if self.mtp:
            spec = {"method": "mtp", "num_speculative_tokens": self.num_speculative_tokens}
            args += ["--speculative-config", json.dumps(spec, sort_keys=True, separators=(",", ":"))]
        if self.quantization:
            args += ["--quantization", self.quantization]
        return args

    def to_status(self) -> PlanStatus:
        return PlanStatus(
            pool=self.pool.name, gpu_family=self.pool.gpu_family, gpu_product=self.pool.gpu_product,
            gpus_per_replica=self.gpus_per_replica, tensor_parallel_size=self.tensor_parallel_size,
            max_model_len=self.max_model_len, max_num_seqs=self.max_num_seqs,
            gpu_memory_utilization=round(self.gpu_memory_utilization, 2), text_only=self.text_only,
            mtp=self.mtp, num_speculative_tokens=self.num_speculative_tokens,
            weights_gib=round(self.weights_bytes / GIB, 2), kv_cache_gib=round(self.fit.kv * self.tensor_parallel_size / GIB, 2),
            per_gpu_gib=round(self.fit.need / GIB, 2), usable_per_gpu_gib=round(self.fit.usable / GIB, 2),
            cost_per_hour=self.cost_per_hour, explanation=self.explanation[:4096],
        )


# --- constraints --------------------------------------------------------------------------------


def tp_problems(facts: ModelFacts, tp: int, *, vision: bool) -> list[str]:
    """Why vLLM cannot shard this model ``tp`` ways (empty when it can). Derived from the config."""
    out: list[str] = []
    if facts.num_attention_heads % tp:
        out.append(f"{facts.num_attention_heads} attention heads are not divisible by {tp}")
    kv = facts.num_kv_heads
    if kv % tp and tp % kv:
        out.append(f"{kv} KV heads neither divide nor are a multiple of {tp}")
    if facts.linear is not None:
        for name, heads in (("key", facts.linear.num_key_heads), ("value", facts.linear.num_value_heads)):
            if heads % tp:
                out.append(f"{heads} linear-attention {name} heads are not divisible by {tp}")
    group = facts.quant.group_size if facts.quant.quantized else None
    widths = []
    if facts.moe is not None:
        widths.append(("expert intermediate size", facts.moe.intermediate_size, group))
        if facts.moe.shared_intermediate_size:
            widths.append(("shared-expert intermediate size", facts.moe.shared_intermediate_size, None))
    elif facts.intermediate_size:
        widths.append(("MLP intermediate size", facts.intermediate_size, group))
    for what, width, grp in widths:
        if width % tp:
            out.append(f"{what} {width} is not divisible by {tp}")
        elif grp and (width // tp) % grp:
            out.append(f"{what} {width} / TP {tp} = {width // tp} is not a multiple of the "
                       f"quantization group size {grp}")
    if vision and facts.vision_heads and facts.vision_heads % tp:
        out.append(f"{facts.vision_heads} vision-encoder heads are not divisible by {tp}")
    return out


def _contexts(facts: ModelFacts, requested: int | None) -> list[int]:
    if requested is not None:
        return [requested]
    top = facts.max_position_embeddings
    floor = min(MIN_AUTO_CONTEXT, top)
    return sorted({top, *(c for c in STANDARD_CONTEXTS if floor <= c < top)}, reverse=True)


def _fit(profile: ModelProfile, pool: NodePool, tp: int, ctx: int, seqs: int, *, vision: bool, mtp: bool,
         spec_tokens: int, utilization: float | None) -> Fit:
    facts = profile.facts
    util = utilization if utilization is not None else default_utilization(pool.gpu_memory_gib, pool.unified_memory)
    kv = kv_shape(facts, tp, mtp).bytes_for(ctx + (spec_tokens if mtp else 0), seqs)
    return Fit(
        weights=profile.weights_per_gpu(tp, vision=vision, mtp=mtp),
        kv=float(kv),
        runtime=float(runtime_bytes(facts, tp, seqs, vision=vision, mtp=mtp)),
        usable=pool.gpu_memory_mib * 1024 * 1024 * util,
        utilization=util,
    )


def _feature_choices(mode: FeatureMode, available: bool) -> list[bool]:
    """Values to try, preferred first; ``auto`` prefers the feature when available."""
    if mode == FeatureMode.ON:
        return [True]
    if mode == FeatureMode.OFF or not available:
        return [False]
    return [True, False]


# --- the planner --------------------------------------------------------------------------------


def plan(profile: ModelProfile, request: PlanRequest, pools: PoolConfig) -> Plan | PlanFailure:
    """The cheapest plan that fits, or a failure with a reason code; never raises for bad fits."""
    facts = profile.facts
    reason = EndpointReason

    # 1. pools
    if request.pool is not None:
        pool = pools.get(request.pool)
        if pool is None:
            return PlanFailure(reason.POOL_NOT_FOUND,
                               f"spec.placement.pool {request.pool!r} is not a configured pool; "
                               f"configured: {', '.join(p.name for p in pools.pools)}")
        candidates = [pool]
    elif request.gpu_families:
        candidates = [p for p in pools.pools if p.gpu_family in request.gpu_families]
        if not candidates:
            return PlanFailure(reason.NO_POOL_MATCHES,
                               f"no configured pool has a GPU family in spec.placement.gpuFamilies "
                               f"({', '.join(request.gpu_families)}); configured families: "
                               f"{', '.join(sorted({p.gpu_family for p in pools.pools}))}")
    else:
        candidates = list(pools.pools)
    need_cc = facts.quant.min_capability
    capable = [p for p in candidates if p.capability >= need_cc]
    if not capable:
        seen = ", ".join(f"{p.name} ({p.compute_capability})" for p in candidates)
        return PlanFailure(reason.UNSUPPORTED_COMPUTE_CAPABILITY,
                           f"the {facts.quant.method} checkpoint needs compute capability >= "
                           f"{need_cc[0]}.{need_cc[1]} ({facts.quant.why_capability}); candidate pools: {seen}")

    # 2. features the user requires or allows
    config_vision = facts.has_vision or profile.has_vision_weights
    if request.text_only == FeatureMode.OFF and config_vision and not profile.has_vision_weights:
        return PlanFailure(reason.FEATURE_UNAVAILABLE,
                           "spec.serving.textOnly is off but the checkpoint has no vision-encoder weights")
    vision_choices = _feature_choices(FeatureMode.ON if request.text_only == FeatureMode.OFF else
                                      FeatureMode.OFF if request.text_only == FeatureMode.ON else FeatureMode.AUTO,
                                      profile.has_vision_weights)
    if request.mtp == FeatureMode.ON and not profile.has_mtp_weights:
        return PlanFailure(reason.FEATURE_UNAVAILABLE,
                           "spec.serving.mtp.mode is on but the checkpoint has no MTP weights"
                           + (" (config declares an MTP head; its weights were dropped)" if facts.mtp_layers else ""))
    mtp_choices = _feature_choices(request.mtp, profile.has_mtp_weights)
    spec_tokens = request.num_speculative_tokens or DEFAULT_SPECULATIVE_TOKENS

    # 3. context
    if request.context_length is not None and request.context_length > facts.max_position_embeddings:
        return PlanFailure(reason.CONTEXT_TOO_LONG,
                           f"spec.serving.contextLength {request.context_length} exceeds the model's "
                           f"max_position_embeddings {facts.max_position_embeddings}")
    contexts = _contexts(facts, request.context_length)
    seqs = request.concurrency

    # 4. (pool, TP) options with the required features
    req_vision, req_mtp = vision_choices[-1], mtp_choices[-1]
    options: list[tuple[NodePool, int]] = []
    tp_rejections: list[str] = []
    for pool in capable:
        limit = min(pool.gpus_per_node, request.max_gpus_per_replica or MAX_TP, MAX_TP)
        sizes = [request.gpus_per_replica] if request.gpus_per_replica else range(1, limit + 1)
        for tp in sizes:
            if tp > pool.gpus_per_node:
                tp_rejections.append(f"{pool.name} has {pool.gpus_per_node} GPUs per node, fewer than {tp}")
                continue
            problems = tp_problems(facts, tp, vision=req_vision)
            if problems:
                if request.gpus_per_replica:
                    tp_rejections.append("; ".join(problems))
                continue
            options.append((pool, tp))
    if not options:
        if request.gpus_per_replica and tp_rejections and all("GPUs per node" in r for r in tp_rejections):
            return PlanFailure(reason.NO_POOL_MATCHES,
                               f"spec.placement.gpusPerReplica {request.gpus_per_replica}: "
                               + "; ".join(sorted(set(tp_rejections))))
        detail = "; ".join(sorted(set(r for r in tp_rejections if "GPUs per node" not in r)))
        return PlanFailure(reason.INCOMPATIBLE_TENSOR_PARALLEL,
                           f"no tensor-parallel size fits the model's shapes"
                           + (f" for spec.placement.gpusPerReplica {request.gpus_per_replica}: {detail}" if detail else ""))

    def fit(pool: NodePool, tp: int, ctx: int, vision: bool, mtp: bool) -> Fit:
        return _fit(profile, pool, tp, ctx, seqs, vision=vision, mtp=mtp, spec_tokens=spec_tokens,
                    utilization=request.gpu_memory_utilization)

    def rank(option: tuple[NodePool, int]) -> tuple:
        pool, tp = option
        usable = fit(pool, tp, contexts[-1], req_vision, req_mtp).usable
        return (pool.cost_per_gpu_hour * tp, tp, -usable, pool.name)

    options.sort(key=rank)
    min_ctx = contexts[-1]
    chosen = None
    rejected: list[tuple[NodePool, int, Fit]] = []
    for pool, tp in options:
        f = fit(pool, tp, min_ctx, req_vision, req_mtp)
        if f.fits:
            chosen = (pool, tp)
            break
        rejected.append((pool, tp, f))
    if chosen is None:
        pool, tp, f = min(rejected, key=lambda r: (r[2].need - r[2].usable, r[0].cost_per_gpu_hour * r[1]))
        largest = max(capable, key=lambda p: p.gpu_memory_mib)
        features = ", ".join(x for x, on in (("vision", req_vision), ("MTP", req_mtp)) if on) or "text-only, no MTP"
        return PlanFailure(
            reason.INSUFFICIENT_GPU_MEMORY,
            f"needs {f.describe()} at max-model-len {min_ctx} x {seqs} sequences ({features}) on the "
            f"closest option, pool {pool.name} with {tp} GPU(s), which offers {f.usable / GIB:.1f} GiB "
            f"usable per GPU ({f.utilization:.2f} of {pool.gpu_memory_gib:.1f} GiB): short by "
            f"{(f.need - f.usable) / GIB:.1f} GiB; the largest candidate pool, {largest.name}, has "
            f"{largest.gpu_memory_gib:.1f} GiB per GPU")
    pool, tp = chosen

    # 5. auto features, then the largest automatic context that fits
    vision, mtp = req_vision, req_mtp
    for v in vision_choices:
        if v and tp_problems(facts, tp, vision=True):
            continue
        done = False
        for m in mtp_choices:
            if fit(pool, tp, min_ctx, v, m).fits:
                vision, mtp, done = v, m, True
                break
        if done:
            break
    ctx = next(c for c in contexts if fit(pool, tp, c, vision, mtp).fits)
    final = fit(pool, tp, ctx, vision, mtp)
    return Plan(
        pool=pool, tensor_parallel_size=tp, max_model_len=ctx, max_num_seqs=seqs,
        gpu_memory_utilization=final.utilization, vision_loaded=vision,
        model_has_vision=profile.has_vision_weights, mtp=mtp,
        num_speculative_tokens=spec_tokens if mtp else None, quantization=facts.quant.vllm_quantization,
        weights_bytes=profile.weights_total(vision=vision, mtp=mtp), fit=final,
        explanation=_explain(profile, request, pool, tp, ctx, seqs, vision, mtp, spec_tokens, final,
                             rejected, contexts, fit),
    )


def _explain(profile: ModelProfile, request: PlanRequest, pool: NodePool, tp: int, ctx: int, seqs: int,
             vision: bool, mtp: bool, spec_tokens: int, final: Fit,
             rejected: list[tuple[NodePool, int, Fit]], contexts: list[int], fit) -> str:
    parts = [
        f"{pool.name} ({pool.gpu_product}, {pool.cost_per_gpu_hour:g}/GPU-hour) x {tp} GPU(s) is the "
        f"cheapest option that fits: {final.describe()} for {seqs} x {ctx} tokens, of "
        f"{final.usable / GIB:.1f} GiB usable (gpu-memory-utilization {final.utilization:.2f}"
        + (", unified memory shared with the CPU" if pool.unified_memory else "") + ")."
    ]
    if rejected:
        shown = ", ".join(f"{p.name} x {t} short by {(f.need - f.usable) / GIB:.1f} GiB" for p, t, f in rejected[:2])
        parts.append(f"Cheaper options do not fit: {shown}.")
    if not profile.has_vision_weights:
        parts.append("Text-only: the checkpoint has no vision encoder.")
    elif vision:
        parts.append(f"Vision encoder loaded ({profile.parts.bytes('vision') / GIB:.1f} GiB).")
    elif request.text_only == FeatureMode.ON:
        parts.append("Text-only as requested (vision encoder skipped).")
    else:
        parts.append("Text-only: the vision encoder did not fit or TP does not divide its heads.")
    if mtp:
        parts.append(f"MTP speculative decoding on with {spec_tokens} draft token(s) "
                     f"(+{profile.parts.bytes('mtp') / GIB:.1f} GiB weights).")
    elif not profile.has_mtp_weights:
        parts.append("MTP off: the checkpoint has no MTP weights.")
    elif request.mtp == FeatureMode.OFF:
        parts.append("MTP off as requested.")
    else:
        parts.append("MTP off: it did not fit next to the required context.")
    if request.context_length is None:
        bigger = [c for c in contexts if c > ctx]
        parts.append(f"Context {ctx} chosen automatically (model maximum {profile.facts.max_position_embeddings}"
                     + (f"; {bigger[-1]} does not fit" if bigger else "") + ").")
    return " ".join(parts)


def plan_endpoint(spec: DedicatedEndpointSpec, profile: ModelProfile, pools: PoolConfig) -> Plan | PlanFailure:
    """Convenience for the handler: plan straight from a validated endpoint spec."""
    return plan(profile, PlanRequest.from_spec(spec), pools)
