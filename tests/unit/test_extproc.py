"""The ext_proc adapter over real gRPC on loopback, without Envoy: the message protocol."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc

from sidecar.cascade.evaluator import AnswerEvaluator
from sidecar.core.cascade import CascadeRules, EvaluatorConfig
from sidecar.core.decision import ProviderSnapshot
from sidecar.devstack.extproc_client import (
    attributed_body_message,
    body_message,
    chat_request,
    decision_headers,
    exchange,
    headers_message,
)
from sidecar.serving.cascade import TICKET_HEADER, Cascade, Ticket, TicketSigner
from sidecar.serving.extproc import ExternalProcessor
from sidecar.serving.metrics import RouterMetrics
from sidecar.serving.service import (
    POLICY_HEADER,
    ROUTE_CASCADE_METADATA,
    ROUTE_POLICY_METADATA,
    RoutingService,
)
from tests.fakes import TWO_TIER_CATALOGUE, TWO_TIER_TABLE


def _service(snapshot: Callable[[], ProviderSnapshot] = ProviderSnapshot) -> RoutingService:
    return RoutingService(table=TWO_TIER_TABLE, catalogue=TWO_TIER_CATALOGUE, snapshot=snapshot)


@contextlib.asynccontextmanager
async def serving(
    processor: ExternalProcessor, max_message_bytes: int | None = None
) -> AsyncIterator[ext_grpc.ExternalProcessorStub]:
    """A stub talking to `processor` over real gRPC on loopback."""
    options = []
    if max_message_bytes is not None:
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
    server = grpc.aio.server(options=options)
    ext_grpc.add_ExternalProcessorServicer_to_server(processor, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            yield ext_grpc.ExternalProcessorStub(channel)
    finally:
        await server.stop(0)


@pytest.fixture
async def stub() -> AsyncIterator[ext_grpc.ExternalProcessorStub]:
    async with serving(ExternalProcessor(_service(), RouterMetrics())) as served:
        yield served


CHAT_PATH = "/v1/chat/completions"


async def test_decision_in_the_body_response(stub: ext_grpc.ExternalProcessorStub) -> None:
    # As the shipped config sends it: one message, the body with attributes.
    (reply,) = await exchange(stub, chat_request("hello", headers_phase=False))
    body_reply = reply.request_body.response
    assert not body_reply.HasField("header_mutation")  # Envoy would drop it: no headers phase
    headers = decision_headers(reply)
    assert set(headers) == {"x-router-upstream", "x-router-route", "x-router-decision-id",
                            "x-router-model"}  # fmt: skip
    assert headers["x-router-upstream"] == "tiny"
    assert headers["x-router-model"] == "tiny-1b"
    assert headers["x-router-route"] == "small"
    assert len(headers["x-router-decision-id"]) == 32
    assert json.loads(body_reply.body_mutation.body)["model"] == "tiny-1b"


async def test_the_attributes_stand_in_for_the_headers(
    stub: ext_grpc.ExternalProcessorStub,
) -> None:
    policy = {POLICY_HEADER: "quality"}
    (attributed,) = await exchange(stub, chat_request("hello", headers=policy, headers_phase=False))
    two = await exchange(stub, chat_request("hello", headers=policy))
    assert decision_headers(attributed)["x-router-route"] == "frontier"
    assert decision_headers(two[1])["x-router-route"] == "frontier"
    unknown = attributed_body_message("/v1/embeddings", {"input": "hi"})
    (passed,) = await exchange(stub, [unknown])  # not a path the router routes
    assert passed.HasField("request_body") and not decision_headers(passed)


async def test_an_unchanged_body_is_not_sent_back(
    stub: ext_grpc.ExternalProcessorStub,
) -> None:
    body = {"model": "tiny-1b", "messages": [{"role": "user", "content": "hello"}]}
    replies = await exchange(stub, [headers_message(CHAT_PATH), body_message(body)])
    assert replies[0].HasField("request_headers")  # a headers phase, when sent, continues
    assert not replies[1].request_body.response.HasField("body_mutation")
    assert decision_headers(replies[1])["x-router-model"] == "tiny-1b"


async def test_every_message_of_a_stream_is_answered_in_order(
    stub: ext_grpc.ExternalProcessorStub,
) -> None:
    trailers = ext.ProcessingRequest(request_trailers=ext.HttpTrailers())
    response_headers = ext.ProcessingRequest(response_headers=ext.HttpHeaders())
    replies = await exchange(stub, [*chat_request("hello"), trailers, response_headers])
    phases = [reply.WhichOneof("response") for reply in replies]
    assert phases == ["request_headers", "request_body", "request_trailers", "response_headers"]


async def test_open_streams_are_counted_until_they_end() -> None:
    processor = ExternalProcessor(_service(), RouterMetrics())
    async with serving(processor) as stub:
        first, second = stub.Process(), stub.Process()
        for call in (first, second):  # each waits for its body after the headers
            await call.write(headers_message(CHAT_PATH))
            assert (await call.read()).HasField("request_headers")
        assert processor.open_streams == 2
        await first.write(chat_request("hello")[1])
        await first.done_writing()
        assert (await first.read()).HasField("request_body")
        assert await first.read() is grpc.aio.EOF
        assert processor.open_streams == 1
        second.cancel()  # a stream Envoy gives up on is no longer counted either
        for _ in range(200):
            if processor.open_streams == 0:
                break
            await asyncio.sleep(0.005)
        assert processor.open_streams == 0


async def test_route_policy_metadata(stub: ext_grpc.ExternalProcessorStub) -> None:
    replies = await exchange(
        stub, chat_request("hello"), metadata=((ROUTE_POLICY_METADATA, "quality"),)
    )
    assert decision_headers(replies[1])["x-router-upstream"] == "big"


async def test_errors_become_immediate_openai_responses(
    stub: ext_grpc.ExternalProcessorStub,
) -> None:
    bad = await exchange(stub, [headers_message(CHAT_PATH), body_message(b"{oops")])
    immediate = bad[1].immediate_response
    assert immediate.status.code == 400
    assert json.loads(immediate.body)["error"]["code"] == "invalid_json"
    no_body = await exchange(stub, [headers_message(CHAT_PATH, end_of_stream=True)])
    assert no_body[0].immediate_response.status.code == 400
    policy = await exchange(stub, chat_request("hello", headers={POLICY_HEADER: "warp"}))
    assert json.loads(policy[1].immediate_response.body)["error"]["param"] == POLICY_HEADER


async def test_unknown_model_is_a_404(stub: ext_grpc.ExternalProcessorStub) -> None:
    replies = await exchange(stub, chat_request("hello", model="gpt-99"))
    immediate = replies[1].immediate_response
    assert immediate.status.code == 404
    error = json.loads(immediate.body)["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"


async def test_paths_the_router_does_not_route_pass_through(
    stub: ext_grpc.ExternalProcessorStub,
) -> None:
    replies = await exchange(stub, [headers_message("/v1/other", end_of_stream=True)])
    assert replies[0].HasField("request_headers")
    assert not replies[0].request_headers.response.header_mutation.set_headers
    embeddings = await exchange(
        stub, [headers_message("/v1/embeddings"), body_message({"input": "x"})]
    )
    assert not embeddings[1].request_body.response.header_mutation.set_headers


class _FlakySnapshot:
    """A snapshot source that raises (a bug) for its first `failures` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def __call__(self) -> ProviderSnapshot:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("internal detail that must not reach a client")
        return ProviderSnapshot()


