"""Price feeds: what each provider charges now, from the shapes price lists come in.

Two shapes are read:

- **OpenRouter's `/api/v1/models`**: `{"data": [{"id": "openai/gpt-4o", "pricing":
  {"prompt": "0.0000025", "completion": "0.00001"}}]}`, US dollars *per token* as strings.
- **A plain price table** (JSON or YAML, from a URL or a file): `{name: {input: 2.5,
  output: 10}}`, US dollars per million tokens, as the Envoy metadata writes them.

A name is matched to the router's providers by cluster name first, then by model id
(also without an OpenRouter `vendor/` prefix). A provider no entry names keeps its
static price from the Envoy YAML: the feed is an update, never a requirement.

Pure: a parsed document in, `{cluster: Price}` out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from sidecar.core.catalogue import Catalogue, Price


def parse_openrouter(document: object) -> dict[str, Price]:
    """{model id: Price per million tokens} from an OpenRouter `/api/v1/models` document."""
    data = document.get("data") if isinstance(document, Mapping) else None
    if not isinstance(data, list):
        raise ValueError("not an OpenRouter models document: no 'data' list")
    prices: dict[str, Price] = {}
    for entry in data:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str):
            continue
        pricing = entry.get("pricing")
        if not isinstance(pricing, Mapping):
            continue
        prompt = _per_token(pricing.get("prompt"))
        completion = _per_token(pricing.get("completion"))
        if prompt is None or completion is None:
            continue  # "-1" (variable pricing) or missing: not a price to route on
        prices[str(entry["id"])] = Price(prompt * 1e6, completion * 1e6)
    return prices


def parse_table(document: object) -> dict[str, Price]:
    """{name: Price} from a plain `{name: {input, output}}` table (per million tokens)."""
    if not isinstance(document, Mapping):
        raise ValueError("a price table must be a mapping of name -> {input, output}")
    prices: dict[str, Price] = {}
    for name, entry in document.items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"price table entry {name!r}: expected {{input, output}}")
        values = [entry.get("input"), entry.get("output")]
        if not all(_non_negative(v) for v in values):
            raise ValueError(f"price table entry {name!r}: input and output must be >= 0")
        prices[str(name)] = Price(float(values[0]), float(values[1]))  # type: ignore[arg-type]
    return prices


def match_providers(prices: Mapping[str, Price], catalogue: Catalogue) -> dict[str, Price]:
    """{cluster: Price} for every provider some entry names (cluster, model, vendor/model)."""
    by_model: dict[str, Price] = {}
    for name, price in prices.items():
        by_model.setdefault(name, price)
        by_model.setdefault(name.rsplit("/", 1)[-1], price)
    matched: dict[str, Price] = {}
    for provider in catalogue.providers:
        for key in (provider.cluster, provider.model):
            if key in prices or key in by_model:
                matched[provider.cluster] = prices.get(key) or by_model[key]
                break
    return matched


def _per_token(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _non_negative(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )
