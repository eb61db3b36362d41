"""The routing policies side by side under a bursty load: latency and cost per strategy.

Theory. A policy earns its keep when a provider is busy. Three simulated providers of
one tier serve the same requests: `bench-cheap` (cheapest, slow, 16 slots), `bench-mid`
and `bench-fast` (dearest, fast, 64 slots). The load is open loop (request i leaves at
its planned time whatever happened to the others, as real users' requests do): a steady
rate within the cheap provider's capacity and a burst well above it, so whatever keeps
sending to the cheap provider queues there during the burst, and its tail latency shows
it. One seeded plan (arrival times and prompts) is replayed for every strategy: the
router's policies (`x-router-policy` with `"model": "auto"`), and baselines in which the
client picks the provider by naming its model id: always the cheapest, always the
fastest, round-robin, and a spill-over oracle (the cheapest provider with a free slot,
counted exactly by the client, which is the only source of load: what a queue-aware
policy could do with perfect, instant knowledge). All go through the same Envoy and
sidecar; between strategies every provider drains and the sidecar's queue feed sees it.

The stack is the shipped one (`envoy/local.yaml`: its listener, ext_proc and Lua
filters, retries, health checks) with its provider clusters replaced by the three
above, derived in code (`bench_envoy_config`), and the sidecar runs without the
classifier (`--no-semantic`): with one tier the semantic route cannot change the
candidates, so what is measured is the provider choice. The predicted output length is
then `max_tokens` (every request asks for 64).

Per strategy: client latency p50/p99 (whole run, and of the requests sent in the burst),
errors, total cost (each answer's `usage` priced at the cluster that answered, named by
`x-router-upstream`) and each provider's share. The issue's target for `balanced`: total
cost within 10 % of always-cheapest's and a p99 at most half of always-cheapest's.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import itertools
import json
import math
import os
import platform
import random
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from benchmarks.metrics import scrape, sum_by_label
from sidecar.config.envoy import catalogue_from_envoy_config, load_envoy_yaml, walk_mappings
from sidecar.core.catalogue import Catalogue
from sidecar.devstack.stack import LocalStack, StackPorts
from sidecar.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "envoy" / "local.yaml"
CHAT = "/v1/chat/completions"
TIER = "bench"
MAX_TOKENS = 64
AGGREGATE_CLUSTER = "envoy.clusters.aggregate"
# The sidecar's queue feed scrapes every 0.5 s (LoadFeedSettings); two intervals after
# the providers are idle, its reading is too.
FEED_SETTLE_S = 1.0
# One tier holds every provider, so every policy chooses among all three.
SIDECAR_SETTINGS = f"tiers: [{TIER}]\ndefault_route: {TIER}\n"


@dataclass(frozen=True)
class BenchProvider:
    """One simulated provider of the benchmark: its cluster (= model id), price and speed."""

    name: str
    price_in: float  # US dollars per million tokens
    price_out: float
    ttft_ms: float
    tokens_per_s: float
    concurrency: int

    def service_s(self, output_tokens: int) -> float:
        """Time to answer one request alone (time to first token, then generation)."""
        return self.ttft_ms / 1000 + output_tokens / self.tokens_per_s

    def capacity_per_s(self, output_tokens: int) -> float:
        """Requests per second it serves with every slot busy."""
        return self.concurrency / self.service_s(output_tokens)


# The cheap and the mid provider are priced like the shipped catalogue's two providers of
# one model (sim-mid-a and sim-mid-b: 1.1-1.5x, about 1.2x per request); the fast one
# like a premium fast host (about 2.3x).
PROVIDERS = (
    BenchProvider("bench-cheap", 0.20, 0.40, ttft_ms=300, tokens_per_s=40, concurrency=16),
    BenchProvider("bench-mid", 0.30, 0.47, ttft_ms=150, tokens_per_s=100, concurrency=32),
    BenchProvider("bench-fast", 0.60, 0.90, ttft_ms=50, tokens_per_s=250, concurrency=64),
)
CHEAPEST, FASTEST = PROVIDERS[0].name, PROVIDERS[-1].name


@dataclass(frozen=True)
class LoadShape:
    """A steady Poisson rate, raised to `burst_rate` during each (start s, length s) burst."""

    duration_s: float
    base_rate: float
    burst_rate: float
    bursts: tuple[tuple[float, float], ...]

    def in_burst(self, t: float) -> bool:
        """Whether second `t` of the run is inside a burst."""
        return any(start <= t < start + length for start, length in self.bursts)

    def rate_at(self, t: float) -> float:
        """Requests per second planned at second `t`."""
        return self.burst_rate if self.in_burst(t) else self.base_rate


# The cheap provider serves about 8.4 req/s at 64 tokens (16 slots x 1.9 s). The load is
# steady at 5 req/s with one 2 s burst at 24 req/s (about 3x its capacity): a third of
# the requests come in the burst, which leaves ~25 waiting at a cheap-only provider
# (~7 s to drain); on average the load is within its capacity.
LOAD = LoadShape(duration_s=16.0, base_rate=5.0, burst_rate=24.0, bursts=((4.0, 2.0),))
# A seed whose plan has the expected size (118 requests, 49 in the burst); 7's, two
# standard deviations over (140), would average above the cheap provider's capacity.
SEED = 6


@dataclass(frozen=True)
class Planned:
    """One request of the plan: when it leaves (s after the start) and what it asks."""

    at_s: float
    prompt: str
    in_burst: bool


@dataclass(frozen=True)
class Strategy:
    """How the client asks: a router policy (model auto), or explicit models.

    With `slots`, the client itself spills over: the first of `models` (cheapest first)
    with fewer of its own requests in flight than that provider's slots, else the last.
    The client is the only source of load, so its count is exact: this is the ideal a
    queue-aware policy can hope for, with perfect and instant knowledge.
    """

    name: str
    policy: str | None = None
    models: tuple[str, ...] = ()
    slots: tuple[int, ...] = ()

    def ask(self, n: int, in_flight: Mapping[str, int]) -> tuple[str, dict[str, str]]:
        """The `model` and headers of request n, given the client's requests in flight."""
        if self.policy is not None:
            return "auto", {"x-router-policy": self.policy}
        if self.slots:
            free = (m for m, s in zip(self.models, self.slots, strict=True) if in_flight[m] < s)
            return next(free, self.models[-1]), {}
        return self.models[n % len(self.models)], {}


