"""What each hop adds: the same simulator direct, through Envoy, our router and LiteLLM.

Theory. A router is worth its latency only if that latency is small beside the model's,
so we measure what each layer adds on top of one fast simulated model (max_tokens 1, a
~30-token prompt, about 11 ms of simulated work), side by side in one run:

- direct: the client calls the simulator itself;
- envoy alone: a second Envoy process with the shipped config minus the router (no
  ext_proc, no Lua, no access log to the sidecar) and one static route to the simulator;
- router, explicit model: the shipped Envoy config and the sidecar, the client naming the
  model (an ext_proc round trip, no classification);
- router, auto, repeated prompt: `"model": "auto"` with one prompt repeated (after the
  first request, the sidecar's exact-repeat cache answers);
- router, auto, distinct prompts: every request new (stage 1, or the stage-2 encoder when
  stage 1 is not confident; the classifier's shares are recorded per cell);
- LiteLLM's proxy (`litellm[proxy]`, in its own venv) with the simulator as its one
  OpenAI-compatible deployment and latency-based routing.

Every provider cluster of the router's config gets the same simulator settings, so
whichever one `auto` chooses does the same work as the direct one. The client is closed
loop: at concurrency c, c workers on c kept-alive connections each send their next
request when the previous answers, for a bounded cell (CELL_REQUESTS or CELL_SECONDS,
whichever comes first, after a few untimed requests per worker). The direct row is the
client's own ceiling: if another row were faster, the client would be the bottleneck.
Everything (client, simulator, Envoy, sidecar, LiteLLM) shares this machine's CPUs, so at
32 clients the rows also measure who uses the CPU best; quote the numbers with the
machine. Ratios are against "envoy alone": what the router adds beyond Envoy itself.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from benchmarks.policies import percentile
from benchmarks.run import classifier_counts, prompts
from sidecar.config.envoy import (
    CASCADE_FILTER,
    EXT_PROC_FILTER,
    catalogue_from_envoy_config,
    load_envoy_yaml,
    walk_mappings,
)
from sidecar.devstack.processes import die_with_parent, free_ports, http_ok, terminate, wait_until
from sidecar.devstack.stack import LocalStack, StackPorts, envoy_binary

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "envoy" / "local.yaml"
API_LISTENER = "openai_api"  # the other listener, "metrics", is not part of the path
LITELLM = ROOT / ".venv-litellm" / "bin" / "litellm"
CHAT = "/v1/chat/completions"
CONCURRENCY = (1, 8, 32)
CELL_REQUESTS = 800
CELL_SECONDS = 6.0
WARM_UP_PER_WORKER = 3  # untimed: connections, first-call costs
BASELINE = "envoy alone"
NULL_PROCESSOR = "envoy + ext_proc that decides nothing"
NULL_PROCESSOR_CLUSTER = "null_processor"
# One simulator setting for every provider: short, so the hops' costs show; more slots
# than clients, so nothing queues in the simulator.
SIM_TTFT_MS = 10
SIM_TOKENS_PER_S = 1000
SIM_SLOTS = 64
DIRECT_CLUSTER = "sim-mid-a"
SEED = 11
ROUTER_FILTERS = (EXT_PROC_FILTER, "envoy.filters.http.lua", CASCADE_FILTER)


@dataclass(frozen=True)
class Cell:
    """One path at one concurrency, as the client saw it."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    requests_per_s: float


def summarise_cell(latencies_s: Sequence[float], errors: int, seconds: float) -> Cell:
    """Quantiles (ms) of the answered requests and the rate of all of them."""

    def ms(q: float) -> float | None:
        value = percentile(latencies_s, q)
        return None if value is None else round(1000 * value, 2)

    done = len(latencies_s) + errors
    return Cell(
        requests=done,
        errors=errors,
        seconds=round(seconds, 3),
        p50_ms=ms(0.5),
        p90_ms=ms(0.9),
        p99_ms=ms(0.99),
        requests_per_s=round(len(latencies_s) / seconds, 1) if seconds > 0 else 0.0,
    )


def ratios(
    cells: Mapping[str, Mapping[int, Cell]], baseline: str = BASELINE
) -> dict[str, dict[int, dict[str, float | None]]]:
    """Each path's p50/p90/p99 and req/s over the baseline's, per concurrency."""

    def over(value: float | None, base: float | None) -> float | None:
        return None if value is None or not base else round(value / base, 2)

    base = cells.get(baseline, {})
    table: dict[str, dict[int, dict[str, float | None]]] = {}
    for path, by_level in cells.items():
        table[path] = {}
        for level, cell in by_level.items():
            ref = base.get(level)
            table[path][level] = {
                "p50": over(cell.p50_ms, ref.p50_ms if ref else None),
                "p90": over(cell.p90_ms, ref.p90_ms if ref else None),
                "p99": over(cell.p99_ms, ref.p99_ms if ref else None),
                "requests_per_s": over(cell.requests_per_s, ref.requests_per_s if ref else None),
            }
    return table


