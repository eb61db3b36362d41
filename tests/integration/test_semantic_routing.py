"""Semantic routing through the real Envoy with the shipped exemplars."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from inference_router.v1 import router_pb2, router_pb2_grpc
from sidecar.core.vote import VoteConfig
from sidecar.devstack.stack import LocalStack
from tests.integration.conftest import start_stack

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def semantic_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack whose sidecar routes with the embedder and the shipped exemplar index."""
    stack = start_stack(tmp_path_factory.mktemp("semantic"))
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def encoder_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The same, with stage 1's gate off: every prompt is decided on the encoder (stage 2)."""
    workdir = tmp_path_factory.mktemp("encoder")
    settings = workdir / "settings.yaml"
    settings.write_text("classifier:\n  stage1_gate: null\n")
    stack = start_stack(workdir, sidecar_args=("--config", str(settings)))
    try:
        yield stack
    finally:
        stack.stop()


def _decide(stack: LocalStack, prompt: str) -> router_pb2.DecideResponse:
    with grpc.insecure_channel(stack.sidecar_target) as channel:
        stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
        body = {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
        reply: router_pb2.DecideResponse = stub.Decide(
            router_pb2.DecideRequest(body=json.dumps(body).encode()), timeout=10
        )
    return reply


def _route(stack: LocalStack, prompt: str) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
    reply = httpx.post(stack.base_url + CHAT, json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply


@pytest.mark.parametrize("prompt", ["hi, thanks!", "hello", "thanks a lot, that's all"])
def test_small_talk_goes_to_the_small_tier(semantic_stack: LocalStack, prompt: str) -> None:
    reply = _route(semantic_stack, prompt)
    assert reply.headers["x-router-route"] == "small"
    assert reply.headers["x-router-upstream"] == "sim-small"


@pytest.mark.parametrize(
    "prompt",
    [
        "Prove that there are infinitely many primes of the form 4k+3, with every step justified.",
        "Review this Go code for race conditions and deadlocks: a worker pool shares a map "
        "between goroutines guarded by a mutex that is sometimes unlocked early on error paths.",
    ],
)
def test_hard_prompts_go_to_the_frontier_tier(semantic_stack: LocalStack, prompt: str) -> None:
    reply = _route(semantic_stack, prompt)
    assert reply.headers["x-router-route"] == "frontier"
    assert reply.headers["x-router-upstream"] == "sim-frontier"


def test_decide_explains_the_semantic_vote(encoder_stack: LocalStack) -> None:
    reply = _decide(encoder_stack, "hi, thanks!")
    explanation = reply.explanation
    assert reply.route == "small"
    assert explanation.stage == 2
    assert explanation.neighbours and explanation.neighbours[0].route == "small"
    assert explanation.route_scores["small"] == pytest.approx(explanation.confidence)
    assert not explanation.abstained
    assert explanation.predicted_output_tokens > 0


def test_a_confident_prompt_is_decided_on_stage1_without_the_encoder(
    semantic_stack: LocalStack,
) -> None:
    reply = _decide(semantic_stack, "hi, thanks!")
    explanation = reply.explanation
    assert reply.route == "small"
    assert (explanation.stage, explanation.overloaded) == (1, False)
    assert not explanation.neighbours  # no encoder call, so no kNN search either
    assert explanation.route_scores["small"] == pytest.approx(explanation.confidence)
    gate = VoteConfig().stage1_gate
    assert gate is not None and explanation.confidence >= gate  # the default gate
    assert explanation.predicted_output_tokens > 0  # the route's mean answer length
    assert _route(semantic_stack, "hi, thanks!").headers["x-router-route"] == "small"
    admin = f"http://127.0.0.1:{semantic_stack.ports.sidecar_admin}/metrics"
    assert 'classifier="stage1_routed"' in httpx.get(admin, timeout=10).text


def test_broken_index_reload_is_refused_and_serving_continues(
    semantic_stack: LocalStack, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-index"
    broken.mkdir()
    (broken / "meta.json").write_text("{}")
    (broken / "index.faiss").write_bytes(b"garbage")
    with grpc.insecure_channel(semantic_stack.sidecar_target) as channel:
        stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as caught:
            stub.ReloadIndex(router_pb2.ReloadIndexRequest(path=str(broken)), timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _route(semantic_stack, "hi, thanks!").headers["x-router-route"] == "small"
