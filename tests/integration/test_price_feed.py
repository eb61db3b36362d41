"""The price feed through the real Envoy: a price change moves traffic; a dead feed does not hurt.

sim-mid-a and sim-mid-b serve the same model; by the Envoy YAML's static prices sim-mid-a
is the cheaper. The local stack's first simulator (sim-small) serves the price table the
sidecar's price feed reads every second. Making sim-mid-a dearer there moves both `cost`
(the client names the model, the policy picks its cluster) and `balanced` (`auto`, the
default route mid) to sim-mid-b. Then the price API is stopped: once the last table is
older than the feed's staleness limit (5 s in the stack), the static prices apply again,
Decide's notes say "stale", and traffic returns to sim-mid-a; no client sees an error.

Every wait polls with a deadline; the measured times are printed (`pytest -s`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import grpc
import httpx
import pytest

from inference_router.v1 import router_pb2, router_pb2_grpc
from sidecar.devstack.stack import PRICE_FEED_MAX_AGE_S, LocalStack
from tests.integration.conftest import seconds_until, start_stack

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
MODEL = "llama-3.3-70b-instruct"
MESSAGES = [{"role": "user", "content": "hi"}]
# A request through Envoy: its JSON body and headers.
Request = tuple[dict[str, object], dict[str, str]]
COST: Request = (
    {"model": MODEL, "max_tokens": 4, "messages": MESSAGES},
    {"x-router-policy": "cost"},
)
BALANCED: Request = ({"model": "auto", "max_tokens": 4, "messages": MESSAGES}, {})
# The feed reads every second; these are generous bounds for a loaded machine.
MOVE_DEADLINE_S = 10.0
STALE_DEADLINE_S = PRICE_FEED_MAX_AGE_S + 10.0
Candidates = dict[str, router_pb2.Candidate]


@pytest.fixture(scope="module")
def price_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = start_stack(tmp_path_factory.mktemp("prices"), sidecar_args=("--no-semantic",))
    try:
        yield stack
    finally:
        stack.stop()


class Client:
    """Sends requests through Envoy and keeps every status it got."""

    def __init__(self, stack: LocalStack) -> None:
        self._http = httpx.Client(base_url=stack.base_url, timeout=30)
        self.statuses: Counter[int] = Counter()

    def upstream(self, request: Request) -> str:
        body, headers = request
        reply = self._http.post(CHAT, json=body, headers=headers)
        self.statuses[reply.status_code] += 1
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-sim-name"] == reply.headers["x-router-upstream"]
        return reply.headers["x-router-upstream"]

    def close(self) -> None:
        self._http.close()


def decide(stack: LocalStack, request: Request) -> Candidates:
    """Decide's candidates for a request, by cluster."""
    body, headers = request
    with grpc.insecure_channel(stack.sidecar_target) as channel:
        stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
        reply = stub.Decide(
            router_pb2.DecideRequest(body=json.dumps(body).encode(), headers=headers), timeout=5
        )
    return {c.cluster: c for c in reply.explanation.candidates}


def test_a_price_change_moves_cost_and_balanced_traffic_and_a_dead_feed_does_not_hurt(
    price_stack: LocalStack,
) -> None:
    stack, client = price_stack, Client(price_stack)
    try:
        assert client.upstream(COST) == "sim-mid-a"  # static prices: the cheaper one
        assert client.upstream(BALANCED) == "sim-mid-a"

        price = {"sim-mid-a": {"input": 5.0, "output": 5.0}}
        httpx.put(stack.price_url, json=price, timeout=5).raise_for_status()
        moved = seconds_until(
            lambda: client.upstream(COST) == "sim-mid-b", "cost moves to sim-mid-b", MOVE_DEADLINE_S
        )
        assert client.upstream(BALANCED) == "sim-mid-b"
        live = decide(stack, COST)["sim-mid-a"]
        assert (live.input_per_mtok, live.output_per_mtok) == (5.0, 5.0)
        assert any(n.startswith("price from price feed (") for n in live.notes), live.notes
        assert decide(stack, COST)["sim-mid-b"].input_per_mtok == 0.88  # static

        stack.stop_process(stack.price_server)  # the price API goes away
        stale = seconds_until(
            lambda: client.upstream(COST) == "sim-mid-a",
            "cost returns to sim-mid-a",
            STALE_DEADLINE_S,
        )
        assert client.upstream(BALANCED) == "sim-mid-a"
        fallback = decide(stack, BALANCED)["sim-mid-a"]
        assert (fallback.input_per_mtok, fallback.output_per_mtok) == (0.59, 0.79)
        assert any("price feed stale" in n and "static price" in n for n in fallback.notes)
        print(
            f"moved {moved:.2f} s after the price change; static again {stale:.2f} s after the "
            f"price API stopped (limit {PRICE_FEED_MAX_AGE_S:.0f} s); "
            f"{sum(client.statuses.values())} requests: {dict(client.statuses)}"
        )
        # Not before the last table aged out (it was read at most a second before the stop).
        assert stale >= PRICE_FEED_MAX_AGE_S - 1.5
        assert set(client.statuses) == {200}
    finally:
        client.close()
