"""The operator process loads only what it needs.

Why this is a security and reliability property: the operator runs with cluster-wide read access
and write access to workloads; every library it imports is attack surface and memory. torch (and
anything CUDA) belongs to the quantize Job, never to the operator: importing it made the operator
start ~20 s slower on a busy node, took its resident memory from ~40 MiB to ~570 MiB before it
watched a single object, and made ``dedicated run`` fail outright in an image without torch.
Measured in a fresh interpreter, the way ``dedicated run`` starts.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "triton", "transformers", "auto_round", "numpy", "safetensors.torch")


def _modules_after(code: str) -> dict:
    probe = (
        "import json, sys\n"
        f"{code}\n"
        # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork+exec
        "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]\n"
        "print(json.dumps({'modules': sorted(sys.modules), 'maxrss_kib': int(hwm)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_command_line_and_the_operator_runtime_do_not_import_torch() -> None:
    found = _modules_after(
        "from dedicated import cli\n"
        "parser = cli.build_parser()\n"
        "parser.parse_args(['run', '--pools', 'x'])\n"
        "import dedicated.operator.runtime, dedicated.operator.handlers\n"
        "import dedicated.operator.reconcile.quantizedmodel, dedicated.operator.reconcile.endpoint\n"
        "import dedicated.quantize_job.config, dedicated.quantize_job.errors  # the Job contract half\n"
    )
    loaded = [m for m in HEAVY if m in found["modules"]]
    assert loaded == [], f"the operator imports {loaded} (max RSS {found['maxrss_kib'] // 1024} MiB)"
    assert found["maxrss_kib"] < 200 * 1024, f"max RSS {found['maxrss_kib'] // 1024} MiB at start"


def test_the_operator_starts_where_torch_is_not_installed() -> None:
    """As in the operator image: importing torch fails there, and `dedicated run --help` works."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # import torch -> ImportError, as without the package\n"
        "from dedicated import cli\n"
        "try:\n"
        "    cli.main(['run', '--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--pools" in result.stdout