def bench_envoy_config(local: Mapping[str, object]) -> dict[str, Any]:
    """`local` with every provider simulated alike (SIM_* settings)."""
    config: dict[str, Any] = copy.deepcopy(dict(local))
    for cluster in config["static_resources"]["clusters"]:
        meta = cluster.get("metadata", {}).get("filter_metadata", {}).get("inference_router")
        if isinstance(meta, dict):
            meta.update(
                ttft_ms=SIM_TTFT_MS, tokens_per_s=SIM_TOKENS_PER_S, max_concurrency=SIM_SLOTS
            )
    return config


def envoy_alone_config(
    rendered: Mapping[str, object], cluster: str, listener: int, admin: int
) -> dict[str, Any]:
    """A rendered stack config minus the router, with one static route to `cluster`.

    Kept: the API listener and its connection manager settings, the router filter and the
    cluster (health checks, outlier detection, circuit breakers). Gone: ext_proc, Lua,
    the upstream log to the sidecar, the decided routes and every other cluster.
    """
    config: dict[str, Any] = copy.deepcopy(dict(rendered))
    static = config["static_resources"]
    static["clusters"] = [c for c in static["clusters"] if c["name"] == cluster]
    if not static["clusters"]:
        raise ValueError(f"the config has no cluster {cluster!r}")
    for node in walk_mappings(config["admin"]):
        if "port_value" in node:
            node["port_value"] = admin
    static["listeners"] = [found for found in static["listeners"] if found["name"] == API_LISTENER]
    for found in static["listeners"]:
        found["address"]["socket_address"]["port_value"] = listener
    for node in list(walk_mappings(static["listeners"])):
        filters = node.get("http_filters")
        if isinstance(filters, list):
            kept_filters = [f for f in filters if f.get("name") not in ROUTER_FILTERS]
            node["http_filters"] = kept_filters
            for kept in kept_filters:
                if isinstance(kept, dict):
                    kept.get("typed_config", {}).pop("upstream_log", None)
            node["route_config"] = {
                "name": "envoy_alone",
                "virtual_hosts": [{
                    "name": "envoy_alone", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"},
                                "route": {"cluster": cluster, "timeout": "120s"}}],
                }],
            }  # fmt: skip
    return config


def null_processor_config(
    rendered: Mapping[str, object], cluster: str, listener: int, admin: int, processor: int
) -> dict[str, Any]:
    """Envoy alone plus the router's ext_proc filter, asking a processor that decides nothing.

    The filter is the shipped one (one message per request, the same attributes and
    timeouts); its cluster is the sidecar's, pointed at `processor`'s port, without the
    gRPC health check (the null processor serves no health service).
    """
    config = envoy_alone_config(rendered, cluster, listener, admin)
    source: dict[str, Any] = copy.deepcopy(dict(rendered))
    found: list[Any] = [
        node for node in walk_mappings(source["static_resources"]["listeners"])
        if node.get("name") == EXT_PROC_FILTER
    ]  # fmt: skip
    (ext_proc,) = found
    service = ext_proc["typed_config"]["grpc_service"]["envoy_grpc"]
    (sidecar,) = [c for c in source["static_resources"]["clusters"]
                  if c["name"] == service["cluster_name"]]  # fmt: skip
    sidecar["name"] = service["cluster_name"] = NULL_PROCESSOR_CLUSTER
    sidecar["load_assignment"]["cluster_name"] = NULL_PROCESSOR_CLUSTER
    sidecar.pop("health_checks", None)
    sidecar.pop("common_lb_config", None)
    for node in walk_mappings(sidecar["load_assignment"]):
        if "port_value" in node:
            node["port_value"] = processor
    config["static_resources"]["clusters"].append(sidecar)
    for node in walk_mappings(config["static_resources"]["listeners"]):
        filters = node.get("http_filters")
        if isinstance(filters, list):
            filters.insert(len(filters) - 1, ext_proc)  # before the router filter
    return config


def litellm_config(model: str, sim_port: int, strategy: str) -> dict[str, Any]:
    """LiteLLM's proxy config: the simulator as one OpenAI-compatible deployment."""
    return {
        "model_list": [{
            "model_name": "bench",
            "litellm_params": {
                "model": f"openai/{model}",
                "api_base": f"http://127.0.0.1:{sim_port}/v1",
                "api_key": "dummy",  # the simulator checks none
            },
        }],
        "router_settings": {"routing_strategy": strategy},
        "litellm_settings": {"telemetry": False, "drop_params": True},
    }  # fmt: skip


