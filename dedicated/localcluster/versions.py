"""The pinned versions of every control-plane component, in one place.

Why these: Kubernetes v1.36.3 is the third patch release of the 1.36 line (patched, not a fresh
minor), its go.mod asks for Go 1.26.0 (the local toolchain builds it, no toolchain download) and
pairs it with etcd v3.6.8, the etcd line upstream tests 1.36 against. v1.37.2 exists on the proxy
too, but moves to etcd 3.7.0 and is newer than what most production clusters run; the operator is
meant to work on what platform teams run now. kwok v0.8.0 is the current kwok release (built
against client-go v0.36). Helm v4.3.1 is the current Helm major: charts are unchanged (apiVersion
v2), it exposes its root command as a library (``helm.sh/helm/v4/pkg/cmd``) so the wrapper is a real
main.go, and it installs with server-side apply, as the operator itself does.

The versions are also written in each wrapper's go.mod; ``tools/controlplane/*/go.mod`` is the
source of truth for the build and a unit test checks that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.8"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v4.3.1"


@dataclass(frozen=True)
class Tool:
    """One Go wrapper module under tools/controlplane/ and the binary it builds."""

    name: str  # folder under tools/controlplane/ and the binary's file name
    module: str  # the upstream module the wrapper requires
    version: str
    aliases: tuple[str, ...] = ()  # extra names (symlinks) a multi-call binary answers to
    # `-X package.variable=value` link flags: the version stamps upstream release builds set, so
    # `kubectl version`, the API server's /version and `helm version` report the real release.
    stamps: tuple[tuple[str, str], ...] = ()

    def ldflags(self) -> str:
        return " ".join(["-s", "-w", *(f"-X {name}={value}" for name, value in self.stamps)])


def _kube_stamps(version: str) -> tuple[tuple[str, str], ...]:
    major, minor = version.lstrip("v").split(".")[:2]
    stamps = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        stamps += [
            (f"{package}.gitVersion", version),
            (f"{package}.gitMajor", major),
            (f"{package}.gitMinor", minor),
            (f"{package}.gitTreeState", "clean"),
        ]
    return tuple(stamps)


TOOLS: tuple[Tool, ...] = (
    Tool(
        "kube",
        "k8s.io/kubernetes",
        KUBERNETES_VERSION,
        aliases=("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"),
        stamps=_kube_stamps(KUBERNETES_VERSION),
    ),
    Tool("etcd", "go.etcd.io/etcd/server/v3", ETCD_VERSION),
    Tool("kwok", "sigs.k8s.io/kwok", KWOK_VERSION),
    Tool("helm", "helm.sh/helm/v4", HELM_VERSION, stamps=(("helm.sh/helm/v4/internal/version.version", HELM_VERSION),)),
)

TOOLS_BY_NAME: dict[str, Tool] = {tool.name: tool for tool in TOOLS}
