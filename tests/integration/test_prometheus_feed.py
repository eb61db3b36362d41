"""Live queue depth through a real Prometheus server: the fleet feed moves traffic too.

The acceptance of test_live_queue.py, with the sidecar reading no simulator itself: a
real Prometheus (Debian's package, unpacked into the venv by `make test`) scrapes the
stack's simulators every 0.5 s, and the sidecar asks it with one PromQL query per 0.5 s
(`load_feed.source: prometheus`, providers matched by `instance`). sim-mid-a (cheaper)
is loaded directly until about 30 requests wait: new requests for the model move to
sim-mid-b within about one scrape and query interval, and come back once it drains.
When Prometheus goes away, its last readings are trusted only up to `max_age_s`. The
same stack takes a controller's push (FeedService) the same way: trusted while fresh.

Every wait polls with a deadline; the measured times are printed (`pytest -s`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from inference_router.v1 import feeds_pb2, feeds_pb2_grpc, router_pb2
from sidecar.config.envoy import load_catalogue
from sidecar.devstack.processes import die_with_parent, free_ports, http_ok, terminate, wait_until
from sidecar.devstack.stack import LocalStack, StackPorts
from sidecar.errors import StackError
from tests.integration.conftest import LOCAL_CONFIG, START_ATTEMPTS, seconds_until
from tests.integration.test_live_queue import Flood, _upstream, _waiting
from tests.integration.test_live_queue import decide as _decide

pytestmark = pytest.mark.integration

SCRAPE_INTERVAL = "500ms"
# The sidecar's staleness limits for queue readings (and the query's window) and pushes.
MAX_AGE_S = 2.0
PUSH_MAX_AGE_S = 2.0


def prometheus_binary() -> str | None:
    """The `prometheus` beside our interpreter (where `make test` puts it), or on PATH."""
    beside = Path(sys.executable).with_name("prometheus")
    return str(beside) if beside.exists() else shutil.which("prometheus")


@dataclass
class Prometheus:
    """A Prometheus server we started, scraping the stack's simulators."""

    process: subprocess.Popen[bytes]
    url: str

    def queries_answered(self) -> float:
        """How many /api/v1/query calls it has answered (from its own metrics)."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("prometheus_http_requests_total{")
            and 'handler="/api/v1/query"' in line
        )

    def stop(self) -> None:
        terminate(self.process, 10)


def start_prometheus(binary: str, workdir: Path, ports: StackPorts) -> Prometheus:
    """Prometheus on a free loopback port, scraping each simulator of the stack."""
    workdir.mkdir(parents=True)
    simulators = ports.providers.values()
    taken = {ports.listener, ports.admin, ports.sidecar, ports.sidecar_admin, *simulators}
    port = next(p for p in free_ports(8) if p not in taken)
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": "400ms"},
        "scrape_configs": [{
            "job_name": "simulators",
            "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in simulators]}],
        }],
    }  # fmt: skip
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    argv = [
        binary,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (workdir / "prometheus.log").open("ab") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=log, start_new_session=True, preexec_fn=die_with_parent()
        )
    prometheus = Prometheus(process, f"http://127.0.0.1:{port}")
    try:
        wait_until(partial(http_ok, prometheus.url + "/-/ready"), "prometheus", 30, process)
    except BaseException:
        prometheus.stop()
        raise
    return prometheus


@dataclass
class Fleet:
    stack: LocalStack
    prometheus: Prometheus


def _start(tmp: Path, binary: str) -> Fleet:
    catalogue = load_catalogue(LOCAL_CONFIG)
    ports = StackPorts.ephemeral(catalogue)
    prometheus = start_prometheus(binary, tmp / "prometheus", ports)
    settings = tmp / "sidecar.yaml"
    load_feed = {"source": "prometheus", "prometheus": {"url": prometheus.url},
                 "interval_s": 0.5, "max_age_s": MAX_AGE_S}  # fmt: skip
    push_feed = {"enabled": True, "max_age_s": PUSH_MAX_AGE_S}
    settings.write_text(yaml.safe_dump({"load_feed": load_feed, "push_feed": push_feed}))
    stack = LocalStack(
        LOCAL_CONFIG,
        ports,
        sidecar_args=("--no-semantic", "--config", str(settings)),
        workdir=tmp / "stack",
        quiet=True,
    )
    try:
        stack.start()
    except BaseException:
        prometheus.stop()
        raise
    return Fleet(stack, prometheus)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("no prometheus binary: `make test` unpacks Debian's into the venv")
    tmp = tmp_path_factory.mktemp("fleet")
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            started = _start(tmp / f"attempt-{attempt}", binary)
            break
        except StackError:  # a port taken between choosing and binding: choose again
            if attempt == START_ATTEMPTS:
                raise
    try:
        yield started
    finally:
        started.stack.stop()
        started.prometheus.stop()


def _mid_a(stack: LocalStack) -> router_pb2.Candidate:
    candidates: list[router_pb2.Candidate] = list(_decide(stack).explanation.candidates)
    return next(c for c in candidates if c.cluster == "sim-mid-a")


def test_a_deep_queue_seen_through_prometheus_moves_traffic_and_back(fleet: Fleet) -> None:
    stack = fleet.stack
    # The sidecar reads the queues from Prometheus: idle, the cheaper one serves.
    seconds_until(lambda: _mid_a(stack).notes[0].startswith("0 waiting ("), "a first reading", 10)
    asked = fleet.prometheus.queries_answered()
    assert _upstream(stack) == "sim-mid-a"
    # Timed with Decide: a request through Envoy to the flooded provider would itself
    # wait ~2 s in its queue and add that to the measurement.
    with Flood(f"http://127.0.0.1:{stack.ports.providers['sim-mid-a']}", 38):
        seconds_until(lambda: _waiting(stack, "sim-mid-a") >= 25, "sim-mid-a's queue builds", 15)
        moved = seconds_until(lambda: _decide(stack).upstream == "sim-mid-b", "decisions move", 5)
        assert _upstream(stack) == "sim-mid-b"  # and a real request through Envoy goes there
        print(f"\nthrough Prometheus: moved {moved:.2f} s after the queue reached 25")
    seconds_until(lambda: _waiting(stack, "sim-mid-a") == 0, "sim-mid-a's queue drains", 15)
    back = seconds_until(lambda: _decide(stack).upstream == "sim-mid-a", "decisions come back", 5)
    assert _upstream(stack) == "sim-mid-a"
    print(f"through Prometheus: back {back:.2f} s after the queue drained")
    assert fleet.prometheus.queries_answered() > asked  # it kept asking Prometheus


def test_a_pushed_unhealthy_moves_traffic_until_it_is_too_old(fleet: Fleet) -> None:
    stack = fleet.stack
    assert _decide(stack).upstream == "sim-mid-a"
    # Already 1 s old when sent: trusted for PUSH_MAX_AGE_S - 1 = 1 s more.
    update = feeds_pb2.ProviderUpdate(cluster="sim-mid-a", healthy=False, age_s=1.0)
    with grpc.insecure_channel(stack.sidecar_target) as channel:
        stub = feeds_pb2_grpc.FeedServiceStub(channel)  # type: ignore[no-untyped-call]
        reply = stub.Push(feeds_pb2.PushRequest(updates=[update]), timeout=10)
        pushed_at = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            stub.Push(feeds_pb2.PushRequest(updates=[update, feeds_pb2.ProviderUpdate(
                cluster="sim-nowhere", queue_waiting=1)]), timeout=10)  # fmt: skip
    assert reply.accepted == 1
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown cluster 'sim-nowhere'" in str(refused.value.details())
    assert _upstream(stack) == "sim-mid-b"  # through Envoy
    assert "pushed unhealthy (1." in " ".join(_mid_a(stack).notes)
    seconds_until(lambda: _decide(stack).upstream == "sim-mid-a", "the push goes stale", 5)
    back = time.monotonic() - pushed_at
    assert _upstream(stack) == "sim-mid-a"
    print(f"\npushed unhealthy (1 s left to live): used again {back:.2f} s after the push")


def test_readings_are_as_old_as_prometheus_samples_and_age_out_without_it(fleet: Fleet) -> None:
    stack = fleet.stack
    note = _mid_a(stack).notes[0]
    age = float(note.split("(")[1].split(" s old")[0])
    assert note.startswith("0 waiting (") and 0 <= age <= MAX_AGE_S, note
    fleet.prometheus.stop()  # the last test of the module: Prometheus goes away for good
    stale = seconds_until(
        lambda: _mid_a(stack).notes[0].startswith("queue unknown ("),
        "the last reading ages out",
        MAX_AGE_S + 5,
    )
    mid_a = _mid_a(stack)
    assert mid_a.queue_waiting == 8 and mid_a.notes[0].endswith("assumed 8 waiting"), mid_a.notes
    print(f"\nPrometheus stopped: its readings untrusted after {stale:.2f} s")