@dataclass(frozen=True)
class Target:
    """How to ask one path: its URL, the body of request i, extra headers."""

    url: str
    body: Callable[[int], dict[str, object]]
    headers: Mapping[str, str]


async def drive_cell(path: Target, concurrency: int, offset: int) -> Cell:
    """Closed loop: `concurrency` workers, a few untimed requests each, then the timed cell."""
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    headers = {"content-type": "application/json", **path.headers}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> float | None:
            began = time.perf_counter()
            try:
                data = json.dumps(path.body(offset + i))
                async with session.post(path.url, data=data, headers=headers) as reply:
                    await reply.read()
                    ok = reply.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return None
            return time.perf_counter() - began if ok else None

        async def warm_up(w: int) -> None:
            for k in range(WARM_UP_PER_WORKER):
                await one(CELL_REQUESTS + w * WARM_UP_PER_WORKER + k)

        await asyncio.gather(*(warm_up(w) for w in range(concurrency)))
        latencies: list[float] = []
        errors = 0
        counter = iter(range(CELL_REQUESTS))
        start = time.perf_counter()
        end = start + CELL_SECONDS

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                if time.perf_counter() >= end:
                    return
                latency = await one(i)
                if latency is None:
                    errors += 1
                else:
                    latencies.append(latency)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return summarise_cell(latencies, errors, time.perf_counter() - start)


class Child:
    """One extra process (Envoy alone, LiteLLM): started, waited for, stopped."""

    def __init__(self, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None):
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                list(argv), stdout=out, stderr=out, start_new_session=True,
                preexec_fn=die_with_parent(), env=dict(env) if env is not None else None,
            )  # fmt: skip

    def wait_ready(self, url: str, deadline_s: float) -> None:
        """Until `url` answers 200 (StackError on death or deadline)."""
        wait_until(lambda: http_ok(url), url, deadline_s, self.process)

    def stop(self) -> None:
        """SIGTERM its process group, then SIGKILL after 10 s."""
        terminate(self.process, 10, group=True)


def start_envoy(
    config: Mapping[str, object], name: str, admin: int, workdir: Path, children: list[Child]
) -> None:
    """Run the real Envoy on `config` (written to NAME.yaml) among `children`, until ready."""
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(config)))
    envoy = Child(
        [envoy_binary(), "-c", str(path), "--log-level", "warn", "--base-id", str(admin),
         "--concurrency", "2"],
        workdir / f"{name}.log",
    )  # fmt: skip
    children.append(envoy)
    envoy.wait_ready(f"http://127.0.0.1:{admin}/ready", 30)


