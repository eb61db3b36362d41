"""A price list the simulator serves and lets you change while it runs: a stand-in price API.

Theory: the router reads live prices from a price feed (a URL serving OpenRouter's models
JSON or a plain table). To see that feed at work without a real price API, a simulator
serves the plain table at `GET /sim/prices`, `{name: {input, output}}` in US dollars per
million tokens (names are the router's cluster names or model ids), and `PUT /sim/prices`
changes it: each entry named in the body is set, and `null` removes one; the others stay.
The table starts empty, so every provider keeps its static price until one is set. Pure:
the server holds one `PriceList` and swaps in the table `updated` returns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.simulator.errors import ApiError


@dataclass(frozen=True)
class Price:
    """US dollars per million input and output tokens."""

    input: float
    output: float


def updated(current: Mapping[str, Price], payload: Mapping[str, object]) -> dict[str, Price]:
    """`current` with the entries `payload` names set (or removed, for null); 400 on a bad one."""
    table = dict(current)
    for name, entry in payload.items():
        if not name:
            raise ApiError("a price entry needs a non-empty name", param="name")
        if entry is None:
            table.pop(name, None)
            continue
        if not isinstance(entry, Mapping) or set(entry) != {"input", "output"}:
            raise ApiError(
                f'price entry \'{name}\' must be {{"input": ..., "output": ...}} or null',
                param=name,
            )
        values = [entry["input"], entry["output"]]
        if not all(_non_negative(value) for value in values):
            raise ApiError(
                f"price entry '{name}': input and output must be numbers >= 0 (per Mtok)",
                param=name,
            )
        table[name] = Price(float(values[0]), float(values[1]))
    return table


def as_json(table: Mapping[str, Price]) -> dict[str, dict[str, float]]:
    """The table as `GET /sim/prices` serves it."""
    return {name: {"input": p.input, "output": p.output} for name, p in table.items()}


class PriceList:
    """The table one simulator serves now; replaced whole on each change."""

    def __init__(self) -> None:
        self.table: dict[str, Price] = {}

    def change(self, payload: Mapping[str, object]) -> None:
        """Apply a `PUT /sim/prices` body, all of it or (on a bad entry) none of it."""
        self.table = updated(self.table, payload)


def _non_negative(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )
