"""The Prometheus fleet feed: one query, answers recorded from a real Prometheus 2.42."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from sidecar.config.settings import Settings, load_settings
from sidecar.core.catalogue import Catalogue, Price, Provider
from sidecar.errors import ConfigError
from sidecar.feeds.engines import LOAD_METRICS, LoadSample
from sidecar.feeds.live import LiveBoard
from sidecar.feeds.promql import (
    PrometheusLoadFeed,
    PromTarget,
    Series,
    build_query,
    instance_keys,
    parse_matrix,
    prometheus_targets,
    readings,
)
from sidecar.feeds.scrape import LoadScraper
from sidecar.serving.composition import build_feeds

CATALOGUE = Catalogue(
    providers=(
        Provider("mid-a", "llama", "mid", Price(0.59, 0.79),
                 metrics_url="http://127.0.0.1:18771/metrics", max_concurrency=8),
        Provider("mid-b", "llama", "mid", Price(0.88, 0.88),
                 metrics_url="http://vllm-b.models/metrics", max_concurrency=8),
        Provider("sg", "qwen", "small", Price(0.1, 0.1), engine="sglang"),
        Provider("hosted", "gpt-4o", "frontier", Price(2.5, 10.0), engine="openai",
                 metrics_url="http://ignored:1/metrics"),
    ),
    clusters=frozenset({"mid-a", "mid-b", "sg", "hosted"}),
)  # fmt: skip
VLLM = LOAD_METRICS["vllm"]
NOW = 1795949895.0

# Recorded from Prometheus 2.42 (Debian) scraping the provider simulator once a second:
# POST /api/v1/query with {__name__=~"vllm:num_requests_waiting|..."}[3s].
RECORDED_MATRIX = json.loads("""
{"status":"success","data":{"resultType":"matrix","result":[
 {"metric":{"__name__":"vllm:num_requests_running","instance":"127.0.0.1:18771","job":"sims",
   "model_name":"m","router_cluster":"mid-a"},
  "values":[[1795949892.774,"0"],[1795949893.774,"6"],[1795949894.774,"8"]]},
 {"metric":{"__name__":"vllm:num_requests_waiting","instance":"127.0.0.1:18771","job":"sims",
   "model_name":"m","router_cluster":"mid-a"},
  "values":[[1795949892.774,"0"],[1795949893.774,"12"],[1795949894.774,"30"]]}]}}
