"""The passive learner: what Envoy's log of upstream attempts says, on a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from sidecar.core.catalogue import Catalogue, Price, Provider
from sidecar.core.decision import ProviderSnapshot, ProviderState, RoutingTable, decide
from sidecar.core.policy import Intent, Policy
from sidecar.core.request import Endpoint, RequestFacts
from sidecar.feeds.live import LiveBoard
from sidecar.feeds.passive import (
    Observation,
    PassiveLearner,
    PassiveSignal,
    reset_s,
    retry_after_s,
    with_signals,
)

CATALOGUE = Catalogue(
    providers=(
        Provider("a", "llama", "mid", Price(0.59, 0.79), ttft_s=0.15, tokens_per_s=120),
        Provider("b", "llama", "mid", Price(0.88, 0.88), ttft_s=0.09, tokens_per_s=200),
    ),
    clusters=frozenset({"a", "b"}),
)
# 12:00:00 UTC on a fixed day: the wall-clock end of the attempts below.
ENDED_AT = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def _learner(**options: float) -> PassiveLearner:
    return PassiveLearner(CATALOGUE, max_cooldown_s=60.0, backoff_s=1.0, failure_run=3, **options)


def _answer(status: int, cluster: str = "a", **headers: str) -> Observation:
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return Observation(cluster, status, ended_at=ENDED_AT, headers=named)


def _avoided(learner: PassiveLearner, now: float, cluster: str = "a") -> bool:
    signal = learner.signals(now).get(cluster)
    return signal is not None and signal.avoid


def _choice(snapshot: ProviderSnapshot) -> str:
    facts = RequestFacts(Endpoint.CHAT, "llama", "hi", 10, None, False)
    table = RoutingTable(tiers=("mid",), default_route="mid")
    decision = decide(
        facts, Intent(Policy.BALANCED, "llama"), decision_id="d", table=table,
        catalogue=CATALOGUE, snapshot=snapshot,
    )  # fmt: skip
    return decision.upstream


def test_a_429_with_retry_after_seconds_is_avoided_for_that_long_then_used_again() -> None:
    now = [100.0]
    learner = _learner()
    board = LiveBoard(CATALOGUE, max_age_s=5.0, passive=learner.signals, clock=lambda: now[0])
    assert _choice(board.snapshot()) == "a"  # the cheaper one
    said = learner.observe(_answer(429, retry_after="12"), now=100.0)
    assert said == "429 from provider: avoided for 12.0 s (retry-after)"
    snapshot = board.snapshot()
    assert not snapshot.state("a").healthy
    assert snapshot.state("a").notes == (
        "429 from provider: avoided for 12.0 s more (retry-after)",
        "errors in 20% of recent attempts",
    )
    assert _choice(snapshot) == "b"
    now[0] = 111.9
    assert _choice(board.snapshot()) == "b"
    assert "avoided for 0.1 s more" in board.snapshot().state("a").notes[0]
    now[0] = 112.0
    assert _choice(board.snapshot()) == "a"  # the wait is over: used again


def test_a_429_with_an_http_date_is_read_against_the_time_the_answer_was_sent() -> None:
    learner = _learner()
    in_20_s = format_datetime(datetime(2026, 3, 1, 12, 0, 20, tzinfo=UTC), usegmt=True)
    assert in_20_s == "Sun, 01 Mar 2026 12:00:20 GMT"
    learner.observe(_answer(429, retry_after=in_20_s), now=5.0)
    assert _avoided(learner, 24.9) and not _avoided(learner, 25.0)
    assert retry_after_s("Sun, 01 Mar 2026 11:59:00 GMT", ENDED_AT) == 0.0  # in the past
    assert retry_after_s("Sun, 01 Mar 2026 12:00:20 -0000", ENDED_AT) == 20.0  # no zone: UTC
    assert retry_after_s(in_20_s, None) is None  # no reference time: unreadable


@pytest.mark.parametrize("value", ["soon", "", "-3", "nan", "inf", "Sun, 99 Foo 2026"])
def test_an_unreadable_retry_after_counts_as_none(value: str) -> None:
    assert retry_after_s(value, ENDED_AT) is None


def test_a_429_without_retry_after_backs_off_doubling_while_it_keeps_failing() -> None:
    learner = _learner()
    assert learner.observe(_answer(429), now=0.0) == (
        "429 from provider: avoided for 1.0 s (backoff, 429 without retry-after 1 in a row)"
    )
    # Attempts sent before the wait began and heard during it are not new strikes.
    assert learner.observe(_answer(429), now=0.5) is None
    assert _avoided(learner, 0.99) and not _avoided(learner, 1.0)
    learner.observe(_answer(429), now=1.0)  # tried again after the wait: 2 s now
    assert _avoided(learner, 2.99) and not _avoided(learner, 3.0)
    learner.observe(_answer(429), now=3.0)
    assert _avoided(learner, 6.99) and not _avoided(learner, 7.0)
    learner.observe(_answer(200), now=7.0)  # a success forgets the strikes
    learner.observe(_answer(429), now=8.0)
    assert not _avoided(learner, 9.0)


def test_every_wait_is_capped_and_a_zero_wait_is_none() -> None:
    learner = _learner()
    learner.observe(_answer(429, retry_after="86400"), now=0.0)
    assert _avoided(learner, 59.9) and not _avoided(learner, 60.0)
    assert learner.observe(_answer(429, "b", retry_after="0"), now=0.0) is None
    assert not _avoided(learner, 0.0, "b")


def test_a_later_retry_after_extends_the_wait_an_earlier_one_does_not_shorten_it() -> None:
    learner = _learner()
    learner.observe(_answer(429, retry_after="10"), now=0.0)
    assert learner.observe(_answer(429, retry_after="2"), now=1.0) is None
    assert _avoided(learner, 9.9)
    assert learner.observe(_answer(429, retry_after="10"), now=5.0) is None  # extended, not new
    assert _avoided(learner, 14.9) and not _avoided(learner, 15.0)


def test_a_run_of_failures_backs_off_and_the_next_failure_alone_backs_off_longer() -> None:
    learner = _learner()
    assert learner.observe(_answer(503), now=0.0) is None
    learner.observe(_answer(200), now=0.1)  # a success breaks the run
    learner.observe(_answer(500), now=0.2)
    assert learner.observe(_answer(502), now=0.3) is None
    assert not _avoided(learner, 0.3)
    no_answer = Observation("a", 0, upstream_fault=True)
    assert learner.observe(no_answer, now=0.4) == (
        "3 failed attempts in a row (last: no answer): avoided for 1.0 s (backoff)"
    )
    assert learner.observe(_answer(503), now=0.5) is None  # in flight before: not a strike
    assert _avoided(learner, 1.39) and not _avoided(learner, 1.4)
    # Half-open: the first attempt after the wait fails, and the wait doubles at once.
    learner.observe(_answer(504), now=1.5)
    assert _avoided(learner, 3.49) and not _avoided(learner, 3.5)
    learner.observe(_answer(200), now=4.0)
    learner.observe(_answer(503), now=5.0)
    assert not _avoided(learner, 5.0)  # one failure after a success is not a run


def test_a_503_with_retry_after_is_avoided_for_it() -> None:
    learner = _learner()
    said = learner.observe(_answer(503, retry_after="5"), now=0.0)
    assert said == "503 from provider: avoided for 5.0 s (retry-after)"
    assert _avoided(learner, 4.9) and not _avoided(learner, 5.0)


def test_client_errors_and_a_client_gone_say_nothing_of_the_provider() -> None:
    learner = _learner()
    for _ in range(5):
        learner.observe(_answer(400), now=0.0)
        learner.observe(Observation("a", 0, upstream_fault=False), now=0.0)  # client left
    assert learner.signals(1.0) == {}


def test_a_spent_rate_limit_with_a_reset_is_avoided_until_the_reset() -> None:
    learner = _learner()
    spent = {"x_ratelimit_remaining_requests": "0", "x_ratelimit_reset_requests": "6m0s"}
    said = learner.observe(_answer(200, **spent), now=0.0)
    assert said == "x-ratelimit-remaining-requests 0: avoided for 60.0 s (until the reset)"
    tokens = {"x_ratelimit_remaining_tokens": "0", "x_ratelimit_reset_tokens": "250ms"}
    learner.observe(_answer(200, "b", **tokens), now=0.0)
    assert _avoided(learner, 0.2, "b") and not _avoided(learner, 0.25, "b")
    # Remaining requests, or no reset to wait for: nothing to do.
    learner.observe(_answer(200, "b", x_ratelimit_remaining_requests="0"), now=1.0)
    learner.observe(_answer(200, "b", x_ratelimit_remaining_tokens="5000",
                            x_ratelimit_reset_tokens="1s"), now=1.0)  # fmt: skip
    assert not _avoided(learner, 1.0, "b")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("2m59.56s", 179.56), ("1h2m3s", 3723.0),
     ("7.5", 7.5), ("0", 0.0), ("", None), ("soon", None), ("5x", None), ("-1", None)],
)  # fmt: skip
def test_reset_times_are_read_as_providers_write_them(value: str, seconds: float | None) -> None:
    assert (
        reset_s(value) == pytest.approx(seconds) if seconds is not None else reset_s(value) is None
    )


def test_a_slow_first_byte_of_streams_raises_the_ttft_and_fast_ones_do_not_lower_it() -> None:
    learner = _learner(max_age_s=60.0)
    fast = Observation("a", 200, stream=True, first_byte_s=0.002)
    learner.observe(fast, now=0.0)
    assert learner.signals(0.0) == {}  # headers sent at once: below the catalogue's 0.15 s
    plain = Observation("a", 200, stream=False, first_byte_s=9.0)  # a whole answer
    learner.observe(plain, now=0.0)
    assert learner.signals(0.0) == {}
    for second in range(1, 30):
        learner.observe(Observation("a", 200, stream=True, first_byte_s=1.0), now=second)
    signal = learner.signals(30.0)["a"]
    assert signal.ttft_s == pytest.approx(1.0, abs=0.01) and not signal.avoid
    assert signal.notes[0].startswith("streams' first byte after 1.00 s (EWMA of 30)")
    assert "a" not in learner.signals(29.0 + 60.1)  # too old to trust


def test_the_error_rate_is_shown_when_notable_and_forgotten_when_old() -> None:
    learner = _learner(max_age_s=60.0)
    for second in range(10):
        learner.observe(_answer(200), now=float(second))
    assert learner.signals(10.0) == {}
    learner.observe(_answer(500), now=10.0)
    learner.observe(_answer(200), now=11.0)
    assert learner.signals(11.0)["a"].notes == ("errors in 16% of recent attempts",)
    assert learner.signals(71.1) == {}


def test_memory_is_bounded_to_the_catalogue_and_other_clusters_are_ignored() -> None:
    learner = _learner()
    for number in range(10_000):
        assert learner.observe(_answer(429, f"other-{number}", retry_after="9"), now=0.0) is None
    assert learner.signals(0.0) == {}
    assert len(learner._tracks) == 0
    learner.observe(_answer(200, "a"), now=0.0)
    learner.observe(_answer(200, "b"), now=0.0)
    assert sorted(learner._tracks) == ["a", "b"]


def test_signals_are_laid_over_the_snapshot_without_undoing_other_feeds() -> None:
    snapshot = ProviderSnapshot(
        {
            "a": ProviderState(ttft_s=2.0, notes=("pushed TTFT (1.0 s old)",)),
            "b": ProviderState(healthy=False, notes=("unhealthy in Envoy",)),
        }
    )
    signals = {
        "a": PassiveSignal(ttft_s=0.5, notes=("slow streams",)),
        "b": PassiveSignal(avoid=False, notes=("errors in 20% of recent attempts",)),
    }
    merged = with_signals(snapshot, signals)
    assert merged.state("a").ttft_s == 2.0  # a lower bound never lowers what is known
    assert merged.state("a").notes == ("pushed TTFT (1.0 s old)", "slow streams")
    assert not merged.state("b").healthy  # only ever takes a provider out
    assert (
        with_signals(ProviderSnapshot(), {"a": PassiveSignal(ttft_s=0.5)}).state("a").ttft_s == 0.5
    )
    assert with_signals(snapshot, {}) is snapshot


SLOTS = 64  # Provider's default max_concurrency


def test_requests_sent_beyond_the_slots_and_unanswered_count_as_waiting() -> None:
    learner = _learner()
    for _ in range(SLOTS + 10):
        learner.sent("a", 100.0)
    signal = learner.signals(100.0)["a"]
    assert signal.own_waiting == 10 and not signal.avoid
    assert "74 sent by this router unanswered: at least 10 waiting" in signal.notes
    for _ in range(4):  # four answers logged
        learner.observe(_answer(200), 100.1)
    assert learner.signals(100.1)["a"].own_waiting == 6
    for _ in range(6):
        learner.observe(_answer(429, retry_after="0"), 100.2)  # an answer all the same
    assert learner.signals(100.2)["a"].own_waiting == 0  # within the slots again
    # Laid over the snapshot: the larger of the reading and the router's own count wins.
    for _ in range(SLOTS + 20):
        learner.sent("b", 100.0)
    read = ProviderSnapshot(states={"b": ProviderState(queue_waiting=5.0)})
    assert with_signals(read, learner.signals(100.3)).state("b").queue_waiting == 20.0
    read = ProviderSnapshot(states={"b": ProviderState(queue_waiting=30.0)})
    assert with_signals(read, learner.signals(100.3)).state("b").queue_waiting == 30.0


def test_unanswered_requests_are_forgotten_after_max_age_and_unknown_clusters_ignored() -> None:
    learner = _learner(max_age_s=60.0)
    for _ in range(SLOTS + 5):
        learner.sent("a", 100.0)
        learner.sent("not-a-provider", 100.0)
    assert learner.signals(159.0)["a"].own_waiting == 5
    assert "a" not in learner.signals(161.0)  # never answered in the log: forgotten
    assert "not-a-provider" not in learner.signals(100.0)


def test_a_burst_on_the_cheaper_provider_moves_balanced_before_the_next_reading() -> None:
    learner = _learner()
    idle = ProviderSnapshot(states={"a": ProviderState(queue_waiting=0.0)})
    assert _choice(with_signals(idle, learner.signals(100.0))) == "a"
    for _ in range(SLOTS + 8):  # a burst the last reading has not seen yet
        learner.sent("a", 100.0)
    assert _choice(with_signals(idle, learner.signals(100.0))) == "b"
