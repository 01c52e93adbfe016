"""The operator process: kopf settings, credentials, the reconcile queue, and ``dedicated run``.

* Peering: replicas share kopf's ``ClusterKopfPeering`` (or ``KopfPeering`` per namespace) object
  ``dedicated-operator`` (the chart installs the CRDs and the object). Each replica gets a random
  priority at start, so exactly one is the highest: kopf pauses the others' watch streams, and the
  reconcile queue's gate holds their work. Peering is mandatory unless ``--standalone`` (local
  development, tests): a missing peering object pauses the operator rather than letting two
  replicas act.
* Storage: the handlers are level-triggered event handlers and need no per-object state, so kopf
  writes nothing on our objects in normal operation; its progress and diff-base storages are
  still moved to annotations under our own prefix (``llm.dedicated.dev/``) so nothing of
  ``kopf.zalando.org`` ever appears on user objects.
* Events: our own Events (condition transitions) are posted by ``Kube.post_event`` with component
  ``dedicated-operator``; kopf's own Events (framework errors) use the same component name and
  only from WARNING up.
* Server-side apply: field manager ``dedicated-operator``.
* Watches of owned objects use server-side label selectors, so the operator only receives (and
  holds in memory) its own Deployments, Services, Jobs and the model-facts ConfigMaps.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from .api.crd import GROUP
from .builders.naming import MANAGED_BY
from .handlers import build_registry
from .handlers.context import ENDPOINT, QUANTIZED_MODEL, OperatorContext, Options, PeeringGate, Pools
from .handlers.endpoint import reconcile_endpoint
from .handlers.queue import ReconcileQueue
from .handlers.quantizedmodel import reconcile_quantizedmodel
from .images import image_config
from .kube import FIELD_MANAGER, Kube
from .modelfacts import FACTS_LABEL
from .pools import PoolConfigError

log = logging.getLogger("dedicated.operator")

PEERING_NAME = "dedicated-operator"
DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"

#: kopf's peering CRDs (kopf.dev/v1), for the chart and for tests that run two replicas.
PEERING_CRDS: list[dict[str, Any]] = [
    {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev"},
        "spec": {
            "scope": scope, "group": "kopf.dev",
            "names": {"kind": kind, "plural": plural, "singular": plural[:-1]},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                "type": "object", "properties": {
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}],
        },
    }
    for kind, plural, scope in (("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
                                ("KopfPeering", "kopfpeerings", "Namespaced"))
]


@dataclass
class RuntimeConfig:
    options: Options
    kubeconfig: Path | None = None  # None: in-cluster service account, else $KUBECONFIG / ~/.kube/config
    context: str | None = None
    namespaces: Sequence[str] = ()
    all_namespaces: bool = True
    standalone: bool = False
    peering_name: str = PEERING_NAME
    priority: int | None = None  # None: random (one replica wins)
    liveness_endpoint: str | None = None
    log_level: str = "INFO"
    extra: dict[str, Any] = field(default_factory=dict)


def make_api_client(kubeconfig: Path | None, context: str | None = None) -> k8s_client.ApiClient:
    if kubeconfig is not None:
        return k8s_config.new_client_from_config(config_file=str(kubeconfig), context=context)
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        k8s_config.load_incluster_config()
        return k8s_client.ApiClient()
    return k8s_config.new_client_from_config(context=context)


def login_from(api: k8s_client.ApiClient):
    """A kopf login handler with the very credentials of ``api`` (one source of truth for both the
    kubernetes client and kopf's own aiohttp client)."""
    cfg = api.configuration

    def login(**_: Any) -> kopf.ConnectionInfo:
        token = None
        scheme = None
        auth = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
        if auth:
            scheme, _, token = auth.partition(" ") if " " in auth else ("Bearer", "", auth)
        return kopf.ConnectionInfo(
            server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
            certificate_path=cfg.cert_file, private_key_path=cfg.key_file, scheme=scheme, token=token,
            default_namespace="default")

    return login


def configure(settings: kopf.OperatorSettings, cfg: RuntimeConfig) -> None:
    settings.peering.name = cfg.peering_name
    settings.peering.standalone = cfg.standalone
    settings.peering.mandatory = not cfg.standalone
    settings.peering.clusterwide = cfg.all_namespaces
    settings.peering.stealth = True
    if cfg.extra.get("priority") is not None:
        settings.peering.priority = cfg.extra["priority"]
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.posting.reporting_component = FIELD_MANAGER
    settings.posting.reporting_instance = cfg.options.identity[:128]
    settings.posting.level = logging.WARNING
    settings.posting.event_name_prefix = "dedicated-operator-"
    managed = f"app.kubernetes.io/managed-by={MANAGED_BY}"
    settings.watching.label_selectors["apps", "v1", "deployments"] = managed
    settings.watching.label_selectors["", "v1", "services"] = managed
    settings.watching.label_selectors["batch", "v1", "jobs"] = managed
    settings.watching.label_selectors["", "v1", "configmaps"] = FACTS_LABEL
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10


def _peers_reader(kube: Kube, cfg: RuntimeConfig):
    if cfg.standalone:
        return None
    if cfg.all_namespaces:
        path = f"/apis/kopf.dev/v1/clusterkopfpeerings/{cfg.peering_name}"
    else:
        path = f"/apis/kopf.dev/v1/namespaces/{cfg.namespaces[0]}/kopfpeerings/{cfg.peering_name}"

    def read() -> dict[str, Any] | None:
        return (kube.request("GET", path, what="kopfpeerings") or {}).get("status")

    return read


def build_context(cfg: RuntimeConfig, api: k8s_client.ApiClient | None = None) -> OperatorContext:
    pools = Pools(cfg.options.pools_file)  # a bad pool file is reported before any connection
    api = api or make_api_client(cfg.kubeconfig, cfg.context)
    kube = Kube(api)
    kube.event_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="events")
    ctx = OperatorContext(kube=kube, options=cfg.options, pools=pools)
    priority = cfg.priority if cfg.priority is not None else secrets.randbelow(2**31 - 1)
    cfg.extra["priority"] = priority
    ctx.gate = PeeringGate(_peers_reader(kube, cfg), cfg.options.identity, priority)
    ctx.queue = ReconcileQueue(
        {ENDPOINT: lambda ns, name: reconcile_endpoint(ctx, ns, name),
         QUANTIZED_MODEL: lambda ns, name: reconcile_quantizedmodel(ctx, ns, name)},
        workers=cfg.options.workers, gate=ctx.gate)
    return ctx


