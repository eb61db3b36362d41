"""Reading the sidecar's Prometheus text for the benchmarks, with prometheus_client's parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def scrape(url: str) -> list[Sample]:
    """Every sample a Prometheus endpoint exposes now."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def sum_by_label(samples: list[Sample], name: str, label: str | None = None) -> dict[str, float]:
    """Sum the values of one sample name, by one label's value ("" when no label is asked)."""
    sums: dict[str, float] = {}
    for sample in samples:
        if sample.name == name:
            key = sample.labels.get(label, "") if label is not None else ""
            sums[key] = sums.get(key, 0.0) + sample.value
    return sums
