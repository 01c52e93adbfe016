"""A fault-injecting HTTP proxy in front of the local API server, for reliability tests.

Why a proxy and not a mock: the operator under test is the real process (``dedicated run``) talking
to the real API server; the proxy only sits on the wire. It listens on plain HTTP on 127.0.0.1
(the test hands the operator a kubeconfig that points there) and forwards every request over TLS
with the admin client certificate, streaming responses (watches included). Rules decide, per
request, to answer with an error instead (409 Conflict, 429 with Retry-After, 500, 503), to forward
the request and then *lose* the response (the write happened, the client sees a 500: the case that
makes non-idempotent clients duplicate objects), or to drop the connection. Every request is
recorded by verb and resource, so tests and the scale benchmark can count what the operator did
(writes per object, requests during a resync with nothing changed).

``impersonate`` adds Kubernetes impersonation headers upstream, so the operator's requests are
authorised as a given user or service account (the RBAC tests run the operator with exactly the
permissions its chart grants).

Standard library + httpx only; runs its own asyncio loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
import ssl
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import yaml

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-connection", "content-length", "host"}
_REASONS = {200: "OK", 201: "Created", 409: "Conflict", 429: "Too Many Requests", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
_K8S_REASON = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
               504: "Timeout"}


# --- request classification ---------------------------------------------------------------------


@dataclass(frozen=True)
class RequestInfo:
    """What a Kubernetes API request is about, parsed from method + path (like the API server's
    own RequestInfo): verb, group, resource, subresource, namespace and name."""

    method: str
    path: str
    query: dict[str, list[str]]
    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def what(self) -> str:
        """``resource`` or ``resource/subresource``."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS


def classify(method: str, target: str) -> RequestInfo:
    split = urlsplit(target)
    query = parse_qs(split.query)
    parts = [p for p in split.path.split("/") if p]
    method = method.upper()
    group = ""
    rest: list[str] = []
    if parts[:2] == ["api", "v1"]:
        rest = parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return RequestInfo(method, split.path, query, verb=method.lower())
    namespace = ""
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) >= 2 else ""
    sub = rest[2] if len(rest) >= 3 else ""
    if resource == "namespaces" and len(rest) == 2:
        name = rest[1]
    watch = query.get("watch", ["false"])[0] in ("true", "1")
    verb = {
        "GET": "watch" if watch else ("get" if name else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }.get(method, method.lower())
    return RequestInfo(method, split.path, query, verb, group, resource, sub, namespace, name)


# --- rules --------------------------------------------------------------------------------------


@dataclass
class Rule:
    """One fault: which requests it matches and what it does to them.

    ``action``: ``"status"`` answers ``status`` without forwarding; ``"lose-response"`` forwards
    (the API server acts) and then answers ``status`` instead of the real response; ``"drop"``
    closes the connection without an answer. ``times`` limits how often it fires (None: forever);
    ``probability`` makes it fire on a random share of the matching requests.
    """

    verbs: frozenset[str] | None = None
    resource: str | None = None  # "jobs", "quantizedmodels/status", ...
    name: str | re.Pattern[str] | None = None
    namespace: str | None = None
    action: str = "status"
    status: int = 500
    retry_after: int | None = None
    times: int | None = None
    probability: float = 1.0
    fired: int = 0
    predicate: Callable[[RequestInfo], bool] | None = None

    def matches(self, info: RequestInfo) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        if self.verbs is not None and info.verb not in self.verbs:
            return False
        if self.resource is not None and info.what != self.resource:
            return False
        if self.namespace is not None and info.namespace != self.namespace:
            return False
        if isinstance(self.name, str) and info.name != self.name:
            return False
        if isinstance(self.name, re.Pattern) and not self.name.fullmatch(info.name):
            return False
        if self.predicate is not None and not self.predicate(info):
            return False
        return True


@dataclass
class Record:
    at: float
    info: RequestInfo
    status: int
    fault: str | None
    user_agent: str = ""


@dataclass
class _State:
    rules: list[Rule] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _status_body(code: int, info: RequestInfo) -> bytes:
    reason = _K8S_REASON.get(code, "InternalError")
    message = {409: f"Operation cannot be fulfilled on {info.what} \"{info.name}\": the object has been modified; "
                    "please apply your changes to the latest version and try again (injected by the fault proxy)",
               429: "too many requests, please try again later (injected by the fault proxy)"}.get(
        code, f"injected {code} by the fault proxy")
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}).encode()