""")
# What Prometheus answers (HTTP 400) to a query it cannot parse.
RECORDED_ERROR = {
    "status": "error",
    "errorType": "bad_data",
    "error": 'invalid parameter "query": 1:5: parse error: unexpected end of input inside braces',
}


def _series(name: str, value: float, at: float, **labels: str) -> Series:
    return Series({"__name__": name, **labels}, value, at)


def test_instance_keys_are_the_host_and_port_prometheus_scraped() -> None:
    assert instance_keys("http://127.0.0.1:8102/metrics") == ("127.0.0.1:8102",)
    assert instance_keys("http://[::1]:8000/metrics") == ("[::1]:8000",)
    # Prometheus 2 writes the scheme's port into `instance`, Prometheus 3 does not.
    assert instance_keys("https://vllm.models/metrics") == ("vllm.models:443", "vllm.models")


def test_targets_by_instance_need_a_metrics_url_and_by_label_only_load_metrics() -> None:
    by_instance = prometheus_targets(CATALOGUE, None)
    assert [(t.cluster, t.keys) for t in by_instance] == [
        ("mid-a", ("127.0.0.1:18771",)),
        ("mid-b", ("vllm-b.models:80", "vllm-b.models")),
    ]
    by_label = prometheus_targets(CATALOGUE, "router_cluster")
    # sg has no metrics_url but Prometheus may still hold its series; a hosted API has none.
    assert [(t.cluster, t.keys) for t in by_label] == [
        ("mid-a", ("mid-a",)), ("mid-b", ("mid-b",)), ("sg", ("sg",)),
    ]  # fmt: skip


def test_one_query_asks_for_every_metric_kind_of_every_target() -> None:
    targets = prometheus_targets(CATALOGUE, "router_cluster")
    assert build_query(targets, "router_cluster", 5.0) == (
        '{__name__=~"sglang:num_queue_reqs|sglang:num_running_reqs|sglang:token_usage|'
        'vllm:kv_cache_usage_perc|vllm:num_requests_running|vllm:num_requests_waiting",'
        'router_cluster=~"mid\\\\-a|mid\\\\-b|sg"}[5000ms]'
    )
    # Dots in an address are literal, not "any character".
    query = build_query(prometheus_targets(CATALOGUE, None)[:1], "instance", 0.25)
    assert query.endswith('instance=~"127\\\\.0\\\\.0\\\\.1:18771"}[250ms]')


def test_a_recorded_answer_reads_as_the_last_sample_of_each_series() -> None:
    series = parse_matrix(RECORDED_MATRIX)
    assert [(s.labels["__name__"], s.value, s.timestamp) for s in series] == [
        ("vllm:num_requests_running", 8.0, 1795949894.774),
        ("vllm:num_requests_waiting", 30.0, 1795949894.774),
    ]
    found = readings(series, prometheus_targets(CATALOGUE, None), "instance", NOW)
    assert found.keys() == {"mid-a"}
    assert found["mid-a"].sample == LoadSample(30.0, 8.0, None)
    assert found["mid-a"].age_s == pytest.approx(0.226)


def test_prometheus_refusals_and_foreign_shapes_are_value_errors() -> None:
    with pytest.raises(ValueError, match="refused the query: bad_data: invalid parameter"):
        parse_matrix(RECORDED_ERROR)
    vector = {"status": "success", "data": {"resultType": "vector", "result": []}}
    with pytest.raises(ValueError, match="want a matrix result, got resultType 'vector'"):
        parse_matrix(vector)
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_matrix([])
    bad_sample = {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {}, "values": [[1.0]]}]}}  # fmt: skip
    with pytest.raises(ValueError, match=r"result\[0\]: a sample is not a \[time, value\] pair"):
        parse_matrix(bad_sample)
    empty = {"status": "success", "data": {"resultType": "matrix", "result": []}}
    assert parse_matrix(empty) == ()


def test_series_are_summed_per_provider_and_the_oldest_sets_the_age() -> None:
    targets = prometheus_targets(CATALOGUE, "router_cluster")
    series = [
        # Two replicas of mid-a; one was last scraped 4 s ago.
        _series("vllm:num_requests_waiting", 3, NOW - 0.5, router_cluster="mid-a", pod="1"),
        _series("vllm:num_requests_waiting", 5, NOW - 4.0, router_cluster="mid-a", pod="2"),
        _series("vllm:num_requests_running", 8, NOW - 0.5, router_cluster="mid-a", pod="1"),
        # Not finite: ignored, so mid-b has no usable series and no reading.
        _series("vllm:num_requests_waiting", float("nan"), NOW, router_cluster="mid-b"),
        # Another engine's names under a vLLM provider, and a cluster we do not have.
        _series("sglang:num_queue_reqs", 99, NOW, router_cluster="mid-a"),
        _series("vllm:num_requests_waiting", 99, NOW, router_cluster="elsewhere"),
        _series("sglang:num_queue_reqs", 7, NOW - 1.0, router_cluster="sg"),
    ]
    found = readings(series, targets, "router_cluster", NOW)
    assert found.keys() == {"mid-a", "sg"}
    assert found["mid-a"].sample == LoadSample(8.0, 8.0, None)
    assert found["mid-a"].age_s == pytest.approx(4.0)
    assert found["sg"].sample == LoadSample(7.0, None, None)
    # A Prometheus clock slightly ahead of ours is not a reading from the future.
    ahead = [_series("sglang:num_queue_reqs", 1, NOW + 0.3, router_cluster="sg")]
    assert readings(ahead, targets, "router_cluster", NOW)["sg"].age_s == 0.0


def test_a_stale_series_ages_on_the_board_instead_of_looking_fresh() -> None:
    now = [100.0]
    board = LiveBoard(CATALOGUE, max_age_s=5.0, clock=lambda: now[0])
    targets = [PromTarget("mid-a", ("mid-a",), VLLM)]
    series = [_series("vllm:num_requests_waiting", 0, NOW - 4.5, router_cluster="mid-a")]
    aged = readings(series, targets, "router_cluster", NOW)["mid-a"]
    board.record_load("mid-a", aged.sample, age_s=aged.age_s)
    assert board.snapshot().state("mid-a").queue_waiting == 0  # 4.5 s old: still trusted
    now[0] += 1.0
    state = board.snapshot().state("mid-a")
    assert state.queue_waiting == 8 and "queue unknown (6 s old)" in state.notes[0]
    # A reading older than the one kept never replaces it.
    board.record_load("mid-a", LoadSample(30, 0, None), age_s=60)
    assert "queue unknown (6 s old)" in board.snapshot().state("mid-a").notes[0]


@dataclass
class FakePrometheus:
    """Answers /api/v1/query with what a test sets; keeps every form it was sent."""

    status: int = 200
    body: object = field(default_factory=lambda: RECORDED_MATRIX)
    forms: list[Mapping[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    hang: bool = False

    async def query(self, request: web.Request) -> web.Response:
        self.forms.append(dict(await request.post()))  # type: ignore[arg-type]
        if self.hang:
            await self.release.wait()
        if isinstance(self.body, str):
            return web.Response(status=self.status, text=self.body)
        return web.json_response(self.body, status=self.status)


@pytest.fixture
async def prometheus() -> AsyncIterator[tuple[FakePrometheus, str]]:
    fake = FakePrometheus()
    app = web.Application()
    app.router.add_post("/prefix/api/v1/query", fake.query)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield fake, f"http://127.0.0.1:{runner.addresses[0][1]}/prefix/"
    fake.release.set()
    await runner.cleanup()


def _feed(board: LiveBoard, url: str, **options: float) -> PrometheusLoadFeed:
    timing = {"interval_s": 0.5, "timeout_s": 1.0, "window_s": 5.0, **options}
    targets = prometheus_targets(CATALOGUE, None)
    return PrometheusLoadFeed(board, url, targets, label="instance", clock=lambda: NOW, **timing)


async def test_the_feed_records_what_prometheus_says_and_backs_off_when_refused(
    prometheus: tuple[FakePrometheus, str],
) -> None:
    fake, url = prometheus
    board = LiveBoard(CATALOGUE, max_age_s=5.0, clock=lambda: 50.0)
    feed = _feed(board, url)
    await feed.start()
    try:
        assert await feed.tick() == 0.5
        assert fake.forms[-1] == {"query": feed.query, "timeout": "1000ms"}
        state = board.snapshot().state("mid-a")
        assert state.queue_waiting == 30 and state.notes[0] == "30 waiting (0.2 s old)"
        fake.status, fake.body = 400, RECORDED_ERROR
        with pytest.raises(ValueError, match="bad_data"):
            await feed.query_once()
        assert [await feed.tick(), await feed.tick()] == [1.0, 2.0]  # 0.5 s x 2^failures
        fake.status, fake.body = 502, "<html>bad gateway</html>"
        with pytest.raises(ValueError, match="HTTP 502: the answer is not JSON"):
            await feed.query_once()
        fake.status, fake.body = 200, RECORDED_MATRIX
        assert await feed.tick() == 0.5  # back to the interval
    finally:
        await feed.stop()


async def test_every_query_has_a_timeout(prometheus: tuple[FakePrometheus, str]) -> None:
    fake, url = prometheus
    fake.hang = True
    feed = _feed(LiveBoard(CATALOGUE, max_age_s=5.0), url, timeout_s=0.05)
    await feed.start()
    try:
        with pytest.raises(TimeoutError):
            await feed.query_once()
        assert fake.forms[-1]["timeout"] == "50ms"  # Prometheus gives up too
    finally:
        await feed.stop()


def test_the_settings_choose_the_source() -> None:
    def feeds(load_feed: Mapping[str, object]) -> list[str]:
        settings = Settings.model_validate(
            {"envoy_config": "e.yaml", "envoy_health": {"enabled": False}, "load_feed": load_feed}
        )
        _, built = build_feeds(settings, {}, CATALOGUE)
        return [type(feed).__name__ for feed in built]

    assert feeds({}) == [LoadScraper.__name__]
    prometheus = {"url": "http://prometheus:9090", "cluster_label": "router_cluster"}
    chosen = feeds({"source": "prometheus", "prometheus": prometheus})
    assert chosen == [PrometheusLoadFeed.__name__]
    assert feeds({"source": "prometheus", "prometheus": prometheus, "enabled": False}) == []


@pytest.mark.parametrize(
    ("load_feed", "error"),
    [
        ({"source": "prometheus"}, "load_feed.prometheus: required when source is prometheus"),
        ({"source": "prometheus", "prometheus": {"url": "prometheus:9090"}},
         "load_feed.prometheus.url: want an http(s) URL"),
        ({"source": "prometheus", "prometheus": {"url": "http://p", "cluster_label": "a-b"}},
         "load_feed.prometheus.cluster_label: not a Prometheus label name: 'a-b'"),
        ({"source": "thanos"}, "load_feed.source: Input should be 'scrape' or 'prometheus'"),
    ],
)  # fmt: skip
def test_bad_source_settings_name_the_key(load_feed: Mapping[str, object], error: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"settings: {error}")):
        load_settings(None, {"envoy_config": "e.yaml", "load_feed": load_feed})