def start_litellm(sim_port: int, model: str, workdir: Path) -> tuple[Child, int, str] | str:
    """LiteLLM's proxy in front of the simulator (with its port and a fresh master key).

    Or why it could not start. The proxy refuses to start without a master key; one made
    now, never logged, is passed in its environment.
    """
    if not LITELLM.exists():
        return f"{LITELLM} is missing (`make litellm` installs it)"
    config = workdir / "litellm.yaml"
    config.write_text(yaml.safe_dump(litellm_config(model, sim_port, "latency-based-routing")))
    (port,) = free_ports(1)
    key = f"sk-{secrets.token_hex(16)}"
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price map at start
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MASTER_KEY": key,
    }
    env.pop("DATABASE_URL", None)
    child = Child(
        [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        workdir / "litellm.log",
        env,
    )
    try:
        child.wait_ready(f"http://127.0.0.1:{port}/health/liveliness", 120)
    except Exception as error:  # any failure means: no LiteLLM rows
        child.stop()
        tail = child.log.read_text(errors="replace")[-800:]
        return f"LiteLLM did not start: {error}\n{tail}"
    return child, port, key


def litellm_version() -> str | None:
    """The installed litellm's version, None when it is not installed."""
    python = LITELLM.with_name("python")
    if not python.exists():
        return None
    found = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return found.stdout.strip() or None


def body(model: str, prompt: Callable[[int], str]) -> Callable[[int], dict[str, object]]:
    """Request i's body: `model`, max_tokens 1 and prompt(i)."""
    return lambda i: {
        "model": model,
        "max_tokens": 1,
        "messages": [{"role": "user", "content": prompt(i)}],
    }


def run(workdir: Path) -> dict[str, Any]:
    """Start everything, measure every path at every concurrency, stop everything."""
    config_path = workdir / "bench-envoy.yaml"
    config_path.write_text(yaml.safe_dump(bench_envoy_config(load_envoy_yaml(LOCAL))))
    catalogue = catalogue_from_envoy_config(load_envoy_yaml(config_path), str(config_path))
    stack = LocalStack(
        config_path, StackPorts.ephemeral(catalogue), workdir=workdir / "stack", quiet=True
    )
    model = stack.catalogue.provider(DIRECT_CLUSTER).model
    sim_port = stack.ports.providers[DIRECT_CLUSTER]
    fresh = prompts(len(CONCURRENCY) * 2 * CELL_REQUESTS + 64, SEED)
    repeated = fresh[-1]
    children: list[Child] = []
    cells: dict[str, dict[int, Cell]] = {}
    classifier: dict[str, dict[int, dict[str, int]]] = {}
    notes: list[str] = []
    started = time.monotonic()
    stack.start()
    try:
        listener, admin = free_ports(2)
        rendered = load_envoy_yaml(stack.config_path)
        alone = envoy_alone_config(rendered, DIRECT_CLUSTER, listener, admin)
        start_envoy(alone, "envoy-alone", admin, workdir, children)
        null_listener, null_admin, processor_port = free_ports(3)
        children.append(Child(
            [sys.executable, "-m", "benchmarks.null_processor", "--port", str(processor_port)],
            workdir / "null-processor.log",
        ))  # fmt: skip
        null = null_processor_config(
            rendered, DIRECT_CLUSTER, null_listener, null_admin, processor_port
        )
        start_envoy(null, "envoy-null-processor", null_admin, workdir, children)
        began = time.monotonic()
        litellm = start_litellm(sim_port, model, workdir)
        litellm_start_s = round(time.monotonic() - began, 1)
        if isinstance(litellm, str):
            notes.append(litellm)
            print(f"side by side: LiteLLM rows skipped: {litellm}", flush=True)
        else:
            children.append(litellm[0])
            print(f"side by side: LiteLLM's proxy ready in {litellm_start_s} s", flush=True)
        same = body(model, lambda i: repeated)
        auto_same = body("auto", lambda i: repeated)
        auto_fresh = body("auto", lambda i: fresh[i % len(fresh)])
        paths: dict[str, Target] = {
            "direct": Target(f"http://127.0.0.1:{sim_port}{CHAT}", same, {}),
            BASELINE: Target(f"http://127.0.0.1:{listener}{CHAT}", same, {}),
            NULL_PROCESSOR: Target(f"http://127.0.0.1:{null_listener}{CHAT}", same, {}),
            "router, explicit model": Target(stack.base_url + CHAT, same, {}),
            "router, auto, repeated": Target(stack.base_url + CHAT, auto_same, {}),
            "router, auto, distinct": Target(stack.base_url + CHAT, auto_fresh, {}),
        }  # fmt: skip
        if not isinstance(litellm, str):
            url = f"http://127.0.0.1:{litellm[1]}{CHAT}"
            auth = {"authorization": f"Bearer {litellm[2]}"}
            paths["litellm proxy"] = Target(url, body("bench", lambda i: repeated), auth)
        sidecar_admin = f"127.0.0.1:{stack.ports.sidecar_admin}"
        for n, level in enumerate(CONCURRENCY):
            for name, path in paths.items():
                before = classifier_counts(sidecar_admin)
                cell = asyncio.run(drive_cell(path, level, offset=2 * n * CELL_REQUESTS))
                after = classifier_counts(sidecar_admin)
                cells.setdefault(name, {})[level] = cell
                if name.startswith("router, auto"):
                    classifier.setdefault(name, {})[level] = dict(after - before)
                print(
                    f"  {name:<24} c={level:<3} p50 {cell.p50_ms} ms  p99 {cell.p99_ms} ms  "
                    f"{cell.requests_per_s} req/s  ({cell.requests} requests, "
                    f"{cell.errors} errors)", flush=True,
                )  # fmt: skip
    finally:
        for child in reversed(children):
            child.stop()
        stack.stop()
    return {
        "cells": cells,
        "classifier": classifier,
        "notes": notes,
        "litellm_start_s": litellm_start_s,
        "seconds": round(time.monotonic() - started, 1),
    }


def print_table(cells: Mapping[str, Mapping[int, Cell]]) -> None:
    """One row per path and concurrency, with ratios to the baseline."""
    table = ratios(cells)
    print(
        f"\n{'path':<24} {'c':>3} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'req/s':>8}  "
        f"x p50 / p99 / req/s vs {BASELINE}"
    )
    for level in CONCURRENCY:
        for path, by_level in cells.items():
            cell, r = by_level.get(level), table[path].get(level, {})
            if cell is None:
                continue
            print(
                f"{path:<24} {level:>3} {cell.p50_ms or 0:>8.2f} {cell.p90_ms or 0:>8.2f} "
                f"{cell.p99_ms or 0:>8.2f} {cell.requests_per_s:>8.1f}  "
                f"{r.get('p50')} / {r.get('p99')} / {r.get('requests_per_s')}"
            )


def plot(cells: Mapping[str, Mapping[int, Cell]], latency_png: Path, throughput_png: Path) -> None:
    """Latency (p50 and p99 bars) per path and concurrency; throughput per path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    names = list(cells)
    p99s = [c.p99_ms or 1.0 for by_level in cells.values() for c in by_level.values()]
    top = 1.5 * max(p99s, default=10.0)
    fig, axes = plt.subplots(1, len(CONCURRENCY), figsize=(5 * len(CONCURRENCY), 5), sharey=True)
    for ax, level in zip(axes, CONCURRENCY, strict=True):
        xs = list(range(len(names)))
        p50 = [cells[n][level].p50_ms or 0 if level in cells[n] else 0 for n in names]
        p99 = [cells[n][level].p99_ms or 0 if level in cells[n] else 0 for n in names]
        width = 0.38
        ax.bar([x - width / 2 for x in xs], p50, width, label="p50")
        ax.bar([x + width / 2 for x in xs], p99, width, label="p99")
        ax.set_title(f"{level} concurrent client{'s' if level > 1 else ''}")
        # Log scale from 1 ms, the same in every panel: LiteLLM at 32 would flatten the rest.
        ax.set_yscale("log")
        ax.set_ylim(1, top)
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.set_ylabel("client latency, ms (log scale)")
        ax.set_xticks(list(xs), names, rotation=35, ha="right")
        ax.legend()
    fig.suptitle(f"Latency by path: one simulator ({SIM_TTFT_MS} ms + 1 token), ~30-token prompt")
    fig.tight_layout()
    fig.savefig(latency_png, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / len(CONCURRENCY)
    for k, level in enumerate(CONCURRENCY):
        shifted = [x + (k - (len(CONCURRENCY) - 1) / 2) * width for x in range(len(names))]
        rates = [cells[n][level].requests_per_s if level in cells[n] else 0 for n in names]
        ax.bar(shifted, rates, width, label=f"{level} client{'s' if level > 1 else ''}")
    ax.set_xticks(list(range(len(names))), names, rotation=35, ha="right")
    ax.set_ylabel("requests per second")
    ax.legend()
    ax.set_title(f"Throughput by path (closed loop, {os.cpu_count()} CPUs shared by all)")
    fig.tight_layout()
    fig.savefig(throughput_png, dpi=100)
    plt.close(fig)


def main() -> int:
    """Run the benchmark, print the table, write JSON and two PNGs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    out = ROOT / "bench-results"
    parser.add_argument("--out", type=Path, default=out / "side_by_side.json")
    parser.add_argument("--latency-png", type=Path, default=out / "side_by_side_latency.png")
    parser.add_argument("--throughput-png", type=Path, default=out / "side_by_side_throughput.png")
    args = parser.parse_args()
    print(
        f"side by side: {len(CONCURRENCY)} concurrency levels, at most {CELL_REQUESTS} requests "
        f"or {CELL_SECONDS:g} s per cell"
    )
    with tempfile.TemporaryDirectory(prefix="bench-side-") as tmp:
        report = run(Path(tmp))
    cells: dict[str, dict[int, Cell]] = report["cells"]
    print_table(cells)
    for note in report["notes"]:
        print(f"note: {note}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "simulator": {"ttft_ms": SIM_TTFT_MS, "tokens_per_s": SIM_TOKENS_PER_S,
                      "slots": SIM_SLOTS, "max_tokens": 1},
        "cell": {"max_requests": CELL_REQUESTS, "max_seconds": CELL_SECONDS},
        "baseline": BASELINE,
        "cells": {p: {str(c): asdict(cell) for c, cell in by.items()} for p, by in cells.items()},
        "ratios": {p: {str(c): r for c, r in by.items()} for p, by in ratios(cells).items()},
        "classifier": report["classifier"],
        "litellm": {"version": litellm_version(), "routing_strategy": "latency-based-routing",
                    "start_s": report["litellm_start_s"]},
        "notes": report["notes"], "seconds": report["seconds"],
    }, indent=2))  # fmt: skip
    plot(cells, args.latency_png, args.throughput_png)
    print(f"written to {args.out}, {args.latency_png} and {args.throughput_png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
