"""Builds the control-plane binaries from the Go wrapper modules and caches them per version.

Why a cache outside the repository: a cold build of Kubernetes takes many minutes on two cores,
and a fresh clone on the same machine (CI warm runs, a second checkout) should start in seconds.
Each tool is cached on its own, keyed by its upstream version and a hash of its wrapper module
(go.mod, go.sum, *.go), so bumping helm never rebuilds Kubernetes.

Cache entry layout: ``<cache>/controlplane/<tool>-<version>-<hash12>/`` holding the binary, the
alias symlinks of a multi-call binary, and ``meta.json`` written last. An entry is installed by
building into a temporary sibling folder and renaming it into place, so a killed build never leaves
something that looks complete; an entry without valid metadata, or whose binary does not match
it, is reported and rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dedicated.localcluster.versions import TOOLS, TOOLS_BY_NAME, Tool

BUILD_FLAGS: tuple[str, ...] = ("-trimpath",)  # plus each tool's -ldflags (Tool.ldflags)


def build_flags(tool: Tool) -> list[str]:
    """`go build` flags: no local paths in the binary, no symbol tables, upstream version stamps."""
    return [*BUILD_FLAGS, f"-ldflags={tool.ldflags()}"]
META_NAME = "meta.json"
_TMP_MARK = ".tmp-"


class BuildError(RuntimeError):
    """The binaries could not be built or found; the message says why and what to do."""


def repo_root() -> Path:
    """The checkout this package runs from (editable install: dedicated/ sits in the repo root)."""
    return Path(__file__).resolve().parents[2]


def tools_dir() -> Path:
    """Where the wrapper modules live; DEDICATED_TOOLS_DIR overrides it (a non-editable install)."""
    override = os.environ.get("DEDICATED_TOOLS_DIR")
    path = Path(override) if override else repo_root() / "tools" / "controlplane"
    if not (path / "kube" / "go.mod").is_file():
        raise BuildError(
            f"the Go wrapper modules are not at {path} (expected {path}/kube/go.mod); run from a "
            "checkout of the repository or set DEDICATED_TOOLS_DIR to its tools/controlplane folder"
        )
    return path


def cache_root() -> Path:
    """``${XDG_CACHE_HOME:-$HOME/.cache}/dedicated-endpoints/controlplane``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dedicated-endpoints" / "controlplane"


def wrapper_hash(tool: Tool, tools: Path | None = None) -> str:
    """Hash of everything in a wrapper module that changes what gets built, plus the build flags."""
    folder = (tools or tools_dir()) / tool.name
    digest = hashlib.sha256()
    digest.update(f"{tool.name}\0{tool.module}\0{tool.version}\0{' '.join(build_flags(tool))}\0".encode())
    digest.update(f"CGO_ENABLED=0\0{sys.platform}\0{platform.machine()}\0".encode())
    files = sorted(p for p in folder.iterdir() if p.name in ("go.mod", "go.sum") or p.suffix == ".go")
    if not any(p.name == "go.sum" for p in files):
        raise BuildError(f"{folder} has no go.sum: run `go mod tidy` there and commit the result")
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def entry_dir(tool: Tool, tools: Path | None = None, cache: Path | None = None) -> Path:
    return (cache or cache_root()) / f"{tool.name}-{tool.version}-{wrapper_hash(tool, tools)[:12]}"


@dataclass(frozen=True)
class Binaries:
    """Paths of every program the local cluster runs or hands to users."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    etcd: Path
    kwok: Path
    helm: Path

    def as_dict(self) -> dict[str, Path]:
        return {name.replace("_", "-"): path for name, path in self.__dict__.items()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_meta(entry: Path) -> dict | None:
    try:
        return json.loads((entry / META_NAME).read_text())
    except (OSError, ValueError):
        return None


def check_entry(entry: Path, tool: Tool, verify_hash: bool = False) -> str | None:
    """Why a cache entry is unusable, or None when it is complete.

    The cheap checks (metadata, size, aliases) run on every start; the sha256 check only when
    asked (``dedicated cluster build``), because hashing ~200 MB on each start costs a second.
    """
    if not entry.exists():
        return "missing"
    meta = read_meta(entry)
    if meta is None:
        return f"{META_NAME} is missing or unreadable (a build was interrupted)"
    binary = entry / tool.name
    if not binary.is_file():
        return f"binary {binary.name} is missing"
    if binary.stat().st_size != meta.get("size"):
        return f"binary size {binary.stat().st_size} differs from the recorded {meta.get('size')}"
    for alias in tool.aliases:
        if not (entry / alias).exists():
            return f"alias {alias} is missing"
    if verify_hash and _sha256(binary) != meta.get("sha256"):
        return "binary checksum differs from the recorded one (the file was modified or truncated)"
    return None


@contextlib.contextmanager
def _build_lock(cache: Path, log: Callable[[str], None]) -> Iterator[None]:
    """One build at a time per cache: a second `cluster build` waits and then reuses the result."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another build holds {cache / '.lock'}; waiting for it to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_tmp(cache: Path, log: Callable[[str], None]) -> None:
    """Temporary build folders left by a killed build (their owner pid is gone) are removed."""
    for path in cache.glob(f"*{_TMP_MARK}*"):
        pid_text = path.name.rsplit(_TMP_MARK, 1)[1]
        alive = pid_text.isdigit() and Path(f"/proc/{pid_text}").exists() and int(pid_text) != os.getpid()
        if not alive:
            log(f"removing half-written build folder {path} (its build was interrupted)")
            shutil.rmtree(path, ignore_errors=True)


