"""Container images: hadolint-clean Dockerfiles (scripts/lint-images.sh, run here so CI fails on any
finding), pinned bases and packages, OCI labels, non-root users, a build context that carries only
the sources, and an operator that starts its imports without torch (its image has none)."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
OURS = {"operator": ROOT / "images/operator/Dockerfile", "quantize-job": ROOT / "images/quantize-job/Dockerfile"}
LABELS = ("title", "description", "version", "licenses", "source", "vendor")


def test_lint_images_script_reports_no_findings() -> None:
    """Every Dockerfile under images/ (the serving image's too, once it exists)."""
    run = subprocess.run(["bash", str(ROOT / "scripts/lint-images.sh")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "images/operator/Dockerfile" in run.stdout and "images/quantize-job/Dockerfile" in run.stdout


def test_lint_script_fails_on_a_finding(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\n")
    run = subprocess.run(["bash", str(ROOT / "scripts/lint-images.sh"), str(bad)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0 and "DL3007" in run.stdout + run.stderr


@pytest.mark.parametrize("name", sorted(OURS))
def test_dockerfiles_pin_bases_run_as_non_root_and_carry_oci_labels(name: str) -> None:
    text = OURS[name].read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms, name
    for image in froms:
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned base {image}"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root"), f"{name}: last USER {users}"
    for label in LABELS:
        assert f"org.opencontainers.image.{label}=" in text, f"{name}: label {label}"
    assert "--require-hashes" in text


def _pins(path: Path) -> dict[str, str]:
    text = path.read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", text, re.M))
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        if block and not block.startswith("#") and "==" in block.split("\n")[0]:
            assert "--hash=sha256:" in block, f"{path}: no hash for {block.splitlines()[0]}"
    return {k.lower().replace("_", "-"): v for k, v in pins.items()}


def test_operator_image_has_no_torch_and_the_quantize_image_has_the_stack() -> None:
    op = _pins(ROOT / "images/operator/requirements.txt")
    qj = _pins(ROOT / "images/quantize-job/requirements.txt")
    heavy = {"torch", "triton", "transformers", "auto-round", "compressed-tensors", "numpy"}
    assert not heavy & set(op), heavy & set(op)
    assert not [p for p in op if p.startswith("nvidia-")]
    assert {"kopf", "kubernetes", "pydantic", "pyyaml", "setuptools"} <= set(op)
    assert {"torch", "triton", "transformers", "auto-round", "compressed-tensors", "kopf", "setuptools"} <= set(qj)


@pytest.mark.parametrize("lock", ["images/operator/requirements.txt", "images/quantize-job/requirements.txt"])
def test_image_locks_pin_the_versions_the_tests_run(lock: str) -> None:
    """The images run what the test suite ran (scripts/lock-images.sh after a dependency change)."""
    stale = []
    for name, version in _pins(ROOT / lock).items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # platform-specific (win32, emscripten) entries of the universal lock
        if installed.split("+")[0] != version.split("+")[0]:
            stale.append(f"{name}: lock {version}, venv {installed}")
    assert not stale, f"{lock} is stale (run scripts/lock-images.sh): {stale}"


def test_dockerignore_sends_only_the_sources() -> None:
    lines = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0] == "**"
    allowed = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "dedicated", "operator", "kernels", "quantize_job",
                       "images/operator/requirements.txt", "images/quantize-job/requirements.txt"}
    for name, dockerfile in OURS.items():
        for src in re.findall(r"^COPY\s+(?!--from)(\S+)", dockerfile.read_text(), re.M):
            assert src.rstrip("/") in allowed, f"{name} copies {src}, which .dockerignore leaves out"


def test_the_operator_imports_no_torch() -> None:
    code = "import sys, dedicated.operator.runtime, dedicated.operator.handlers; print(sorted(m for m in ('torch', 'triton', 'transformers') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
