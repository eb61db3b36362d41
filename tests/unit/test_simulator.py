"""The provider simulator: OpenAI wire format, load behaviour, metrics and debug endpoints.

Servers run on 127.0.0.1 with a port picked at run time. Most tests use a `GatedPacer`, so
simulated time passes only when the test says so: queues build and drain on command and
nothing depends on the speed of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from sidecar.cli import simulate
from sidecar.errors import ConfigError
from sidecar.simulator.answer import compose_answer, count_tokens, is_shaky, split_tokens
from sidecar.simulator.config import SimulatorConfig
from sidecar.simulator.errors import ApiError, SimulatorConfigError
from sidecar.simulator.load import AdmissionGate, QueueFullError
from sidecar.simulator.protocol import parse_chat_request, parse_text_request
from sidecar.simulator.server import LoopPacer, Pacer, due_tokens, start
from tests.fakes import GatedPacer

MODEL = "sim-model"
WAIT_LIMIT_S = 10.0


class Sim:
    """A running simulator and a client session pointed at it."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def post(self, path: str, body: object, **headers: str) -> aiohttp.ClientResponse:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.session.post(self.base + path, data=data, headers=headers)

    async def post_json(self, path: str, body: object) -> tuple[int, dict[str, Any]]:
        async with await self.post(path, body) as response:
            return response.status, await response.json()

    async def stream(self, path: str, body: dict[str, Any]) -> list[Any]:
        """The decoded `data:` payloads of an SSE response, `[DONE]` as the string."""
        async with await self.post(path, {**body, "stream": True}) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            text = await response.text()
        events = [block for block in text.split("\n\n") if block]
        assert all(event.startswith("data: ") for event in events)
        payloads = [event.removeprefix("data: ") for event in events]
        return [p if p == "[DONE]" else json.loads(p) for p in payloads]

    async def metrics(self) -> dict[str, float]:
        """Samples keyed by metric name, with the model_name label checked and dropped."""
        async with self.session.get(self.base + "/metrics") as response:
            assert response.status == 200
            text = await response.text()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            series, value = line.rsplit(" ", 1)
            name, labels = series.split("{", 1)
            assert f'model_name="{MODEL}"' in labels
            extra = labels.rstrip("}").split(",")[1:]
            samples[name + "".join(f"[{label}]" for label in extra)] = float(value)
        return samples

    async def wait_for_load(self, running: int, waiting: int) -> None:
        async with asyncio.timeout(WAIT_LIMIT_S):
            while True:
                samples = await self.metrics()
                if (samples["vllm:num_requests_running"], samples["vllm:num_requests_waiting"]) == (
                    running,
                    waiting,
                ):
                    return
                await asyncio.sleep(0.005)


SimFactory = Callable[..., Awaitable[Sim]]


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    runners: list[aiohttp.web.AppRunner] = []
    session = aiohttp.ClientSession()

    async def factory(pacer: Pacer | None = None, **overrides: Any) -> Sim:
        config = SimulatorConfig(name="sim-a", model=MODEL, **overrides)
        runner, port = await start(config, "127.0.0.1", 0, pacer=pacer or GatedPacer())
        runners.append(runner)
        return Sim(session, f"http://127.0.0.1:{port}")

    yield factory
    await session.close()
    for runner in runners:
        await runner.cleanup()


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "asked-for-model", "messages": [{"role": "user", "content": content}], **extra}


def text(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "asked-for-model", "prompt": prompt, **extra}


# --- HTTP: JSON and streaming responses ---------------------------------------------------


