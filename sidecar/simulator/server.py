"""A stand-in LLM provider: an OpenAI-compatible HTTP server with vLLM-style metrics.

The HTTP edge of the simulator. Each instance plays one provider (`x-sim-name` on every
response says which) serving one model. A request is parsed and answered by the pure
modules beside this one (`protocol`, `answer`); this module only
admits it through the `AdmissionGate` (bounded concurrency, FIFO queue, 429 when full),
spends simulated time on it through a `Pacer` (time to first token, then tokens per
second, streamed in chunks as they are "generated"), and keeps the state `/metrics` and
`/sim/requests` report. `PUT /sim/control` changes its behaviour while it runs (stall on
demand, refuse models it does not serve; see `control`); `/sim/prices` is a price list
that can be changed while it runs, a stand-in price API (see `prices`). All state belongs to one
`web.Application`; there is none at module level.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from sidecar.simulator.answer import Answer, compose_answer, count_tokens, is_shaky, is_weak
from sidecar.simulator.config import SimulatorConfig, compile_weak_patterns
from sidecar.simulator.control import Behaviour, check_failure, check_model, updated
from sidecar.simulator.errors import ApiError, SimulatorConfigError
from sidecar.simulator.load import AdmissionGate, QueueFullError, TrafficCounters, render_metrics
from sidecar.simulator.prices import PriceList
from sidecar.simulator.prices import as_json as prices_json
from sidecar.simulator.protocol import (
    Endpoint,
    ResponseMeta,
    SimRequest,
    StreamRenderer,
    Usage,
    parse_chat_request,
    parse_json_object,
    parse_text_request,
    render_body,
)

__all__ = [
    "LoopPacer",
    "Pacer",
    "SimulatorConfig",
    "answer_request",
    "build_app",
    "due_tokens",
    "start",
]

log = logging.getLogger(__name__)

_RECENT_REQUESTS = 100
# What kind of answer a non-streamed completion is (confident, shaky or weak): tests and
# benchmarks compare a cascade's escalations with what the model knew. Like x-sim-name,
# a simulator's header; no real provider sends it.
ANSWER_HEADER = "x-sim-answer"
# Streams wake at most this often and send every token that fell due since: real servers
# batch tokens too, and a wake-up per token would swamp a small machine under load.
_MIN_CHUNK_INTERVAL_S = 0.02
_TYPICAL_OUTPUT_TOKENS = 100  # only to size the 429 retry-after hint
_SHUTDOWN_GRACE_S = 2.0
_MAX_BODY_BYTES = 32 * 1024 * 1024
_PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_RECORDED_HEADER_PREFIXES = ("x-router-", "x-envoy-")
_RECORDED_HEADERS = frozenset({"x-request-id", "traceparent"})


class Pacer(Protocol):
    """Where simulated time comes from; tests substitute one they control."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once `now()` has reached `deadline`."""
        ...


class LoopPacer:
    """Real time, from the running event loop's clock."""

    def now(self) -> float:
        """The loop's monotonic time."""
        return asyncio.get_running_loop().time()

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until the loop's clock reaches `deadline`."""
        delay = deadline - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass(frozen=True)
class ReceivedRequest:
    """What `/sim/requests` reports about one request; secrets are reduced to presence."""

    seq: int
    path: str
    model: str | None
    stream: bool | None
    content_length: int | None
    body_bytes: int
    headers: dict[str, str]
    authorization: bool


class SimulatorState:
    """Everything one simulator instance remembers between requests."""

    def __init__(self, config: SimulatorConfig, pacer: Pacer) -> None:
        self.config = config
        self.pacer = pacer
        self.weak_patterns = compile_weak_patterns(config.weak_patterns)
        service_s = config.ttft_s + _TYPICAL_OUTPUT_TOKENS / config.tokens_per_s
        self.gate = AdmissionGate(
            config.concurrency, config.max_queue, max(1, math.ceil(service_s))
        )
        self.counters = TrafficCounters()
        self.received: collections.deque[ReceivedRequest] = collections.deque(
            maxlen=_RECENT_REQUESTS
        )
        self.created = int(time.time())
        self._seq = 0
        self.behaviour = Behaviour(
            check_model=config.check_model,
            accept_models=config.accept_models,
            shaky_share=config.shaky_share,
        )
        # Set while answering; cleared while stalled, so waiters hang until released.
        self._completions_flow = asyncio.Event()
        self._completions_flow.set()
        self._health_flow = asyncio.Event()
        self._health_flow.set()
        self.held = 0  # requests a stall is holding right now (GET /sim/control says)

    def change(self, behaviour: Behaviour) -> None:
        """Adopt a new behaviour; releasing a stall lets every held request go on."""
        self.behaviour = behaviour
        for flow, stalled in (
            (self._completions_flow, behaviour.stall),
            (self._health_flow, behaviour.stall_health),
        ):
            if stalled:
                flow.clear()
            else:
                flow.set()

    async def completions_flowing(self) -> None:
        """Return at once, or, while completions are stalled, when the stall is released."""
        await self._hold(self._completions_flow)

    async def health_flowing(self) -> None:
        """Return at once, or, while /health is stalled, when the stall is released."""
        await self._hold(self._health_flow)

    async def _hold(self, flow: asyncio.Event) -> None:
        if flow.is_set():
            return
        self.held += 1
        try:
            await flow.wait()
        finally:
            self.held -= 1

    def control_json(self) -> dict[str, object]:
        """What `/sim/control` reports: the behaviour and how many requests it holds."""
        return {**self.behaviour.as_json(), "held": self.held}

    def record(self, request: web.Request, body: bytes, payload: object) -> None:
        """Remember a completion request for `/sim/requests`."""
        self._seq += 1
        fields = payload if isinstance(payload, dict) else {}
        model, stream = fields.get("model"), fields.get("stream")
        headers = {
            name.lower(): value
            for name, value in request.headers.items()
            if name.lower().startswith(_RECORDED_HEADER_PREFIXES)
            or name.lower() in _RECORDED_HEADERS
        }
        self.received.append(
            ReceivedRequest(
                seq=self._seq,
                path=request.path,
                model=model if isinstance(model, str) else None,
                stream=stream if isinstance(stream, bool) else None,
                content_length=request.content_length,
                body_bytes=len(body),
                headers=headers,
                authorization="Authorization" in request.headers,
            )
        )


