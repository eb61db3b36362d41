"""The Kubernetes manifests (k8s/), rendered by kustomize and checked offline.

Each overlay is rendered once with `kubectl kustomize` (skipped, saying why, when kubectl
is missing). Every object must validate against the Kubernetes 1.31 schemas in strict mode
(`kubernetes-validate`, whose schemas ship in its wheel), and what the ConfigMaps carry must
be what the repo ships: the Envoy YAML byte for byte, accepted by the real `envoy --mode
validate`; the router settings, accepted by `inference-router check` together with that
Envoy YAML; the exemplar set. The pod's promises (native sidecars, the restricted security
context, the provider keys reaching Envoy alone, a grace period longer than the router's
drain) are asserted on the rendered Deployment, so an overlay's patch cannot undo them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from sidecar.config.envoy import load_catalogue
from sidecar.config.settings import Settings, load_settings
from sidecar.devstack.stack import envoy_binary
from tests.integration.kube import (
    Manifest,
    as_list,
    config_file,
    container,
    get_in,
    pod_spec,
    render,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.31.0"
ENVOY_FILES = {
    "dev": ROOT / "envoy" / "local.yaml",
    "production": ROOT / "envoy" / "production.yaml",
}
EXEMPLARS = ROOT / "sidecar" / "data" / "exemplars.jsonl"
SECRETS_DIR = "/etc/envoy/secrets/"
SIDECARS = ("router", "envoy")


def sds_secrets(envoy_config: object) -> Iterator[tuple[str, str]]:
    """(secret name, file path) of every SDS secret the Envoy config reads from a file."""
    if isinstance(envoy_config, dict):
        path = (
            get_in(envoy_config, "sds_config", "path_config_source", "path")
            if "sds_config" in envoy_config
            else None
        )
        if isinstance(path, str):
            yield str(envoy_config["name"]), path
        for value in envoy_config.values():
            yield from sds_secrets(value)
    elif isinstance(envoy_config, list):
        for value in envoy_config:
            yield from sds_secrets(value)


@pytest.fixture(scope="module", params=sorted(ENVOY_FILES))
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Manifest]]:
    """(name, rendered objects) of each overlay."""
    name = str(request.param)
    return name, render(name)


def test_every_object_validates_against_the_kubernetes_schemas(
    overlay: tuple[str, list[Manifest]],
) -> None:
    _, objects = overlay
    assert len(objects) >= 8
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            name = get_in(obj, "metadata", "name")
            pytest.fail(f"{obj['kind']} {name}: {exc.message} at {list(exc.path)}")


def test_envoy_config_is_the_repo_file_and_envoy_accepts_it(
    overlay: tuple[str, list[Manifest]], tmp_path: Path
) -> None:
    name, objects = overlay
    text = config_file(objects, "envoy-config", "envoy.yaml")
    assert text == ENVOY_FILES[name].read_text()
    # Envoy refuses SDS paths that do not exist; point them at stand-in secrets here.
    for secret, path in sds_secrets(yaml.safe_load(text)):
        assert path.startswith(SECRETS_DIR), path
        local = tmp_path / path.removeprefix(SECRETS_DIR)
        resource = {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": secret,
            "generic_secret": {"secret": {"inline_string": "Bearer test"}},
        }
        local.write_text(yaml.safe_dump({"resources": [resource]}))
    config = tmp_path / "envoy.yaml"
    config.write_text(text.replace(SECRETS_DIR, f"{tmp_path}/"))
    done = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_router_check_accepts_the_rendered_settings(
    overlay: tuple[str, list[Manifest]], tmp_path: Path
) -> None:
    _, objects = overlay
    settings = tmp_path / "router.yaml"
    settings.write_text(config_file(objects, "router-settings", "router.yaml"))
    envoy = tmp_path / "envoy.yaml"
    envoy.write_text(config_file(objects, "envoy-config", "envoy.yaml"))
    argv = [sys.executable, "-m", "sidecar", "check", "--config", str(settings)]
    argv += ["--envoy-config", str(envoy)]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{envoy}: OK" in done.stdout


def test_exemplars_are_the_shipped_set(overlay: tuple[str, list[Manifest]]) -> None:
    _, objects = overlay
    assert config_file(objects, "router-exemplars", "exemplars.jsonl") == EXEMPLARS.read_text()


def _settings(objects: list[Manifest], tmp_path: Path) -> Settings:
    path = tmp_path / "router.yaml"
    path.write_text(config_file(objects, "router-settings", "router.yaml"))
    return load_settings(path, {})


def _mounts(spec: dict[str, object], name: str) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in as_list(container(spec, name).get("volumeMounts"))}  # type: ignore[misc]


def test_the_pod_keeps_its_promises(overlay: tuple[str, list[Manifest]], tmp_path: Path) -> None:
    _, objects = overlay
    spec = pod_spec(objects)
    settings = _settings(objects, tmp_path)
    # Native sidecars: started in order before the app, stopped after it; a plain init
    # container (dev: the one that writes Envoy's traced config) runs to its end first.
    init = as_list(spec["initContainers"])
    sidecars = [c["name"] for c in init if c.get("restartPolicy") == "Always"]
    assert sidecars == list(SIDECARS)
    assert [c["name"] for c in init][-len(SIDECARS) :] == list(SIDECARS)
    assert get_in(spec, "securityContext", "runAsNonRoot") is True
    for each in as_list(spec.get("initContainers")) + as_list(spec["containers"]):
        context = each["securityContext"]
        assert get_in(context, "readOnlyRootFilesystem") is True, each["name"]
        assert get_in(context, "allowPrivilegeEscalation") is False, each["name"]
        assert get_in(context, "capabilities", "drop") == ["ALL"], each["name"]
        assert "limits" in get_in(each, "resources"), each["name"]  # type: ignore[operator]
    grace = spec["terminationGracePeriodSeconds"]
    assert isinstance(grace, int) and grace > settings.shutdown_grace_s
    router = container(spec, "router")
    assert get_in(router, "startupProbe", "grpc", "port") == 50051
    assert (
        get_in(router, "readinessProbe", "grpc", "service")
        == "envoy.service.ext_proc.v3.ExternalProcessor"
    )
    assert get_in(router, "livenessProbe", "grpc", "port") == 50051
    assert settings.listen.endswith(":50051")
    # The files the settings name are where the ConfigMaps are mounted.
    router_mounts = _mounts(spec, "router")
    assert router_mounts[str(settings.semantic.exemplars).rsplit("/", 1)[0]] == "router-exemplars"
    assert router_mounts[str(settings.envoy_config).rsplit("/", 1)[0]] == "envoy-config"


def test_provider_keys_reach_envoy_alone() -> None:
    spec = pod_spec(render("production"))
    secrets = {v["name"] for v in as_list(spec["volumes"]) if "secret" in v}
    assert secrets == {"provider-keys"}
    envoy_config = yaml.safe_load(ENVOY_FILES["production"].read_text())
    paths = {path for _, path in sds_secrets(envoy_config)}
    assert paths and all(path.startswith(SECRETS_DIR) for path in paths)
    assert _mounts(spec, "envoy")[SECRETS_DIR.rstrip("/")] == "provider-keys"
    for each in as_list(spec.get("initContainers")) + as_list(spec["containers"]):
        if each["name"] != "envoy":
            assert not secrets & set(_mounts(spec, str(each["name"])).values()), each["name"]


def test_dev_simulators_match_the_local_envoy_clusters() -> None:
    spec = pod_spec(render("dev"))
    config = yaml.safe_load(ENVOY_FILES["dev"].read_text())
    clusters = {c["name"]: c for c in as_list(get_in(config, "static_resources", "clusters"))}
    catalogue = load_catalogue(ENVOY_FILES["dev"])
    for provider in catalogue.providers:
        endpoint = as_list(get_in(clusters[provider.cluster], "load_assignment", "endpoints"))[0]
        address = get_in(
            as_list(endpoint["lb_endpoints"])[0], "endpoint", "address", "socket_address"
        )
        args = container(spec, provider.cluster)["args"]
        assert isinstance(args, list)
        flags = dict(zip(args[1::2], args[2::2], strict=False))
        assert flags["--name"] == provider.cluster
        assert flags["--model"] == provider.model
        assert flags["--host"] == get_in(address, "address")
        assert flags["--port"] == str(get_in(address, "port_value"))
        assert flags["--ttft-ms"] == str(round(provider.ttft_s * 1000))
        assert float(flags["--tokens-per-s"]) == provider.tokens_per_s
        assert int(flags["--concurrency"]) == provider.max_concurrency


def test_dev_prometheus_scrapes_every_simulator() -> None:
    objects = render("dev")
    config = yaml.safe_load(config_file(objects, "dev-prometheus", "prometheus.yaml"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    scraped = {
        (target, group["labels"]["cluster"])
        for group in jobs["simulators"]["static_configs"]
        for target in group["targets"]
    }
    catalogue = load_catalogue(ENVOY_FILES["dev"])
    wanted = {
        (str(provider.metrics_url).split("://", 1)[1].split("/", 1)[0], provider.cluster)
        for provider in catalogue.providers
    }
    assert scraped == wanted
    # And the pod's own metrics, on the ports the router settings and Envoy YAML name.
    settings = yaml.safe_load(config_file(objects, "router-settings", "router.yaml"))
    router_port = str(settings["admin_listen"]).rsplit(":", 1)[1]
    assert jobs["router"]["static_configs"][0]["targets"] == [f"127.0.0.1:{router_port}"]
    envoy = yaml.safe_load(ENVOY_FILES["dev"].read_text())
    metrics = next(
        x for x in as_list(get_in(envoy, "static_resources", "listeners")) if x["name"] == "metrics"
    )
    envoy_port = get_in(metrics, "address", "socket_address", "port_value")
    assert jobs["envoy"]["static_configs"][0]["targets"] == [f"127.0.0.1:{envoy_port}"]


def test_the_envoy_image_is_the_release_the_tests_run(overlay: tuple[str, list[Manifest]]) -> None:
    """The pod's Envoy is the minor release whose binary validated its config above."""
    _, objects = overlay
    image = str(container(pod_spec(objects), "envoy")["image"])
    done = subprocess.run(
        [envoy_binary(), "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    found = re.search(r"/(\d+)\.(\d+)\.\d+/", done.stdout)
    assert found, done.stdout
    assert image == f"envoyproxy/envoy:v{found[1]}.{found[2]}-latest"
