"""Pieces both reconcilers share: reading stored conditions tolerantly, setting several at once,
and turning condition transitions into Events."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ..api.conditions import Condition, ConditionStatus, set_condition


@dataclass(frozen=True)
class Want:
    """One condition as the reconciler wants it."""

    type: str
    status: ConditionStatus | bool
    reason: str
    message: str = ""


@dataclass(frozen=True)
class EventSpec:
    """An Event to post after the status write succeeded."""

    type: str  # Normal | Warning
    reason: str
    message: str


def stored_conditions(status: Mapping[str, Any] | None) -> list[Condition]:
    """Conditions as stored; entries this version cannot read are dropped rather than failing the
    whole reconcile (they get rewritten from the current state anyway)."""
    out: list[Condition] = []
    for raw in (status or {}).get("conditions") or []:
        try:
            out.append(Condition.model_validate(raw))
        except ValidationError:
            continue
    return out


def apply_conditions(old: Sequence[Condition], wants: Iterable[Want], generation: int | None,
                     now: datetime | None) -> list[Condition]:
    """``old`` updated with every ``want``; transition times move only where status flips."""
    out = list(old)
    for w in wants:
        out = set_condition(out, w.type, w.status, w.reason, w.message[:32768], observed_generation=generation, now=now)
    return out


def transition_events(old: Sequence[Condition], new: Sequence[Condition], types: Iterable[str],
                      warning_reasons: frozenset[str]) -> list[EventSpec]:
    """An Event for each of ``types`` whose status or reason changed (not for message-only changes,
    such as a progress percentage, which would flood ``kubectl describe``); one per reason."""
    before = {c.type: c for c in old}
    events: list[EventSpec] = []
    seen: set[tuple[str, str]] = set()
    for cond in new:
        if cond.type not in types:
            continue
        prev = before.get(cond.type)
        if prev is not None and prev.status == cond.status and prev.reason == cond.reason:
            continue
        kind = "Warning" if cond.reason in warning_reasons else "Normal"
        if (kind, cond.reason) in seen:  # e.g. Progressing and Ready moving to the same reason
            continue
        seen.add((kind, cond.reason))
        text = f"{cond.type}={cond.status.value}"
        events.append(EventSpec(kind, cond.reason, f"{text}: {cond.message}" if cond.message else text))
    return events


def condition_dicts(conditions: Sequence[Condition]) -> list[dict[str, Any]]:
    return [c.to_k8s() for c in conditions]
