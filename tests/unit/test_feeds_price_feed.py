"""The price feed: a table on disk moves `cost` traffic; gone, the static prices return."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.core.catalogue import Catalogue, Price, Provider
from sidecar.core.decision import RoutingTable, decide
from sidecar.core.policy import Intent, Policy
from sidecar.core.request import Endpoint, RequestFacts
from sidecar.feeds.live import LiveBoard
from sidecar.feeds.price_feed import PriceFeed, parse_price_document

CATALOGUE = Catalogue(
    providers=(
        Provider("mid-a", "llama", "mid", Price(0.59, 0.79)),
        Provider("mid-b", "llama", "mid", Price(0.88, 0.88)),
        Provider("big", "gpt-4o", "frontier", Price(2.5, 10.0)),
    ),
    clusters=frozenset({"mid-a", "mid-b", "big"}),
)
TABLE = RoutingTable(tiers=("mid", "frontier"), default_route="mid")


def _cost_choice(board: LiveBoard) -> tuple[str, str]:
    facts = RequestFacts(Endpoint.CHAT, "router:cost", "hi", 10, 50, False)
    decision = decide(
        facts, Intent(Policy.COST), decision_id="d", table=TABLE, catalogue=CATALOGUE,
        snapshot=board.snapshot(),
    )  # fmt: skip
    return decision.upstream, decision.reason


async def test_a_price_change_moves_cost_traffic_and_a_dead_feed_falls_back(
    tmp_path: Path,
) -> None:
    now = [0.0]
    board = LiveBoard(CATALOGUE, max_age_s=5, price_max_age_s=60, clock=lambda: now[0])
    table = tmp_path / "prices.yaml"
    feed = PriceFeed(board, CATALOGUE, str(table), interval_s=30, timeout_s=5)
    assert _cost_choice(board)[0] == "mid-a"  # static: mid-a is cheaper
    table.write_text(json.dumps({"mid-b": {"input": 0.1, "output": 0.1}}))
    await feed.read_once()
    upstream, reason = _cost_choice(board)
    assert upstream == "mid-b" and "price from price feed (0 s old)" in reason
    table.unlink()  # the feed goes down: the last list stays until it is too old
    with pytest.raises(OSError):
        await feed.read_once()
    now[0] = 61.0
    upstream, reason = _cost_choice(board)
    assert upstream == "mid-a" and "price feed stale (61 s): static price" in reason


def test_either_shape_is_read() -> None:
    openrouter = {
        "data": [{"id": "openai/gpt-4o", "pricing": {"prompt": "1e-6", "completion": "2e-6"}}]
    }
    assert parse_price_document(openrouter, CATALOGUE) == {"big": Price(1.0, 2.0)}
    assert parse_price_document({"llama": {"input": 1, "output": 1}}, CATALOGUE) == {
        "mid-a": Price(1, 1),
        "mid-b": Price(1, 1),
    }
    with pytest.raises(ValueError):
        parse_price_document(["not", "a", "table"], CATALOGUE)