async def test_chat_completion_json(make_sim: SimFactory) -> None:
    sim = await make_sim()
    async with await sim.post("/v1/chat/completions", chat("What is a queue?")) as response:
        assert response.status == 200
        assert response.headers["x-sim-name"] == "sim-a"
        assert int(response.headers["x-ratelimit-remaining-requests"]) > 0
        body = await response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "asked-for-model"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    assert choice["logprobs"] is None
    usage = body["usage"]
    assert usage["prompt_tokens"] == count_tokens("What is a queue?") == 5
    assert usage["completion_tokens"] == count_tokens(choice["message"]["content"]) > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_answers_are_deterministic_per_prompt(make_sim: SimFactory) -> None:
    sim = await make_sim()
    first = await sim.post_json("/v1/chat/completions", chat("Describe the sea"))
    again = await sim.post_json("/v1/chat/completions", chat("Describe the sea"))
    other = await sim.post_json("/v1/chat/completions", chat("Describe a mountain"))
    content = [result[1]["choices"][0]["message"]["content"] for result in (first, again, other)]
    assert content[0] == content[1] != content[2]


async def test_chat_stream_matches_json_answer(make_sim: SimFactory) -> None:
    sim = await make_sim()
    _, whole = await sim.post_json("/v1/chat/completions", chat("Explain streaming"))
    events = await sim.stream("/v1/chat/completions", chat("Explain streaming"))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk["model"] == "asked-for-model" for chunk in chunks)
    assert all("usage" not in chunk for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    streamed = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert streamed == whole["choices"][0]["message"]["content"]
    assert len(chunks) == whole["usage"]["completion_tokens"] + 2


async def test_stream_include_usage_sends_final_usage_chunk(make_sim: SimFactory) -> None:
    sim = await make_sim()
    body = chat("Hello there friend", stream_options={"include_usage": True})
    events = await sim.stream("/v1/chat/completions", body)
    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert all(chunk["usage"] is None for chunk in chunks)
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    generated = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert usage["prompt_tokens"] == 3
    assert usage["completion_tokens"] == count_tokens(generated)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_text_completion_json_and_stream(make_sim: SimFactory) -> None:
    sim = await make_sim()
    status, body = await sim.post_json("/v1/completions", text("Once upon a time"))
    assert status == 200
    assert body["object"] == "text_completion"
    assert body["model"] == "asked-for-model"
    events = await sim.stream(
        "/v1/completions", text("Once upon a time", stream_options={"include_usage": True})
    )
    assert events[-1] == "[DONE]"
    assert events[-2]["usage"] == body["usage"]
    chunks = events[:-2]
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == body["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == body["choices"][0]["finish_reason"]


async def test_stream_with_real_time_pacing(make_sim: SimFactory) -> None:
    sim = await make_sim(LoopPacer(), ttft_s=0.001, tokens_per_s=20_000.0, style="verbose")
    events = await sim.stream("/v1/chat/completions", chat("Write an essay on rivers"))
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] in {"stop", "length"}


async def test_echo_style_repeats_last_user_message(make_sim: SimFactory) -> None:
    sim = await make_sim(style="echo")
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Say exactly this."}]},
        ],
    }
    _, answer = await sim.post_json("/v1/chat/completions", body)
    assert answer["choices"][0]["message"]["content"] == "Say exactly this."


# --- max_tokens, logprobs and weak patterns -----------------------------------------------


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_cuts_with_finish_reason_length(make_sim: SimFactory, field: str) -> None:
    sim = await make_sim(style="verbose")
    _, body = await sim.post_json("/v1/chat/completions", chat("Tell me more", **{field: 3}))
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "length"
    events = await sim.stream("/v1/chat/completions", chat("Tell me more", **{field: 3}))
    assert events[-2]["choices"][0]["finish_reason"] == "length"


