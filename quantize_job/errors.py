"""Typed failures of the quantize Job: each carries the condition reason the operator shows and the
exit code that tells the Job controller whether a retry can help.

Why two exit codes: the Job's ``podFailurePolicy`` fails the whole Job on exit code 2 (bad input: a
retry would fail the same way and only burn GPU hours), while any other non-zero code is retried up to
``backoffLimit`` and resumes from the per-layer checkpoints (preemption, OOM, a flaky node).
"""

from __future__ import annotations

from dedicated.operator.api.quantizedmodel import QuantizedModelReason

#: Exit code for input errors; the Job's podFailurePolicy maps it to FailJob (never retried).
EXIT_INPUT_ERROR = 2
#: Exit code for everything else (retried by the Job controller, resuming from the state dir).
EXIT_FAULT = 1


class QuantizeJobError(Exception):
    """A failure the program understands: reported as ``<reason>: <message>``, no traceback."""

    reason: QuantizedModelReason = QuantizedModelReason.JOB_FAILED
    exit_code: int = EXIT_FAULT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def termination_line(self) -> str:
        """The one line the operator copies into the Failed condition (no newlines, bounded)."""
        text = " ".join(self.message.split())
        return f"{self.reason.value}: {text}"[:1024]


class InputError(QuantizeJobError):
    """Bad input: the config, the model or the data cannot work; never retried."""

    exit_code = EXIT_INPUT_ERROR


class InvalidConfig(InputError):
    """The config file is missing, not JSON, or fails the JobConfig schema (unknown method, bits)."""


class InvalidGroupSize(InputError):
    reason = QuantizedModelReason.INVALID_GROUP_SIZE


class NoExperts(InputError):
    reason = QuantizedModelReason.NO_EXPERTS


class ModelUnreachable(InputError):
    reason = QuantizedModelReason.MODEL_UNREACHABLE


class SecretNotFound(InputError):
    reason = QuantizedModelReason.SECRET_NOT_FOUND


class InvalidWeights(InputError):
    """NaN/Inf in the base model's weights: quantizing them would publish garbage."""


class CalibrationDataError(InputError):
    """The calibration or held-out text is missing, unreadable, or too short."""


class ValidationFailed(InputError):
    """The quantized model is too far from the original (or does not load): nothing is published.

    An input error because rerunning the same config reproduces the same checkpoint bit for bit.
    """

    reason = QuantizedModelReason.VALIDATION_FAILED


class PublishFailed(QuantizeJobError):
    """Writing or uploading the result failed (disk full, Hub outage): retried by the Job."""


class StageFailed(QuantizeJobError):
    """An unexpected fault inside a stage, wrapped so the reason line names the stage."""
