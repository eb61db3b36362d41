"""Providers that die or hang, through the real Envoy, sidecar and simulators.

A killed provider: requests under a bounded load keep succeeding (Envoy retries and fails
over to the other cluster serving the same model), and soon after Envoy's health checks or
outlier detection see it, the sidecar stops choosing it (its health feed reads Envoy's
admin /clusters). A tier with no live provider hands over to the nearest tier, and says
so. A hung provider (the simulator stalls on demand) holds no client past the configured
timeout, and after a few timeouts Envoy ejects it and the sidecar routes around it.

Every wait polls with a deadline; the measured times are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from inference_router.v1 import router_pb2, router_pb2_grpc
from sidecar.devstack.stack import LocalStack
from tests.integration import conftest
from tests.integration.conftest import seconds_until

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
# A local stack's health checks run every second (two failures mark a host down) and the
# feed polls every 0.5 s: a dead provider should leave the decisions within ~2.5 s. The
# deadlines below are generous bounds for a loaded CI machine, not the expectation.
DETECTION_DEADLINE_S = 15.0
LOAD_REQUESTS = 160
LOAD_WORKERS = 8


def simulator(stack: LocalStack, cluster: str) -> str:
    """The base URL of a provider simulator of the stack."""
    return f"http://127.0.0.1:{stack.ports.providers[cluster]}"


def control(stack: LocalStack, cluster: str, **behaviour: object) -> None:
    """Change a running simulator's behaviour (stall, model checks)."""
    reply = httpx.put(simulator(stack, cluster) + "/sim/control", json=behaviour, timeout=5)
    reply.raise_for_status()


def check_models(stack: LocalStack) -> None:
    """Make every simulator refuse a model it does not serve, as a real provider does."""
    for provider in stack.catalogue.providers:
        control(stack, provider.cluster, check_model=True)


def decide(stack: LocalStack, body: dict[str, object] = BODY) -> router_pb2.DecideResponse:
    """Ask the sidecar where a request would go, and why."""
    with grpc.insecure_channel(stack.sidecar_target) as channel:
        stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
        reply: router_pb2.DecideResponse = stub.Decide(
            router_pb2.DecideRequest(body=json.dumps(body).encode()), timeout=5
        )
        return reply


def envoy_counters(stack: LocalStack, prefix: str) -> dict[str, int]:
    """Envoy's counters whose names start with `prefix`, from its admin /stats."""
    url = f"http://127.0.0.1:{stack.ports.admin}/stats?format=json&filter=^{prefix}"
    stats = httpx.get(url, timeout=5).json()["stats"]
    return {s["name"].removeprefix(prefix) or "total": s["value"] for s in stats if "value" in s}