STRATEGIES = (
    Strategy("balanced", policy="balanced"),
    Strategy("cost", policy="cost"),
    Strategy("speed", policy="speed"),
    Strategy("quality", policy="quality"),
    Strategy("always-cheapest", models=(CHEAPEST,)),
    Strategy("always-fastest", models=(FASTEST,)),
    Strategy("round-robin", models=tuple(p.name for p in PROVIDERS)),
    Strategy(
        "spill-over oracle",
        models=tuple(p.name for p in PROVIDERS),
        slots=tuple(p.concurrency for p in PROVIDERS),
    ),
)


@dataclass
class Outcome:
    """One request as the client saw it."""

    sent_s: float
    in_burst: bool
    status: int | None = None  # None: no answer (connection error or client timeout)
    latency_s: float | None = None
    upstream: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class StrategyResult:
    """What one strategy did to the plan."""

    sent: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    burst_p99_ms: float | None
    cost_usd: float
    share: Mapping[str, float] = field(default_factory=dict)


_ASKS = (
    "hi, thanks!",
    "what's the capital of Portugal?",
    "explain how a hash map handles collisions",
    "write a short story about a lighthouse keeper",
    "summarise the plot of Hamlet in a few lines",
    "translate 'see you tomorrow' into German",
    "compare TCP and UDP for a multiplayer game",
    "is 221 a prime number?",
)


def arrival_times(shape: LoadShape, rng: random.Random) -> list[float]:
    """Poisson arrivals at the shape's piecewise-constant rate, in [0, duration)."""
    edges = sorted({0.0, shape.duration_s, *(t for s, n in shape.bursts for t in (s, s + n))})
    edges = [t for t in edges if 0.0 <= t <= shape.duration_s]
    times: list[float] = []
    for begin, end in itertools.pairwise(edges):
        rate, t = shape.rate_at(begin), begin
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= end:
                break
            times.append(t)
    return times


