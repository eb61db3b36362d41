"""The Grafana dashboard: valid JSON of the right shape, and a careful PromQL name extractor.

The integration test (`tests/integration/test_dashboard.py`) checks the names against a
real stack's scrapes; here the extractor is checked on its own, and the sidecar's names
against an in-memory `RouterMetrics` with every collector the server registers.
"""

from __future__ import annotations

import pytest

from sidecar.config.envoy import load_catalogue
from sidecar.core.decision import ProviderSnapshot
from sidecar.feeds.live import LiveBoard
from sidecar.serving.metrics import RouterMetrics
from tests.dashboard_queries import (
    DASHBOARD,
    dashboard_exprs,
    exported_names,
    load_dashboard,
    metric_names,
    referenced_names,
)
from tests.unit.test_metrics import FakeAccessLog, FakeFeed

R = "[$__rate_interval]"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ("rate(http_requests_total[5m])", {"http_requests_total"}),
        ('sum by (job, le) (rate(a_bucket{job="x", le!~"1|2"}[1h30m]))', {"a_bucket"}),
        (
            f"sum(rate(a_total{R})) by (code) / ignoring(code) group_left sum(b{R})",
            {"a_total", "b"},
        ),
        (f"histogram_quantile(0.99, sum without (pod) (rate(lat_bucket{R})))", {"lat_bucket"}),
        ("x and on (job, instance) y or z unless w", {"x", "y", "z", "w"}),
        ("a > bool 1e-3 + -Inf * NaN", {"a"}),
        (
            "foo offset 5m + foo @ start() - vllm:num_requests_waiting",
            {"foo", "vllm:num_requests_waiting"},
        ),
        ("max_over_time(rate(c[5m])[30m:1m])", {"c"}),
        (
            'count_values("version", build_info) + topk(3, x) + quantile(0.9, y)',
            {"build_info", "x", "y"},
        ),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
        ("sum by (group) (group_metric)", {"group_metric"}),
        ("${datasource_metric} + 0x1F", set()),
        ("absent(nothing_here{job='a'})", {"nothing_here"}),
    ],
)
def test_metric_names_are_extracted_and_nothing_else(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize("expr", ["rate(x[5m]", "sum(x))", "x{a='b'", "x}", "x # comment", "a ; b"])
def test_an_expression_the_extractor_cannot_read_is_an_error(expr: str) -> None:
    with pytest.raises(ValueError, match="PromQL"):
        metric_names(expr)


def test_exported_names_include_histogram_series_declared_without_samples() -> None:
    text = "\n".join(
        [
            "# HELP h_seconds Help.",
            "# TYPE h_seconds histogram",
            "# TYPE c_total counter",
            'c_total{code="200"} 3',
            'envoy_cluster_upstream_rq_retry{envoy_cluster_name="a"} 0',
            "bare 1",
        ]
    )
    names = exported_names(text)
    assert {"h_seconds_bucket", "h_seconds_sum", "h_seconds_count", "c_total"} <= names
    assert {"envoy_cluster_upstream_rq_retry", "bare"} <= names
    assert "c_total_bucket" not in names and "HELP" not in names


def test_the_dashboard_is_grafana_json_with_a_datasource_variable() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "inference-router" and dashboard["title"]
    templating = dashboard["templating"]
    assert isinstance(templating, dict)
    variables = {v["name"]: v for v in templating["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert isinstance(panels, list)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 15
    for panel in graphs:
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert metric_names(target["expr"]), f"{panel['title']}: names no metric"


def test_the_dashboard_covers_the_sidecar_and_envoy() -> None:
    names = set(referenced_names(load_dashboard()))
    for wanted in (
        "inference_router_decisions_total",
        "inference_router_decision_seconds_bucket",
        "inference_router_decision_stage_seconds_bucket",
        "inference_router_expected_cost_usd_sum",
        "inference_router_feed_age_seconds",
        "inference_router_feed_read_errors_total",
        "inference_router_provider_queue_waiting",
        "inference_router_provider_price_usd_per_mtok",
        "process_cpu_seconds_total",
        "envoy_http_ext_proc_streams_started",
        "envoy_cluster_upstream_rq",
        "envoy_cluster_upstream_rq_retry",
        "envoy_cluster_outlier_detection_ejections_active",
    ):
        assert wanted in names
    assert len(dashboard_exprs(load_dashboard())) >= 30


def test_every_sidecar_name_in_the_dashboard_is_exported() -> None:
    catalogue = load_catalogue(DASHBOARD.parents[2] / "envoy" / "local.yaml")
    metrics = RouterMetrics()
    metrics.watch_classifier(lambda: 0.0)
    metrics.watch_providers(catalogue, ProviderSnapshot)
    metrics.watch_feeds(LiveBoard(catalogue, max_age_s=5), [FakeFeed("f")], FakeAccessLog())
    exported = exported_names(metrics.exposition().decode())
    wanted = {
        name
        for name in referenced_names(load_dashboard())
        if name.startswith(("inference_router_", "process_"))
    }
    assert wanted and wanted <= exported, sorted(wanted - exported)