@dataclass
class Load:
    """A bounded closed-loop load: `total` requests from `workers` threads."""

    base_url: str
    total: int
    workers: int
    statuses: Counter[int] = field(default_factory=Counter)
    served_by: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    sent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _take(self) -> bool:
        with self._lock:
            if self.sent >= self.total:
                return False
            self.sent += 1
            return True

    def _worker(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            while self._take():
                try:
                    reply = client.post(CHAT, json=BODY)
                except httpx.HTTPError as error:
                    with self._lock:
                        self.failures.append(repr(error))
                    continue
                with self._lock:
                    self.statuses[reply.status_code] += 1
                    self.served_by[reply.headers.get("x-sim-name", "-")] += 1
                    if reply.status_code != 200:
                        self.failures.append(f"{reply.status_code} {reply.text[:200]}")

    @property
    def done(self) -> int:
        with self._lock:
            return sum(self.statuses.values()) + len(self.failures)

    def run(self) -> Iterator[None]:
        """Run the load in the background; the caller acts while it runs (one yield)."""
        with ThreadPoolExecutor(self.workers) as pool:
            futures = [pool.submit(self._worker) for _ in range(self.workers)]
            yield
            for future in futures:
                future.result(timeout=120)


def test_a_killed_provider_is_routed_around_and_a_dead_tier_hands_over(tmp_path: Path) -> None:
    stack = conftest.start_stack(tmp_path, sidecar_args=("--no-semantic",))
    try:
        check_models(stack)  # a wrong model after a failover would be a 404, not a 200
        assert decide(stack).upstream == "sim-mid-a"  # the cheaper of the two mid providers
        load = Load(stack.base_url, LOAD_REQUESTS, LOAD_WORKERS)
        running = load.run()
        next(running)
        seconds_until(lambda: load.done >= 20, "the load got going", 30)
        # SIGTERM: the simulator stops accepting at once, finishes what it holds, exits.
        killer = threading.Thread(target=stack.stop_process, args=("sim-mid-a",))
        killer.start()
        stopped_choosing_s = seconds_until(
            lambda: decide(stack).upstream != "sim-mid-a",
            "the sidecar stops choosing the killed sim-mid-a",
            DETECTION_DEADLINE_S,
        )
        killer.join(timeout=30)
        next(running, None)
        retries = envoy_counters(stack, "cluster.sim-mid-a-failover.upstream_rq_retry")
        print(
            f"\nkilled sim-mid-a under load: {load.sent} sent, {load.statuses[200]} succeeded, "
            f"{len(load.failures)} failed; served by {dict(load.served_by)}; Envoy {retries}; "
            f"the sidecar stopped choosing it {stopped_choosing_s:.2f}s after the kill"
        )
        assert load.failures == [] and load.statuses == {200: LOAD_REQUESTS}
        assert load.served_by["sim-mid-b"] > 0  # Envoy failed over before the sidecar knew
        after = httpx.post(stack.base_url + CHAT, json=BODY, timeout=30)
        assert after.status_code == 200
        assert after.headers["x-router-upstream"] == after.headers["x-sim-name"] == "sim-mid-b"

        # The whole mid tier down: the nearest tier serves (heavier on a tie), and says so.
        killer = threading.Thread(target=stack.stop_process, args=("sim-mid-b",))
        killer.start()
        handed_over_s = seconds_until(
            lambda: decide(stack).upstream == "sim-frontier",
            "a mid request goes to the nearest healthy tier",
            DETECTION_DEADLINE_S,
        )
        killer.join(timeout=30)
        print(f"mid tier down: frontier serves mid requests {handed_over_s:.2f}s after the kill")
        decision = decide(stack)
        assert "no healthy provider" in decision.explanation.reason
        assert "nearest healthy tier frontier" in decision.explanation.reason
        reply = httpx.post(stack.base_url + CHAT, json=BODY, timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-sim-name"] == "sim-frontier"
        assert reply.headers["x-router-model"] == "gpt-4o"  # rewritten for the tier it went to
    finally:
        stack.stop()


# --- a hung provider ----------------------------------------------------------------------

# The shipped timeouts (120 s, and 30 s of silence on a stream) are too long to wait for
# in a test; the same local.yaml with only these numbers shortened is started instead.
REQUEST_TIMEOUT_S = 3.0
STREAM_IDLE_S = 1.5
SLACK_S = 2.0


def shortened_timeouts(source: Path, target: Path) -> Path:
    """local.yaml with the non-streaming timeout and the stream idle limit shortened."""
    config = yaml.safe_load(source.read_text())
    changed = 0

    def visit(node: object) -> None:
        nonlocal changed
        if isinstance(node, dict):
            route = node.get("route")
            if isinstance(route, dict) and route.get("timeout") == "120s":
                route["timeout"] = f"{REQUEST_TIMEOUT_S}s"
                changed += 1
            if isinstance(route, dict) and route.get("idle_timeout") == "30s":
                route["idle_timeout"] = f"{STREAM_IDLE_S}s"
                changed += 1
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    assert changed >= 4, "local.yaml no longer has the timeouts this test shortens"
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def test_a_hung_provider_holds_no_client_past_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = shortened_timeouts(conftest.LOCAL_CONFIG, tmp_path / "local-short.yaml")
    monkeypatch.setattr(conftest, "LOCAL_CONFIG", config)
    stack = conftest.start_stack(tmp_path, sidecar_args=("--no-semantic",))
    cost = {"x-router-policy": "cost"}  # the small tier: sim-small alone, no failover
    try:
        assert decide(stack, {**BODY, "model": "router:cost"}).upstream == "sim-small"
        # A stream in flight when the provider stalls: cut after the idle limit.
        story = {**BODY, "stream": True, "max_tokens": 4000}
        story["messages"] = [{"role": "user", "content": "write a very long story"}]
        with httpx.stream("POST", stack.base_url + CHAT, json=story, headers=cost) as reply:
            assert reply.status_code == 200
            chunks = reply.iter_raw()
            assert next(chunks)
            control(stack, "sim-small", stall=True)
            stalled_at = time.monotonic()
            with pytest.raises(httpx.HTTPError):  # the stream is reset, never finished
                for _ in chunks:
                    pass
            stream_cut_s = time.monotonic() - stalled_at
        # New requests while it hangs: no answer at all. Asked for by name, so no cascade
        # steps in: Envoy's timeouts are what the client sees.
        named = {**BODY, "model": stack.catalogue.provider("sim-small").model}
        # (A cascading request, router:cost, escalates instead: test_cascade.py.)
        with ThreadPoolExecutor(4) as pool:
            started = time.monotonic()
            plain = [pool.submit(_timed_post, stack, named, cost) for _ in range(3)]
            streamed = pool.submit(_timed_post, stack, {**named, "stream": True}, cost)
            results = [future.result(timeout=60) for future in plain]
            stream_status, stream_s, stream_body = streamed.result(timeout=60)
        print(
            f"\nhung sim-small: a stream in flight was cut {stream_cut_s:.2f}s after the stall "
            f"(idle limit {STREAM_IDLE_S}s); new requests got "
            f"{[(s, round(t, 2)) for s, t, _ in results]} (timeout {REQUEST_TIMEOUT_S}s), "
            f"a new stream {stream_status} after {stream_s:.2f}s; all within "
            f"{time.monotonic() - started:.2f}s"
        )
        assert STREAM_IDLE_S - 0.5 <= stream_cut_s < STREAM_IDLE_S + SLACK_S
        for status, elapsed, body in results:
            assert status == 504 and body["error"]["type"] == "server_error"
            assert REQUEST_TIMEOUT_S - 0.5 <= elapsed < REQUEST_TIMEOUT_S + SLACK_S
        assert stream_status == 504 and stream_s < STREAM_IDLE_S + SLACK_S
        assert stream_body["error"]["code"] == "stream_idle_timeout"

        # Three timeouts in a row: outlier detection ejects it (its /health still answers),
        # and the sidecar sends small-tier requests to the nearest live tier instead.
        routed_around_s = seconds_until(
            lambda: decide(stack, {**BODY, "model": "router:cost"}).upstream != "sim-small",
            "the sidecar stops choosing the hung sim-small",
            DETECTION_DEADLINE_S,
        )
        reply = httpx.post(stack.base_url + CHAT, json=BODY, headers=cost, timeout=30)
        assert reply.status_code == 200 and reply.headers["x-sim-name"] == "sim-mid-a"
        # Released, it serves again once its ejection (5 s here) has run out.
        control(stack, "sim-small", stall=False)
        back_s = seconds_until(
            lambda: decide(stack, {**BODY, "model": "router:cost"}).upstream == "sim-small",
            "sim-small is chosen again after it recovers",
            30,
        )
        print(
            f"ejected: routed around {routed_around_s:.2f}s after the timeouts; chosen again "
            f"{back_s:.2f}s after the stall was released"
        )
    finally:
        stack.stop()


def _timed_post(
    stack: LocalStack, body: dict[str, object], headers: dict[str, str]
) -> tuple[int, float, dict[str, Any]]:
    started = time.monotonic()
    reply = httpx.post(stack.base_url + CHAT, json=body, headers=headers, timeout=60)
    return reply.status_code, time.monotonic() - started, reply.json()


def _sidecar_health(stack: LocalStack) -> str:
    """Envoy's view of the router_sidecar host: 'healthy' or its health flags."""
    url = f"http://127.0.0.1:{stack.ports.admin}/clusters?format=json"
    for cluster in httpx.get(url, timeout=5).json()["cluster_statuses"]:
        if cluster["name"] == "router_sidecar":
            host = cluster["host_statuses"][0]["health_status"]
            flags = [str(name) for name, value in host.items() if value is True]
            return ",".join(flags) or "healthy"
    raise AssertionError("no router_sidecar cluster in Envoy's /clusters")


def test_a_hung_sidecar_is_marked_down_and_envoy_fails_open_without_waiting(
    tmp_path: Path,
) -> None:
    # A stopped process still accepts TCP connections: only the gRPC health check sees
    # it. Once it has, requests fail open with no message timeout spent on them.
    stack = conftest.start_stack(tmp_path, sidecar_args=("--no-semantic",))
    sidecar = stack.processes["sidecar"]
    try:
        seconds_until(lambda: _sidecar_health(stack) == "healthy", "sidecar healthy", 30)
        sidecar.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            down_s = seconds_until(
                lambda: _sidecar_health(stack) != "healthy", "sidecar marked down", 30
            )
            timeouts = envoy_counters(stack, "http.openai_api.ext_proc.")["message_timeouts"]
            routes = [
                httpx.post(stack.base_url + CHAT, json=BODY, timeout=30).headers["x-router-route"]
                for _ in range(5)
            ]
            after = envoy_counters(stack, "http.openai_api.ext_proc.")
        finally:
            sidecar.send_signal(signal.SIGCONT)
        assert routes == ["fallback"] * 5
        assert after["message_timeouts"] == timeouts  # nobody waited for the hung sidecar
        back_s = seconds_until(lambda: route_of(stack) != "fallback", "decisions again", 30)
        print(
            f"\nhung sidecar: marked down {down_s:.2f}s after SIGSTOP "
            f"({time.monotonic() - stopped:.2f}s in all), deciding again {back_s:.2f}s "
            "after SIGCONT"
        )
    finally:
        stack.stop()


def route_of(stack: LocalStack) -> str:
    """The route header of one small request."""
    reply = httpx.post(stack.base_url + CHAT, json=BODY, timeout=30)
    return str(reply.headers.get("x-router-route", ""))
