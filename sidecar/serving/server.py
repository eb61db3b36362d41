"""The sidecar process: gRPC (ext_proc, router API, health) plus the admin HTTP port.

Start-up order matters for Kubernetes: everything is loaded and checked (settings,
catalogue, model, index) before the port opens, and health says SERVING only then.
Shutdown is the reverse: health flips to NOT_SERVING, in-flight streams get a grace
period, then the server stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc
from aiohttp import web
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from inference_router.v1 import feeds_pb2_grpc, router_pb2_grpc
from sidecar.config.envoy import (
    catalogue_from_envoy_config,
    ext_proc_max_message_timeout_s,
    load_envoy_yaml,
)
from sidecar.config.settings import Settings
from sidecar.errors import ConfigError
from sidecar.feeds.access_log import AccessLogReceiver
from sidecar.feeds.poller import Poller
from sidecar.serving.api import RouterApi
from sidecar.serving.cascade import Cascade
from sidecar.serving.cascade_filter import CascadeFilter
from sidecar.serving.composition import (
    SemanticFactory,
    SemanticParts,
    build_cascade,
    build_feeds,
    build_semantic,
    passive_learner,
)
from sidecar.serving.explain import EXPLAIN_PATH, Handler, explain_handler
from sidecar.serving.extproc import ExternalProcessor
from sidecar.serving.feed_api import FeedApi
from sidecar.serving.live_view import DecisionLog, LiveView
from sidecar.serving.metrics import RouterMetrics
from sidecar.serving.service import RoutingService
from sidecar.serving.tracing import stage_timer, start_tracing

log = logging.getLogger(__name__)

# Headroom over the largest body Envoy forwards, for the ext_proc envelope and headers.
_GRPC_ENVELOPE_BYTES = 256 * 1024


@dataclass
class Readiness:
    """Whether the sidecar wants traffic; gRPC health and the admin /readyz both say it."""

    serving: bool = False


@dataclass
class RunningSidecar:
    """Handles to a started sidecar, for tests and the entry point."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    readiness: Readiness
    admin: web.AppRunner
    port: int
    admin_port: int
    semantic: SemanticParts | None
    feeds: tuple[Poller, ...] = ()
    access_log: AccessLogReceiver | None = None
    stop_tracing: Callable[[], None] = lambda: None
    cascade: Cascade | None = None

    async def stop(self, grace_s: float) -> None:
        """Drain: report NOT_SERVING, let in-flight streams finish, then stop."""
        self.readiness.serving = False
        await self.health.enter_graceful_shutdown()
        if self.access_log is not None:
            self.access_log.close()  # Envoy's log streams never end by themselves
        try:
            await self.server.stop(grace_s)
        finally:
            for feed in self.feeds:
                await feed.stop()
            if self.cascade is not None:
                await self.cascade.close()
            await self.admin.cleanup()
            if self.semantic is not None:
                await self.semantic.close()
            # Flushes the spans still queued (a blocking export: off the loop).
            await asyncio.to_thread(self.stop_tracing)


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