async def test_chat_logprobs_have_openai_shape(make_sim: SimFactory) -> None:
    sim = await make_sim()
    _, body = await sim.post_json(
        "/v1/chat/completions", chat("Name a colour", logprobs=True, top_logprobs=3)
    )
    choice = body["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(item["token"] for item in content) == choice["message"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    for item in content:
        assert item["bytes"] == list(item["token"].encode())
        assert len(item["top_logprobs"]) == 3
        assert {"token", "logprob", "bytes"} == set(item["top_logprobs"][0])
        assert item["token"] in {top["token"] for top in item["top_logprobs"]}
        assert item["logprob"] <= 0
    assert sum(item["logprob"] for item in content) / len(content) > -0.2

    events = await sim.stream("/v1/chat/completions", chat("Name a colour", logprobs=True))
    streamed = [event["choices"][0]["logprobs"] for event in events[1:-2]]
    assert all(len(logprobs["content"]) == 1 for logprobs in streamed)
    assert [logprobs["content"][0]["token"] for logprobs in streamed] == [
        item["token"] for item in content
    ]


def test_a_fixed_share_of_prompts_is_answered_shakily_with_lower_logprobs() -> None:
    prompts = [f"Question number {i}: how do I sort a list?" for i in range(400)]
    shaky = [p for p in prompts if is_shaky(p, seed=0, share=0.3)]
    assert 0.25 < len(shaky) / len(prompts) < 0.35
    assert shaky == [p for p in prompts if is_shaky(p, seed=0, share=0.3)]  # fixed per prompt
    assert not any(is_shaky(p, seed=0, share=0.0) for p in prompts)
    assert all(is_shaky(p, seed=0, share=1.0) for p in prompts)

    def mean_logprob(prompt: str, shaky: bool) -> float:
        answer = compose_answer(
            prompt, prompt, style="lorem", weak=False, seed=0, max_tokens=60, top_k=0, shaky=shaky
        )
        assert answer.shaky is shaky and not answer.weak
        return sum(token.logprob for token in answer.tokens) / len(answer.tokens)

    confident = [mean_logprob(p, False) for p in prompts[:50]]
    unsure = [mean_logprob(p, True) for p in prompts[:50]]
    assert max(unsure) < min(confident)  # over 60 tokens the means separate
    assert -0.15 < sum(confident) / 50 < -0.03 and -1.2 < sum(unsure) / 50 < -0.6


async def test_shaky_share_is_a_setting_and_a_control_and_the_answer_says_which(
    make_sim: SimFactory,
) -> None:
    sim = await make_sim(shaky_share=1.0)
    async with await sim.post("/v1/chat/completions", chat("Name a colour")) as reply:
        assert reply.headers["x-sim-answer"] == "shaky"
    async with sim.session.put(sim.base + "/sim/control", json={"shaky_share": 0}) as reply:
        assert reply.status == 200 and (await reply.json())["shaky_share"] == 0
    async with await sim.post("/v1/chat/completions", chat("Name a colour")) as reply:
        assert reply.headers["x-sim-answer"] == "confident"
    async with sim.session.put(sim.base + "/sim/control", json={"shaky_share": 2}) as reply:
        assert reply.status == 400 and "shaky_share" in (await reply.text())
    with pytest.raises(SimulatorConfigError, match="shaky_share"):
        SimulatorConfig(name="s", model="m", shaky_share=-0.1)


async def test_text_completion_logprobs_have_legacy_shape(make_sim: SimFactory) -> None:
    sim = await make_sim()
    _, body = await sim.post_json("/v1/completions", text("Count to ten", logprobs=2))
    logprobs = body["choices"][0]["logprobs"]
    count = body["usage"]["completion_tokens"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == count
    assert all(len(top) == 2 for top in logprobs["top_logprobs"])
    assert logprobs["text_offset"][0] == len("Count to ten")
    assert "".join(logprobs["tokens"]) == body["choices"][0]["text"]


async def test_weak_pattern_gives_hedged_low_logprob_answer(make_sim: SimFactory) -> None:
    sim = await make_sim(weak_patterns=(r"\bintegral\b",))
    _, weak = await sim.post_json(
        "/v1/chat/completions", chat("Solve this INTEGRAL for me", logprobs=True)
    )
    _, strong = await sim.post_json(
        "/v1/chat/completions", chat("Solve this equation for me", logprobs=True)
    )

    def mean_logprob(body: dict[str, Any]) -> float:
        content = body["choices"][0]["logprobs"]["content"]
        return float(sum(item["logprob"] for item in content) / len(content))

    assert mean_logprob(weak) < -1.5
    assert mean_logprob(strong) > -0.2
    assert weak["usage"]["completion_tokens"] < 20


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", b"{not json", None),
        ("/v1/chat/completions", b"[1, 2]", None),
        ("/v1/chat/completions", {"model": MODEL}, "messages"),
        ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, "messages"),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "model"),
        ("/v1/chat/completions", chat("x") | {"messages": [{"role": "user", "content": 5}]},
         "messages[0].content"),
        ("/v1/chat/completions", chat("x") | {"messages": [{"role": "bot", "content": "x"}]},
         "messages[0].role"),
        ("/v1/chat/completions", chat("x", max_tokens="10"), "max_tokens"),
        ("/v1/chat/completions", chat("x", max_tokens=0), "max_tokens"),
        ("/v1/chat/completions", chat("x", stream="yes"), "stream"),
        ("/v1/chat/completions", chat("x", top_logprobs=2), "top_logprobs"),
        ("/v1/chat/completions", chat("x", n=2), "n"),
        ("/v1/completions", {"model": MODEL}, "prompt"),
        ("/v1/completions", text("x", logprobs=True), "logprobs"),
        ("/v1/completions", text("x", logprobs=9), "logprobs"),
    ],
)  # fmt: skip
async def test_bad_requests_get_openai_errors(
    make_sim: SimFactory, path: str, body: object, param: str | None
) -> None:
    sim = await make_sim()
    status, error = await sim.post_json(path, body)
    assert status == 400
    assert set(error["error"]) == {"message", "type", "code", "param"}
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == param


