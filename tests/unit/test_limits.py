"""Per-request limits: parsing the headers, the core's filter, and the refusal at each edge."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc

from inference_router.v1 import router_pb2, router_pb2_grpc
from sidecar.core.catalogue import Catalogue, Price, Provider
from sidecar.core.decision import Decision, ProviderSnapshot, ProviderState, RoutingTable, decide
from sidecar.core.limits import Limits, seconds, usd
from sidecar.core.policy import Policy, PolicyAsk, resolve_intent
from sidecar.core.request import Endpoint, RequestFacts
from sidecar.devstack.extproc_client import chat_request, decision_headers, exchange
from sidecar.errors import OutOfLimitsError, RequestError
from sidecar.serving.api import RouterApi
from sidecar.serving.extproc import ExternalProcessor
from sidecar.serving.metrics import RouterMetrics
from sidecar.serving.service import (
    MAX_COST_HEADER,
    MAX_LATENCY_HEADER,
    POLICY_HEADER,
    RoutingService,
    limits_from_headers,
)
from sidecar.serving.statuses import grpc_status, http_status, openai_error_body

# Expected figures for 10 prompt tokens and the default 256 output tokens:
#   tiny  $0.0000261  0.883 s   (0.05/0.1 per Mtok, 0.03 s + 256 / 300 tok/s)
#   mid-a $0.000211   2.76 s    (0.6/0.8, 0.2 s + 256 / 100)
#   mid-b $0.000239   1.38 s    (0.9/0.9, 0.1 s + 256 / 200)
#   big   $0.00259    3.5 s     (2.5/10, 0.3 s + 256 / 80)
CATALOGUE = Catalogue(
    providers=(
        Provider("tiny", "tiny-1b", "small", Price(0.05, 0.1), ttft_s=0.03, tokens_per_s=300),
        Provider("mid-a", "llama-70b", "mid", Price(0.6, 0.8), ttft_s=0.2, tokens_per_s=100),
        Provider("mid-b", "llama-70b", "mid", Price(0.9, 0.9), ttft_s=0.1, tokens_per_s=200),
        Provider("big", "gpt-big", "frontier", Price(2.5, 10.0)),
    ),
    clusters=frozenset({"tiny", "mid-a", "mid-b", "big"}),
)
TABLE = RoutingTable(tiers=("small", "mid", "frontier"), default_route="mid")
EVERYONE_DOWN = ProviderSnapshot(
    {c: ProviderState(healthy=False) for c in ("tiny", "mid-a", "mid-b", "big")}
)


def _decide(
    limits: Limits,
    model: str = "auto",
    policy: str | None = None,
    snapshot: ProviderSnapshot | None = None,
) -> Decision:
    facts = RequestFacts(Endpoint.CHAT, model, "hello", 10, None, False)
    asks = [] if policy is None else [PolicyAsk(policy, "test")]
    return decide(
        facts,
        resolve_intent(model, asks, TABLE.default_policy),
        decision_id="d",
        table=TABLE,
        catalogue=CATALOGUE,
        snapshot=snapshot or ProviderSnapshot(),
        limits=limits,
    )


@pytest.mark.parametrize(
    ("limits", "model", "policy", "upstream", "said"),
    [
        (Limits(), "auto", None, "mid-a", "mid-a is the best for cost"),
        # Within the route's tier: the limit removes one, the policy ranks the rest.
        (Limits(max_cost_usd=0.00022), "auto", None, "mid-a", "the limits removed mid-b (cost"),
        (Limits(max_latency_s=2.0), "auto", None, "mid-b", "removed mid-a (latency 2.76 s > 2 s)"),
        # Nothing in the route's tier fits: the nearest tier that has a fitting provider.
        (
            Limits(max_cost_usd=0.0001),
            "auto",
            None,
            "tiny",
            "no healthy provider within the limits (mid-a: cost $0.000211 > $0.0001; mid-b: "
            "cost $0.000239 > $0.0001), the nearest tier with one, small, serves",
        ),
        (Limits(max_latency_s=1.0), "auto", None, "tiny", "the nearest tier with one, small,"),
        # quality: the heaviest tier is too slow; mid is nearest, and its fastest serves.
        (Limits(max_latency_s=3.0), "router:quality", None, "mid-b", "big: latency 3.5 s > 3 s"),
        # An explicit model: the limits choose among its clusters, before the policy does.
        (Limits(max_cost_usd=0.00022), "llama-70b", "speed", "mid-a", "removed mid-b"),
        (Limits(max_latency_s=2.0), "llama-70b", "cost", "mid-b", "removed mid-a"),
    ],
)
def test_limits_remove_candidates_before_the_policy_ranks_them(
    limits: Limits, model: str, policy: str | None, upstream: str, said: str
) -> None:
    decision = _decide(limits, model, policy)
    assert decision.upstream == upstream
    assert said in decision.reason


def test_nothing_within_the_limits_is_refused_with_the_best_figures() -> None:
    with pytest.raises(OutOfLimitsError) as caught:
        _decide(Limits(max_cost_usd=0.000001))
    assert caught.value.code == "no_provider_within_limits"
    assert caught.value.message == (
        "no provider can serve this request within max cost $0.000001: the cheapest, tiny, "
        "is expected to cost $0.0000261 and take 0.883 s"
    )
    with pytest.raises(OutOfLimitsError) as both:
        _decide(Limits(max_cost_usd=0.000001, max_latency_s=0.1))
    assert "within max cost $0.000001 and max latency 0.1 s: the cheapest and fastest, tiny," in (
        both.value.message
    )
    with pytest.raises(OutOfLimitsError) as apart:
        _decide(Limits(max_cost_usd=0.00022, max_latency_s=0.5), "llama-70b")
    assert "the cheapest, mid-a, is expected to cost $0.000211 and take 2.76 s; " in (
        apart.value.message
    )
    assert "the fastest, mid-b, is expected to cost $0.000239 and take 1.38 s" in (
        apart.value.message
    )


def test_an_explicit_model_is_refused_rather_than_swapped_for_a_cheaper_one() -> None:
    with pytest.raises(OutOfLimitsError, match="the cheapest, mid-a,"):
        _decide(Limits(max_cost_usd=0.0001), "llama-70b")  # tiny fits, but is another model


def test_health_prefers_and_limits_require() -> None:
    # mid-a is down, mid-b is over the limit: the nearest tier with a healthy fit serves.
    down = ProviderSnapshot({"mid-a": ProviderState(healthy=False)})
    moved = _decide(Limits(max_cost_usd=0.00022), snapshot=down)
    assert moved.upstream == "tiny"
    assert "(mid-a unhealthy; mid-b: cost $0.000239 > $0.00022)" in moved.reason
    # Nothing healthy anywhere: the route's own fitting provider (Envoy has the last word).
    kept = _decide(Limits(max_cost_usd=0.00022), snapshot=EVERYONE_DOWN)
    assert kept.upstream == "mid-a"
    assert "no healthy provider within the limits in any tier" in kept.reason
    # ... or, when none of the route's fits, the nearest tier's, never one over the limit.
    far = _decide(Limits(max_cost_usd=0.0001), snapshot=EVERYONE_DOWN)
    assert far.upstream == "tiny"
    assert "the nearest tier within them, small, serves" in far.reason
    with pytest.raises(OutOfLimitsError):
        _decide(Limits(max_cost_usd=0.000001), snapshot=EVERYONE_DOWN)


def test_limits_are_checked_against_live_prices_and_queues() -> None:
    cheaper = ProviderSnapshot({"mid-b": ProviderState(price=Price(0.1, 0.1))})
    assert _decide(Limits(max_cost_usd=0.0001), "llama-70b", snapshot=cheaper).upstream == "mid-b"
    queued = ProviderSnapshot({"mid-b": ProviderState(queue_waiting=100)})
    with pytest.raises(OutOfLimitsError):
        _decide(Limits(max_latency_s=2.0), "llama-70b", snapshot=queued)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_limit_must_be_a_positive_finite_number(bad: float) -> None:
    with pytest.raises(ValueError, match="max_cost_usd"):
        Limits(max_cost_usd=bad)
    with pytest.raises(ValueError, match="max_latency_s"):
        Limits(max_latency_s=bad)


def test_figures_are_written_for_people() -> None:
    assert [usd(x) for x in (0.0000261, 0.00022, 12.345, 1234.0)] == [
        "$0.0000261",
        "$0.00022",
        "$12.3",
        "$1230",
    ]
    assert [seconds(x) for x in (0.05, 0.8833, 1234.0)] == ["0.05 s", "0.883 s", "1230 s"]


@pytest.mark.parametrize(
    ("headers", "limits"),
    [
        ({}, Limits()),
        ({MAX_COST_HEADER: "0.002"}, Limits(max_cost_usd=0.002)),
        ({MAX_COST_HEADER: " .5 "}, Limits(max_cost_usd=0.5)),
        ({MAX_COST_HEADER: "1e-4"}, Limits(max_cost_usd=0.0001)),
        ({MAX_COST_HEADER: "3"}, Limits(max_cost_usd=3.0)),
        ({MAX_LATENCY_HEADER: "250"}, Limits(max_latency_s=0.25)),
        ({MAX_COST_HEADER: "1", MAX_LATENCY_HEADER: "2000"}, Limits(1.0, 2.0)),
        ({MAX_COST_HEADER: "  ", MAX_LATENCY_HEADER: ""}, Limits()),  # blank: no limit
    ],
)
def test_limit_headers_are_parsed(headers: dict[str, str], limits: Limits) -> None:
    assert limits_from_headers(headers) == limits


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (MAX_COST_HEADER, "0"),
        (MAX_COST_HEADER, "-1"),
        (MAX_COST_HEADER, "abc"),
        (MAX_COST_HEADER, "nan"),
        (MAX_COST_HEADER, "inf"),
        (MAX_COST_HEADER, "1e999"),
        (MAX_COST_HEADER, "1e-999"),
        (MAX_COST_HEADER, "0x10"),
        (MAX_COST_HEADER, "1_000"),
        (MAX_COST_HEADER, "$1"),
        (MAX_COST_HEADER, "1,5"),
        (MAX_LATENCY_HEADER, "0"),
        (MAX_LATENCY_HEADER, "1.5"),
        (MAX_LATENCY_HEADER, "-3"),
        (MAX_LATENCY_HEADER, "fast"),
        (MAX_LATENCY_HEADER, "86400001"),
        (MAX_LATENCY_HEADER, "9" * 5000),
        (MAX_LATENCY_HEADER, "\u0661\u0662"),  # Arabic-Indic digits: isdigit, not ASCII
    ],
)
def test_a_malformed_limit_is_a_400_naming_the_header(header: str, value: str) -> None:
    with pytest.raises(RequestError) as caught:
        limits_from_headers({header: value})
    error = caught.value
    assert error.param == header and error.code == "invalid_limit"
    assert header in error.message and len(error.message) < 200
    assert http_status(error) == 400


def test_the_refusal_is_a_400_with_an_openai_body_and_failed_precondition() -> None:
    error = OutOfLimitsError("no provider can serve this request within max cost $0.000001")
    assert http_status(error) == 400
    assert grpc_status(error) == grpc.StatusCode.FAILED_PRECONDITION
    assert json.loads(openai_error_body(error)) == {
        "error": {
            "message": error.message,
            "type": "invalid_request_error",
            "code": "no_provider_within_limits",
            "param": None,
        }
    }


SERVICE = RoutingService(table=TABLE, catalogue=CATALOGUE, snapshot=ProviderSnapshot)
BODY = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}).encode()


async def test_the_service_reads_the_limits_from_the_headers() -> None:
    routed = await SERVICE.route("/v1/chat/completions", {MAX_LATENCY_HEADER: "1000"}, BODY)
    assert routed.decision.upstream == "tiny" and routed.body is not None
    with pytest.raises(OutOfLimitsError):
        await SERVICE.route("/v1/chat/completions", {MAX_COST_HEADER: "0.000000001"}, BODY)
    with pytest.raises(RequestError, match=MAX_LATENCY_HEADER):
        await SERVICE.route("/v1/chat/completions", {MAX_LATENCY_HEADER: "soon"}, BODY)


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    ext_grpc.add_ExternalProcessorServicer_to_server(
        ExternalProcessor(SERVICE, RouterMetrics()), server
    )
    api = RouterApi(SERVICE, RouterMetrics(), None)
    router_pb2_grpc.add_RouterServicer_to_server(api, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as opened:
        yield opened
    await server.stop(0)


async def test_ext_proc_routes_within_the_limits_or_answers_400(channel: grpc.aio.Channel) -> None:
    stub = ext_grpc.ExternalProcessorStub(channel)
    within = await exchange(stub, chat_request("hi", headers={MAX_COST_HEADER: "0.0001"}))
    assert decision_headers(within[1])["x-router-upstream"] == "tiny"
    refused = await exchange(stub, chat_request("hi", headers={MAX_COST_HEADER: "1e-9"}))
    immediate = refused[1].immediate_response
    assert immediate.status.code == 400
    error = json.loads(immediate.body)["error"]
    assert error["code"] == "no_provider_within_limits"
    assert "the cheapest, tiny, is expected to cost $" in error["message"]
    malformed = await exchange(stub, chat_request("hi", headers={MAX_LATENCY_HEADER: "-1"}))
    assert malformed[1].immediate_response.status.code == 400
    assert json.loads(malformed[1].immediate_response.body)["error"]["param"] == (
        MAX_LATENCY_HEADER
    )


async def test_decide_honours_the_limits_and_shows_the_prices_used(
    channel: grpc.aio.Channel,
) -> None:
    stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
    headers = {MAX_LATENCY_HEADER: "2000", POLICY_HEADER: "cost"}
    body = json.dumps({"model": "llama-70b", "messages": [{"role": "user", "content": "hi"}]})
    reply = await stub.Decide(router_pb2.DecideRequest(body=body.encode(), headers=headers))
    assert reply.upstream == "mid-b" and reply.policy == Policy.COST.value
    assert "the limits removed mid-a (latency" in reply.explanation.reason
    prices = {
        c.cluster: (c.input_per_mtok, c.output_per_mtok) for c in reply.explanation.candidates
    }
    assert prices == {"mid-a": (0.6, 0.8), "mid-b": (0.9, 0.9)}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Decide(router_pb2.DecideRequest(body=BODY, headers={MAX_COST_HEADER: "1e-9"}))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no provider can serve this request within max cost $0.000000001" in (
        caught.value.details() or ""
    )
