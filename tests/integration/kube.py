"""Rendering the k8s/ overlays with kustomize, and reading the rendered objects (tests)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ROOT / "k8s" / "overlays"

Manifest = dict[str, object]


def render(overlay: str) -> list[Manifest]:
    """The overlay's objects, as `kubectl kustomize` renders them."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render k8s/ with kustomize")
    # The generators read envoy/ and sidecar/data/ in place, outside the kustomization root.
    argv = [kubectl, "kustomize", "--load-restrictor=LoadRestrictionsNone", str(OVERLAYS / overlay)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(objects: list[Manifest], kind: str, prefix: str) -> Manifest:
    """The one object of `kind` whose name starts with `prefix` (generators add a hash)."""
    found = [
        obj for obj in objects
        if obj["kind"] == kind and str(get_in(obj, "metadata", "name")).startswith(prefix)
    ]  # fmt: skip
    assert len(found) == 1, f"want one {kind} {prefix}*, found {len(found)}"
    return found[0]


def get_in(obj: object, *keys: str) -> object:
    """obj[keys[0]][keys[1]]...; fails the test when a parent is not a mapping."""
    for key in keys:
        assert isinstance(obj, dict), f"{key}: parent is not a mapping"
        obj = obj.get(key)
    return obj


def as_list(obj: object) -> list[dict[str, object]]:
    """A list of mappings, or [] for a missing key."""
    if obj is None:
        return []
    assert isinstance(obj, list)
    return obj


def config_file(objects: list[Manifest], prefix: str, key: str) -> str:
    """The text of one file carried by a generated ConfigMap."""
    text = get_in(find(objects, "ConfigMap", prefix), "data", key)
    assert isinstance(text, str), f"ConfigMap {prefix}* has no {key}"
    return text


def pod_spec(objects: list[Manifest]) -> dict[str, object]:
    """The router Deployment's pod spec."""
    spec = get_in(find(objects, "Deployment", "inference-router"), "spec", "template", "spec")
    assert isinstance(spec, dict)
    return spec


def container(spec: dict[str, object], name: str) -> dict[str, object]:
    """The container or init container called `name`."""
    every = as_list(spec.get("initContainers")) + as_list(spec.get("containers"))
    named = [c for c in every if c["name"] == name]
    assert len(named) == 1, f"want one container {name}"
    return named[0]
