"""Starts and stops the local control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, all on 127.0.0.1 with TLS, plus the simulated GPU nodes.

Why each ``up`` starts from an empty etcd: a local cluster is a test fixture and a demo, and a
fresh one is predictable (no object left over from a crashed run); certificates and binaries are
what take time, and those are kept. ``up`` on a running cluster does nothing; ``up`` after a crash
(stale pid files, half the components dead) stops what is left and starts clean, saying so.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dedicated.localcluster.build import Binaries, ensure_binaries, repo_root
from dedicated.localcluster.kubeconfig import write_kubeconfig
from dedicated.localcluster.nodes import KWOK_NODE_ANNOTATION, node_manifests
from dedicated.localcluster.pki import FRONT_PROXY_CA, FRONT_PROXY_CLIENT, Pki, ensure_pki
from dedicated.localcluster.pools import DEFAULT_POOLS_FILE, PoolFile, load_pools
from dedicated.localcluster.procs import (
    ProcessRecord,
    free_ports,
    log_tail,
    start_process,
    stop_process,
)

SERVICE_CIDR = "198.18.0.0/16"  # RFC 2544 benchmarking range: never routed, nothing listens there
SERVICE_IP = "198.18.0.1"  # the `kubernetes` Service's ClusterIP (first address of the range)
POD_CIDR = "198.19.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
STAGES_FILE = Path(__file__).with_name("kwok-stages.yaml")
KWOK_RBAC_NAME = "dedicated:kwok-controller"

# Start order; ``down`` stops in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
PORT_NAMES = ("etcd-client", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class ClusterError(RuntimeError):
    """The local cluster could not be started, found or stopped; the message says why."""


def default_state_dir() -> Path:
    """``$DEDICATED_CLUSTER_DIR`` or ``<repo>/.cache/localcluster`` (git-ignored)."""
    override = os.environ.get("DEDICATED_CLUSTER_DIR")
    return Path(override) if override else repo_root() / ".cache" / "localcluster"


@dataclass
class ClusterInfo:
    """Where a running cluster is: what a user, a test or the operator needs to reach it."""

    state_dir: Path
    kubeconfig: Path
    api_server: str
    bin_dir: Path
    binaries: Binaries
    ports: dict[str, int]
    nodes: list[str] = field(default_factory=list)
    started_seconds: float | None = None

    def env(self) -> dict[str, str]:
        """Environment variables that point kubectl, helm and client libraries at this cluster."""
        return {"KUBECONFIG": str(self.kubeconfig), "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


class LocalCluster:
    """One local cluster, identified by its state directory."""

    def __init__(
        self,
        state_dir: Path | str | None = None,
        pools_file: Path | str | None = None,
        log: Callable[[str], None] = print,
        tie_to_parent: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.pools_file = Path(pools_file) if pools_file else DEFAULT_POOLS_FILE
        self.log = log
        # The test fixture ties components to its own process: a killed pytest leaves nothing behind.
        self.tie_to_parent = tie_to_parent

    # ------------------------------------------------------------------------------ layout
    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def bin_dir(self) -> Path:
        return self.state_dir / "bin"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "cluster.json"

    def pid_file(self, component: str) -> Path:
        return self.state_dir / "run" / f"{component}.pid"

    def log_file(self, component: str) -> Path:
        return self.state_dir / "logs" / f"{component}.log"

    # ------------------------------------------------------------------------------ records
    def records(self) -> dict[str, ProcessRecord | None]:
        return {name: ProcessRecord.load(self.pid_file(name)) for name in COMPONENTS}

    def running(self) -> dict[str, bool]:
        return {name: bool(record and record.is_running()) for name, record in self.records().items()}

    def read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One `up`/`down` at a time per state directory."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / ".lock").open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.log(f"another `dedicated cluster` command is working on {self.state_dir}; waiting")
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ------------------------------------------------------------------------------ public API
    def info(self) -> ClusterInfo | None:
        """The running cluster's info, or None when it is not (completely) running."""
        state = self.read_state()
        if state is None or not all(self.running().values()):
            return None
        return self._info_from_state(state)

    def up(self, timeout: float = 180.0, build: bool = True) -> ClusterInfo:
        """Start the cluster (building binaries first if needed) and wait until every node is Ready."""
        pools = load_pools(self.pools_file)  # a bad pool file fails before anything starts
        binaries = ensure_binaries(build=build, log=self.log)
        with self._locked():
            existing = self._existing_cluster()
            if existing is not None:
                self.log(f"the local cluster in {self.state_dir} is already running")
                return existing
            start = time.monotonic()
            try:
                info = self._start(binaries, pools, deadline=start + timeout)
            except BaseException:
                self._stop_all(quiet=True)
                raise
            info.started_seconds = round(time.monotonic() - start, 1)
            state = self.read_state() or {}
            state["started_seconds"] = info.started_seconds
            self._write_state(state)
            self.log(
                f"local cluster ready in {info.started_seconds:.1f}s: {len(info.nodes)} nodes, "
                f"API server {info.api_server}, kubeconfig {info.kubeconfig}"
            )
            return info

    def down(self) -> list[str]:
        """Stop every component (also those of a half-started or crashed cluster)."""
        with self._locked():
            return self._stop_all(quiet=False)

    def status(self) -> dict[str, Any]:
        """What runs, on which port, and whether the API server answers (for `cluster status`)."""
        state = self.read_state() or {}
        result: dict[str, Any] = {"state_dir": str(self.state_dir), "components": {}}
        for name, record in self.records().items():
            if record is None:
                result["components"][name] = {"running": False}
            else:
                result["components"][name] = {"running": record.is_running(), "pid": record.pid, "log": record.log}
        result["running"] = all(c["running"] for c in result["components"].values())
        if state:
            result.update(
                api_server=state.get("api_server"),
                kubeconfig=state.get("kubeconfig"),
                ports=state.get("ports"),
                nodes=len(state.get("nodes", [])),
                started_seconds=state.get("started_seconds"),
            )
        if result["running"]:
            result["api_server_ready"] = self._api_ready(state)
        return result

    # ------------------------------------------------------------------------------ internals
    def _existing_cluster(self) -> ClusterInfo | None:
        """A healthy running cluster to reuse; otherwise clean up what a crash left behind."""
        records = self.records()
        alive = {name for name, record in records.items() if record and record.is_running()}
        stale = [name for name, record in records.items() if record and name not in alive]
        state = self.read_state()
        if alive == set(COMPONENTS) and state and self._api_ready(state):
            return self._info_from_state(state)
        if alive == set(COMPONENTS):
            self.log(f"the cluster in {self.state_dir} runs but its API server does not answer; restarting it")
            self._stop_all(quiet=True)
        elif alive:
            self.log(
                f"found a partly running cluster in {self.state_dir} (running: {', '.join(sorted(alive))}; "
                f"not running: {', '.join(sorted(set(COMPONENTS) - alive))}); stopping it and starting fresh"
            )
            self._stop_all(quiet=True)
        elif stale:
            self.log(f"removing stale pid files of {', '.join(stale)} (those processes are gone)")
            for name in stale:
                self.pid_file(name).unlink(missing_ok=True)
        for name, record in records.items():
            if record is None and self.pid_file(name).exists():
                self.log(f"removing unreadable pid file {self.pid_file(name)} (half-written)")
                self.pid_file(name).unlink()
        return None

    def _info_from_state(self, state: dict[str, Any]) -> ClusterInfo:
        bins = {key.replace("-", "_"): Path(value) for key, value in state["binaries"].items()}
        return ClusterInfo(
            state_dir=self.state_dir,
            kubeconfig=Path(state["kubeconfig"]),
            api_server=state["api_server"],
            bin_dir=self.bin_dir,
            binaries=Binaries(**bins),
            ports=dict(state["ports"]),
            nodes=list(state.get("nodes", [])),
            started_seconds=state.get("started_seconds"),
        )

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    def _stop_all(self, quiet: bool) -> list[str]:
        messages = []
        for name in reversed(COMPONENTS):
            record = ProcessRecord.load(self.pid_file(name))
            if record is None:
                if self.pid_file(name).exists():
                    messages.append(f"{name}: unreadable pid file removed")
                self.pid_file(name).unlink(missing_ok=True)
                continue
            messages.append(stop_process(record))
            self.pid_file(name).unlink(missing_ok=True)
        if not quiet:
            for message in messages or ["nothing was running"]:
                self.log(message)
        return messages

    def _ssl_context(self, pki: Pki, client: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        if client:
            context.load_cert_chain(str(pki.cert(client)), str(pki.key(client)))
        return context

    def _api_ready(self, state: dict[str, Any]) -> bool:
        try:
            pki = Pki(self.state_dir / "pki")
            with httpx.Client(verify=self._ssl_context(pki, "admin"), timeout=3) as client:
                return client.get(f"{state['api_server']}/readyz").status_code == 200
        except (httpx.HTTPError, OSError, KeyError, ssl.SSLError):
            return False

    def _wait_healthy(
        self, record: ProcessRecord, url: str, context: ssl.SSLContext, deadline: float
    ) -> None:
        """Poll ``url`` until it answers 200; fail early, with the log, if the process exits."""
        last = "no answer yet"
        with httpx.Client(verify=context, timeout=2) as client:
            while time.monotonic() < deadline:
                if not record.is_running():
                    raise _ComponentDied(record)
                try:
                    response = client.get(url)
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}: {response.text[:300]}"
                except (httpx.HTTPError, ssl.SSLError) as error:
                    last = f"{type(error).__name__}: {error}"
                time.sleep(0.2)
        raise ClusterError(
            f"{record.name} did not become healthy at {url} in time (last answer: {last}); "
            f"last lines of {record.log}:\n{log_tail(record.log)}"
        )

    def _launch(
        self, name: str, argv: list[str], url: str, context: ssl.SSLContext, deadline: float, env: dict | None = None
    ) -> ProcessRecord:
        record = start_process(
            name, argv, self.log_file(name), self.pid_file(name), env=env, tie_to_parent=self.tie_to_parent
        )
        self._wait_healthy(record, url, context, deadline)
        return record

    def _start(self, binaries: Binaries, pools: PoolFile, deadline: float) -> ClusterInfo:
        for folder in ("run", "logs", "components", "kwok"):
            (self.state_dir / folder).mkdir(parents=True, exist_ok=True)
        for name in COMPONENTS:  # keep one previous generation of each log
            log = self.log_file(name)
            if log.exists():
                os.replace(log, log.with_suffix(".log.1"))
        pki, renewed = ensure_pki(self.state_dir / "pki", SERVICE_IP)
        if renewed:
            self.log(f"created the cluster's certificates and keys ({renewed} before)")
        etcd_data = self.state_dir / "etcd"
        shutil.rmtree(etcd_data, ignore_errors=True)

        # A port can be taken between choosing and binding; a component that dies of
        # "address already in use" is simply started again on new ports.
        for attempt in range(3):
            ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
            try:
                self._start_components(binaries, pki, ports, etcd_data, deadline)
                break
            except _ComponentDied as died:
                tail = log_tail(died.record.log, 30)
                self._stop_all(quiet=True)
                if "address already in use" in tail and attempt < 2:
                    self.log(f"{died.record.name}: a chosen port was taken meanwhile; retrying on new ports")
                    shutil.rmtree(etcd_data, ignore_errors=True)
                    continue
                raise ClusterError(
                    f"{died.record.name} exited during start-up; last lines of {died.record.log}:\n{tail}"
                ) from None

        api_server = f"https://127.0.0.1:{ports['kube-apiserver']}"
        self._link_bin_dir(binaries)
        nodes = self._create_nodes(api_server, pools, deadline)
        state = {
            "api_server": api_server,
            "kubeconfig": str(self.kubeconfig),
            "ports": ports,
            "binaries": {key: str(path) for key, path in binaries.as_dict().items()},
            "pools_file": str(self.pools_file),
            "nodes": nodes,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._write_state(state)
        return self._info_from_state(state)

    def _component_kubeconfig(self, pki: Pki, api_server: str, client: str) -> Path:
        path = self.state_dir / "components" / f"{client}.kubeconfig"
        return write_kubeconfig(path, api_server, pki.ca_cert, pki.cert(client), pki.key(client), client)

    def _start_components(
        self, bins: Binaries, pki: Pki, ports: dict[str, int], etcd_data: Path, deadline: float
    ) -> None:
        etcd_url = f"https://127.0.0.1:{ports['etcd-client']}"
        peer_url = f"https://127.0.0.1:{ports['etcd-peer']}"
        etcd_tls = [
            f"--cert-file={pki.cert('etcd-server')}",
            f"--key-file={pki.key('etcd-server')}",
            f"--trusted-ca-file={pki.ca_cert}",
            "--client-cert-auth=true",
            f"--peer-cert-file={pki.cert('etcd-server')}",
            f"--peer-key-file={pki.key('etcd-server')}",
            f"--peer-trusted-ca-file={pki.ca_cert}",
            "--peer-client-cert-auth=true",
        ]
        self._launch(
            "etcd",
            [
                str(bins.etcd),
                "--name=dedicated-local",
                f"--data-dir={etcd_data}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=dedicated-local={peer_url}",
                "--initial-cluster-state=new",
                # A throw-away test cluster: skipping fsync makes it fast on shared disks; a
                # process crash loses nothing (the page cache survives), only a host crash would.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
                *etcd_tls,
            ],
            f"{etcd_url}/health",
            self._ssl_context(pki, "apiserver-etcd-client"),
            deadline,
        )

        api_server = f"https://127.0.0.1:{ports['kube-apiserver']}"
        write_kubeconfig(self.kubeconfig, api_server, pki.ca_cert, pki.cert("admin"), pki.key("admin"), "dedicated-admin")
        self._launch(
            "kube-apiserver",
            [
                str(bins.kube_apiserver),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports['kube-apiserver']}",
                f"--etcd-servers={etcd_url}",
                f"--etcd-cafile={pki.ca_cert}",
                f"--etcd-certfile={pki.cert('apiserver-etcd-client')}",
                f"--etcd-keyfile={pki.key('apiserver-etcd-client')}",
                f"--tls-cert-file={pki.cert('apiserver')}",
                f"--tls-private-key-file={pki.key('apiserver')}",
                f"--client-ca-file={pki.ca_cert}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                # The aggregation layer, as on a kubeadm cluster (controllers read these too).
                f"--requestheader-client-ca-file={pki.cert(FRONT_PROXY_CA)}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.cert(FRONT_PROXY_CLIENT)}",
                f"--proxy-client-key-file={pki.key(FRONT_PROXY_CLIENT)}",
                # The `kubernetes` Service would point at 127.0.0.1, which Endpoints may not hold;
                # nothing inside the simulated cluster dials the API server through it anyway.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
            f"{api_server}/readyz",
            self._ssl_context(pki, "admin"),
            deadline,
        )

        self._bootstrap_rbac(api_server)
        common = ["--bind-address=127.0.0.1", "--profiling=false", "--leader-elect=false", "--v=1"]
        kcm_config = self._component_kubeconfig(pki, api_server, "controller-manager")
        sched_config = self._component_kubeconfig(pki, api_server, "scheduler")
        kwok_config = self._component_kubeconfig(pki, api_server, "kwok")
        kcm = start_process(
            "kube-controller-manager",
            [
                str(bins.kube_controller_manager),
                *common,
                f"--secure-port={ports['kube-controller-manager']}",
                f"--tls-cert-file={pki.cert('controller-manager-serving')}",
                f"--tls-private-key-file={pki.key('controller-manager-serving')}",
                f"--kubeconfig={kcm_config}",
                f"--authentication-kubeconfig={kcm_config}",
                f"--authorization-kubeconfig={kcm_config}",
                f"--client-ca-file={pki.ca_cert}",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*",
            ],
            self.log_file("kube-controller-manager"),
            self.pid_file("kube-controller-manager"),
            tie_to_parent=self.tie_to_parent,
        )
        sched = start_process(
            "kube-scheduler",
            [
                str(bins.kube_scheduler),
                *common,
                f"--secure-port={ports['kube-scheduler']}",
                f"--tls-cert-file={pki.cert('scheduler-serving')}",
                f"--tls-private-key-file={pki.key('scheduler-serving')}",
                f"--kubeconfig={sched_config}",
                f"--authentication-kubeconfig={sched_config}",
                f"--authorization-kubeconfig={sched_config}",
                f"--client-ca-file={pki.ca_cert}",
            ],
            self.log_file("kube-scheduler"),
            self.pid_file("kube-scheduler"),
            tie_to_parent=self.tie_to_parent,
        )
        kwok_env = dict(os.environ, KWOK_WORKDIR=str(self.state_dir / "kwok"))  # ignore ~/.kwok
        kwok = start_process(
            "kwok",
            [
                str(bins.kwok),
                f"--kubeconfig={kwok_config}",
                f"--config={STAGES_FILE}",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION[0]}={KWOK_NODE_ANNOTATION[1]}",
                f"--server-address=127.0.0.1:{ports['kwok']}",
                f"--tls-cert-file={pki.cert('kwok-serving')}",
                f"--tls-private-key-file={pki.key('kwok-serving')}",
                "--node-lease-duration-seconds=40",
                "-v=WARN",  # INFO logs every lease renewal of every node
                f"--cidr={POD_CIDR}",
            ],
            self.log_file("kwok"),
            self.pid_file("kwok"),
            env=kwok_env,
            tie_to_parent=self.tie_to_parent,
        )
        # The three start concurrently; their health checks run one after the other.
        server_context = self._ssl_context(pki, None)
        self._wait_healthy(kcm, f"https://127.0.0.1:{ports['kube-controller-manager']}/healthz", server_context, deadline)
        self._wait_healthy(sched, f"https://127.0.0.1:{ports['kube-scheduler']}/healthz", server_context, deadline)
        self._wait_healthy(kwok, f"https://127.0.0.1:{ports['kwok']}/healthz", server_context, deadline)

    def _api(self, api_server: str) -> httpx.Client:
        """A plain HTTPS client with the admin certificate, for the few bootstrap requests.

        Why not the kubernetes library: importing it costs seconds on a busy machine, and the
        bootstrap needs three resource paths over one kept-alive connection.
        """
        pki = Pki(self.state_dir / "pki")
        return httpx.Client(base_url=api_server, verify=self._ssl_context(pki, "admin"), timeout=30)

    @staticmethod
    def _create(api: httpx.Client, path: str, body: dict[str, Any]) -> None:
        response = api.post(path, json=body)
        if response.status_code not in (200, 201, 409):  # 409: exists already (a retried start)
            raise ClusterError(f"creating {body['kind']} {body['metadata']['name']} failed: HTTP {response.status_code} {response.text[:500]}")

    def _bootstrap_rbac(self, api_server: str) -> None:
        """kwok stands in for every kubelet; it gets cluster-admin through a binding on its group."""
        with self._api(api_server) as api:
            self._create(
                api,
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": KWOK_RBAC_NAME},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "dedicated:kwok"}],
                },
            )

    def _create_nodes(self, api_server: str, pools: PoolFile, deadline: float) -> list[str]:
        """Create every simulated node and wait until kwok reports all of them Ready."""
        manifests = node_manifests(pools)
        names = [m["metadata"]["name"] for m in manifests]
        with self._api(api_server) as api:
            for manifest in manifests:
                self._create(api, "/api/v1/nodes", manifest)
            pending = set(names)
            while time.monotonic() < deadline:
                for node in api.get("/api/v1/nodes").json().get("items", []):
                    conditions = node.get("status", {}).get("conditions") or []
                    if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                        pending.discard(node["metadata"]["name"])
                if not pending:
                    break
                time.sleep(0.1)
            if pending:
                raise ClusterError(
                    f"{len(pending)} simulated nodes did not become Ready in time ({', '.join(sorted(pending)[:5])}…); "
                    f"last lines of {self.log_file('kwok')}:\n{log_tail(self.log_file('kwok'))}"
                )
            # The controller manager creates each namespace's `default` ServiceAccount; pods
            # cannot be created before it exists, so wait for the one in `default`.
            while time.monotonic() < deadline:
                if api.get("/api/v1/namespaces/default/serviceaccounts/default").status_code == 200:
                    break
                time.sleep(0.1)
            else:
                raise ClusterError(
                    "the controller manager did not create the `default` ServiceAccount in time; last lines of "
                    f"{self.log_file('kube-controller-manager')}:\n{log_tail(self.log_file('kube-controller-manager'))}"
                )
        return names

    def _link_bin_dir(self, binaries: Binaries) -> None:
        """``<state>/bin``: kubectl, helm and the servers under their usual names, for PATH."""
        tmp = self.state_dir / "bin.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, path in binaries.as_dict().items():
            (tmp / name).symlink_to(path)
        shutil.rmtree(self.bin_dir, ignore_errors=True)
        os.replace(tmp, self.bin_dir)


class _ComponentDied(ClusterError):
    def __init__(self, record: ProcessRecord) -> None:
        super().__init__(f"{record.name} exited during start-up (log: {record.log})")
        self.record = record
