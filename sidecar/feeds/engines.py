"""What a model server's Prometheus metrics say about its load, per serving engine.

Each engine names the same three facts differently: requests waiting for a slot,
requests running, and how full the KV cache is. `LOAD_METRICS` maps an engine (the
`engine` field of a provider's Envoy metadata) to its names, and `parse_load` reads them
from a Prometheus text exposition (with `prometheus_client`'s parser, not regexes),
summing over label sets (one series per served model or per GPU).

A vLLM exposition is a few hundred lines, mostly histograms the router never reads, and
a scrape may run several times a second: lines of other metrics are dropped before the
parser sees them (by the name in front of `{` or the space), which keeps a parse of the
simulator's exposition near 0.1 ms.

Pure: text in, `LoadSample` out; the scraper and the PromQL source do the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from sidecar.core.catalogue import Engine


@dataclass(frozen=True)
class LoadMetrics:
    """An engine's metric names for waiting and running requests and KV-cache use."""

    waiting: str | None
    running: str | None
    kv_usage: str | None  # a fraction 0..1

    def names(self) -> tuple[str, ...]:
        """Every metric name this engine's load is read from."""
        return tuple(n for n in (self.waiting, self.running, self.kv_usage) if n is not None)


LOAD_METRICS: Mapping[Engine, LoadMetrics] = {
    "vllm": LoadMetrics(
        "vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"
    ),
    "sglang": LoadMetrics("sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:token_usage"),
    "tgi": LoadMetrics("tgi_queue_size", "tgi_batch_current_size", None),
    # Triton counts requests queued in its scheduler; it exports no running gauge.
    "triton": LoadMetrics("nv_inference_pending_request_count", None, None),
    # A hosted API exports nothing: its load is seen only passively.
    "openai": LoadMetrics(None, None, None),
}


@dataclass(frozen=True)
class LoadSample:
    """One reading of a server's load; None where the engine does not say."""

    waiting: float | None
    running: float | None
    kv_usage: float | None


def parse_load(text: str, metrics: LoadMetrics) -> LoadSample:
    """The load an exposition reports; a metric it lacks is None. ValueError if unparsable."""
    wanted = metrics.names()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(_only(text, wanted)):
        for sample in family.samples:
            if sample.name in wanted:
                totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return LoadSample(
        waiting=totals.get(metrics.waiting) if metrics.waiting else None,
        running=totals.get(metrics.running) if metrics.running else None,
        kv_usage=totals.get(metrics.kv_usage) if metrics.kv_usage else None,
    )


def _only(text: str, names: Iterable[str]) -> str:
    """The exposition lines (samples and their # TYPE/# HELP) of `names` only."""
    wanted = frozenset(names)
    kept = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[2] in wanted:
                kept.append(line)
            continue
        end = len(line)
        for mark in ("{", " "):
            found = line.find(mark)
            if found != -1:
                end = min(end, found)
        if line[:end] in wanted:
            kept.append(line)
    return "\n".join(kept) + "\n"
