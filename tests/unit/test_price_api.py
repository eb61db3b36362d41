"""The stand-in price API: the simulator's run-time price table, read by the router's feed.

The table's rules are tested in memory; one test reads a real simulator on loopback with
the router's own `PriceFeed` and a fake clock; the local stack's wiring (the settings file
it writes for the sidecar) is checked without starting anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.config.envoy import load_catalogue
from sidecar.config.settings import load_settings
from sidecar.devstack.stack import LocalStack, StackPorts
from sidecar.feeds.live import LiveBoard
from sidecar.feeds.price_feed import PriceFeed
from sidecar.simulator.config import SimulatorConfig
from sidecar.simulator.errors import ApiError
from sidecar.simulator.prices import Price, PriceList, as_json, updated
from sidecar.simulator.server import start

LOCAL_CONFIG = Path(__file__).resolve().parents[2] / "envoy" / "local.yaml"


def test_a_change_sets_and_removes_only_the_entries_it_names() -> None:
    table = updated(
        {}, {"sim-mid-a": {"input": 5, "output": 7.5}, "gpt-4o": {"input": 0, "output": 1}}
    )
    assert table == {"sim-mid-a": Price(5.0, 7.5), "gpt-4o": Price(0.0, 1.0)}
    table = updated(table, {"gpt-4o": None, "sim-mid-b": {"input": 1, "output": 2}})
    assert table == {"sim-mid-a": Price(5.0, 7.5), "sim-mid-b": Price(1.0, 2.0)}
    assert updated(table, {"never-set": None}) == table
    assert as_json(table)["sim-mid-a"] == {"input": 5.0, "output": 7.5}


@pytest.mark.parametrize(
    "entry",
    [
        {"input": 1},
        {"input": 1, "output": 2, "cached": 0},
        {"input": -1, "output": 2},
        {"input": True, "output": 2},
        {"input": "1", "output": 2},
        [1, 2],
        3,
    ],
)
def test_a_bad_entry_is_a_400_naming_it_and_changes_nothing(entry: object) -> None:
    prices = PriceList()
    prices.change({"kept": {"input": 1, "output": 1}})
    with pytest.raises(ApiError) as caught:
        prices.change({"other": {"input": 2, "output": 2}, "bad": entry})
    assert caught.value.status == 400 and caught.value.param == "bad"
    assert prices.table == {"kept": Price(1.0, 1.0)}  # all or nothing


@pytest.fixture
async def simulator() -> AsyncIterator[str]:
    runner, port = await start(SimulatorConfig(name="sim-small", model="m"), "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_the_router_feed_reads_what_the_simulator_is_told(simulator: str) -> None:
    catalogue = load_catalogue(LOCAL_CONFIG)
    now = [100.0]
    board = LiveBoard(catalogue, max_age_s=5, price_max_age_s=5, clock=lambda: now[0])
    feed = PriceFeed(board, catalogue, simulator + "/sim/prices", interval_s=1, timeout_s=5)
    await feed.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(simulator + "/sim/prices") as empty:
                assert empty.status == 200 and await empty.json() == {}
            change = {"sim-mid-a": {"input": 5, "output": 6}, "not-a-cluster": None}
            async with session.put(simulator + "/sim/prices", json=change) as reply:
                assert reply.status == 200
                assert await reply.json() == {"sim-mid-a": {"input": 5.0, "output": 6.0}}
            async with session.put(simulator + "/sim/prices", data=b"[1]") as bad:
                assert bad.status == 400 and (await bad.json())["error"]["code"]
        prices = await feed.read_once()
    finally:
        await feed.stop()
    assert set(prices) == {"sim-mid-a"}
    state = board.snapshot().state("sim-mid-a")
    assert state.price is not None and state.price.input_per_mtok == 5.0
    assert "price from price feed (0 s old)" in state.notes
    now[0] += 6  # past max_age_s: the static price again, and the reason says so
    stale = board.snapshot().state("sim-mid-a")
    assert stale.price is None and "price feed stale (6 s): static price" in stale.notes


def _stack(tmp_path: Path, sidecar_args: tuple[str, ...] = ()) -> LocalStack:
    ports = StackPorts.ephemeral(load_catalogue(LOCAL_CONFIG))
    return LocalStack(LOCAL_CONFIG, ports, sidecar_args=sidecar_args, workdir=tmp_path)


def test_the_stack_points_the_sidecar_price_feed_at_the_first_simulator(tmp_path: Path) -> None:
    stack = _stack(tmp_path, ("--no-semantic",))
    port = stack.ports.providers["sim-small"]
    assert stack.price_server == "sim-small"
    assert stack.price_url == f"http://127.0.0.1:{port}/sim/prices"
    argv = stack.child("sidecar").argv
    assert argv[argv.index("--config") + 1] == str(stack.settings_path)
    stack._write_config()  # what start_sidecar writes before it starts the sidecar
    settings = load_settings(stack.settings_path, {"envoy_config": stack.config_path})
    assert settings.price_feed.source == stack.price_url
    assert settings.price_feed.interval_s < settings.price_feed.max_age_s


def test_the_callers_own_settings_file_wins(tmp_path: Path) -> None:
    own = tmp_path / "mine.yaml"
    stack = _stack(tmp_path, ("--config", str(own)))
    argv = stack.child("sidecar").argv
    assert argv.count("--config") == 1 and argv[argv.index("--config") + 1] == str(own)
    stack._write_config()
    assert not stack.settings_path.exists() and not own.exists()
