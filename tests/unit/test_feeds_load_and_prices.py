"""Reading load from engines' Prometheus text, and prices from OpenRouter or a table."""

from __future__ import annotations

import pytest

from sidecar.core.catalogue import Catalogue, Price, Provider
from sidecar.feeds.engines import LOAD_METRICS, LoadSample, parse_load
from sidecar.feeds.prices import match_providers, parse_openrouter, parse_table
from sidecar.simulator.load import AdmissionGate, TrafficCounters, render_metrics

VLLM = """# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="a"} 3.0
vllm:num_requests_waiting{model_name="b"} 2.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="a"} 8.0
# HELP vllm:e2e_request_latency_seconds Histogram of end to end request latency.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="1.0",model_name="a"} 4.0
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="a"} 5.0
vllm:e2e_request_latency_seconds_count{model_name="a"} 5.0
vllm:e2e_request_latency_seconds_sum{model_name="a"} 2.5
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="a"} 0.25
"""


def test_vllm_load_sums_series_and_ignores_the_rest() -> None:
    assert parse_load(VLLM, LOAD_METRICS["vllm"]) == LoadSample(5.0, 8.0, 0.25)


@pytest.mark.parametrize(
    ("engine", "text", "expected"),
    [
        ("sglang", "sglang:num_queue_reqs 7\nsglang:num_running_reqs 2\n", LoadSample(7, 2, None)),
        ("tgi", "tgi_queue_size 4\ntgi_batch_current_size 3\n", LoadSample(4, 3, None)),
        (
            "triton",
            'nv_inference_pending_request_count{model="m",version="1"} 5\n',
            LoadSample(5, None, None),
        ),
        ("openai", VLLM, LoadSample(None, None, None)),
        ("vllm", "", LoadSample(None, None, None)),  # nothing said: unknown, not zero
    ],
)
def test_each_engine_names_its_own_metrics(engine: str, text: str, expected: LoadSample) -> None:
    assert parse_load(text, LOAD_METRICS[engine]) == expected  # type: ignore[index]


def test_the_simulators_own_exposition_reads_as_its_queue() -> None:
    gate = AdmissionGate(concurrency=2, max_queue=10, retry_after_s=1)
    text = render_metrics("m", gate, TrafficCounters())
    assert parse_load(text, LOAD_METRICS["vllm"]) == LoadSample(0.0, 0.0, 0.0)


def test_a_broken_exposition_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_load("vllm:num_requests_waiting not-a-number\n", LOAD_METRICS["vllm"])


CATALOGUE = Catalogue(
    providers=(
        Provider("openai", "gpt-4o", "frontier", Price(2.5, 10.0)),
        Provider("groq", "llama-3.3-70b-versatile", "mid", Price(0.59, 0.79)),
        Provider("vllm", "qwen2.5-7b", "small", Price(0.1, 0.1)),
    ),
    clusters=frozenset({"openai", "groq", "vllm"}),
)


def test_openrouter_prices_per_token_become_per_million_and_match_by_model() -> None:
    document = {
        "data": [
            {"id": "openai/gpt-4o", "pricing": {"prompt": "0.000002", "completion": "0.000008"}},
            {"id": "meta/llama-3.3-70b-versatile", "pricing": {"prompt": "-1", "completion": "0"}},
            {"id": "broken"},
        ]
    }
    prices = parse_openrouter(document)
    assert prices == {"openai/gpt-4o": Price(pytest.approx(2.0), pytest.approx(8.0))}  # type: ignore[arg-type]
    assert match_providers(prices, CATALOGUE) == {"openai": prices["openai/gpt-4o"]}


def test_a_table_matches_clusters_or_models_and_refuses_nonsense() -> None:
    table = parse_table(
        {"groq": {"input": 0.5, "output": 0.7}, "qwen2.5-7b": {"input": 0, "output": 0}}
    )
    assert match_providers(table, CATALOGUE) == {"groq": Price(0.5, 0.7), "vllm": Price(0, 0)}
    with pytest.raises(ValueError, match="'groq'"):
        parse_table({"groq": {"input": -1, "output": 1}})
    with pytest.raises(ValueError):
        parse_openrouter({"models": []})