def find_go() -> str:
    go = shutil.which("go") or next(
        (p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if os.access(p, os.X_OK)), None
    )
    if not go:
        raise BuildError(
            "Go is needed once to build the control plane (it is cached afterwards): install Go "
            ">= 1.26 and put `go` on PATH; the Go module proxy must be reachable"
        )
    return go


def _go_version(go: str, cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run([go, "env", "GOVERSION"], cwd=cwd, env=env, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def _build_one(tool: Tool, tools: Path, cache: Path, log: Callable[[str], None]) -> Path:
    go = find_go()
    source = tools / tool.name
    final = entry_dir(tool, tools, cache)
    tmp = final.with_name(final.name + f"{_TMP_MARK}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    logs = cache / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"{tool.name}-{tool.version}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    env = dict(os.environ)
    # Static binaries (as upstream releases them) and a go.sum that must already pin everything.
    # -modcacherw: module files stay deletable, so a cache can be thrown away without chmod.
    env.update({"CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false -modcacherw"})
    command = [go, "build", *build_flags(tool), "-o", str(tmp / tool.name), "."]
    log(f"building {tool.name} ({tool.module} {tool.version}); log: {log_path}")
    start = time.monotonic()
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log_path.open("w") as out:
        out.write(f"$ (cd {source} && {' '.join(command)})\n")
        out.flush()
        process = subprocess.Popen(command, cwd=source, env=env, stdout=out, stderr=subprocess.STDOUT)
        while True:
            try:
                rc = process.wait(timeout=60)
                break
            except subprocess.TimeoutExpired:
                log(f"  still building {tool.name} ({time.monotonic() - start:.0f}s)")
    seconds = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU time (go and every compiler it ran) does not depend on what else the machine was doing,
    # unlike the wall time; on an idle machine the wall time is at least cpu_seconds / cores.
    cpu_seconds = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    if rc != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "".join(log_path.read_text(errors="replace").splitlines(True)[-25:])
        raise BuildError(f"building {tool.name} failed (exit {rc}); last lines of {log_path}:\n{tail}")
    binary = tmp / tool.name
    for alias in tool.aliases:
        (tmp / alias).symlink_to(tool.name)
    meta = {
        "tool": tool.name,
        "module": tool.module,
        "version": tool.version,
        "wrapper_hash": wrapper_hash(tool, tools),
        "build_flags": build_flags(tool),
        "go_version": _go_version(go, source, env),
        "build_seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "load_average_1m": round(os.getloadavg()[0], 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host_cpus": os.cpu_count(),
        "size": binary.stat().st_size,
        "sha256": _sha256(binary),
    }
    (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    try:
        os.rename(tmp, final)  # atomic: the entry appears complete or not at all
    except OSError:
        # Someone installed the same entry meanwhile (only possible without the lock): keep theirs.
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"built {tool.name} in {seconds:.0f}s ({meta['size'] / 1e6:.0f} MB)")
    return final


def ensure_tool(
    tool: Tool,
    *,
    build: bool = True,
    verify_hash: bool = False,
    log: Callable[[str], None] = print,
    tools: Path | None = None,
    cache: Path | None = None,
) -> Path:
    """The cache entry folder of one tool, built first if it is missing or broken."""
    tools = tools or tools_dir()
    cache = cache or cache_root()
    entry = entry_dir(tool, tools, cache)
    problem = check_entry(entry, tool, verify_hash)
    if problem is None:
        return entry
    if not build:
        raise BuildError(
            f"{tool.name} {tool.version} is not built ({entry}: {problem}); run `dedicated cluster build`"
        )
    with _build_lock(cache, log):
        _remove_stale_tmp(cache, log)
        problem = check_entry(entry, tool, verify_hash)  # another process may have built it
        if problem is None:
            return entry
        if problem != "missing":
            log(f"cache entry {entry} is unusable ({problem}); removing it and rebuilding")
            shutil.rmtree(entry, ignore_errors=True)
        return _build_one(tool, tools, cache, log)


def ensure_binaries(
    *,
    build: bool = True,
    verify_hash: bool = False,
    log: Callable[[str], None] = print,
    tools: Path | None = None,
    cache: Path | None = None,
) -> Binaries:
    """Every binary, built where needed (Kubernetes first: it is the long one)."""
    entries = {
        tool.name: ensure_tool(tool, build=build, verify_hash=verify_hash, log=log, tools=tools, cache=cache)
        for tool in TOOLS
    }
    kube = entries["kube"]
    return Binaries(
        kube_apiserver=kube / "kube-apiserver",
        kube_controller_manager=kube / "kube-controller-manager",
        kube_scheduler=kube / "kube-scheduler",
        kubectl=kube / "kubectl",
        etcd=entries["etcd"] / "etcd",
        kwok=entries["kwok"] / "kwok",
        helm=entries["helm"] / "helm",
    )


def build_metadata(tools: Path | None = None, cache: Path | None = None) -> dict[str, dict | None]:
    """The recorded metadata (build time, size, Go version) of each tool's current cache entry."""
    return {tool.name: read_meta(entry_dir(tool, tools, cache)) for tool in TOOLS}


__all__ = [
    "BUILD_FLAGS",
    "build_flags",
    "Binaries",
    "BuildError",
    "TOOLS_BY_NAME",
    "build_metadata",
    "cache_root",
    "check_entry",
    "ensure_binaries",
    "ensure_tool",
    "entry_dir",
    "repo_root",
    "tools_dir",
    "wrapper_hash",
]
