"""The kwok stage file: well-formed, and every annotation it reads is documented."""

from __future__ import annotations

import re

import yaml

from dedicated.localcluster.build import repo_root
from dedicated.localcluster.cluster import STAGES_FILE


def _stages() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(STAGES_FILE.read_text()) if doc]


def test_stages_are_well_formed_and_unique() -> None:
    stages = _stages()
    names = [s["metadata"]["name"] for s in stages]
    assert len(names) == len(set(names))
    for stage in stages:
        assert stage["apiVersion"] == "kwok.x-k8s.io/v1alpha1" and stage["kind"] == "Stage"
        assert stage["spec"]["resourceRef"]["kind"] in ("Node", "Pod")
        assert stage["spec"]["selector"]["matchExpressions"]
        assert stage["spec"]["steps"]
    pods = {s["metadata"]["name"] for s in stages if s["spec"]["resourceRef"]["kind"] == "Pod"}
    assert {"dedicated-pod-run", "dedicated-pod-complete", "dedicated-pod-fail", "dedicated-pod-remove"} <= pods


def test_failure_and_completion_are_mutually_exclusive() -> None:
    by_name = {s["metadata"]["name"]: s["spec"]["selector"]["matchExpressions"] for s in _stages()}
    key = '.metadata.annotations["dedicated.dev/simulate-failure"]'
    complete = {e["key"]: e["operator"] for e in by_name["dedicated-pod-complete"]}
    fail = {e["key"]: e["operator"] for e in by_name["dedicated-pod-fail"]}
    assert complete[key] == "DoesNotExist" and fail[key] == "Exists"


def test_every_annotation_is_documented() -> None:
    annotations = set(re.findall(r"dedicated\.dev/simulate-[a-z-]+", STAGES_FILE.read_text()))
    assert annotations >= {"dedicated.dev/simulate-failure", "dedicated.dev/simulate-exit-code"}
    docs = (repo_root() / "docs" / "local-cluster.md").read_text()
    assert annotations <= set(re.findall(r"dedicated\.dev/simulate-[a-z-]+", docs))
