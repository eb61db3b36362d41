"""The cascade's answer evaluator: each signal on crafted answers, and no input makes it raise."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.cascade.answer_text import read_answer
from sidecar.cascade.evaluator import AnswerEvaluator, prompt_text
from sidecar.cascade.scorer import LearnedScorer, train_scorer
from sidecar.config.validation import validate
from sidecar.core.cascade import EvaluatorConfig
from sidecar.errors import ConfigError

CHAT_REQUEST: dict[str, object] = {"messages": [{"role": "user", "content": "What is 6 * 7?"}]}


def chat(
    content: object,
    finish: object = "stop",
    *,
    message: dict[str, object] | None = None,
    logprobs: object = None,
) -> dict[str, object]:
    """A chat completion whose first choice says `content` (plus `message` fields)."""
    full = {"role": "assistant", "content": content} | (message or {})
    choice = {"index": 0, "message": full, "finish_reason": finish, "logprobs": logprobs}
    return {"choices": [choice]}


def completion(text: object, logprobs: object = None) -> dict[str, object]:
    """A legacy completion whose first choice says `text`."""
    return {"choices": [{"text": text, "finish_reason": "stop", "logprobs": logprobs}]}


def token_logprobs(*values: float) -> dict[str, object]:
    """Chat-format logprobs: one entry per token."""
    return {"content": [{"token": f"t{i}", "logprob": v} for i, v in enumerate(values)]}


EVALUATOR = AnswerEvaluator(EvaluatorConfig())


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (chat("42", finish="length"), "truncated"),
        (chat(""), "empty"),
        (chat(None), "empty"),
        (chat("   \n"), "empty"),
        (chat("I'm sorry, but I can't help with that."), "refusal"),
        (chat("As an AI language model, I cannot do that."), "refusal"),
        (chat("I'm unable to help with that request."), "refusal"),
        (chat("I won't provide that."), "refusal"),
        (chat("I\u2019m sorry, but I can\u2019t assist with that."), "refusal"),
        (chat(None, message={"refusal": "I can't assist with that request."}), "refusal"),
        (chat("42", finish="content_filter"), "refusal"),
        (completion(""), "empty"),
        (chat("6 * 7 = 42"), "no_signal"),
        (completion("6 * 7 = 42"), "no_signal"),
    ],
)
def test_each_failure_decides_alone(response: dict[str, object], reason: str) -> None:
    assessment = EVALUATOR.assess(CHAT_REQUEST, response)
    assert assessment.reason == reason
    assert assessment.confidence == (1.0 if reason == "no_signal" else 0.0)
    assert assessment.escalate is (reason != "no_signal")


def test_a_long_answer_that_mentions_what_it_cannot_do_is_not_a_refusal() -> None:
    text = "I can't help noticing the trick: " + "6 * 7 = 42. " * 60
    assessment = EVALUATOR.assess(CHAT_REQUEST, chat(text))
    assert not assessment.signals.refusal
    assert assessment.reason == "no_signal"


def test_a_tool_call_without_content_is_not_empty() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assessment = EVALUATOR.assess(CHAT_REQUEST, chat(None, message={"tool_calls": calls}))
    assert not assessment.signals.empty
    assert not assessment.escalate


@pytest.mark.parametrize("cap", ["max_tokens", "max_completion_tokens"])
def test_an_answer_cut_at_the_clients_own_cap_is_not_a_failure(cap: str) -> None:
    capped = {**CHAT_REQUEST, cap: 5}
    assessment = EVALUATOR.assess(capped, chat("42", finish="length"))
    assert assessment.reason == "no_signal" and not assessment.escalate
    assert EVALUATOR.assess(CHAT_REQUEST, chat("42", finish="length")).reason == "truncated"


def test_truncation_can_be_made_a_non_failure() -> None:
    evaluator = AnswerEvaluator(EvaluatorConfig(truncated_is_failure=False))
    assessment = evaluator.assess(CHAT_REQUEST, chat("42", finish="length"))
    assert assessment.signals.finish_reason == "length"
    assert assessment.reason == "no_signal"


@pytest.mark.parametrize(
    ("response_format", "content", "invalid"),
    [
        ({"type": "json_object"}, '{"answer": 42}', False),
        ({"type": "json_object"}, "The answer is 42", True),
        ({"type": "json_object"}, "[42]", True),  # JSON, but not an object
        ({"type": "json_object"}, "```json\n{}\n```", True),
        ({"type": "json_schema", "json_schema": {"name": "a"}}, "[42]", False),
        ({"type": "json_schema", "json_schema": {"name": "a"}}, "{", True),
        ({"type": "text"}, "not json", None),
        ("json_object", "not json", None),  # not a mapping: not a JSON request
        (None, "not json", None),
    ],
)
def test_invalid_json_only_when_json_was_asked_for(
    response_format: object, content: str, invalid: bool | None
) -> None:
    request = dict(CHAT_REQUEST, response_format=response_format)
    assessment = EVALUATOR.assess(request, chat(content))
    assert assessment.signals.invalid_json is invalid
    assert (assessment.reason == "invalid_json") is bool(invalid)


def test_chat_logprobs_give_mean_and_minimum() -> None:
    response = chat("42", logprobs=token_logprobs(-0.01, -0.03, -0.02))
    assessment = EVALUATOR.assess(CHAT_REQUEST, response)
    assert assessment.signals.mean_logprob == pytest.approx(-0.02)
    assert assessment.signals.min_logprob == pytest.approx(-0.03)
    assert assessment.reason == "logprobs"
    assert assessment.confidence == 1.0  # exp(-0.02) = 0.98 is above the ceiling 0.95
    assert not assessment.escalate


def test_completion_logprobs_skip_nulls_and_junk() -> None:
    logprobs = {"tokens": ["a", "b", "c", "d"], "token_logprobs": [None, -0.5, "x", -1.5]}
    assessment = EVALUATOR.assess(CHAT_REQUEST, completion("42", logprobs))
    assert assessment.signals.mean_logprob == pytest.approx(-1.0)
    assert assessment.signals.min_logprob == pytest.approx(-1.5)
    # exp(-1) = 0.37 is under the mean floor 0.6: the model was unsure throughout.
    assert assessment.confidence == 0.0
    assert assessment.escalate


def test_the_mean_ramps_between_floor_and_ceiling() -> None:
    config = EvaluatorConfig(logprob_mean_floor=0.5, logprob_mean_ceiling=0.9)
    mean = math.log(0.7)  # halfway
    response = chat("42", logprobs=token_logprobs(mean, mean))
    assessment = AnswerEvaluator(config).assess(CHAT_REQUEST, response)
    assert assessment.confidence == pytest.approx(0.5)


def test_one_near_impossible_token_vetoes_a_fluent_answer() -> None:
    response = chat("42", logprobs=token_logprobs(*([-0.001] * 50), -12.0))
    assessment = EVALUATOR.assess(CHAT_REQUEST, response)
    assert math.exp(assessment.signals.mean_logprob or 0.0) > 0.75
    assert assessment.confidence == 0.0
    assert assessment.reason == "logprobs"


@pytest.mark.parametrize(
    "response",
    [
        None,
        [],
        "choices",
        {},
        {"choices": []},
        {"choices": "abc"},
        {"choices": [1]},
        {"choices": [{"message": {"content": 42}}]},
        {"choices": [{"finish_reason": "stop"}]},
        {"error": {"message": "upstream overloaded", "type": "server_error"}},
    ],
)
def test_an_unreadable_response_is_low_confidence(response: object) -> None:
    assessment = EVALUATOR.assess(CHAT_REQUEST, response)  # type: ignore[arg-type]
    assert (assessment.reason, assessment.confidence, assessment.escalate) == (
        "unreadable",
        0.0,
        True,
    )


def test_content_parts_are_read_as_text() -> None:
    parts = [{"type": "text", "text": "6 * 7 "}, {"type": "text", "text": "= 42"}]
    assessment = EVALUATOR.assess(CHAT_REQUEST, chat(parts))
    assert not assessment.signals.empty


def test_the_prompt_is_the_last_user_message_or_the_completions_prompt() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
    ]
    assert prompt_text({"messages": messages}) == "second"
    assert prompt_text({"prompt": "complete me"}) == "complete me"
    assert prompt_text({"prompt": ["one", "two"]}) == "one"
    assert prompt_text({"messages": "nope"}) == ""
    assert prompt_text(None) == ""


def _features_scorer() -> LearnedScorer:
    """A features-only scorer that learned: a false calculation means a wrong answer."""
    right = [f"{a} + {a} = {2 * a}\n#### {2 * a}" for a in range(1, 41)]
    wrong = [f"{a} + {a} = {2 * a + 1}\n#### {2 * a + 1}" for a in range(1, 41)]
    prompts = [f"what is {a} + {a}?" for a in range(1, 41)] * 2
    return train_scorer(prompts, right + wrong, [True] * 40 + [False] * 40).scorer


def test_the_learned_scorer_is_a_graded_signal() -> None:
    evaluator = AnswerEvaluator(EvaluatorConfig(), _features_scorer())
    assert not evaluator.needs_embedding
    good = evaluator.assess(CHAT_REQUEST, chat("6 * 7 = 42\n#### 42"))
    bad = evaluator.assess(CHAT_REQUEST, chat("6 * 7 = 48\n#### 48"))
    assert good.reason == bad.reason == "scorer"
    assert good.signals.learned is not None and bad.signals.learned is not None
    assert good.signals.learned > 0.5 > bad.signals.learned
    assert bad.escalate and not good.escalate


def test_the_lowest_graded_signal_decides() -> None:
    evaluator = AnswerEvaluator(EvaluatorConfig(), _features_scorer())
    fluent_but_false = chat("6 * 7 = 48\n#### 48", logprobs=token_logprobs(-0.01, -0.01))
    assessment = evaluator.assess(CHAT_REQUEST, fluent_but_false)
    assert assessment.reason == "scorer"
    assert assessment.confidence == assessment.signals.learned


def test_an_embedding_scorer_without_its_embedding_is_left_out() -> None:
    scorer = _embedding_scorer()
    evaluator = AnswerEvaluator(EvaluatorConfig(), scorer)
    assert evaluator.needs_embedding
    assert evaluator.text_to_embed(CHAT_REQUEST, chat("42")) == "What is 6 * 7?"
    without = evaluator.assess(CHAT_REQUEST, chat("42"))
    assert (without.signals.learned, without.reason) == (None, "no_signal")
    wrong_width = evaluator.assess(CHAT_REQUEST, chat("42"), np.ones(3, dtype=np.float32))
    assert wrong_width.signals.learned is None
    with_it = evaluator.assess(CHAT_REQUEST, chat("42"), np.ones(8, dtype=np.float32) / 8**0.5)
    assert with_it.signals.learned is not None and with_it.reason == "scorer"


def _embedding_scorer() -> LearnedScorer:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = [bool(v[0] > 0) for v in vectors]
    return train_scorer(
        ["q"] * 60,
        ["#### 1"] * 60,
        labels,
        embeddings=vectors,
        embed_text="prompt",
        embedder_fingerprint="fake-8",
    ).scorer


def test_no_scorer_means_nothing_to_embed() -> None:
    assert EVALUATOR.text_to_embed(CHAT_REQUEST, chat("42")) == ""
    assert not EVALUATOR.needs_embedding


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 1.5},
        {"no_signal_confidence": -0.1},
        {"logprob_mean_floor": 0.9, "logprob_mean_ceiling": 0.8},
        {"logprob_min_floor": -1.0, "logprob_min_ceiling": -2.0},
        {"logprob_min_ceiling": 0.5},
        {"refusal_max_chars": -1},
    ],
)
def test_the_config_refuses_impossible_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(EvaluatorConfig(), **kwargs)


def test_the_settings_loader_validates_the_config_and_names_the_key() -> None:
    config = validate(EvaluatorConfig, {"threshold": 0.63}, "s.yaml", section="cascade")
    assert config == EvaluatorConfig(threshold=0.63)
    with pytest.raises(ConfigError, match=r"cascade\.threshold"):
        validate(EvaluatorConfig, {"threshold": 2}, "s.yaml", section="cascade")
    with pytest.raises(ConfigError, match="tresh"):
        validate(EvaluatorConfig, {"tresh": 0.5}, "s.yaml", section="cascade")


def test_text_features_find_false_calculations() -> None:
    reading = read_answer(
        "q",
        "So 0.40 * 9 * 1040 = $3760 a week. 3 \\* 4 = 12. 1000 / 3 = 333. (2 + 3) * 4 = 20. "
        "1,350 + 6 * 350 = 1,350 + 2,100 = 3,450. <<5*6=31>>\n#### 3760",
    )
    # 3744 != 3760 and 30 != 31; the chain "1,350 + 6 * 350 = 1,350 + ..." is not a result.
    assert (reading.calculations, reading.false_calculations) == (6, 2)
    assert (reading.final, reading.final_marked) == (3760.0, True)


def test_text_features_on_adversarial_text_find_nothing_and_return() -> None:
    for text in ["1+" * 50_000, "(" * 5_000 + "1" + ")" * 5_000 + "=1", "( " * 10_000]:
        assert read_answer("q", text).false_calculations == 0


# Anything JSON can hold, with odd strings: the evaluator must answer, never raise.
odd_text = st.text(max_size=200) | st.sampled_from(["\ud800", "\x00", "x" * 5000, "2+2=5"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | odd_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=25,
)
choices = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "message": st.fixed_dictionaries(
                {}, optional={"content": json_values, "refusal": json_values}
            )
            | json_values,
            "text": json_values,
            "finish_reason": st.sampled_from(["stop", "length", "content_filter"]) | json_values,
            "logprobs": st.fixed_dictionaries(
                {},
                optional={
                    "content": st.lists(
                        st.fixed_dictionaries({"logprob": st.floats() | json_values}), max_size=5
                    ),
                    "token_logprobs": st.lists(st.floats() | st.none(), max_size=5),
                },
            )
            | json_values,
        },
    )
    | json_values,
    max_size=2,
)
responses = st.fixed_dictionaries({}, optional={"choices": choices | json_values}) | json_values
requests = (
    st.fixed_dictionaries(
        {},
        optional={
            "messages": json_values,
            "prompt": json_values,
            "response_format": st.fixed_dictionaries(
                {"type": st.sampled_from(["json_object", "json_schema", "text"])}
            )
            | json_values,
        },
    )
    | json_values
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests, responses)
def test_assess_never_raises_and_stays_in_range(request: object, response: object) -> None:
    scorer = _FEATURES_SCORER
    for evaluator in (EVALUATOR, AnswerEvaluator(EvaluatorConfig(), scorer)):
        assessment = evaluator.assess(request, response)  # type: ignore[arg-type]
        assert 0.0 <= assessment.confidence <= 1.0
        assert assessment.escalate is (assessment.confidence < evaluator.config.threshold)
        assert isinstance(evaluator.text_to_embed(request, response), str)  # type: ignore[arg-type]
        json.dumps(assessment.reason)


_FEATURES_SCORER = _features_scorer()
