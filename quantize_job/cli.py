"""Command line of the quantize Job: ``python -m dedicated.quantize_job run --config FILE``.

The same command is ``dedicated quantize run --config FILE``. Exit codes: 0 success, 2 bad input
(the Job's podFailurePolicy fails the Job at once), 1 anything else (retried, resuming). On failure
one line ``<Reason>: <message>`` goes to the termination log (``/dev/termination-log``, or
``$TERMINATION_LOG``), which the operator copies into the QuantizedModel's Failed condition.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from dedicated.quantize_job.config import DEFAULT_CONFIG_PATH
from dedicated.quantize_job.errors import EXIT_FAULT, QuantizeJobError, StageFailed

log = logging.getLogger("dedicated.quantize_job")
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def termination_log_path() -> Path:
    return Path(os.environ.get("TERMINATION_LOG", DEFAULT_TERMINATION_LOG))


def write_termination_line(line: str) -> None:
    path = termination_log_path()
    try:
        path.write_text(line + "\n")
    except OSError as exc:  # a local run without /dev/termination-log: the log line suffices
        log.debug("could not write the termination log %s: %s", path, exc)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced, e.g. under pytest)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: bool = False) -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("httpx", "urllib3", "huggingface_hub", "filelock", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_command(args: argparse.Namespace) -> int:
    setup_logging(getattr(args, "verbose", False))
    try:
        from dedicated.quantize_job.config import load_config

        config = load_config(args.config)  # before importing torch: a bad config fails in a second
        from dedicated.quantize_job.pipeline import run_job

        result = run_job(config)
        log.info("done: %s (%d bytes) perplexity ratio %s", result.get("artifact", {}).get("location"),
                 result.get("artifact", {}).get("totalBytes") or 0,
                 result.get("quality", {}).get("perplexityRatio"))
        return 0
    except QuantizeJobError as exc:
        line = exc.termination_line()
        log.error("%s", line)
        write_termination_line(line)
        return exc.exit_code
    except KeyboardInterrupt:
        write_termination_line("JobFailed: interrupted")
        return 130
    except Exception as exc:  # a real fault: one traceback in the log, then a retryable exit
        log.error("unexpected failure:\n%s", traceback.format_exc())
        err = StageFailed(f"{type(exc).__name__}: {exc}")
        write_termination_line(err.termination_line())
        return EXIT_FAULT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="quantize_command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="run the quantization described by a job config",
                         description="Fetch, calibrate, quantize layer by layer (resuming from the state "
                         "dir), export, validate and publish.")
    run.add_argument("--config", default=DEFAULT_CONFIG_PATH, help=f"job config JSON (default {DEFAULT_CONFIG_PATH})")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.set_defaults(handler=run_command)


def register(subparsers: argparse._SubParsersAction) -> None:
    """``dedicated quantize run --config FILE``."""
    parser = subparsers.add_parser("quantize", help="run a quantization job (the program the GPU Job runs)")
    add_arguments(parser)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dedicated.quantize_job", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)