def plan(shape: LoadShape, seed: int) -> list[Planned]:
    """The requests every strategy replays: arrival times and (distinct) prompts."""
    rng = random.Random(seed)
    return [
        Planned(at, f"{rng.choice(_ASKS)} (#{n})", shape.in_burst(at))
        for n, at in enumerate(arrival_times(shape, rng))
    ]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank q-quantile (0 < q <= 1) of `values`, None when there are none."""
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q}")
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summarise(outcomes: Sequence[Outcome], catalogue: Catalogue) -> StrategyResult:
    """Latency quantiles, errors, cost at the answering cluster's price, share per cluster."""
    ok = [o for o in outcomes if o.status == 200 and o.latency_s is not None]
    latencies = [o.latency_s for o in ok if o.latency_s is not None]
    burst = [o.latency_s for o in ok if o.in_burst and o.latency_s is not None]
    cost = 0.0
    for o in ok:
        if o.upstream is None:
            raise ConfigError("an answer without x-router-upstream: cannot price it")
        price = catalogue.provider(o.upstream).price
        cost += price.cost_usd(o.prompt_tokens, o.completion_tokens)
    counts = Counter(o.upstream for o in ok)

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else round(1000 * seconds, 1)

    return StrategyResult(
        sent=len(outcomes),
        errors=len(outcomes) - len(ok),
        p50_ms=ms(percentile(latencies, 0.5)),
        p99_ms=ms(percentile(latencies, 0.99)),
        burst_p99_ms=ms(percentile(burst, 0.99)),
        cost_usd=cost,
        share={p.cluster: counts[p.cluster] / max(len(ok), 1) for p in catalogue.providers},
    )


def balanced_target(results: Mapping[str, StrategyResult]) -> dict[str, object]:
    """The issue's target: balanced's cost within 10 % of always-cheapest's, p99 2x better."""
    balanced, cheapest = results["balanced"], results["always-cheapest"]
    cost_ratio = balanced.cost_usd / cheapest.cost_usd if cheapest.cost_usd else math.inf
    p99_gain = (
        cheapest.p99_ms / balanced.p99_ms
        if balanced.p99_ms and cheapest.p99_ms is not None
        else 0.0
    )
    return {
        "cost_vs_always_cheapest": round(cost_ratio, 3),
        "p99_improvement_vs_always_cheapest": round(p99_gain, 2),
        "met": cost_ratio <= 1.10 and p99_gain >= 2.0 and balanced.errors == 0,
    }


def bench_envoy_config(
    local: Mapping[str, object], providers: Sequence[BenchProvider]
) -> dict[str, Any]:
    """`local` (envoy/local.yaml) with its provider clusters replaced by `providers`.

    The failover aggregates and the routes to them go (the benchmark's models each have
    one cluster); whatever named a removed provider (the default route, the fail-open
    target) names the first of `providers`. Everything else is kept as it is.
    """
    config: dict[str, Any] = copy.deepcopy(dict(local))
    clusters: list[dict[str, Any]] = config["static_resources"]["clusters"]
    old = {p.cluster for p in catalogue_from_envoy_config(local, str(LOCAL)).providers}
    aggregates = {
        c["name"] for c in clusters if c.get("cluster_type", {}).get("name") == AGGREGATE_CLUSTER
    }
    template = next(c for c in clusters if c["name"] in old)
    config["static_resources"]["clusters"] = [
        *(c for c in clusters if c["name"] not in old | aggregates),
        *(_provider_cluster(template, p) for p in providers),
    ]
    default = providers[0].name
    for node in list(walk_mappings(config)):
        routes = node.get("routes")
        if isinstance(routes, list):
            node["routes"] = [r for r in routes if _route_cluster(r) not in aggregates]
        if node.get("cluster") in old:
            node["cluster"] = default
            if "model" in node:  # the fail-open target: a cluster and its model id
                node["model"] = default
    left = sorted({str(v) for v in _strings(config)} & (old | aggregates))
    if left:
        raise ConfigError(f"{LOCAL} changed shape: the benchmark config still names {left}")
    return config


def _provider_cluster(template: Mapping[str, Any], provider: BenchProvider) -> dict[str, Any]:
    cluster: dict[str, Any] = copy.deepcopy(dict(template))
    cluster["name"] = provider.name
    cluster["load_assignment"]["cluster_name"] = provider.name
    cluster["metadata"] = {
        "filter_metadata": {
            "inference_router": {
                "model": provider.name,
                "tier": TIER,
                "price_per_mtok": {"input": provider.price_in, "output": provider.price_out},
                "metrics_url": "http://127.0.0.1:1/metrics",  # the stack sets the port
                "engine": "vllm",
                "ttft_ms": provider.ttft_ms,
                "tokens_per_s": provider.tokens_per_s,
                "max_concurrency": provider.concurrency,
            }
        }
    }
    return cluster


