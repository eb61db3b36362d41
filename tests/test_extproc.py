"""The ext_proc adapter over real gRPC on loopback, without Envoy: the message protocol."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc

from sidecar.config.envoy import Catalogue, Price, Provider
from sidecar.core.decision import ProviderSnapshot, RoutingTable
from sidecar.serving.extproc import ROUTE_POLICY_METADATA, ExternalProcessor
from sidecar.serving.metrics import RouterMetrics
from sidecar.serving.service import RoutingService

CATALOGUE = Catalogue(
    providers=(
        Provider("tiny", "tiny-1b", "small", Price(0.1, 0.1)),
        Provider("big", "big-1t", "frontier", Price(5, 15)),
    ),
    clusters=frozenset({"tiny", "big"}),
)


@pytest.fixture
async def stub() -> AsyncIterator[ext_grpc.ExternalProcessorStub]:
    service = RoutingService(
        table=RoutingTable(tiers=("small", "frontier"), default_route="small"),
        catalogue=CATALOGUE,
        snapshot=ProviderSnapshot,
    )
    server = grpc.aio.server()
    ext_grpc.add_ExternalProcessorServicer_to_server(
        ExternalProcessor(service, RouterMetrics()), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield ext_grpc.ExternalProcessorStub(channel)
    await server.stop(0)


def _headers(
    path: str, extra: dict[str, str] | None = None, *, end_of_stream: bool = False
) -> ext.ProcessingRequest:
    pairs = {":path": path, ":method": "POST", **(extra or {})}
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
    )
    return ext.ProcessingRequest(
        request_headers=ext.HttpHeaders(headers=header_map, end_of_stream=end_of_stream)
    )


def _body(payload: object) -> ext.ProcessingRequest:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return ext.ProcessingRequest(request_body=ext.HttpBody(body=raw, end_of_stream=True))


async def _exchange(
    stub: ext_grpc.ExternalProcessorStub,
    messages: Sequence[ext.ProcessingRequest],
    metadata: tuple[tuple[str, str], ...] = (),
) -> list[ext.ProcessingResponse]:
    async def requests() -> AsyncIterator[ext.ProcessingRequest]:
        for message in messages:
            yield message

    return [reply async for reply in stub.Process(requests(), metadata=metadata, timeout=10)]


def _set_headers(reply: ext.ProcessingResponse) -> dict[str, str]:
    mutation = reply.request_body.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}


async def test_decision_in_the_body_response(stub: ext_grpc.ExternalProcessorStub) -> None:
    replies = await _exchange(
        stub, [_headers("/v1/chat/completions", {"x-router-upstream": "big"}), _body(CHAT)]
    )
    assert replies[0].HasField("request_headers")
    body_reply = replies[1].request_body.response
    assert body_reply.clear_route_cache
    headers = _set_headers(replies[1])
    assert headers["x-router-upstream"] == "tiny"  # the client's value is overwritten
    assert headers["x-router-model"] == "tiny-1b"
    new_body = body_reply.body_mutation.body
    assert json.loads(new_body)["model"] == "tiny-1b"
    assert headers["content-length"] == str(len(new_body))


async def test_route_policy_metadata(stub: ext_grpc.ExternalProcessorStub) -> None:
    replies = await _exchange(
        stub,
        [_headers("/v1/chat/completions"), _body(CHAT)],
        metadata=((ROUTE_POLICY_METADATA, "quality"),),
    )
    assert _set_headers(replies[1])["x-router-upstream"] == "big"


async def test_errors_become_immediate_openai_responses(
    stub: ext_grpc.ExternalProcessorStub,
) -> None:
    bad = await _exchange(stub, [_headers("/v1/chat/completions"), _body(b"{oops")])
    immediate = bad[1].immediate_response
    assert immediate.status.code == 400
    assert json.loads(immediate.body)["error"]["code"] == "invalid_json"
    no_body = await _exchange(stub, [_headers("/v1/chat/completions", end_of_stream=True)])
    assert no_body[0].immediate_response.status.code == 400
    policy = await _exchange(
        stub,
        [_headers("/v1/chat/completions", {"x-router-policy": "warp"}), _body(CHAT)],
    )
    assert json.loads(policy[1].immediate_response.body)["error"]["param"] == "x-router-policy"


async def test_paths_the_router_does_not_route_pass_through(
    stub: ext_grpc.ExternalProcessorStub,
) -> None:
    replies = await _exchange(stub, [_headers("/v1/models", end_of_stream=True)])
    assert replies[0].HasField("request_headers")
    assert not replies[0].request_headers.response.header_mutation.set_headers
    embeddings = await _exchange(stub, [_headers("/v1/embeddings"), _body({"input": "x"})])
    assert not embeddings[1].request_body.response.header_mutation.set_headers
