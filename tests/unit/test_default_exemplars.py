"""The default exemplar set shipped in sidecar/data: schema, uniqueness, size and balance."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from importlib.resources import files

import pytest

ROUTES = frozenset({"small", "mid", "frontier"})
MIN_ROWS = 500
MIN_LABEL_SHARE = 0.20

# Prompts the router must route clearly; they anchor the set, so they are present verbatim.
ANCHORS = {
    "hi": "small",
    "hello": "small",
    "hi, thanks!": "small",
    "thanks!": "small",
    "what's 2+2": "small",
    "Prove that the square root of 2 is irrational and then generalise to all non-square "
    "integers": "frontier",
}


@dataclass(frozen=True, slots=True)
class Row:
    """One exemplar line after schema checks."""

    line: int
    text: str
    route: str
    output_tokens: int


def _parse(line: int, raw: str) -> Row:
    row = json.loads(raw)
    assert isinstance(row, dict), f"line {line}: not a JSON object"
    assert set(row) == {"text", "route", "output_tokens"}, f"line {line}: fields {sorted(row)}"
    text, route, tokens = row["text"], row["route"], row["output_tokens"]
    assert isinstance(text, str), f"line {line}: text is not a string"
    assert text.strip(), f"line {line}: empty text"
    assert route in ROUTES, f"line {line}: route {route!r}"
    # bool is an int subclass; a true/false length would be a typo, not a count.
    assert isinstance(tokens, int), f"line {line}: output_tokens {tokens!r}"
    assert not isinstance(tokens, bool), f"line {line}: output_tokens {tokens!r}"
    assert tokens > 0, f"line {line}: output_tokens {tokens}"
    return Row(line=line, text=text, route=route, output_tokens=tokens)


def _resource_text() -> str:
    return (files("sidecar") / "data" / "exemplars.jsonl").read_text(encoding="utf-8")


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    """Every row of the packaged exemplar file, schema-checked."""
    lines = _resource_text().splitlines()
    return [_parse(number, raw) for number, raw in enumerate(lines, start=1) if raw.strip()]


def test_every_line_is_a_row(rows: list[Row]) -> None:
    lines = _resource_text().splitlines()
    assert len(rows) == len(lines), "blank lines in the file"


def test_has_enough_rows(rows: list[Row]) -> None:
    assert len(rows) >= MIN_ROWS


def test_no_duplicate_texts(rows: list[Row]) -> None:
    seen: dict[str, int] = {}
    duplicates = []
    for row in rows:
        key = _normalise(row.text)
        if key in seen:
            duplicates.append((seen[key], row.line, row.text))
        seen.setdefault(key, row.line)
    assert duplicates == []


def test_each_label_has_a_fair_share(rows: list[Row]) -> None:
    counts = Counter(row.route for row in rows)
    assert set(counts) == ROUTES
    for route in ROUTES:
        assert counts[route] / len(rows) >= MIN_LABEL_SHARE, (route, counts[route], len(rows))


def test_anchor_prompts_carry_their_labels(rows: list[Row]) -> None:
    labels = {_normalise(row.text): row.route for row in rows}
    for text, route in ANCHORS.items():
        assert labels.get(_normalise(text)) == route, text


def test_frontier_answers_are_longer_than_small_ones(rows: list[Row]) -> None:
    def median(route: str) -> int:
        lengths = sorted(row.output_tokens for row in rows if row.route == route)
        return lengths[len(lengths) // 2]

    assert median("small") < median("mid") < median("frontier")
