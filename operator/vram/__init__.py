"""The VRAM planner: pure functions from a model's config and tensor sizes, a request and the
node pools, to a serving plan (pool, GPUs/TP, vLLM arguments) or a failure with a reason code."""

from .checkpoint import Checkpoint, Tensor, read_hub, read_local
from .errors import CheckpointError, PlanFailure
from .facts import ModelFacts, model_facts
from .planner import Plan, PlanRequest, plan, plan_endpoint, tp_problems
from .profile import ModelProfile, profile_checkpoint, profile_hub, profile_local

__all__ = [
    "Checkpoint", "CheckpointError", "ModelFacts", "ModelProfile", "Plan", "PlanFailure", "PlanRequest",
    "Tensor", "model_facts", "plan", "plan_endpoint", "profile_checkpoint", "profile_hub", "profile_local",
    "read_hub", "read_local", "tp_problems",
]
