"""The design card's folder names must never shadow the standard library or PyPI packages."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def _run_from_root(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_stdlib_operator_wins_from_repository_root() -> None:
    out = _run_from_root(
        "import operator, collections; print(operator.__file__); print(collections.__file__);"
        "print(operator.itemgetter(1)([0, 42]))"
    )
    operator_file, collections_file, value = out.splitlines()
    assert Path(operator_file).resolve().is_relative_to(STDLIB)
    assert Path(collections_file).resolve().is_relative_to(STDLIB)
    assert value == "42"


def test_top_level_folders_are_not_importable_by_bare_name_outside_the_root(tmp_path: Path) -> None:
    code = (
        "import importlib.util as u\n"
        "for name in ('kernels', 'quantize_job', 'operator'):\n"
        "    spec = u.find_spec(name)\n"
        "    print(name, spec.origin if spec else None, list(spec.submodule_search_locations or []) if spec else [])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    # Whatever else is installed (PyPI's `kernels`, the stdlib's `operator`), none of it is ours.
    assert str(ROOT) not in result.stdout, result.stdout


def test_folders_map_into_the_dedicated_namespace() -> None:
    out = _run_from_root(
        "import dedicated.operator, dedicated.kernels, dedicated.quantize_job as q;"
        "print(list(q.__path__)[0])"
    )
    assert Path(out).resolve() == ROOT / "quantize_job"


def test_no_init_files_in_shadowing_folders() -> None:
    for name in ("operator", "kernels", "quantize_job"):
        assert not (ROOT / name / "__init__.py").exists(), name


def test_every_python_folder_is_listed_for_the_wheel() -> None:
    """setuptools copies only the packages pyproject.toml names; a forgotten subfolder would work
    in the editable checkout and vanish from the operator image."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folder_of = {pkg: folder for pkg, folder in config["package-dir"].items()}
    expected = set()
    for pkg, folder in folder_of.items():
        for sub in (ROOT / folder).rglob("*.py"):
            rel = sub.parent.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts:
                continue
            expected.add(".".join([pkg, *rel.parts]))
    assert expected <= listed, f"add to [tool.setuptools] packages: {sorted(expected - listed)}"