@pytest.mark.parametrize(
    ("failures", "decided"),
    [(1, True), (2, False)],  # the default decision works / fails too
)
async def test_an_unexpected_error_is_logged_counted_and_never_shown(
    failures: int, decided: bool, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = RouterMetrics()
    async with serving(ExternalProcessor(_service(_FlakySnapshot(failures)), metrics)) as stub:
        replies = await exchange(stub, chat_request("hello"))
    reply = replies[1]
    assert not reply.HasField("immediate_response")
    headers = decision_headers(reply)
    if decided:  # the default policy's decision, with the model alias rewritten
        assert headers["x-router-upstream"] == "tiny"
        assert json.loads(reply.request_body.response.body_mutation.body)["model"] == "tiny-1b"
        assert headers["x-router-decision-id"] in caplog.text
    else:  # CONTINUE without a decision: Envoy's fallback route serves it
        assert "x-router-upstream" not in headers
    assert "internal detail" not in str(reply)
    assert "internal detail" in caplog.text  # ...but the operator's log has it
    exposition = metrics.exposition().decode()
    assert 'inference_router_errors_total{kind="extproc"} 1.0' in exposition


async def test_the_default_decision_after_an_error_keeps_the_clients_limits() -> None:
    metrics = RouterMetrics()
    cap = {"x-router-max-cost-usd": "1e-15"}  # below anything a provider costs
    async with serving(ExternalProcessor(_service(_FlakySnapshot(1)), metrics)) as stub:
        replies = await exchange(stub, chat_request("hello", headers=cap))
    immediate = replies[1].immediate_response
    assert immediate.status.code == 400
    assert json.loads(immediate.body)["error"]["code"] == "no_provider_within_limits"
    assert "internal detail" not in str(replies[1])


async def test_the_router_answers_the_model_list(stub: ext_grpc.ExternalProcessorStub) -> None:
    replies = await exchange(
        stub, [headers_message("/v1/models", {":method": "GET"}, end_of_stream=True)]
    )
    immediate = replies[0].immediate_response
    assert immediate.status.code == 200
    listed = json.loads(immediate.body)
    assert listed["object"] == "list"
    ids = [m["id"] for m in listed["data"]]
    assert ids[:5] == ["auto", "router:balanced", "router:speed", "router:quality", "router:cost"]
    assert set(ids[5:]) == {"tiny-1b", "big-1t"}
    owners = {m["id"]: m["owned_by"] for m in listed["data"]}
    assert owners["big-1t"] == "big"


async def test_a_big_body_asks_envoy_for_more_time_then_is_decided() -> None:
    sent: list[str] = []  # what the passive feed is told was sent on (server.py)
    metrics = RouterMetrics()
    metrics.on_decided(lambda decision, _: sent.append(decision.upstream))
    processor = ExternalProcessor(_service(), metrics, max_message_timeout_s=2.5)
    big = {"model": "auto", "messages": [{"role": "user", "content": "word " * 600_000}]}
    small = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    async with serving(processor, max_message_bytes=16 << 20) as stub:
        big_replies = await exchange(stub, [headers_message(CHAT_PATH), body_message(big)])
        small_replies = await exchange(stub, [headers_message(CHAT_PATH), body_message(small)])
    extension, decision = big_replies[1], big_replies[2]
    assert extension.override_message_timeout.ToMilliseconds() == 2500
    assert extension.WhichOneof("response") is None  # only the timer, nothing else
    rewritten = json.loads(decision.request_body.response.body_mutation.body)
    assert rewritten["model"] == "tiny-1b"
    assert rewritten["messages"] == big["messages"]
    assert len(small_replies) == 2  # a small body needs no extension
    assert sent == ["tiny", "tiny"]


async def test_the_cascade_marks_its_requests_and_honours_only_its_own_tickets() -> None:
    signer = TicketSigner()
    cascade = Cascade(
        signer=signer,
        rules=CascadeRules(),
        table=TWO_TIER_TABLE,
        catalogue=TWO_TIER_CATALOGUE,
        judge=AnswerEvaluator(EvaluatorConfig()),
        threshold=0.5,
        envoy_url="http://127.0.0.1:1",
    )
    processor = ExternalProcessor(_service(), RouterMetrics(), cascade=cascade)
    try:
        async with serving(processor) as stub:
            # Balanced does not cascade, unless the Envoy route opts in.
            plain = decision_headers((await exchange(stub, chat_request("hi")))[1])
            assert "x-router-cascade-check" not in plain
            opted = await exchange(
                stub, chat_request("hi"), metadata=((ROUTE_CASCADE_METADATA, "true"),)
            )
            headers = decision_headers(opted[1])
            assert headers["x-router-cascade-check"] == "1"
            assert headers["x-router-upstream"] == "tiny"
            assert int(headers["x-envoy-upstream-rq-timeout-ms"]) == 15_000
            # A ticket this process signed: decided on that tier, no further cascade (Envoy's
            # virtual host drops the ticket before a provider). A forged one changes nothing.
            signed = signer.sign(Ticket("frontier", 2, deadline=time.time() + 30))
            for value, upstream in ((signed, "big"), ("v1.forged.mac", "tiny")):
                messages = chat_request("hi", model="router:cost", headers={TICKET_HEADER: value})
                reply = (await exchange(stub, messages))[1]
                assert decision_headers(reply)["x-router-upstream"] == upstream
            assert cascade.stats.outcomes["ticket_refused"] == 1
    finally:
        await cascade.close()