async def _housekeeping(ctx: OperatorContext) -> None:
    """Pool-file reloads (re-plan everything when it changes) and the periodic resync."""
    loop = asyncio.get_running_loop()
    last_resync = loop.time()
    while True:
        await asyncio.sleep(5.0)
        changed = await asyncio.to_thread(ctx.pools.refresh)
        if changed or loop.time() - last_resync >= ctx.options.resync_seconds:
            last_resync = loop.time()
            n = ctx.resync_all()
            log.debug("resync: %d objects enqueued%s", n, " (pool configuration changed)" if changed else "")


async def serve(cfg: RuntimeConfig, *, ctx: OperatorContext | None = None, stop_flag: Any = None,
                ready_flag: Any = None) -> None:
    """Run the operator until ``stop_flag`` is set (or the task is cancelled)."""
    ctx = ctx or build_context(cfg)
    settings = kopf.OperatorSettings()
    configure(settings, cfg)
    registry = build_registry(ctx, login=login_from(ctx.kube.api))
    background = [asyncio.create_task(ctx.queue.run(), name="reconcile-queue"),
                  asyncio.create_task(_housekeeping(ctx), name="housekeeping")]
    try:
        await kopf.operator(
            # Peering is configured in ``settings`` only: kopf's ``peering_name=`` argument would
            # also force mandatory peering, even for a standalone operator.
            registry=registry, settings=settings, identity=cfg.options.identity,
            clusterwide=cfg.all_namespaces, namespaces=() if cfg.all_namespaces else list(cfg.namespaces),
            liveness_endpoint=cfg.liveness_endpoint, stop_flag=stop_flag, ready_flag=ready_flag)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if ctx.kube.event_executor is not None:
            ctx.kube.event_executor.shutdown(wait=False)  # queued Events still go out


class OperatorThread:
    """The operator in a background thread with its own event loop (tests, benchmarks).

    ``stop()`` sets kopf's stop flag and joins; ``ctx`` exposes the queue, the request counters
    and ``resync_all()``.
    """

    def __init__(self, cfg: RuntimeConfig, api: k8s_client.ApiClient | None = None) -> None:
        self.cfg = cfg
        self.ctx = build_context(cfg, api)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="operator", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(serve(self.cfg, ctx=self.ctx, stop_flag=self._stop, ready_flag=self._ready))
        except BaseException as err:  # noqa: BLE001 (reported to the test through .error)
            self.error = err
            self._ready.set()

    def start(self, timeout: float = 60.0) -> OperatorThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the operator did not become ready")
        if self.error is not None:
            raise RuntimeError(f"the operator failed to start: {self.error}") from self.error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> OperatorThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --- command line -------------------------------------------------------------------------------


