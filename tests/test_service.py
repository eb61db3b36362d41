"""RoutingService: the body rewrite, and what it logs."""

from __future__ import annotations

import json
import logging

import pytest

from sidecar.config.envoy import Catalogue, Price, Provider
from sidecar.core.decision import ProviderSnapshot, RoutingTable
from sidecar.errors import RequestError
from sidecar.serving.service import RoutingService

CATALOGUE = Catalogue(
    providers=(
        Provider("tiny", "tiny-1b", "small", Price(0.1, 0.1)),
        Provider("big", "big-1t", "frontier", Price(5, 15)),
    ),
    clusters=frozenset({"tiny", "big"}),
)
TABLE = RoutingTable(tiers=("small", "frontier"), default_route="small")
SECRET_PROMPT = "my card number is 4111 1111 1111 1111"
BODY = json.dumps(
    {
        "model": "auto",
        "messages": [{"role": "user", "content": SECRET_PROMPT}],
        "temperature": 0.2,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    }
).encode()


def _service(log_prompts: bool = False) -> RoutingService:
    return RoutingService(
        table=TABLE, catalogue=CATALOGUE, snapshot=ProviderSnapshot, log_prompts=log_prompts
    )


async def test_rewrite_keeps_every_other_field() -> None:
    routed = await _service().route("/v1/chat/completions", {}, BODY)
    assert routed.body is not None
    rewritten = json.loads(routed.body)
    original = json.loads(BODY)
    assert rewritten.pop("model") == "tiny-1b"
    original.pop("model")
    assert rewritten == original


async def test_explicit_model_body_is_untouched() -> None:
    body = BODY.replace(b'"auto"', b'"big-1t"')
    routed = await _service().route("/v1/chat/completions", {}, body)
    assert routed.body is None and routed.decision.upstream == "big"


async def test_unrouted_path_is_refused() -> None:
    with pytest.raises(RequestError) as caught:
        await _service().route("/v1/embeddings", {}, BODY)
    assert caught.value.status == 404


@pytest.mark.parametrize("log_prompts", [False, True])
async def test_prompts_are_logged_only_when_asked(
    caplog: pytest.LogCaptureFixture, log_prompts: bool
) -> None:
    caplog.set_level(logging.DEBUG, logger="sidecar")
    await _service(log_prompts).route(
        "/v1/chat/completions", {"authorization": "Bearer sk-secret"}, BODY
    )
    assert (SECRET_PROMPT in caplog.text) is log_prompts
    assert "sk-secret" not in caplog.text
    assert "decision" in caplog.text
