"""The simulator refuses models it does not serve, and stalls on demand (PUT /sim/control).

Pure rules first (`control`), then the HTTP edge on a loopback port chosen at run time.
Stalls are observed through events the test controls, never by waiting for time to pass:
a held request is one whose task is still pending after the server has seen it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sidecar.simulator.config import SimulatorConfig
from sidecar.simulator.control import Behaviour, check_model, updated
from sidecar.simulator.errors import ApiError, SimulatorConfigError
from sidecar.simulator.server import start
from tests.fakes import GatedPacer

SERVED = "llama-3.3-70b-instruct"
WAIT_LIMIT_S = 10.0

# --- pure rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "asked", "refused"),
    [
        (Behaviour(), "anything", False),  # off: the simulator answers whatever is asked
        (Behaviour(check_model=True), SERVED, False),
        (Behaviour(check_model=True), "auto", True),
        (Behaviour(check_model=True), "gpt-4o", True),
        (Behaviour(check_model=True, accept_models=("auto",)), "auto", False),
        (Behaviour(check_model=True, accept_models=("auto",)), "router:cost", True),
    ],
)
def test_check_model(behaviour: Behaviour, asked: str, refused: bool) -> None:
    if not refused:
        check_model(behaviour, SERVED, asked)
        return
    with pytest.raises(ApiError) as caught:
        check_model(behaviour, SERVED, asked)
    assert (caught.value.status, caught.value.code, caught.value.param) == (
        404,
        "model_not_found",
        "model",
    )
    assert f"`{asked}`" in caught.value.message


def test_update_changes_only_the_named_fields() -> None:
    start_with = Behaviour(check_model=True, accept_models=("auto",))
    assert updated(start_with, {"stall": True}) == Behaviour(
        stall=True, check_model=True, accept_models=("auto",)
    )
    assert updated(start_with, {"accept_models": []}).accept_models == ()


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"stall": "yes"}, "stall"),
        ({"check_model": 1}, "check_model"),
        ({"accept_models": "auto"}, "accept_models"),
        ({"accept_models": [""]}, "accept_models"),
        ({"stal": True}, "stal"),
    ],
)
def test_update_names_the_bad_field(payload: dict[str, object], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        updated(Behaviour(), payload)
    assert caught.value.status == 400 and caught.value.param == param


def test_config_refuses_empty_accepted_names() -> None:
    with pytest.raises(SimulatorConfigError, match="accept_models"):
        SimulatorConfig(name="s", model="m", accept_models=("",))


# --- over HTTP ----------------------------------------------------------------------------


class Sim:
    """A running simulator on a loopback port, its pacer, and a session to talk to it."""

    def __init__(self, session: aiohttp.ClientSession, base: str, pacer: GatedPacer) -> None:
        self.session = session
        self.base = base
        self.pacer = pacer

    async def chat(self, model: str, **extra: Any) -> tuple[int, dict[str, Any]]:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        async with self.session.post(self.base + "/v1/chat/completions", json=body) as reply:
            return reply.status, await reply.json()

    async def control(self, payload: object) -> tuple[int, dict[str, Any]]:
        data = json.dumps(payload).encode()
        async with self.session.put(self.base + "/sim/control", data=data) as reply:
            return reply.status, await reply.json()

    async def seen(self) -> int:
        async with self.session.get(self.base + "/sim/requests") as reply:
            return len((await reply.json())["requests"])

    async def wait_held(self, count: int) -> None:
        """Until the simulator says a stall holds `count` requests."""
        async with asyncio.timeout(WAIT_LIMIT_S):
            while True:
                async with self.session.get(self.base + "/sim/control") as reply:
                    if (await reply.json())["held"] == count:
                        return
                await asyncio.sleep(0.01)


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    config = SimulatorConfig(name="sim-x", model=SERVED, check_model=True)
    pacer = GatedPacer()
    runner, port = await start(config, "127.0.0.1", 0, pacer=pacer)
    async with aiohttp.ClientSession() as session:
        yield Sim(session, f"http://127.0.0.1:{port}", pacer)
    await runner.cleanup()


async def test_refuses_a_model_it_does_not_serve(sim: Sim) -> None:
    assert (await sim.chat(SERVED, max_tokens=2))[0] == 200
    status, body = await sim.chat("auto")
    assert status == 404
    assert body["error"]["code"] == "model_not_found"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == "model"
    assert await sim.seen() == 2  # the refused request is recorded: a wrong rewrite shows


async def test_accepts_auto_only_when_told(sim: Sim) -> None:
    status, behaviour = await sim.control({"accept_models": ["auto"]})
    assert status == 200 and behaviour["accept_models"] == ["auto"]
    assert (await sim.chat("auto", max_tokens=2))[0] == 200
    assert (await sim.chat("router:cost"))[0] == 404
    status, behaviour = await sim.control({"check_model": False})
    assert behaviour["check_model"] is False
    assert (await sim.chat("router:cost", max_tokens=2))[0] == 200


async def test_bad_control_is_a_400_naming_the_field(sim: Sim) -> None:
    status, body = await sim.control({"stall": "please"})
    assert status == 400 and body["error"]["param"] == "stall"
    async with sim.session.get(sim.base + "/sim/control") as reply:
        assert (await reply.json())["stall"] is False


async def test_a_stall_holds_requests_until_released(sim: Sim) -> None:
    await sim.control({"stall": True})
    held = asyncio.create_task(sim.chat(SERVED, max_tokens=2))
    await sim.wait_held(1)
    assert not held.done()  # the server holds it: no answer can have left
    await sim.control({"stall": False})
    async with asyncio.timeout(WAIT_LIMIT_S):
        status, _ = await held
    assert status == 200
    await sim.wait_held(0)


async def test_a_stall_stops_a_stream_mid_way(sim: Sim) -> None:
    body = {"model": SERVED, "stream": True, "messages": [{"role": "user", "content": "story"}]}
    sim.pacer.gate.clear()  # simulated time stands still until the stall is in place
    async with sim.session.post(sim.base + "/v1/chat/completions", json=body) as reply:
        assert reply.status == 200  # a stream's headers leave before its first token
        await sim.control({"stall": True})
        rest = asyncio.create_task(reply.content.read())
        sim.pacer.gate.set()
        await sim.wait_held(1)
        assert not rest.done()
        await sim.control({"stall": False})
        async with asyncio.timeout(WAIT_LIMIT_S):
            assert (await rest).rstrip().endswith(b"data: [DONE]")


async def test_health_can_hang_too(sim: Sim) -> None:
    await sim.control({"stall_health": True})
    probe = asyncio.create_task(sim.session.get(sim.base + "/health"))
    await sim.wait_held(1)
    assert not probe.done()
    await sim.control({"stall_health": False})
    async with asyncio.timeout(WAIT_LIMIT_S):
        reply = await probe
    assert reply.status == 200
    reply.release()


async def test_told_to_fail_it_answers_429_with_retry_after_then_500_then_recovers(
    sim: Sim,
) -> None:
    assert (await sim.control({"fail_status": 429, "retry_after_s": 7}))[0] == 200
    body = {"model": SERVED, "messages": [{"role": "user", "content": "hi"}]}
    async with sim.session.post(sim.base + "/v1/chat/completions", json=body) as reply:
        assert reply.status == 429 and reply.headers["Retry-After"] == "7"
        assert (await reply.json())["error"]["code"] == "rate_limit_exceeded"
    await sim.control({"fail_status": 500, "retry_after_s": None})
    async with sim.session.post(sim.base + "/v1/chat/completions", json=body) as reply:
        assert reply.status == 500 and "Retry-After" not in reply.headers
        assert (await reply.json())["error"]["type"] == "server_error"
    await sim.control({"fail_status": None})
    sim.pacer.gate.set()
    assert (await sim.chat(SERVED))[0] == 200


@pytest.mark.parametrize("payload", [{"fail_status": 200}, {"fail_status": "500"}])
def test_only_real_failures_can_be_asked_for(payload: dict[str, object]) -> None:
    with pytest.raises(ApiError) as caught:
        updated(Behaviour(), payload)
    assert caught.value.param == "fail_status"
