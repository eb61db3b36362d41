"""The push feed: a controller's facts are checked, aged like any reading, and decide."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import grpc
import pytest

from inference_router.v1 import feeds_pb2, feeds_pb2_grpc
from sidecar.core.catalogue import Catalogue, Price, Provider
from sidecar.core.decision import ProviderSnapshot, ProviderState, RoutingTable, decide
from sidecar.core.policy import Intent, Policy
from sidecar.core.request import Endpoint, RequestFacts
from sidecar.errors import RequestError
from sidecar.feeds.engines import LoadSample
from sidecar.feeds.live import LiveBoard
from sidecar.feeds.push import ProviderPush, PushedState, check_push, overlay
from sidecar.serving.feed_api import FeedApi, from_proto

CATALOGUE = Catalogue(
    providers=(
        Provider("mid-a", "llama", "mid", Price(0.59, 0.79),
                 metrics_url="http://a/metrics", max_concurrency=8),
        Provider("mid-b", "llama", "mid", Price(0.88, 0.88)),
    ),
    clusters=frozenset({"mid-a", "mid-b", "router_sidecar"}),
)  # fmt: skip
CLUSTERS = ("mid-a", "mid-b")
TABLE = RoutingTable(tiers=("mid",), default_route="mid")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _board(clock: Clock) -> LiveBoard:
    return LiveBoard(CATALOGUE, max_age_s=5.0, push_max_age_s=10.0, clock=clock)


def _choice(board: LiveBoard, policy: Policy = Policy.COST) -> tuple[str, str]:
    facts = RequestFacts(Endpoint.CHAT, "llama", "hi", 10, 50, False)
    decision = decide(
        facts, Intent(policy, "llama"), decision_id="d", table=TABLE, catalogue=CATALOGUE,
        snapshot=board.snapshot(),
    )  # fmt: skip
    return decision.upstream, decision.reason


@pytest.mark.parametrize(
    ("update", "message"),
    [
        (ProviderPush("nope"), "updates[0].cluster: unknown cluster 'nope' (known: mid-a, mid-b)"),
        (ProviderPush("mid-a", queue_waiting=-1), "updates[0].queue_waiting: must be a finite"),
        (
            ProviderPush("mid-a", queue_waiting=math.nan),
            "updates[0].queue_waiting: must be a finite",
        ),
        (ProviderPush("mid-a", price=Price(0.1, math.inf)), "updates[0].price.output_per_mtok"),
        (ProviderPush("mid-a", ttft_s=-0.1), "updates[0].ttft_s: must be a finite number >= 0"),
        (ProviderPush("mid-a", tokens_per_s=0), "updates[0].tokens_per_s: must be above 0"),
        (ProviderPush("mid-a", age_s=-2), "updates[0].age_s: must be a finite number >= 0"),
        (ProviderPush("mid-a", queue_running=3), "updates[0].queue_running: needs queue_waiting"),
    ],
)
def test_a_bad_update_is_refused_naming_the_field(update: ProviderPush, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        check_push([update], CLUSTERS)
    assert caught.value.message.startswith(message)
    assert caught.value.param == message.split(": ")[0]


def test_a_good_update_passes_and_every_fact_is_optional() -> None:
    check_push([ProviderPush("mid-b"), ProviderPush("mid-a", 3, 8, False, Price(0, 0), 0.2, 90)],
               CLUSTERS)  # fmt: skip
    with pytest.raises(RequestError, match=r"updates\[1\]\.cluster"):
        check_push([ProviderPush("mid-a"), ProviderPush("")], CLUSTERS)


def test_pushed_facts_lay_over_the_merged_state_while_fresh() -> None:
    merged = ProviderSnapshot(
        {"mid-b": ProviderState(healthy=False, notes=("unhealthy in Envoy",))}
    )
    pushed = {
        "mid-a": PushedState().with_push(
            ProviderPush("mid-a", healthy=False, price=Price(0.1, 0.2), ttft_s=0.05), 10.0
        ),
        # A controller's "healthy" cannot overrule Envoy's view of mid-b.
        "mid-b": PushedState().with_push(ProviderPush("mid-b", healthy=True, tokens_per_s=50), 9.5),
    }
    snapshot = overlay(merged, pushed, 12.0, 10.0)
    a, b = snapshot.state("mid-a"), snapshot.state("mid-b")
    assert not a.healthy and a.price == Price(0.1, 0.2) and a.ttft_s == 0.05
    assert a.notes == ("pushed unhealthy (2.0 s old)", "pushed price (2.0 s old)",
                       "pushed TTFT (2.0 s old)")  # fmt: skip
    assert not b.healthy and b.tokens_per_s == 50
    assert b.notes == ("unhealthy in Envoy", "pushed tokens/s (2.5 s old)")
    stale = overlay(merged, pushed, 20.5, 10.0).state("mid-a")
    assert stale.healthy and stale.price is None and stale.ttft_s is None
    assert stale.notes[0] == "pushed unhealthy stale (10 s old): not used"


def test_an_older_push_never_replaces_a_newer_fact() -> None:
    state = PushedState().with_push(ProviderPush("mid-a", price=Price(1, 1)), 10.0)
    late = state.with_push(ProviderPush("mid-a", price=Price(2, 2), ttft_s=0.3), 8.0)
    assert late.price is not None and late.price.value == Price(1, 1)
    assert late.ttft_s is not None and late.ttft_s.value == 0.3  # new: taken


def test_a_pushed_price_moves_cost_traffic_and_ages_out() -> None:
    clock = Clock()
    board = _board(clock)
    assert _choice(board)[0] == "mid-a"  # static prices: mid-a is cheaper
    board.record_push(ProviderPush("mid-b", price=Price(0.01, 0.01), age_s=1.0))
    upstream, reason = _choice(board)
    assert upstream == "mid-b" and "pushed price (1.0 s old)" in reason
    clock.now += 9.5  # the price is now 10.5 s old: the static one applies again
    upstream, reason = _choice(board)
    assert upstream == "mid-a" and "pushed price stale (10 s old): not used" in reason


def test_a_pushed_queue_is_a_load_reading_and_the_newer_one_wins() -> None:
    clock = Clock()
    board = _board(clock)
    board.record_load("mid-a", LoadSample(0, 0, 0))
    board.record_push(ProviderPush("mid-a", queue_waiting=30, age_s=2.0))  # older than the scrape
    assert board.snapshot().state("mid-a").queue_waiting == 0
    clock.now += 1
    board.record_push(ProviderPush("mid-a", queue_waiting=30))
    assert board.snapshot().state("mid-a").notes == ("30 waiting (0.0 s old)",)
    board.record_push(ProviderPush("mid-a", healthy=False))  # no queue said: the queue stays
    state = board.snapshot().state("mid-a")
    assert state.queue_waiting == 30 and not state.healthy
    clock.now += 6  # past load_feed.max_age_s: a stale pushed queue is assumed full
    assert board.snapshot().state("mid-a").queue_waiting == 8


def test_absent_proto_fields_are_not_said() -> None:
    bare = from_proto(feeds_pb2.ProviderUpdate(cluster="mid-a"))
    assert bare == ProviderPush("mid-a")
    full = from_proto(
        feeds_pb2.ProviderUpdate(
            cluster="mid-a", queue_waiting=0, queue_running=0, healthy=False, ttft_s=0,
            tokens_per_s=20, age_s=1.5,
            price=feeds_pb2.ProviderPrice(input_per_mtok=0.5, output_per_mtok=0),
        )
    )  # fmt: skip
    assert full == ProviderPush("mid-a", 0.0, 0.0, False, Price(0.5, 0.0), 0.0, 20.0, 1.5)


@pytest.fixture
async def feed_api() -> AsyncIterator[tuple[feeds_pb2_grpc.FeedServiceStub, LiveBoard, Clock]]:
    clock = Clock()
    board = _board(clock)
    server = grpc.aio.server()
    feeds_pb2_grpc.add_FeedServiceServicer_to_server(  # type: ignore[no-untyped-call]
        FeedApi(board, CLUSTERS), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield feeds_pb2_grpc.FeedServiceStub(channel), board, clock  # type: ignore[no-untyped-call]
    finally:
        await channel.close()
        await server.stop(None)


def _update(cluster: str, **facts: float | bool) -> feeds_pb2.ProviderUpdate:
    return feeds_pb2.ProviderUpdate(cluster=cluster, **facts)  # type: ignore[arg-type]


async def test_push_over_grpc_records_a_batch_or_none_of_it(
    feed_api: tuple[feeds_pb2_grpc.FeedServiceStub, LiveBoard, Clock],
) -> None:
    stub, board, _ = feed_api
    reply = await stub.Push(feeds_pb2.PushRequest(updates=[_update("mid-a", queue_waiting=30)]))
    assert reply.accepted == 1 and board.snapshot().state("mid-a").queue_waiting == 30
    bad = [_update("mid-b", healthy=False), _update("mid-c", queue_waiting=1)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Push(feeds_pb2.PushRequest(updates=bad))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "updates[1].cluster: unknown cluster 'mid-c'" in str(caught.value.details())
    assert board.snapshot().state("mid-b").healthy  # the good half was not recorded either
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Push(feeds_pb2.PushRequest(updates=[_update("mid-a", ttft_s=math.nan)]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "updates[0].ttft_s: must be a finite number >= 0, got nan" in str(caught.value.details())


async def test_a_push_stream_records_each_batch_until_a_bad_one(
    feed_api: tuple[feeds_pb2_grpc.FeedServiceStub, LiveBoard, Clock],
) -> None:
    stub, board, clock = feed_api

    async def batches(last: feeds_pb2.ProviderUpdate) -> AsyncIterator[feeds_pb2.PushRequest]:
        yield feeds_pb2.PushRequest(updates=[_update("mid-a", queue_waiting=3)])
        yield feeds_pb2.PushRequest(updates=[_update("mid-b", healthy=False), last])

    reply = await stub.StreamPush(batches(_update("mid-a", queue_waiting=4)))
    assert reply.accepted == 3 and not board.snapshot().state("mid-b").healthy
    clock.now += 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.StreamPush(batches(_update("mid-a", queue_waiting=-4)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(caught.value.details()) == (
        "message 1: updates[1].queue_waiting: must be a finite number >= 0, got -4.0 "
        "(1 updates recorded before)"
    )
    assert board.snapshot().state("mid-a").notes == ("3 waiting (0.0 s old)",)