# --- the proxy ----------------------------------------------------------------------------------


class FaultProxy:
    """``with FaultProxy(kubeconfig) as proxy:`` -> ``proxy.url``, ``proxy.kubeconfig_for(path)``."""

    def __init__(self, upstream_kubeconfig: Path | str, *, impersonate: str | None = None,
                 impersonate_groups: Iterable[str] = (), seed: int = 0) -> None:
        cfg = yaml.safe_load(Path(upstream_kubeconfig).read_text())
        cluster = cfg["clusters"][0]["cluster"]
        user = cfg["users"][0]["user"]
        self.upstream = cluster["server"].rstrip("/")
        self._tmp = tempfile.TemporaryDirectory(prefix="faultproxy-")
        tmp = Path(self._tmp.name)
        ca = tmp / "ca.pem"
        ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        cert, key = tmp / "cert.pem", tmp / "key.pem"
        cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
        key.write_bytes(base64.b64decode(user["client-key-data"]))
        key.chmod(0o600)
        self._ssl = ssl.create_default_context(cafile=str(ca))
        self._ssl.load_cert_chain(str(cert), str(key))
        self.impersonate = impersonate
        self.impersonate_groups = list(impersonate_groups)
        self._state = _State()
        self._random = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._client: httpx.AsyncClient | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.paused = False  # True: every request is answered 503 (an API outage as clients see it)

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._started.wait(15):
            raise RuntimeError("the fault proxy did not start")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def main() -> None:
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
            self._client = httpx.AsyncClient(verify=self._ssl, timeout=httpx.Timeout(None, connect=10.0),
                                             limits=limits)
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=2**20)
            self.port = self._server.sockets[0].getsockname()[1]
            self._started.set()
            async with self._server:
                await self._server.serve_forever()

        try:
            loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass
        finally:
            loop.close()

    def stop(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._connections):
                writer.close()
            if self._client is not None:
                await self._client.aclose()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        except Exception:  # noqa: BLE001 (best effort at teardown)
            pass
        if self._thread is not None:
            self._thread.join(10)
        self._tmp.cleanup()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def kubeconfig_for(self, path: Path | str) -> Path:
        """A kubeconfig that reaches the API server through this proxy (no credentials needed)."""
        path = Path(path)
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "faultproxy", "cluster": {"server": self.url}}],
            "users": [{"name": "via-proxy", "user": {}}],
            "contexts": [{"name": "faultproxy", "context": {"cluster": "faultproxy", "user": "via-proxy"}}],
            "current-context": "faultproxy",
        }))
        return path

    def disconnect_all(self) -> None:
        """Close every client connection (watch streams included), as an API server restart would."""
        loop = self._loop
        if loop is None:
            return

        def close() -> None:
            for writer in list(self._connections):
                writer.close()

        loop.call_soon_threadsafe(close)

    # -- rules and records ---------------------------------------------------------------------

    def add_rule(self, rule: Rule | None = None, **kwargs: Any) -> Rule:
        rule = rule or Rule(**{k: (frozenset(v) if k == "verbs" and v is not None else v) for k, v in kwargs.items()})
        with self._state.lock:
            self._state.rules.append(rule)
        return rule

    def remove_rule(self, rule: Rule) -> None:
        with self._state.lock:
            if rule in self._state.rules:
                self._state.rules.remove(rule)

    def clear_rules(self) -> None:
        with self._state.lock:
            self._state.rules.clear()

    def records(self, since: float = 0.0) -> list[Record]:
        with self._state.lock:
            return [r for r in self._state.records if r.at >= since]

    def mark(self) -> float:
        """A timestamp to pass as ``since`` later."""
        return time.monotonic()

    def counts(self, since: float = 0.0, *, writes_only: bool = False) -> Counter:
        """Requests by (verb, resource[/subresource]) since ``since``."""
        return Counter((r.info.verb, r.info.what) for r in self.records(since)
                       if not writes_only or r.info.is_write)

    def writes_by_object(self, since: float = 0.0) -> Counter:
        """Write requests by (resource, namespace, name): the hot-loop detector."""
        return Counter((r.info.what, r.info.namespace, r.info.name) for r in self.records(since) if r.info.is_write)

    def _pick(self, info: RequestInfo) -> Rule | None:
        with self._state.lock:
            for rule in self._state.rules:
                if rule.matches(info) and (rule.probability >= 1.0 or self._random.random() < rule.probability):
                    rule.fired += 1
                    return rule
        return None

    def _record(self, info: RequestInfo, status: int, fault: str | None, agent: str) -> None:
        with self._state.lock:
            self._state.records.append(Record(time.monotonic(), info, status, fault, agent))

    # -- HTTP ----------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    return
                method, target, headers, body = request
                keep = await self._serve(method, target, headers, body, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return
        finally:
            self._connections.discard(writer)
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        body = b""
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                chunks.append(chunk[:-2])
            body = b"".join(chunks)
        return method, target, headers, body

    @staticmethod
    async def _write_simple(writer: asyncio.StreamWriter, code: int, body: bytes,
                            extra: dict[str, str] | None = None) -> None:
        head = [f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}", "Content-Type: application/json",
                f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()

    async def _serve(self, method: str, target: str, headers: dict[str, str], body: bytes,
                     writer: asyncio.StreamWriter) -> bool:
        info = classify(method, target)
        agent = headers.get("user-agent", "")
        rule = self._pick(info)
        if self.paused:
            self._record(info, 503, "paused", agent)
            await self._write_simple(writer, 503, _status_body(503, info))
            return True
        if rule is not None and rule.action == "drop":
            self._record(info, 0, "drop", agent)
            return False
        if rule is not None and rule.action == "status":
            extra = {"Retry-After": str(rule.retry_after)} if rule.retry_after is not None else None
            self._record(info, rule.status, "status", agent)
            await self._write_simple(writer, rule.status, _status_body(rule.status, info), extra)
            return True

        assert self._client is not None
        up_headers = {k: v for k, v in headers.items() if k not in _HOP_BY_HOP and not k.startswith("impersonate-")
                      and k != "authorization"}
        if self.impersonate:
            up_headers["Impersonate-User"] = self.impersonate
        up_req = self._client.build_request(method, self.upstream + target, headers=up_headers,
                                            content=body if body else None)
        if self.impersonate_groups:
            # httpx merges repeated headers; impersonation needs one header per group.
            up_req.headers = httpx.Headers([*up_req.headers.multi_items(),
                                            *(("Impersonate-Group", g) for g in self.impersonate_groups)])
        try:
            response = await self._client.send(up_req, stream=True)
        except httpx.HTTPError:
            self._record(info, 502, "upstream-unreachable", agent)
            await self._write_simple(writer, 503, _status_body(503, info))
            return True
        try:
            if rule is not None and rule.action == "lose-response":
                await response.aread()
                self._record(info, rule.status, f"lose-response (upstream {response.status_code})", agent)
                await self._write_simple(writer, rule.status, _status_body(rule.status, info))
                return True
            self._record(info, response.status_code, None, agent)
            head = [f"HTTP/1.1 {response.status_code} {response.reason_phrase or 'OK'}"]
            head += [f"{k}: {v}" for k, v in response.headers.multi_items() if k.lower() not in _HOP_BY_HOP]
            head.append("Transfer-Encoding: chunked")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            async for chunk in response.aiter_raw():
                if chunk:
                    writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        except httpx.HTTPError:
            return False  # upstream broke mid-stream (API server restart): end the client's stream too
        finally:
            await response.aclose()
