"""Model cascading through the real Envoy: shaky cheap answers replaced before the client sees them.

The stack's cheapest simulator (sim-small) is told to answer half of all prompts shakily:
ordinary text whose token logprobs say the model was unsure (the simulator's
`shaky_share`, fixed per prompt by hash, so the test knows which ones). `router:cost`
requests go to sim-small first; Envoy holds each answer back for the sidecar's evaluator;
shaky ones are sent again through Envoy's listener to the next tier (mid) and the client
gets that answer instead. The counts must match everywhere: the simulators' own request
logs, Envoy's per-cluster stats and the client's headers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sidecar.devstack.stack import LocalStack
from sidecar.simulator.answer import is_shaky
from tests.integration.conftest import start_stack
from tests.integration.test_resilience import control, envoy_counters, simulator

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
SHARE = 0.5
PROMPTS = [f"Cascade check {i}: what is a good name for a cat?" for i in range(16)]
SMALL, SMALL_MODEL = "sim-small", "qwen2.5-1.5b-instruct"
MID_CLUSTERS = ("sim-mid-a", "sim-mid-b")
MID_MODEL = "llama-3.3-70b-instruct"


@pytest.fixture(scope="module")
def cascade_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = start_stack(tmp_path_factory.mktemp("cascade"), sidecar_args=("--no-semantic",))
    try:
        yield stack
    finally:
        stack.stop()


def _seen(stack: LocalStack, cluster: str) -> int:
    reply = httpx.get(simulator(stack, cluster) + "/sim/requests?limit=1000", timeout=5)
    return len(reply.json()["requests"])


def _upstream_requests(stack: LocalStack, cluster: str) -> int:
    return envoy_counters(stack, f"cluster.{cluster}.upstream_rq_total").get("total", 0)


def _ask(stack: LocalStack, prompt: str, **extra: object) -> httpx.Response:
    body = {
        "model": "router:cost",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 40,
        **extra,
    }
    return httpx.post(stack.base_url + CHAT, json=body, timeout=60)


def test_shaky_answers_are_escalated_and_confident_ones_are_not(cascade_stack: LocalStack) -> None:
    stack = cascade_stack
    control(stack, SMALL, shaky_share=SHARE, fail_status=None)
    shaky = {p for p in PROMPTS if is_shaky(p, seed=0, share=SHARE)}
    assert 0 < len(shaky) < len(PROMPTS)
    before_small = _seen(stack, SMALL)
    before_mid = sum(_seen(stack, c) for c in MID_CLUSTERS)
    before_envoy = sum(_upstream_requests(stack, c) for c in MID_CLUSTERS)
    escalated = set()
    for prompt in PROMPTS:
        reply = _ask(stack, prompt)
        assert reply.status_code == 200, reply.text
        cascade = reply.headers["x-router-cascade"]
        answer = reply.json()
        if ">" in cascade:
            escalated.add(prompt)
            assert cascade.startswith("small(") and cascade.endswith(">mid"), cascade
            # The client got the stronger model's answer, headers and all.
            assert answer["model"] == MID_MODEL
            assert reply.headers["x-router-model"] == MID_MODEL
            assert reply.headers["x-sim-name"] in MID_CLUSTERS
        else:
            assert answer["model"] == SMALL_MODEL and reply.headers["x-sim-name"] == SMALL
            assert reply.headers["x-sim-answer"] == "confident"
            # The logprobs the router asked for on the client's behalf were taken out.
            assert answer["choices"][0]["logprobs"] is None
        assert float(cascade.split("(", 1)[1].split(")", 1)[0]) >= 0
    assert escalated == shaky
    # One cheap call per prompt, one mid call per escalation, in the simulators' logs and
    # in Envoy's stats: the escalation is a second routed request through the listener.
    assert _seen(stack, SMALL) - before_small == len(PROMPTS)
    assert sum(_seen(stack, c) for c in MID_CLUSTERS) - before_mid == len(shaky)
    assert sum(_upstream_requests(stack, c) for c in MID_CLUSTERS) - before_envoy == len(shaky)


def test_a_provider_error_on_the_cheap_attempt_escalates_instead_of_failing(
    cascade_stack: LocalStack,
) -> None:
    stack = cascade_stack
    control(stack, SMALL, shaky_share=0.0, fail_status=500)
    try:
        reply = _ask(stack, "Cascade check: the cheap provider is broken")
    finally:
        control(stack, SMALL, fail_status=None)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-router-cascade"] == "small(0.00)>mid"
    assert reply.json()["model"] == MID_MODEL


def test_streams_and_named_models_are_never_held_back(cascade_stack: LocalStack) -> None:
    stack = cascade_stack
    control(stack, SMALL, shaky_share=1.0)
    try:
        body = {
            "model": "router:cost",
            "stream": True,
            "messages": [{"role": "user", "content": "Cascade check: stream me"}],
            "max_tokens": 5,
        }
        with httpx.stream("POST", stack.base_url + CHAT, json=body, timeout=30) as reply:
            assert reply.status_code == 200
            assert reply.headers["content-type"].startswith("text/event-stream")
            events = [line for line in reply.iter_lines() if line.startswith("data: ")]
        assert "x-router-cascade" not in reply.headers
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[0][6:])["model"] == SMALL_MODEL
        named = _ask(stack, "Cascade check: named", model=SMALL_MODEL)
        assert named.status_code == 200 and "x-router-cascade" not in named.headers
        assert named.json()["model"] == SMALL_MODEL
    finally:
        control(stack, SMALL, shaky_share=0.0)


def test_a_client_cannot_forge_an_escalation_or_the_cascade_route(
    cascade_stack: LocalStack,
) -> None:
    stack = cascade_stack
    control(stack, SMALL, shaky_share=0.0)
    forged = {"x-router-escalation": "v1.eyJ0aWVyIjoiZnJvbnRpZXIifQ.bm90LWEtbWFj"}
    body = {
        "model": "router:cost",
        "messages": [{"role": "user", "content": "Cascade check: forged"}],
        "max_tokens": 40,
    }
    reply = httpx.post(stack.base_url + CHAT, json=body, headers=forged, timeout=30)
    assert reply.status_code == 200
    assert reply.json()["model"] == SMALL_MODEL  # decided as any cost request: not frontier
    last = httpx.get(simulator(stack, SMALL) + "/sim/requests?limit=1", timeout=5).json()
    seen_headers = last["requests"][-1]["headers"]
    assert "x-router-escalation" not in seen_headers
    assert "x-router-cascade-check" not in seen_headers


def test_the_sidecar_counts_what_the_cascade_did(cascade_stack: LocalStack, tmp_path: Path) -> None:
    metrics = httpx.get(f"http://127.0.0.1:{cascade_stack.ports.sidecar_admin}/metrics").text
    assert 'inference_router_cascade_total{outcome="escalated"}' in metrics
    assert 'inference_router_cascade_total{outcome="accepted"}' in metrics
    assert "inference_router_cascade_check_seconds_bucket" in metrics


def test_learning_from_outcomes_sends_a_similar_prompt_straight_to_the_tier_it_needed(
    tmp_path: Path,
) -> None:
    memory = tmp_path / "cascade-memory.jsonl"
    settings = tmp_path / "sidecar.yaml"
    settings.write_text(
        f"envoy_config: envoy.yaml\ncascade:\n  learn:\n    enabled: true\n    path: {memory}\n"
    )
    stack = start_stack(tmp_path / "stack", sidecar_args=("--config", str(settings)))
    try:
        control(stack, SMALL, shaky_share=1.0)  # every cheap answer is shaky
        first = _ask(stack, "What would be a good name for a grey cat?")
        assert first.headers["x-router-cascade"].endswith(">mid")
        small_calls = _seen(stack, SMALL)
        for similar in ("What would be a good name for a grey cat?",
                        "What would be a good name for a gray cat?"):  # fmt: skip
            again = _ask(stack, similar)
            assert again.status_code == 200 and "x-router-cascade" not in again.headers
            assert again.headers["x-router-route"] == "mid"
            assert again.json()["model"] == MID_MODEL
        assert _seen(stack, SMALL) == small_calls  # the cheap attempt was skipped
        other = _ask(stack, "Summarise the rules of chess in two sentences.")
        assert other.headers["x-router-cascade"].startswith("small(")  # not like it: cascades
        stored = memory.read_text()
        assert "cat" not in stored and "chess" not in stored  # vectors and tiers, no text
        assert len(stored.splitlines()) == 1 + 2  # a header and the two escalations
        metrics = httpx.get(f"http://127.0.0.1:{stack.ports.sidecar_admin}/metrics").text
        assert 'inference_router_cascade_total{outcome="recalled"} 2.0' in metrics
    finally:
        stack.stop()


def test_a_hung_cheap_provider_leaves_half_the_budget_for_the_escalation(tmp_path: Path) -> None:
    settings = tmp_path / "sidecar.yaml"
    settings.write_text("envoy_config: envoy.yaml\ncascade:\n  budget_s: 4\n")
    stack = start_stack(
        tmp_path / "stack", sidecar_args=("--no-semantic", "--config", str(settings))
    )
    try:
        control(stack, SMALL, stall=True)
        started = time.monotonic()
        reply = _ask(stack, "Cascade check: the cheap provider hangs")
        elapsed = time.monotonic() - started
        print(f"\nhung sim-small: escalated answer after {elapsed:.2f}s (budget 4 s)")
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-router-cascade"] == "small(0.00)>mid"
        assert 2.0 <= elapsed < 3.5  # half the budget for the cheap attempt, then mid's time
    finally:
        control(stack, SMALL, stall=False)
        stack.stop()