async def start_sidecar(
    settings: Settings,
    semantic_factory: SemanticFactory = build_semantic,
    environ: Mapping[str, str] | None = None,
) -> RunningSidecar:
    """Load everything, open the ports and report SERVING.

    Tracing follows the OTEL_* variables of `environ` (the process environment by default).
    """
    envoy_config = load_envoy_yaml(settings.envoy_config)
    catalogue = catalogue_from_envoy_config(envoy_config, str(settings.envoy_config))
    learner = passive_learner(settings.passive_feed, catalogue)
    board, feeds = build_feeds(settings, envoy_config, catalogue, learner)
    semantic = await semantic_factory(settings)
    metrics = RouterMetrics()
    tracing = start_tracing(os.environ if environ is None else environ)
    timer = stage_timer(tracing.tracer, metrics.stage_seconds)
    if semantic is not None:
        metrics.watch_classifier(semantic.classifier.expected_wait_s)
        semantic.classifier.time_stages(timer)
    service = RoutingService(
        table=settings.routing_table(),
        catalogue=catalogue,
        snapshot=board.snapshot,
        classifier=semantic.classifier if semantic else None,
        log_prompts=settings.log_prompts,
        on_error=metrics.error,
        stage_timer=timer,
    )
    limit = settings.max_body_bytes + _GRPC_ENVELOPE_BYTES
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # gRPC sets SO_REUSEPORT by default: a second sidecar on the same port would
            # start silently and share the traffic. Refuse instead.
            ("grpc.so_reuseport", 0),
        ]
    )
    built = build_cascade(settings, envoy_config, catalogue, semantic, metrics.cascade_outcome)
    cascade = built[0] if built is not None else None
    processor = ExternalProcessor(
        service,
        metrics,
        max_message_timeout_s=ext_proc_max_message_timeout_s(envoy_config),
        tracer=tracing.tracer,
        cascade=cascade,
        cascade_filter=(
            CascadeFilter(built[0], built[1], metrics.cascade_check_seconds)
            if built is not None
            else None
        ),
    )
    ext_grpc.add_ExternalProcessorServicer_to_server(processor, server)
    metrics.watch_streams(lambda: processor.open_streams)
    if semantic is not None and settings.semantic.encoder_max_streams:
        limit = settings.semantic.encoder_max_streams
        semantic.classifier.shed_when(lambda: processor.open_streams > limit)
    router_pb2_grpc.add_RouterServicer_to_server(  # type: ignore[no-untyped-call]
        RouterApi(service, metrics, semantic.reload_index if semantic else None), server
    )
    access_log = None if learner is None else AccessLogReceiver(learner)
    if learner is not None:
        # Every request sent on counts as unanswered until Envoy logs its attempt.
        metrics.on_decided(lambda decision, _: learner.sent(decision.upstream, time.monotonic()))
    metrics.watch_providers(catalogue, board.snapshot)
    metrics.watch_feeds(board, feeds, access_log)
    decisions = DecisionLog()
    metrics.on_decided(decisions.record)
    live = LiveView(catalogue, board.snapshot, board, decisions)
    if access_log is not None:
        # Envoy's router streams its log of upstream attempts here (envoy/*.yaml).
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(access_log, server)
    services = ["", "envoy.service.ext_proc.v3.ExternalProcessor", "inference_router.v1.Router"]
    if settings.push_feed.enabled:
        providers = [provider.cluster for provider in catalogue.providers]
        feeds_pb2_grpc.add_FeedServiceServicer_to_server(  # type: ignore[no-untyped-call]
            FeedApi(board, providers), server
        )
        services.append("inference_router.v1.FeedService")
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_insecure_port(settings.listen)
    except RuntimeError as exc:  # grpc reports a failed bind as a bare RuntimeError
        raise ConfigError(f"listen: cannot bind {settings.listen}: {exc}") from exc
    admin_host, admin_port = _split_address(settings.admin_listen)
    readiness = Readiness()
    explain = explain_handler(service, metrics, settings.max_body_bytes)
    admin = await _start_admin(
        metrics, readiness, admin_host, admin_port, explain, live, settings.max_body_bytes
    )
    await server.start()
    for feed in feeds:
        await feed.start()
    for name in services:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    readiness.serving = True
    bound_admin = _bound_port(admin)
    log.info("sidecar serving on port %d, admin on port %d", port, bound_admin)
    return RunningSidecar(
        server,
        health_servicer,
        readiness,
        admin,
        port,
        bound_admin,
        semantic,
        feeds,
        access_log,
        tracing.shutdown,
        cascade,
    )


async def _start_admin(
    metrics: RouterMetrics,
    readiness: Readiness,
    host: str,
    port: int,
    explain: Handler,
    live: LiveView,
    max_body_bytes: int,
) -> web.AppRunner:
    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain")

    async def ready_handler(_: web.Request) -> web.Response:
        serving = readiness.serving
        return web.json_response({"serving": serving}, status=200 if serving else 503)

    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_post(EXPLAIN_PATH, explain)
    app.router.add_get("/readyz", ready_handler)
    app.router.add_get("/healthz", _ok)
    app.add_routes(live.routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"admin_listen: cannot bind {host}:{port}: {exc.strerror or exc}"
        ) from exc
    return runner


async def _ok(_: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise OSError("the admin server has no bound address")