def _route_cluster(route: object) -> object:
    action = route.get("route") if isinstance(route, dict) else None
    return action.get("cluster") if isinstance(action, dict) else None


def _strings(node: object) -> list[object]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


async def _one(
    session: aiohttp.ClientSession, url: str, body: dict[str, object], headers: dict[str, str],
    outcome: Outcome,
) -> None:  # fmt: skip
    began = time.monotonic()
    try:
        async with session.post(url, json=body, headers=headers) as reply:
            outcome.upstream = reply.headers.get("x-router-upstream")
            payload = await reply.json(content_type=None)
            outcome.status = reply.status
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return
    finally:
        outcome.latency_s = time.monotonic() - began
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if isinstance(usage, dict):
        outcome.prompt_tokens = int(usage.get("prompt_tokens", 0))
        outcome.completion_tokens = int(usage.get("completion_tokens", 0))


async def drive(base_url: str, requests: Sequence[Planned], strategy: Strategy) -> list[Outcome]:
    """Open loop: send each planned request at its time, the strategy's way; wait for all."""
    in_flight: Counter[str] = Counter()

    async def send(
        session: aiohttp.ClientSession, model: str, body: dict[str, object],
        headers: dict[str, str], outcome: Outcome,
    ) -> None:  # fmt: skip
        try:
            await _one(session, base_url + CHAT, body, headers, outcome)
        finally:
            in_flight[model] -= 1

    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        outcomes, tasks = [], []
        start = time.monotonic()
        for n, planned in enumerate(requests):
            await asyncio.sleep(max(0.0, start + planned.at_s - time.monotonic()))
            model, headers = strategy.ask(n, in_flight)
            body: dict[str, object] = {
                "model": model,
                "max_tokens": MAX_TOKENS,
                "messages": [{"role": "user", "content": planned.prompt}],
            }
            outcome = Outcome(sent_s=time.monotonic() - start, in_burst=planned.in_burst)
            outcomes.append(outcome)
            in_flight[model] += 1  # counted now, before the next request is placed
            tasks.append(asyncio.create_task(send(session, model, body, headers, outcome)))
        await asyncio.gather(*tasks)
    return outcomes


def wait_idle(stack: LocalStack, deadline_s: float = 120.0) -> None:
    """Until no provider runs or queues anything, then until the queue feed has seen it."""
    end = time.monotonic() + deadline_s
    for cluster, port in stack.ports.providers.items():
        while True:
            samples = scrape(f"http://127.0.0.1:{port}/metrics")
            busy = sum(
                sum(sum_by_label(samples, name).values())
                for name in ("vllm:num_requests_running", "vllm:num_requests_waiting")
            )
            if busy == 0:
                break
            if time.monotonic() > end:
                raise TimeoutError(f"{cluster} still busy after {deadline_s:.0f} s")
            time.sleep(0.1)
    time.sleep(FEED_SETTLE_S)


