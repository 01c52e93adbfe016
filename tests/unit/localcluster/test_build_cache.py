"""The binary cache: a real (tiny) Go build installs atomically, half-written entries are rebuilt.

The tool built here is a dependency-free Go module made in a temporary folder, so the test runs
the real `go build` path in seconds and offline; the real wrappers are checked for consistency.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dedicated.localcluster import build
from dedicated.localcluster.versions import TOOLS, Tool

HELLO = Tool("hello", "example.com/hello", "v0.0.1", aliases=("hello-alias",))


@pytest.fixture()
def tools(tmp_path: Path) -> Path:
    root = tmp_path / "tools"
    (root / "hello").mkdir(parents=True)
    (root / "kube").mkdir()
    (root / "kube" / "go.mod").write_text("module x\n")  # tools_dir() only checks that it exists
    (root / "hello" / "go.mod").write_text("module example.com/hello\n\ngo 1.22\n")
    (root / "hello" / "go.sum").write_text("")
    (root / "hello" / "main.go").write_text('package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hello") }\n')
    return root


def _quiet(_: str) -> None:
    pass


def test_build_install_and_reuse(tools: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    messages: list[str] = []
    entry = build.ensure_tool(HELLO, log=messages.append, tools=tools, cache=cache)
    assert entry == build.entry_dir(HELLO, tools, cache)
    assert (entry / "hello").is_file() and (entry / "hello-alias").resolve() == (entry / "hello").resolve()
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["version"] == "v0.0.1" and meta["build_seconds"] >= 0 and meta["size"] == (entry / "hello").stat().st_size
    assert build.check_entry(entry, HELLO, verify_hash=True) is None
    assert not list(cache.glob("*.tmp-*")), "no temporary folder left after a build"
    # Second call: cached, nothing built.
    messages.clear()
    assert build.ensure_tool(HELLO, log=messages.append, tools=tools, cache=cache) == entry
    assert messages == []


def test_changing_the_wrapper_changes_the_cache_key(tools: Path) -> None:
    before = build.wrapper_hash(HELLO, tools)
    (tools / "hello" / "main.go").write_text((tools / "hello" / "main.go").read_text() + "\n// changed\n")
    assert build.wrapper_hash(HELLO, tools) != before


def test_half_written_entries_are_detected_and_rebuilt(tools: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    entry = build.ensure_tool(HELLO, log=_quiet, tools=tools, cache=cache)

    (entry / "meta.json").unlink()
    assert "meta.json is missing" in build.check_entry(entry, HELLO)
    messages: list[str] = []
    build.ensure_tool(HELLO, log=messages.append, tools=tools, cache=cache)
    assert any("is unusable" in m and "rebuilding" in m for m in messages)
    assert build.check_entry(entry, HELLO) is None

    with (entry / "hello").open("ab") as handle:  # a truncated or modified binary
        handle.write(b"x")
    assert "differs from the recorded" in build.check_entry(entry, HELLO)

    # A temporary folder of a build that was killed (its pid is gone) is cleaned up.
    leftover = cache / f"{entry.name}.tmp-999999999"
    leftover.mkdir()
    messages.clear()
    build.ensure_tool(HELLO, log=messages.append, tools=tools, cache=cache)
    assert not leftover.exists()
    assert any("half-written build folder" in m for m in messages)


def test_missing_entry_without_build_says_what_to_run(tools: Path, tmp_path: Path) -> None:
    with pytest.raises(build.BuildError, match="run `dedicated cluster build`"):
        build.ensure_tool(HELLO, build=False, tools=tools, cache=tmp_path / "empty")


def test_failed_build_reports_the_compiler_error_and_leaves_nothing(tools: Path, tmp_path: Path) -> None:
    (tools / "hello" / "main.go").write_text("package main\n\nfunc main() { undefined() }\n")
    cache = tmp_path / "cache"
    with pytest.raises(build.BuildError, match="undefined"):
        build.ensure_tool(HELLO, log=_quiet, tools=tools, cache=cache)
    assert not [p for p in cache.iterdir() if p.name.startswith("hello-")]


def test_real_wrappers_pin_the_declared_versions() -> None:
    root = build.tools_dir()
    for tool in TOOLS:
        go_mod = (root / tool.name / "go.mod").read_text()
        assert re.search(rf"^\s*(require\s+)?{re.escape(tool.module)} {re.escape(tool.version)}\b", go_mod, re.M), tool
        assert (root / tool.name / "go.sum").stat().st_size > 0
        assert (root / tool.name / "main.go").is_file()
    kube = (root / "kube" / "go.mod").read_text()
    staging = re.findall(r"^\s*(k8s\.io/[\w-]+) => k8s\.io/[\w-]+ (v\S+)$", kube, re.M)
    assert len(staging) > 20 and {version for _, version in staging} == {"v0.36.3"}
