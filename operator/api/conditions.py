"""The Kubernetes-convention ``Condition`` and a pure helper to update a list of them.

Same shape as ``metav1.Condition``, so ``kubectl wait --for=condition=Ready`` and every dashboard
understand it. ``lastTransitionTime`` changes only when ``status`` flips: a resync that finds the
same state produces a byte-identical list, so the handler writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from .common import ApiModel

#: metav1.Condition's own validation, copied as patterns so the CRD enforces the same contract.
CONDITION_TYPE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """One aspect of the resource's state, as the Kubernetes API conventions define it."""

    type: Annotated[str, Field(min_length=1, max_length=316, pattern=CONDITION_TYPE,
                               description="Condition type in CamelCase, e.g. `Ready`.")]
    status: Annotated[ConditionStatus, Field(description="`True`, `False` or `Unknown`.")]
    reason: Annotated[str, Field(min_length=1, max_length=1024, pattern=CONDITION_REASON,
                                 description="Machine-readable CamelCase reason for the last transition.")]
    message: Annotated[str, Field(max_length=32768,
                                  description="Human-readable details; may be empty.")] = ""
    last_transition_time: Annotated[datetime, Field(
        description="When `status` last changed (RFC 3339).")]
    observed_generation: Annotated[int | None, Field(
        ge=0, description="The `metadata.generation` this condition was computed from.")] = None


def now_utc() -> datetime:
    """Second-resolution UTC, the precision Kubernetes stores timestamps at."""
    return datetime.now(UTC).replace(microsecond=0)


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus | bool,
    reason: str,
    message: str = "",
    *,
    observed_generation: int | None = None,
    now: datetime | None = None,
) -> list[Condition]:
    """Return ``conditions`` with ``type_`` set; keeps the transition time when status is unchanged.

    Pure: the caller passes ``now`` in tests; order of other conditions is preserved and a new type
    is appended, so an unchanged state yields an equal list.
    """
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type != type_:
            out.append(cond)
            continue
        found = True
        ltt = cond.last_transition_time if cond.status == status else (now or now_utc())
        out.append(Condition(type=type_, status=status, reason=reason, message=message,
                             last_transition_time=ltt, observed_generation=observed_generation))
    if not found:
        out.append(Condition(type=type_, status=status, reason=reason, message=message,
                             last_transition_time=now or now_utc(),
                             observed_generation=observed_generation))
    return out


def get_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