async def test_unknown_path_is_404_in_openai_shape(make_sim: SimFactory) -> None:
    sim = await make_sim()
    status, error = await sim.post_json("/v1/embeddings", {"model": MODEL, "input": "x"})
    assert status == 404
    assert error["error"]["code"] == "unknown_url"
    assert error["error"]["message"] == "Invalid URL (POST /v1/embeddings)"


# --- load: queue, metrics, 429 ------------------------------------------------------------


async def test_metrics_show_the_queue_while_requests_run(make_sim: SimFactory) -> None:
    pacer = GatedPacer(open_=False)
    sim = await make_sim(pacer, concurrency=1)
    requests = [
        asyncio.create_task(sim.post_json("/v1/chat/completions", chat(f"Question {i}")))
        for i in range(3)
    ]
    await sim.wait_for_load(running=1, waiting=2)
    samples = await sim.metrics()
    assert samples["vllm:kv_cache_usage_perc"] == 1.0
    assert samples['vllm:request_success_total[finished_reason="stop"]'] == 0

    pacer.gate.set()
    results = await asyncio.gather(*requests)
    assert [status for status, _ in results] == [200, 200, 200]
    await sim.wait_for_load(running=0, waiting=0)
    samples = await sim.metrics()
    assert samples['vllm:request_success_total[finished_reason="stop"]'] == 3
    assert samples["vllm:prompt_tokens_total"] == 3 * 2
    generated = sum(body["usage"]["completion_tokens"] for _, body in results)
    assert samples["vllm:generation_tokens_total"] == generated
    assert samples["vllm:kv_cache_usage_perc"] == 0.0


async def test_full_queue_answers_429_with_retry_after(make_sim: SimFactory) -> None:
    pacer = GatedPacer(open_=False)
    sim = await make_sim(pacer, concurrency=1, max_queue=1)
    held = [
        asyncio.create_task(sim.post_json("/v1/chat/completions", chat(f"Hold {i}")))
        for i in range(2)
    ]
    await sim.wait_for_load(running=1, waiting=1)
    async with await sim.post("/v1/chat/completions", chat("One too many")) as response:
        assert response.status == 429
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        error = await response.json()
    assert error["error"]["code"] == "rate_limit_exceeded"
    assert (await sim.metrics())["simulator:requests_rejected_total"] == 1

    pacer.gate.set()
    assert [status for status, _ in await asyncio.gather(*held)] == [200, 200]


