"""Failure results of model inspection and planning.

Planning never raises for a plan that cannot be made: it returns a ``PlanFailure`` whose
``reason`` is one of the endpoint condition reasons, so the handler writes it to ``status`` as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api.endpoint import EndpointReason


@dataclass(frozen=True)
class PlanFailure:
    """Why no plan exists: a condition reason and a message naming the shortfall."""

    reason: EndpointReason
    message: str

    ok = False


class CheckpointError(Exception):
    """A model's config or weights cannot be read; carries the condition reason to report."""

    def __init__(self, reason: EndpointReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def as_failure(self) -> PlanFailure:
        return PlanFailure(self.reason, self.message)
