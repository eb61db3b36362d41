"""RoutingService: the body rewrite, policy asks, the classifier's verdict, what it logs."""

from __future__ import annotations

import json
import logging

import pytest

from sidecar.core.decision import ProviderSnapshot
from sidecar.core.policy import Policy
from sidecar.core.vote import FAILED, RouteVerdict
from sidecar.errors import NotFoundError, OutOfLimitsError, RequestError
from sidecar.serving.service import MAX_COST_HEADER, POLICY_HEADER, RoutingService
from sidecar.serving.statuses import http_status
from tests.fakes import TWO_TIER_CATALOGUE, TWO_TIER_TABLE

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
        table=TWO_TIER_TABLE,
        catalogue=TWO_TIER_CATALOGUE,
        snapshot=ProviderSnapshot,
        log_prompts=log_prompts,
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
    with pytest.raises(NotFoundError) as caught:
        await _service().route("/v1/embeddings", {}, BODY)
    assert caught.value.code == "unknown_url"
    assert http_status(caught.value) == 404


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


class _FixedClassifier:
    """A `Classifier` that names one route for every text and counts its calls."""

    def __init__(self, verdict: RouteVerdict) -> None:
        self.verdict = verdict
        self.texts: list[str] = []

    async def classify(self, text: str) -> RouteVerdict:
        self.texts.append(text)
        return self.verdict


def _named(route: str) -> RouteVerdict:
    return RouteVerdict(
        route=route,
        scores={route: 1.0},
        confidence=1.0,
        best_similarity=0.9,
        margin=1.0,
        threshold=0.25,
        abstain_reason=None,
        neighbours=(),
        predicted_output_tokens=None,
    )


async def test_the_verdict_routes_balanced_requests_and_is_returned() -> None:
    classifier = _FixedClassifier(_named("frontier"))
    service = RoutingService(
        table=TWO_TIER_TABLE,
        catalogue=TWO_TIER_CATALOGUE,
        snapshot=ProviderSnapshot,
        classifier=classifier,
    )
    routed = await service.route("/v1/chat/completions", {}, BODY)
    assert routed.verdict is classifier.verdict
    assert routed.decision.route == "frontier" and routed.decision.upstream == "big"
    assert classifier.texts == [SECRET_PROMPT]


async def test_the_classifier_is_skipped_when_the_policy_or_model_decides() -> None:
    classifier = _FixedClassifier(_named("frontier"))
    service = RoutingService(
        table=TWO_TIER_TABLE,
        catalogue=TWO_TIER_CATALOGUE,
        snapshot=ProviderSnapshot,
        classifier=classifier,
    )
    explicit_body = BODY.replace(b'"auto"', b'"tiny-1b"')
    explicit = await service.route("/v1/chat/completions", {}, explicit_body)
    by_header = await service.route("/v1/chat/completions", {POLICY_HEADER: "cost"}, BODY)
    assert explicit.verdict is None and by_header.verdict is None
    assert classifier.texts == []


async def test_header_policy_beats_the_route_policy_and_errors_name_the_header() -> None:
    service = _service()
    by_route = await service.route("/v1/chat/completions", {}, BODY, route_policy="quality")
    assert by_route.decision.policy is Policy.QUALITY and by_route.decision.upstream == "big"
    both = await service.route(
        "/v1/chat/completions", {POLICY_HEADER: "cost"}, BODY, route_policy="quality"
    )
    assert both.decision.policy is Policy.COST and both.decision.upstream == "tiny"
    with pytest.raises(RequestError) as caught:
        await service.route("/v1/chat/completions", {POLICY_HEADER: "warp"}, BODY)
    assert caught.value.param == POLICY_HEADER
    assert http_status(caught.value) == 400


class _BrokenClassifier:
    """A `Classifier` that raises, as a bug or a broken model would."""

    async def classify(self, text: str) -> RouteVerdict:
        raise RuntimeError("model state corrupted: secret-internal-detail")


async def test_a_failing_classifier_costs_the_semantic_route_not_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors: list[str] = []
    service = RoutingService(
        table=TWO_TIER_TABLE,
        catalogue=TWO_TIER_CATALOGUE,
        snapshot=ProviderSnapshot,
        classifier=_BrokenClassifier(),
        on_error=errors.append,
    )
    routed = await service.route("/v1/chat/completions", {}, BODY, decision_id="d-42")
    assert routed.verdict is not None and routed.verdict.abstain_reason == FAILED
    assert routed.decision.route == TWO_TIER_TABLE.default_route
    assert "classifier failed" in routed.decision.reason
    assert "secret-internal-detail" not in routed.decision.reason
    assert errors == ["classifier"]
    assert "d-42" in caplog.text  # the log line names the decision


def test_the_fallback_decision_rewrites_router_aliases_only() -> None:
    service = _service()
    routed = service.fallback(BODY, "d-1", {})
    assert routed.decision.decision_id == "d-1"
    assert routed.decision.upstream == "tiny" and "internal error" in routed.decision.reason
    assert routed.body is not None and json.loads(routed.body)["model"] == "tiny-1b"
    explicit = service.fallback(BODY.replace(b'"auto"', b'"big-1t"'), "d-2", {})
    assert explicit.body is None
    assert service.fallback(b"{not json", "d-3", {}).body is None


def test_the_fallback_decision_keeps_the_clients_limits() -> None:
    service = _service()
    within = service.fallback(BODY, "d-1", {MAX_COST_HEADER: "1"})
    assert within.decision.upstream == "tiny"
    with pytest.raises(OutOfLimitsError):  # nothing costs under a trillionth of a cent
        service.fallback(BODY, "d-2", {MAX_COST_HEADER: "1e-15"})
    with pytest.raises(RequestError, match=MAX_COST_HEADER):
        service.fallback(BODY, "d-3", {MAX_COST_HEADER: "lots"})