async def test_client_leaving_a_stream_frees_its_slot(make_sim: SimFactory) -> None:
    pacer = GatedPacer(open_=False)
    sim = await make_sim(pacer, concurrency=1)
    response = await sim.post("/v1/chat/completions", chat("Long story", stream=True))
    assert response.status == 200
    await sim.wait_for_load(running=1, waiting=0)
    response.close()  # drops the connection mid-stream
    await sim.wait_for_load(running=0, waiting=0)
    samples = await sim.metrics()
    assert samples['vllm:request_success_total[finished_reason="stop"]'] == 0


# --- debug endpoints ----------------------------------------------------------------------


async def test_sim_requests_records_what_arrived(make_sim: SimFactory) -> None:
    sim = await make_sim()
    payload = json.dumps(chat("Record me", stream=False)).encode()
    headers = {"x-router-upstream": "sim-a", "Authorization": "Bearer sk-secret"}
    async with await sim.post("/v1/chat/completions", payload, **headers) as response:
        assert response.status == 200
    async with await sim.post("/v1/completions", b"{broken") as response:
        assert response.status == 400

    async with sim.session.get(sim.base + "/sim/requests") as response:
        records = (await response.json())["requests"]
    first, second = records
    assert first["path"] == "/v1/chat/completions"
    assert first["model"] == "asked-for-model"
    assert first["stream"] is False
    assert first["content_length"] == first["body_bytes"] == len(payload)
    assert first["headers"] == {"x-router-upstream": "sim-a"}
    assert first["authorization"] is True
    assert "sk-secret" not in json.dumps(records)
    assert second["model"] is None and second["stream"] is None
    assert second["authorization"] is False

    async with sim.session.get(sim.base + "/sim/requests?limit=1") as response:
        assert [r["seq"] for r in (await response.json())["requests"]] == [second["seq"]]
    async with sim.session.delete(sim.base + "/sim/requests") as response:
        assert response.status == 204
    async with sim.session.get(sim.base + "/sim/requests") as response:
        assert (await response.json())["requests"] == []


async def test_health_and_models(make_sim: SimFactory) -> None:
    sim = await make_sim()
    async with sim.session.get(sim.base + "/health") as response:
        assert response.status == 200
        assert response.headers["x-sim-name"] == "sim-a"
    async with sim.session.get(sim.base + "/v1/models") as response:
        models = await response.json()
    assert [model["id"] for model in models["data"]] == [MODEL]


# --- pure parts ---------------------------------------------------------------------------


def test_token_rule_counts_words_and_punctuation() -> None:
    assert count_tokens("I'm here.") == 5
    assert split_tokens("Hello, big  world") == ["Hello", ",", " big", "  world"]
    sample = "A line.\n\nNext, one!"
    assert "".join(split_tokens(sample)) == sample
    assert len(split_tokens(sample)) == count_tokens(sample)


def test_compose_answer_is_deterministic_and_honours_max_tokens() -> None:
    def answer(seed: int, max_tokens: int = 4096) -> tuple[str, int, str]:
        result = compose_answer(
            "Explain TCP", "", style="lorem", weak=False, seed=seed, max_tokens=max_tokens, top_k=0
        )
        return result.text, len(result.tokens), result.finish_reason

    assert answer(0) == answer(0)
    assert answer(0) != answer(1)
    assert answer(0)[2] == "stop"
    assert answer(0, max_tokens=4)[1:] == (4, "length")


