"""`make soak`: mixed load through the real Envoy for a minute while faults are injected.

One local stack (real Envoy, the semantic sidecar with a reloadable index, the simulated
providers), supervised so that killed children come back, is driven with an open-loop
mix of requests (short and long prompts, streaming and not, several policies and an
explicit model) at a fixed rate. On a schedule, the faults a production router meets
are injected: the sidecar paused (SIGSTOP) and killed (SIGKILL), a provider killed,
a provider hanging, one answering 500 and one 429 with `retry-after`, a corrupt index
pushed to ReloadIndex.

Reported: requests sent, answered (by status), cut (an answer that began, then broke off:
a stream whose provider died under it, which no proxy can resume), lost (no answer at
all: must be 0), the
same counts as Envoy's and the sidecar's own metrics see them, client latency and time
to first byte p50/p99 (overall and per fault window), the sidecar's decision latency
quantiles from its histogram, its resident memory after warm-up and at the end, and for
each fault how long until requests were decided by the router again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import grpc

from benchmarks.metrics import scrape, sum_by_label
from inference_router.v1 import router_pb2, router_pb2_grpc
from sidecar.config.envoy import load_catalogue
from sidecar.devstack.stack import LocalStack, StackPorts
from sidecar.devstack.supervision import RestartPolicy, Supervisor
from sidecar.semantic.exemplars import shipped_exemplars

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "envoy" / "local.yaml"
CHAT = "/v1/chat/completions"
SHORT = [
    "hi, thanks!",
    "what's 2+2?",
    "translate 'good morning' to French",
    "prove that there are infinitely many primes",
    "write a haiku about the sea",
    "review this Go code for data races: func f() { go g(); x++ }",
]
LONG = (
    "Summarise the following design notes and list the three biggest risks. "
    + (
        "The service keeps per-tenant queues in Redis and replays them after a failover; "
        "latency budgets are tight and the team is small. "
    )
    * 25
)


@dataclass
class Outcome:
    """One request as the client saw it."""

    sent_at: float
    kind: str
    status: int | None = None  # None: no answer at all (lost)
    cut: bool = False  # the answer began, then broke off
    latency_s: float | None = None
    ttfb_s: float | None = None
    route: str | None = None
    error: str | None = None


@dataclass
class FaultRecord:
    """A fault, when it was injected and cleared, and when routing was whole again."""

    name: str
    started_s: float
    cleared_s: float | None = None
    recovered_s: float | None = None
    note: str = ""


@dataclass
class Soak:
    """The run's shared state: outcomes, faults, and the stack under test."""

    stack: LocalStack
    started: float = field(default_factory=time.monotonic)
    outcomes: list[Outcome] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)

    def now(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started


def _request(rng: random.Random, n: int) -> tuple[str, dict[str, object], dict[str, str]]:
    """A request of the mix: (kind, body, headers)."""
    roll = rng.random()
    prompt = f"{rng.choice(SHORT)} (#{n})"
    body: dict[str, object] = {"model": "auto", "max_tokens": 16}
    headers: dict[str, str] = {}
    if roll < 0.10:
        kind, prompt = "long", f"{LONG} (#{n})"
    elif roll < 0.30:
        kind, body["stream"] = "stream", True
    elif roll < 0.40:
        kind, body["model"] = "cost", "router:cost"
    elif roll < 0.50:
        kind, headers["x-router-policy"] = "quality", "quality"
    elif roll < 0.60:
        kind, body["model"] = "explicit", "llama-3.3-70b-instruct"
    else:
        kind = "auto"
    body["messages"] = [{"role": "user", "content": prompt}]
    return kind, body, headers


async def _one(
    session: aiohttp.ClientSession,
    soak: Soak,
    outcome: Outcome,
    body: dict[str, object],
    headers: dict[str, str],
) -> None:
    began = time.monotonic()
    try:
        async with session.post(soak.stack.base_url + CHAT, json=body, headers=headers) as reply:
            outcome.route = reply.headers.get("x-router-route")
            outcome.status = reply.status
            first = True
            async for _ in reply.content.iter_any():
                if first:
                    outcome.ttfb_s, first = time.monotonic() - began, False
    except (aiohttp.ClientError, TimeoutError) as error:
        outcome.error = type(error).__name__
        outcome.cut = outcome.status is not None
    outcome.latency_s = time.monotonic() - began


async def drive(soak: Soak, rate: float, duration_s: float, seed: int = 7) -> None:
    """Open loop: request i is sent at start + i / rate, whatever happened to the others."""
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        tasks = []
        total = int(rate * duration_s)
        begin = time.monotonic()
        for n in range(total):
            delay = begin + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            kind, body, headers = _request(rng, n)
            outcome = Outcome(sent_at=soak.now(), kind=kind)
            soak.outcomes.append(outcome)
            tasks.append(asyncio.create_task(_one(session, soak, outcome, body, headers)))
        await asyncio.gather(*tasks)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(outcomes: list[Outcome]) -> dict[str, object]:
    """Counts by status and latency quantiles (ms) of a set of outcomes."""
    statuses = Counter(
        "lost" if o.status is None else "cut" if o.cut else str(o.status) for o in outcomes
    )
    latencies = [
        o.latency_s for o in outcomes if o.status is not None and not o.cut and o.latency_s
    ]
    ttfb = [o.ttfb_s for o in outcomes if o.ttfb_s is not None]
    routes = Counter(o.route or "-" for o in outcomes)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(1000 * value, 1)

    return {
        "sent": len(outcomes),
        "by_status": dict(sorted(statuses.items())),
        "fallback": routes.get("fallback", 0),
        "p50_ms": ms(statistics.median(latencies)) if latencies else None,
        "p99_ms": ms(_percentile(latencies, 0.99)),
        "ttfb_p50_ms": ms(statistics.median(ttfb)) if ttfb else None,
        "ttfb_p99_ms": ms(_percentile(ttfb, 0.99)),
    }


def recovery_s(outcomes: list[Outcome], after_s: float, streak: int = 20) -> float | None:
    """Seconds from `after_s` until `streak` requests in a row were answered and decided."""
    run, first_ok = 0, after_s
    for outcome in sorted(outcomes, key=lambda o: o.sent_at):
        if outcome.sent_at < after_s:
            continue
        healthy = (
            outcome.status == 200 and not outcome.cut and outcome.route not in (None, "fallback")
        )
        run = run + 1 if healthy else 0
        if run == 1:
            first_ok = outcome.sent_at
        if run >= streak:
            return round(first_ok - after_s, 2)
    return None


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


def envoy_counts(stack: LocalStack) -> dict[str, int]:
    """Envoy's own downstream request counters for the OpenAI listener."""
    url = f"http://127.0.0.1:{stack.ports.admin}/stats?format=json&filter=openai_api.downstream_rq"
    counts: dict[str, int] = {}
    for stat in json.loads(_get(url)).get("stats", []):
        name = str(stat.get("name", ""))
        if name.startswith("http.openai_api.downstream_rq_") and "value" in stat:
            counts[name.removeprefix("http.openai_api.")] = int(stat["value"])
    return counts


def sidecar_counts(stack: LocalStack) -> dict[str, float]:
    """The sidecar's decision/rejection/error counters and its decision-latency buckets."""
    samples = scrape(f"http://127.0.0.1:{stack.ports.sidecar_admin}/metrics")
    counts: dict[str, float] = {
        name: sum(sum_by_label(samples, name).values())
        for name in (
            "inference_router_decisions_total",
            "inference_router_rejected_requests_total",
            "inference_router_errors_total",
        )
    }
    buckets = sum_by_label(samples, "inference_router_decision_seconds_bucket", "le")
    counts.update({f"le={bound}": value for bound, value in buckets.items()})
    return counts


def histogram_quantile(buckets: dict[str, float], q: float) -> float | None:
    """The upper bound (ms) of the bucket that holds quantile q (Prometheus' reading)."""
    total = buckets.get("le=+Inf", 0.0)
    bounds = sorted(
        (float(key[3:]), value)
        for key, value in buckets.items()
        if key.startswith("le=") and key != "le=+Inf"
    )
    for bound, cumulative in bounds:
        if total and cumulative >= q * total:
            return round(1000 * bound, 1)
    return None


def rss_mib(pid: int) -> float:
    """Resident memory of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    return round(int(status.split("VmRSS:")[1].split()[0]) / 1024, 1)


def reload_index(stack: LocalStack, path: Path) -> str:
    """Ask the sidecar to load an index; the gRPC status it answered."""
    with grpc.insecure_channel(stack.sidecar_target) as channel:
        stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
        try:
            stub.ReloadIndex(router_pb2.ReloadIndexRequest(path=str(path)), timeout=30)
        except grpc.RpcError as error:
            return str(error.code().name)
    return "OK"


def set_behaviour(stack: LocalStack, cluster: str, **fields: object) -> None:
    """Change a simulator's behaviour (stall, failure status) while it runs."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.ports.providers[cluster]}/sim/control",
        data=json.dumps(fields).encode(),
        method="PUT",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as reply:
        reply.read()


def signal_child(stack: LocalStack, name: str, signum: signal.Signals) -> None:
    """Send a signal to one child (each runs in its own process group)."""
    os.killpg(stack.processes[name].pid, signum)


class SupervisedStack:
    """A stack started, stepped by a Supervisor and stopped, all in one long-lived thread.

    Children die with the thread that forked them (PR_SET_PDEATHSIG), so the thread that
    starts the stack must also be the one that restarts its children, and outlive the run.
    """

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def start(self) -> None:
        """Start the stack in the supervisor thread and wait until it is up."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Stop supervising, then stop every child."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            self.stack.start()
        except BaseException as error:
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        supervisor = Supervisor(self.stack, RestartPolicy(time.monotonic))
        try:
            while not self._stop.wait(0.2):
                supervisor.step()
        finally:
            self.stack.stop()


# (start s, name, inject, clear, hold s): each fault runs in a thread off the load loop.
Fault = tuple[float, str, Callable[[LocalStack], str], Callable[[LocalStack], None] | None, float]


def fault_schedule(corrupt: Path) -> list[Fault]:
    """What goes wrong, when, for how long."""

    def pause(stack: LocalStack) -> str:
        signal_child(stack, "sidecar", signal.SIGSTOP)
        return "SIGSTOP"

    def resume(stack: LocalStack) -> None:
        signal_child(stack, "sidecar", signal.SIGCONT)

    def kill(name: str) -> Callable[[LocalStack], str]:
        def inject(stack: LocalStack) -> str:
            signal_child(stack, name, signal.SIGKILL)
            return "SIGKILL (the supervisor restarts it)"

        return inject

    def behave(cluster: str, **fields: object) -> Callable[[LocalStack], str]:
        def inject(stack: LocalStack) -> str:
            set_behaviour(stack, cluster, **fields)
            return json.dumps(fields)

        return inject

    def heal(cluster: str) -> Callable[[LocalStack], None]:
        def clear(stack: LocalStack) -> None:
            set_behaviour(stack, cluster, stall=False, fail_status=None, retry_after_s=None)

        return clear

    def corrupt_reload(stack: LocalStack) -> str:
        return f"ReloadIndex answered {reload_index(stack, corrupt)}"

    return [
        (5, "sidecar paused 1 s", pause, resume, 1.0),
        (12, "sidecar killed", kill("sidecar"), None, 0.0),
        (24, "provider sim-mid-a killed", kill("sim-mid-a"), None, 0.0),
        (32, "provider sim-mid-b hangs 5 s", behave("sim-mid-b", stall=True), heal("sim-mid-b"), 5),
        (
            40,
            "provider sim-small answers 500 for 5 s",
            behave("sim-small", fail_status=500),
            heal("sim-small"),
            5,
        ),
        (
            48,
            "provider sim-frontier answers 429 (retry-after 5) for 5 s",
            behave("sim-frontier", fail_status=429, retry_after_s=5),
            heal("sim-frontier"),
            5,
        ),
        (55, "corrupt index pushed to ReloadIndex", corrupt_reload, None, 0.0),
    ]


async def run_faults(soak: Soak, faults: list[Fault]) -> None:
    """Inject each fault at its time, clear it after its hold, record both moments."""

    async def one(
        at: float,
        name: str,
        inject: Callable[[LocalStack], str],
        clear: Callable[[LocalStack], None] | None,
        hold: float,
    ) -> None:
        await asyncio.sleep(max(0.0, at - soak.now()))
        record = FaultRecord(name, started_s=round(soak.now(), 2))
        soak.faults.append(record)
        record.note = await asyncio.to_thread(inject, soak.stack)
        if clear is not None:
            await asyncio.sleep(hold)
            await asyncio.to_thread(clear, soak.stack)
        record.cleared_s = round(soak.now(), 2)

    await asyncio.gather(*(one(*fault) for fault in faults))


def build_index(workdir: Path) -> Path:
    """The shipped exemplars as a reloadable index, and a corrupt one beside it."""
    index = workdir / "indexes" / "serving"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar",
            "--log-level",
            "WARNING",
            "index",
            "build",
            str(shipped_exemplars()),
            "-o",
            str(index),
            "--quiet",
        ],
        check=True,
        timeout=600,
    )
    corrupt = workdir / "indexes" / "corrupt"
    corrupt.mkdir()
    (corrupt / "meta.json").write_text('{"format_version": 1}')
    (corrupt / "index.faiss").write_bytes(b"\0" * 64)
    return index


async def _phase(soak: Soak, rate: float, seconds: float, faults: list[Fault]) -> None:
    tasks: list[Awaitable[None]] = [drive(soak, rate, seconds)]
    if faults:
        tasks.append(run_faults(soak, faults))
    await asyncio.gather(*tasks)


def main() -> int:
    """Run the soak and print (and save) its report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # The simulated frontier provider (TTFT 400 ms, 60 tokens/s, 4 slots) serves ~6 req/s
    # and gets about a third of this mix: 15/s keeps every provider below its capacity,
    # so what the report shows is the faults, not a saturated simulator. The sidecar
    # itself holds far more (make bench).
    parser.add_argument("--rate", type=float, default=15.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=62.0, help="seconds of faulted load")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "soak.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = Path(tmp)
        index = build_index(workdir)
        ports = StackPorts.ephemeral(load_catalogue(LOCAL))
        stack = LocalStack(
            LOCAL,
            ports,
            sidecar_args=["--index", str(index)],
            workdir=workdir / "stack",
            quiet=True,
        )
        supervised = SupervisedStack(stack)
        supervised.start()
        try:
            report = asyncio.run(
                _soak(stack, args.rate, args.duration, args.warmup, index.parent / "corrupt")
            )
        finally:
            supervised.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


async def _soak(
    stack: LocalStack, rate: float, duration: float, warmup: float, corrupt: Path
) -> dict[str, object]:
    warm = Soak(stack)
    await _phase(warm, rate, warmup, [])
    rss_warm = rss_mib(stack.processes["sidecar"].pid)
    envoy_before = envoy_counts(stack)
    soak = Soak(stack)
    await _phase(soak, rate, duration, fault_schedule(corrupt))
    await asyncio.sleep(1.0)  # let Envoy's counters settle
    envoy_after = envoy_counts(stack)
    sidecar = sidecar_counts(stack)
    envoy = {k: envoy_after.get(k, 0) - envoy_before.get(k, 0) for k in envoy_after}
    faults = []
    for record in soak.faults:
        record.recovered_s = recovery_s(soak.outcomes, record.cleared_s or record.started_s)
        window = [
            o
            for o in soak.outcomes
            if record.started_s <= o.sent_at < (record.cleared_s or record.started_s) + 5
        ]
        faults.append({**asdict(record), "window_after": summarise(window)})
    return {
        "rate_per_s": rate,
        "duration_s": duration,
        "client": summarise(soak.outcomes),
        "by_kind": {
            kind: summarise([o for o in soak.outcomes if o.kind == kind])
            for kind in sorted({o.kind for o in soak.outcomes})
        },
        "envoy": {k: v for k, v in sorted(envoy.items()) if v},
        "sidecar_since_its_last_start": {
            "decisions": sidecar.get("inference_router_decisions_total", 0),
            "rejected": sidecar.get("inference_router_rejected_requests_total", 0),
            "errors": sidecar.get("inference_router_errors_total", 0),
            "decision_p50_ms": histogram_quantile(sidecar, 0.5),
            "decision_p99_ms": histogram_quantile(sidecar, 0.99),
        },
        "sidecar_rss_mib": {
            "after_warmup": rss_warm,
            "end": rss_mib(stack.processes["sidecar"].pid),
        },
        "faults": faults,
        "errors": dict(Counter(o.error for o in soak.outcomes if o.error)),
    }


if __name__ == "__main__":
    raise SystemExit(main())
