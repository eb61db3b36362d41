"""Which stage decided is visible: the decisions metric label and the Decide explanation."""

from __future__ import annotations

import dataclasses

import pytest

from inference_router.v1 import router_pb2
from sidecar.core.decision import ProviderSnapshot
from sidecar.core.vote import (
    FAILED,
    SHED,
    STAGE_MODEL,
    STAGE_STATIC,
    RouteVerdict,
    abstention,
)
from sidecar.serving.api import to_proto
from sidecar.serving.extproc import classifier_outcome
from sidecar.serving.service import RoutingService
from tests.fakes import TWO_TIER_CATALOGUE, TWO_TIER_TABLE

BODY = b'{"model":"auto","messages":[{"role":"user","content":"hello"}]}'
ROUTED = RouteVerdict(
    route="frontier",
    scores={"frontier": 0.97, "small": 0.03},
    confidence=0.97,
    best_similarity=-1.0,
    margin=0.94,
    threshold=-1.0,
    abstain_reason=None,
    neighbours=(),
    predicted_output_tokens=900.0,
    stage=STAGE_STATIC,
)


class _Fixed:
    def __init__(self, verdict: RouteVerdict) -> None:
        self.verdict = verdict

    async def classify(self, text: str) -> RouteVerdict:
        return self.verdict


async def _routed(verdict: RouteVerdict) -> tuple[str, router_pb2.Explanation]:
    service = RoutingService(
        table=TWO_TIER_TABLE,
        catalogue=TWO_TIER_CATALOGUE,
        snapshot=ProviderSnapshot,
        classifier=_Fixed(verdict),
    )
    routed = await service.route("/v1/chat/completions", {}, BODY)
    return classifier_outcome(routed), to_proto(routed).explanation


@pytest.mark.parametrize(
    ("verdict", "label", "stage", "overloaded"),
    [
        (ROUTED, "stage1_routed", 1, False),
        (dataclasses.replace(ROUTED, route=None, abstain_reason="out_of_scope"),
         "stage1_abstained", 1, False),
        (dataclasses.replace(ROUTED, overloaded=True), "shed_stage1_routed", 1, True),
        (dataclasses.replace(ROUTED, route=None, abstain_reason="low_probability",
                             overloaded=True), "shed_stage1_abstained", 1, True),
        (dataclasses.replace(ROUTED, stage=STAGE_MODEL), "routed", 2, False),
        (dataclasses.replace(ROUTED, stage=STAGE_MODEL, route=None, abstain_reason="low_margin"),
         "abstained", 2, False),
        (abstention(SHED), "shed", 0, False),
        (abstention(FAILED), "error", 0, False),
    ],
)  # fmt: skip
async def test_the_stage_is_in_the_metric_label_and_the_explanation(
    verdict: RouteVerdict, label: str, stage: int, overloaded: bool
) -> None:
    outcome, explanation = await _routed(verdict)
    assert outcome == label
    assert explanation.stage == stage
    assert explanation.overloaded is overloaded


async def test_a_stage1_decision_explains_its_scores_and_predicted_length() -> None:
    _, explanation = await _routed(ROUTED)
    assert dict(explanation.route_scores) == pytest.approx(ROUTED.scores)
    assert explanation.predicted_output_tokens == 900.0
    assert not explanation.neighbours
