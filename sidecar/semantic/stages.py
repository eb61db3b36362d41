"""The two-stage decision, shared by the sidecar and the offline evaluation.

Theory. Stage 1 embeds a prompt with static token vectors and asks the index's stage-1
head (tens of microseconds, no model call). When its top probability reaches
`stage1_gate` the prompt is decided there; out-of-fold on CLINC150 those prompts are
right far more often than the average (calibrate chooses the lowest gate at which the
two stages together lose no accuracy against stage 2 alone or against any other gate).
Otherwise stage 2 runs the sentence encoder, searches the kNN index (neighbours explain
the decision and predict the output length) and decides by the kNN vote or by the
stage-2 head, as `decider` says. When the encoder is overloaded, stage 1 decides every
prompt it can instead of the policy's default route; such verdicts are marked
`overloaded`.

Both the sidecar (`sidecar.semantic.classifier`) and `inference-router eval` go through
these functions, so what eval measures is what the sidecar does.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from sidecar.core.vote import (
    LOW_PROBABILITY,
    STAGE_MODEL,
    STAGE_STATIC,
    Neighbour,
    RouteVerdict,
    VoteConfig,
    head_vote,
    vote,
)
from sidecar.semantic.heads import RouteHeads
from sidecar.semantic.index import ExemplarIndex


def has_stage1(index: ExemplarIndex) -> bool:
    """True when the index carries a stage-1 head."""
    return index.heads is not None and index.heads.stage1 is not None


def stage1_verdict(
    heads: RouteHeads,
    row: npt.NDArray[np.float32],
    config: VoteConfig,
    *,
    overloaded: bool = False,
) -> RouteVerdict:
    """The stage-1 head's verdict on one static embedding row."""
    return stage1_from_probabilities(
        heads, heads.stage1_probabilities(row), config, overloaded=overloaded
    )


def stage1_from_probabilities(
    heads: RouteHeads,
    probabilities: npt.NDArray[np.float32],
    config: VoteConfig,
    *,
    overloaded: bool = False,
) -> RouteVerdict:
    """A stage-1 verdict from the head's class probabilities (also: out-of-fold ones)."""
    scores = heads.scores(probabilities)
    winner = heads.classes[int(np.argmax(probabilities))]
    return head_vote(
        scores,
        (),
        config,
        stage=STAGE_STATIC,
        min_probability=config.stage1_threshold,
        output_tokens=heads.tokens_for(winner),
        overloaded=overloaded,
    )


def stage1_may_decide(config: VoteConfig) -> bool:
    """Whether stage 1 can ever decide while the encoder is free (else: only on overload).

    Two-model routing never gates: its prompts are ranked by need score, and mixing two
    scorers' scales in one ranking lowered GSM8K's APGR (docs/EVALUATION.md).
    """
    return config.two_model is None and config.stage1_gate is not None


def decided_by_stage1(verdict: RouteVerdict, config: VoteConfig) -> bool:
    """Whether a stage-1 verdict is confident enough to stand without stage 2.

    It must reach the gate, and not be under stage 1's own minimum probability (that
    abstention is for when stage 1 decides alone; with the encoder free, it asks it).
    """
    return (
        stage1_may_decide(config)
        and config.stage1_gate is not None
        and verdict.confidence >= config.stage1_gate
        and verdict.abstain_reason != LOW_PROBABILITY
    )


def stage2_verdict(
    index: ExemplarIndex,
    row: npt.NDArray[np.float32],
    neighbours: tuple[Neighbour, ...],
    config: VoteConfig,
) -> RouteVerdict:
    """Decide on the encoder's row: the kNN vote, or the stage-2 head beside it."""
    if config.decider == "head" and index.heads is not None:
        heads = index.heads
        return head_vote(
            heads.scores(heads.stage2_probabilities(row)),
            neighbours,
            config,
            stage=STAGE_MODEL,
            min_probability=config.head_threshold,
        )
    return vote(neighbours, config)