def test_demanding_prompts_get_longer_answers_than_greetings() -> None:
    def length(prompt: str) -> int:
        result = compose_answer(
            prompt, "", style="lorem", weak=False, seed=0, max_tokens=10_000, top_k=0
        )
        return len(result.tokens)

    greetings = [length(p) for p in ("Hi", "Thanks!", "Hello there", "Good morning")]
    demands = [length(f"Explain in detail how {topic} works") for topic in ("TLS", "DNS", "BGP")]
    assert max(greetings) < min(demands)


def test_due_tokens_paces_by_rate_and_always_progresses() -> None:
    assert due_tokens(0.0, 100.0, total=50, sent=0) == 1
    assert due_tokens(0.105, 100.0, total=50, sent=1) == 11
    assert due_tokens(0.0, 100.0, total=50, sent=11) == 12
    assert due_tokens(10.0, 100.0, total=50, sent=12) == 50
    assert due_tokens(0.0, 100.0, total=0, sent=0) == 0


async def test_admission_gate_is_fifo_and_survives_cancellation() -> None:
    gate = AdmissionGate(concurrency=1, max_queue=2, retry_after_s=1)
    order: list[str] = []
    release_first = asyncio.Event()

    async def use(name: str, hold: asyncio.Event | None = None) -> None:
        async with gate.slot():
            order.append(name)
            if hold is not None:
                await hold.wait()

    first = asyncio.create_task(use("first", release_first))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(use("cancelled"))
    third = asyncio.create_task(use("third"))
    await asyncio.sleep(0)
    assert (gate.running, gate.waiting, gate.remaining) == (1, 2, 0)
    with pytest.raises(QueueFullError):
        await use("refused")
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert gate.waiting == 1
    release_first.set()
    await asyncio.gather(first, third)
    assert order == ["first", "third"]
    assert (gate.running, gate.waiting) == (0, 0)


def test_parsing_flattens_messages_and_prefers_max_completion_tokens() -> None:
    parsed = parse_chat_request(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": None},
            ],
            "max_tokens": 100,
            "max_completion_tokens": 7,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert parsed.prompt == "Be kind.\nHi\n"
    assert parsed.echo_text == "Hi"
    assert parsed.max_tokens == 7
    assert parsed.stream and parsed.include_usage
    assert parse_text_request({"model": "m", "prompt": ["only"]}).prompt == "only"
    with pytest.raises(ApiError) as caught:
        parse_text_request({"model": "m", "prompt": ["a", "b"]})
    assert caught.value.param == "prompt"
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "overrides",
    [
        {"ttft_s": -1.0},
        {"tokens_per_s": 0.0},
        {"tokens_per_s": float("inf")},
        {"concurrency": 0},
        {"max_queue": -1},
        {"weak_patterns": ("(unclosed",)},
        {"style": "shouty"},
    ],
)
def test_bad_config_is_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(SimulatorConfigError):
        SimulatorConfig(name="x", model="m", **overrides)


def test_command_line_builds_the_config() -> None:
    parser = argparse.ArgumentParser()
    simulate.configure(parser)
    args = parser.parse_args(
        shlex.split(
            "--name fast --port 0 --model tiny --ttft-ms 20 --style concise "
            "--weak-pattern proof --weak-pattern integral"
        )
    )
    config = simulate.config_from_args(args)
    assert config == SimulatorConfig(
        name="fast",
        model="tiny",
        ttft_s=0.02,
        style="concise",
        weak_patterns=("proof", "integral"),
    )
    assert args.host == "127.0.0.1"


def test_command_line_refuses_a_bad_config_as_a_router_config_error() -> None:
    parser = argparse.ArgumentParser()
    simulate.configure(parser)
    args = parser.parse_args(["--name", "x", "--model", "m", "--port", "0", "--concurrency", "0"])
    # The simulator's own error becomes the CLI's ConfigError: exit 2 with one line.
    with pytest.raises(ConfigError, match="concurrency"):
        simulate.run(args)