def _load_image_overrides(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the image configuration must be a mapping")
    images = data.get("images", data)
    return {str(k): str(v) for k, v in images.items()}


def _command(args: argparse.Namespace) -> int:
    if args.print_peering_crds:
        sys.stdout.write(yaml.safe_dump_all(PEERING_CRDS, sort_keys=False))
        return 0
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kopf.objects", "urllib3", "kubernetes", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.pools:
        print("error: --pools FILE is required (or $DEDICATED_POOLS)", file=sys.stderr)
        return 2
    try:
        images = image_config(_load_image_overrides(args.images))
        options = Options(pools_file=Path(args.pools), images=images,
                          volume_root=Path(args.volume_root) if args.volume_root else None,
                          workers=args.workers, resync_seconds=args.resync_seconds)
        if args.identity:
            options.identity = args.identity
        cfg = RuntimeConfig(options=options, kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
                            context=args.context, namespaces=args.namespace or (),
                            all_namespaces=not args.namespace, standalone=args.standalone,
                            peering_name=args.peering_name, priority=args.priority,
                            liveness_endpoint=args.liveness or None, log_level=args.log_level)
        ctx = build_context(cfg)
    except (PoolConfigError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except k8s_config.ConfigException as err:
        print(f"error: no usable Kubernetes credentials ({err}); pass --kubeconfig or run in a cluster",
              file=sys.stderr)
        return 2
    log.info("operator %s starting: %s, pools %s (%s), peering %s", cfg.options.identity,
             "all namespaces" if cfg.all_namespaces else ", ".join(cfg.namespaces), args.pools,
             ", ".join(p.name for p in ctx.pools.config.pools),
             "off (standalone)" if cfg.standalone else f"{cfg.peering_name} priority {cfg.extra['priority']}")
    try:
        asyncio.run(serve(cfg, ctx=ctx))
    except KeyboardInterrupt:
        pass
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run the operator (DedicatedEndpoint and QuantizedModel controllers)",
        description="Runs the kopf operator against the cluster of the kubeconfig (or in-cluster credentials).")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG") or None,
                        help="kubeconfig file (default: $KUBECONFIG, then in-cluster, then ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("--namespace", "-n", action="append",
                        help="watch only this namespace (repeatable); default: all namespaces")
    parser.add_argument("--all-namespaces", "-A", action="store_true", help="watch all namespaces (the default)")
    parser.add_argument("--pools", default=os.environ.get("DEDICATED_POOLS"),
                        help="node-pool configuration YAML (operator.pools; e.g. a mounted ConfigMap key); "
                             "reloaded when it changes")
    parser.add_argument("--images", default=os.environ.get("DEDICATED_IMAGES"),
                        help="YAML mapping of image settings (serving, quantize, pullPolicy, runtimeClassName); "
                             "$DEDICATED_*_IMAGE variables apply too")
    parser.add_argument("--volume-root", default=os.environ.get("DEDICATED_VOLUME_ROOT"),
                        help="directory where model volumes are readable as <root>/<claim>/<path> "
                             "(otherwise model-facts ConfigMaps describe them)")
    parser.add_argument("--standalone", action="store_true",
                        help="no peering (local development and tests); never with more than one replica")
    parser.add_argument("--peering-name", default=PEERING_NAME, help="kopf peering object name")
    parser.add_argument("--priority", type=int, help="peering priority (default: random, so one replica wins)")
    parser.add_argument("--identity", help="this replica's identity in the peering object (default: host-pid)")
    parser.add_argument("--liveness", default=os.environ.get("DEDICATED_LIVENESS", DEFAULT_LIVENESS),
                        help=f"liveness endpoint URL (default {DEFAULT_LIVENESS}; empty: none)")
    parser.add_argument("--workers", type=int, default=4, help="reconcile worker threads")
    parser.add_argument("--resync-seconds", type=float, default=600.0, help="periodic full resync interval")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--print-peering-crds", action="store_true",
                        help="print kopf's peering CRDs (for installing by hand) and exit")
    parser.set_defaults(handler=_command)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dedicated.operator.runtime [options]``: the same as ``dedicated run``, without
    importing the other commands' modules (some import torch: ~500 MiB the operator never needs)."""
    parser = argparse.ArgumentParser(prog="python -m dedicated.operator.runtime")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["run", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