_STATE = web.AppKey("simulator_state", SimulatorState)
_PRICES = web.AppKey("price_list", PriceList)


def build_app(config: SimulatorConfig, *, pacer: Pacer | None = None) -> web.Application:
    """The simulator's aiohttp application for one provider."""
    app = web.Application(middlewares=[_openai_errors], client_max_size=_MAX_BODY_BYTES)
    app[_STATE] = SimulatorState(config, pacer or LoopPacer())
    app[_PRICES] = PriceList()
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_post("/v1/completions", _text_completions)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/health", _health)
    app.router.add_get("/sim/requests", _recent_requests)
    app.router.add_delete("/sim/requests", _forget_requests)
    app.router.add_get("/sim/control", _control)
    app.router.add_put("/sim/control", _change_control)
    app.router.add_get("/sim/prices", _prices)
    app.router.add_put("/sim/prices", _change_prices)
    app.on_response_prepare.append(_stamp_headers)
    return app


async def start(
    config: SimulatorConfig, host: str, port: int, *, pacer: Pacer | None = None
) -> tuple[web.AppRunner, int]:
    """Serve the simulator on host:port (0 picks a free port); returns the runner and port."""
    runner = web.AppRunner(
        build_app(config, pacer=pacer),
        # Like vLLM, abandon a request whose client went away (e.g. the losing hedge).
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=_SHUTDOWN_GRACE_S,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise SimulatorConfigError(
            f"simulator {config.name!r} cannot listen on {host}:{port}: {exc}"
        ) from exc
    bound_port = int(runner.addresses[0][1])
    log.info("simulator %s serving %s on %s:%d", config.name, config.model, host, bound_port)
    return runner, bound_port


def due_tokens(elapsed_s: float, tokens_per_s: float, total: int, sent: int) -> int:
    """How many tokens should be out `elapsed_s` after the first one; at least one more."""
    generated = math.floor(elapsed_s * tokens_per_s) + 1
    return min(total, max(sent + 1, generated))


def answer_kind(answer: Answer) -> str:
    """`weak`, `shaky` or `confident`: what ANSWER_HEADER says of an answer."""
    return "weak" if answer.weak else "shaky" if answer.shaky else "confident"


def answer_request(state: SimulatorState, request: SimRequest) -> tuple[Answer, Usage]:
    """The answer and usage the simulated model gives to a validated request."""
    config = state.config
    answer = compose_answer(
        request.prompt,
        request.echo_text,
        style=config.style,
        weak=is_weak(request.prompt, state.weak_patterns),
        seed=config.seed,
        max_tokens=request.max_tokens or config.default_max_tokens,
        top_k=request.top_logprobs if request.logprobs else 0,
        shaky=is_shaky(request.prompt, config.seed, state.behaviour.shaky_share),
    )
    return answer, Usage(count_tokens(request.prompt), len(answer.tokens))


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, "chat")


async def _text_completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, "text")