def warm_up(base_url: str) -> None:
    """One request per provider (connections, first-call costs) before anything is timed."""
    for provider in PROVIDERS:
        body = {"model": provider.name, "max_tokens": 1,
                "messages": [{"role": "user", "content": "warm up"}]}  # fmt: skip
        request = urllib.request.Request(
            base_url + CHAT, data=json.dumps(body).encode(), method="POST",
            headers={"content-type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as reply:
            reply.read()


def plot(results: Mapping[str, StrategyResult], shape: LoadShape, path: Path) -> None:
    """Latency, cost and provider share per strategy, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    xs = range(len(names))
    fig, (lat, cost, share) = plt.subplots(1, 3, figsize=(16, 5))
    width = 0.38
    lat.bar([x - width / 2 for x in xs], [results[n].p50_ms or 0 for n in names], width,
            label="p50")  # fmt: skip
    lat.bar([x + width / 2 for x in xs], [results[n].p99_ms or 0 for n in names], width,
            label="p99")  # fmt: skip
    lat.set_ylabel("client latency, ms")
    lat.legend()
    cost.bar(xs, [1000 * results[n].cost_usd for n in names], color="tab:green")
    cost.set_ylabel("total cost, US$ x 1000")
    bottom = [0.0] * len(names)
    for provider in PROVIDERS:
        shares = [100 * results[n].share.get(provider.name, 0.0) for n in names]
        share.bar(xs, shares, bottom=bottom, label=provider.name)
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    share.set_ylabel("share of answers, %")
    share.legend(fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
    for ax in (lat, cost, share):
        ax.set_xticks(list(xs), names, rotation=30, ha="right")
    bursts = ", ".join(f"{length:g} s at {start:g} s" for start, length in shape.bursts)
    fig.suptitle(
        f"Policies under a bursty load: {shape.base_rate:g} req/s, {shape.burst_rate:g} req/s "
        f"for {bursts} ({shape.duration_s:g} s, at most {MAX_TOKENS} output tokens)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass(frozen=True)
class RunReport:
    """The plan's size and every strategy's result."""

    requests: int
    burst_requests: int
    results: Mapping[str, StrategyResult]


def run(seed: int, workdir: Path) -> RunReport:
    """Start the stack, replay the plan once per strategy, stop the stack."""
    config_path = workdir / "bench-envoy.yaml"
    config_path.write_text(
        yaml.safe_dump(bench_envoy_config(load_envoy_yaml(LOCAL), PROVIDERS), sort_keys=False)
    )
    settings = workdir / "sidecar.yaml"
    settings.write_text(SIDECAR_SETTINGS)
    catalogue = catalogue_from_envoy_config(load_envoy_yaml(config_path), str(config_path))
    stack = LocalStack(
        config_path,
        StackPorts.ephemeral(catalogue),
        sidecar_args=["--no-semantic", "--config", str(settings)],
        workdir=workdir / "stack",
        quiet=True,
    )
    requests = plan(LOAD, seed)
    results: dict[str, StrategyResult] = {}
    stack.start()
    try:
        warm_up(stack.base_url)
        for strategy in STRATEGIES:
            wait_idle(stack)
            began = time.monotonic()
            outcomes = asyncio.run(drive(stack.base_url, requests, strategy))
            results[strategy.name] = summarise(outcomes, stack.catalogue)
            print(f"  {strategy.name:<18} done in {time.monotonic() - began:5.1f} s", flush=True)
    finally:
        stack.stop()
    return RunReport(len(requests), sum(r.in_burst for r in requests), results)


def print_table(results: Mapping[str, StrategyResult]) -> None:
    """One row per strategy."""
    names = [p.name.removeprefix("bench-") for p in PROVIDERS]
    print(
        f"\n{'strategy':<18} {'p50 ms':>8} {'p99 ms':>8} {'burst p99':>10} {'errors':>6} "
        f"{'cost $':>9}  share {'/'.join(names)}"
    )
    for name, r in results.items():
        share = "/".join(f"{100 * r.share.get(p.name, 0):.0f}" for p in PROVIDERS)
        print(
            f"{name:<18} {r.p50_ms or 0:>8.0f} {r.p99_ms or 0:>8.0f} {r.burst_p99_ms or 0:>10.0f} "
            f"{r.errors:>6} {r.cost_usd:>9.5f}  {share} %"
        )


def main() -> int:
    """Run the benchmark, print the table, write JSON and a PNG."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "policies.json")
    parser.add_argument("--png", type=Path, default=ROOT / "bench-results" / "policies.png")
    args = parser.parse_args()
    print(f"policies: {len(STRATEGIES)} strategies, {LOAD.duration_s:g} s of bursty load each")
    for p in PROVIDERS:
        print(
            f"  {p.name:<12} ${p.price_in:.2f}/${p.price_out:.2f} per Mtok, "
            f"{p.capacity_per_s(MAX_TOKENS):.1f} req/s at {MAX_TOKENS} tokens"
        )
    with tempfile.TemporaryDirectory(prefix="bench-policies-") as tmp:
        report = run(args.seed, Path(tmp))
    results = report.results
    print_table(results)
    target = balanced_target(results)
    print(f"\nbalanced vs always-cheapest: {json.dumps(target)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "seed": args.seed, "load": asdict(LOAD), "max_tokens": MAX_TOKENS,
        "providers": [asdict(p) | {"capacity_per_s": round(p.capacity_per_s(MAX_TOKENS), 1)}
                      for p in PROVIDERS],
        "requests": report.requests, "burst_requests": report.burst_requests,
        "results": {name: asdict(r) for name, r in results.items()},
        "balanced_target": target,
    }, indent=2))  # fmt: skip
    plot(results, LOAD, args.png)
    print(f"written to {args.out} and {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
