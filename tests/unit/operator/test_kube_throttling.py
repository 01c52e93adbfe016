"""``Kube.request`` honours the API server's Retry-After on 429, as client-go does, and gives up
after a few tries or when the wait asked for is long (the reconcile queue's backoff takes over)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from dedicated.operator import kube as kube_module
from dedicated.operator.kube import Kube, KubeError


class ScriptedApi:
    """An ApiClient stand-in answering from a script of (status, headers, body) tuples."""

    def __init__(self, answers: list[tuple[int, dict, bytes]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def param_serialize(self, method, resource_path, header_params, body, auth_settings):
        return (method, resource_path)

    def call_api(self, method, path, _request_timeout=None):
        self.calls.append(method)
        status, headers, body = self.answers.pop(0)
        return SimpleNamespace(status=status, headers=headers, read=lambda: body)


THROTTLED = (429, {"Retry-After": "1"}, b'{"reason": "TooManyRequests", "message": "slow down"}')
OK = (200, {}, b'{"kind": "Pod"}')


def test_429_with_retry_after_is_waited_out_and_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(kube_module.time, "sleep", slept.append)
    api = ScriptedApi([THROTTLED, THROTTLED, OK])
    assert Kube(api).request("GET", "/api/v1/pods/x") == {"kind": "Pod"}
    assert slept == [1.0, 1.0] and api.calls == ["GET"] * 3


def test_persistent_throttling_fails_after_a_few_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_module.time, "sleep", lambda s: None)
    api = ScriptedApi([THROTTLED] * 10)
    with pytest.raises(KubeError) as err:
        Kube(api).request("POST", "/api/v1/namespaces/n/pods", body={})
    assert err.value.status == 429 and err.value.retry_after == 1.0
    assert len(api.calls) == kube_module.THROTTLE_ATTEMPTS


def test_no_retry_without_retry_after_for_writes_or_for_long_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_module.time, "sleep", lambda s: pytest.fail("must not wait"))
    cases = [
        ("GET", (500, {}, b"")),  # no Retry-After: the queue's backoff decides
        ("PATCH", (503, {"Retry-After": "1"}, b"")),  # a write that may have happened: not repeated here
        ("GET", (429, {"Retry-After": "3600"}, b"")),  # longer than worth holding a worker for
    ]
    for method, answer in cases:
        api = ScriptedApi([answer, OK])
        start = time.monotonic()
        with pytest.raises(KubeError):
            Kube(api).request(method, "/x")
        assert len(api.calls) == 1 and time.monotonic() - start < 1