async def _complete(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    state = request.app[_STATE]
    body = await request.read()
    try:
        payload = parse_json_object(body)
    except ApiError:
        state.record(request, body, None)
        raise
    state.record(request, body, payload)
    sim_request = parse_chat_request(payload) if endpoint == "chat" else parse_text_request(payload)
    check_model(state.behaviour, state.config.model, sim_request.model)
    check_failure(state.behaviour)  # told to fail: a 429 or a 5xx, at once
    await state.completions_flowing()  # a stalled provider holds the request unanswered
    answer, usage = answer_request(state, sim_request)
    prefix = "chatcmpl" if endpoint == "chat" else "cmpl"
    meta = ResponseMeta(f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time()), sim_request.model)
    try:
        async with state.gate.slot():
            started = state.pacer.now()
            state.counters.prompt_tokens += usage.prompt_tokens
            if sim_request.stream:
                return await _stream(request, state, sim_request, answer, usage, meta, started)
            done = (
                started + state.config.ttft_s + usage.completion_tokens / state.config.tokens_per_s
            )
            await state.pacer.sleep_until(done)
            await state.completions_flowing()
            state.counters.generation_tokens += usage.completion_tokens
            state.counters.successes[answer.finish_reason] += 1
            return web.Response(
                body=render_body(meta, sim_request, answer, usage),
                content_type="application/json",
                headers={ANSWER_HEADER: answer_kind(answer)},
            )
    except QueueFullError:
        state.counters.rejected += 1
        raise


async def _stream(
    request: web.Request,
    state: SimulatorState,
    sim_request: SimRequest,
    answer: Answer,
    usage: Usage,
    meta: ResponseMeta,
    started: float,
) -> web.StreamResponse:
    config, pacer = state.config, state.pacer
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    renderer = StreamRenderer(meta, sim_request)
    first_token_at = started + config.ttft_s
    await pacer.sleep_until(first_token_at)
    pending = renderer.start()
    total, sent = len(answer.tokens), 0
    try:
        while True:
            due = due_tokens(pacer.now() - first_token_at, config.tokens_per_s, total, sent)
            pending += renderer.tokens(answer.tokens[sent:due])
            state.counters.generation_tokens += due - sent
            sent = due
            if sent >= total:
                break
            await state.completions_flowing()  # a stall stops a stream mid-way
            await response.write(pending)
            pending = b""
            next_due = first_token_at + sent / config.tokens_per_s
            await pacer.sleep_until(max(next_due, pacer.now() + _MIN_CHUNK_INTERVAL_S))
        await state.completions_flowing()
        await response.write(pending + renderer.end(answer.finish_reason, usage))
        await response.write_eof()
    except ConnectionResetError:
        log.debug("simulator %s: client left stream %s after %d tokens", config.name, meta.id, sent)
        return response
    state.counters.successes[answer.finish_reason] += 1
    return response


async def _models(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    model = {
        "id": state.config.model,
        "object": "model",
        "created": state.created,
        "owned_by": f"simulator:{state.config.name}",
    }
    return web.json_response({"object": "list", "data": [model]})


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    text = render_metrics(state.config.model, state.gate, state.counters)
    return web.Response(body=text.encode(), headers={"Content-Type": _PROMETHEUS_CONTENT_TYPE})


async def _health(request: web.Request) -> web.Response:
    await request.app[_STATE].health_flowing()
    return web.Response(status=200)


async def _control(request: web.Request) -> web.Response:
    return web.json_response(request.app[_STATE].control_json())


async def _change_control(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    state.change(updated(state.behaviour, parse_json_object(await request.read())))
    log.info("simulator %s: behaviour now %s", state.config.name, state.behaviour)
    return web.json_response(state.control_json())


async def _prices(request: web.Request) -> web.Response:
    return web.json_response(prices_json(request.app[_PRICES].table))


async def _change_prices(request: web.Request) -> web.Response:
    prices = request.app[_PRICES]
    prices.change(parse_json_object(await request.read()))
    log.info("simulator %s: prices now %s", request.app[_STATE].config.name, prices.table)
    return web.json_response(prices_json(prices.table))


async def _recent_requests(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    records = list(state.received)
    limit = request.query.get("limit")
    if limit is not None:
        if not limit.isdigit():
            raise ApiError("'limit' must be a non-negative integer", param="limit")
        records = records[len(records) - int(limit) :] if int(limit) else []
    return web.json_response({"requests": [dataclasses.asdict(record) for record in records]})


async def _forget_requests(request: web.Request) -> web.Response:
    request.app[_STATE].received.clear()
    return web.Response(status=204)


@web.middleware
async def _openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as the JSON body OpenAI would send, with its status."""
    try:
        return await handler(request)
    except ApiError as exc:
        retry_after = {} if exc.retry_after_s is None else {"Retry-After": str(exc.retry_after_s)}
        return _error_response(exc, retry_after)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = (
            f"Invalid URL ({request.method} {request.path})" if exc.status == 404 else exc.reason
        )
        code = "unknown_url" if exc.status == 404 else exc.reason.lower().replace(" ", "_")
        return _error_response(ApiError(message, status=exc.status, code=code), {})


def _error_response(error: ApiError, headers: dict[str, str]) -> web.Response:
    return web.Response(
        status=error.status,
        body=error.openai_body(),
        content_type="application/json",
        headers=headers,
    )


async def _stamp_headers(request: web.Request, response: web.StreamResponse) -> None:
    state = request.app[_STATE]
    response.headers["x-sim-name"] = state.config.name
    if request.path.startswith("/v1/"):
        response.headers["x-ratelimit-limit-requests"] = str(state.gate.capacity)
        response.headers["x-ratelimit-remaining-requests"] = str(state.gate.remaining)
