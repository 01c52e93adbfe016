"""When the control plane cannot be built, integration tests fail loudly; they are never skipped.

Runs one integration test in a child pytest with the wrapper modules pointed at a folder that
does not exist and an empty binary cache, so the session fixture fails before any build starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dedicated.localcluster.build import repo_root


def test_integration_tests_error_with_the_reason_when_the_cluster_cannot_be_built(tmp_path: Path) -> None:
    env = dict(os.environ, DEDICATED_TOOLS_DIR=str(tmp_path / "no-tools"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rfEs",
            "tests/integration/test_cluster_nodes.py::test_node_reports_gpu_capacity_and_taint",
        ],
        cwd=repo_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 error" in output and "skipped" not in output
    assert "the local control plane could not be built or started" in output
    assert "Go wrapper modules are not at" in output
