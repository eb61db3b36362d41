"""What real traffic says about each provider, learned from Envoy's log of upstream attempts.

Theory. Every request Envoy sends to a provider ends in a fact the router can learn from
after the fact, at no cost to the request: the status, the provider's rate-limit headers,
the time to the first byte and to the end. Envoy streams these facts to the sidecar (see
`access_log.py`); this module turns them into what a decision needs, per provider:

- *Avoid for a while.* A 429 is the provider saying "not now": it is avoided until its
  `retry-after` (seconds or an HTTP-date; on a 503 too, where it says how long the
  provider expects to be down) has passed; without one, for a backoff that doubles with
  each 429 in a row. A run of failures (5xx, or no answer at all: connect failure,
  reset, timeout) is a provider that is broken rather than busy: after `failure_run` in
  a row it is avoided for a backoff, and while no attempt has succeeded since, the next
  failure alone starts a longer one (a half-open circuit breaker). A provider that
  reports its rate limit spent (`x-ratelimit-remaining-*: 0`) with the time of its
  reset is avoided until then. Every wait is capped (`max_cooldown_s`). News heard
  while a provider is already avoided only extends the wait when it is an explicit
  later time (a `retry-after`, a reset), never as another strike: those attempts were
  sent before the first failure was heard. Avoiding is not forgetting: the wait over,
  the provider is chosen again, and its next answer decides.
- *Latency.* Envoy sees the first byte of an answer, not its first token: for a
  non-streaming answer the first byte comes after the whole generation, and a streaming
  provider may send its headers at once (vLLM does). So a stream's first byte is a lower
  bound of the provider's TTFT, and only as that is it used: when the average
  (an EWMA) of recent streams' first bytes is slower than the catalogue's TTFT, the
  decision uses it instead. Token counts are in the bodies, which Envoy does not log,
  so tokens per second are not learned here.
- *Error rate*, an EWMA over attempts (429s and failures count), shown in the reasons
  when it is notable.
- *Its own requests in flight.* A queue reading is up to one scrape interval old, and a
  burst can pile dozens of requests onto the cheapest provider before the next one. So
  the router also counts what it sent itself (`sent`, from the ext_proc adapter) and
  has not yet heard answered (each logged attempt ends one): beyond the provider's
  `max_concurrency` slots, those requests must be waiting, and the decision takes the
  larger of that and the last reading. Requests answered without an attempt Envoy logs
  would stay counted, so an entry older than `max_age_s` is forgotten.

Memory is bounded: one fixed-size record per provider of the catalogue; attempts at any
other cluster are ignored. Learned figures older than `max_age_s` are dropped, so a
provider the router stopped choosing is not judged forever on old news.

Pure: no I/O, no clock; every call takes the time (monotonic seconds) as an argument.
`with_signals` lays the learner's signals over the other feeds' snapshot (the board does).
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC
from email.utils import parsedate_to_datetime

from sidecar.core.catalogue import Catalogue
from sidecar.core.decision import ProviderSnapshot

# Weight of the newest sample in the latency and error-rate averages (about the last 10).
EWMA_ALPHA = 0.2
# An error rate is shown in the reasons from this share up.
NOTABLE_ERROR_RATE = 0.1
# Requests sent and not yet answered, remembered per provider at most (memory bound).
MAX_IN_FLIGHT_TRACKED = 4096

RETRY_AFTER = "retry-after"
# The rate-limit headers OpenAI-compatible providers send: remaining, and when it resets.
RATE_LIMITS = (
    ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
)
# The headers to ask Envoy to log, for its configuration and the tests.
LOGGED_RESPONSE_HEADERS = (RETRY_AFTER, *(name for pair in RATE_LIMITS for name in pair))

# A reset time as OpenAI and Groq write it: "20ms", "1s", "6m0s", "2m59.56s", "1h2m3s".
_DURATION = re.compile(
    r"(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m(?!s))?"
    r"(?:(?P<s>\d+(?:\.\d+)?)s)?(?:(?P<ms>\d+(?:\.\d+)?)ms)?"
)


@dataclass(frozen=True)
class Observation:
    """One upstream attempt, as Envoy logged it."""

    cluster: str
    # 0 when no response came back (connect failure, reset, timeout, client gone).
    status: int
    # Envoy flagged the upstream as at fault (connect failure, reset, timeout, protocol).
    upstream_fault: bool = False
    stream: bool = False
    first_byte_s: float | None = None
    # Wall-clock time (epoch seconds) the attempt ended: the reference of an HTTP-date.
    ended_at: float | None = None
    # The logged response headers, names in lower case.
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class PassiveSignal:
    """What the traffic says about one provider now, in the decision core's terms."""

    avoid: bool = False
    # A TTFT to decide by instead of the catalogue's (slower than it), or None.
    ttft_s: float | None = None
    # Requests this router sent beyond the provider's slots, not yet answered: waiting.
    own_waiting: float = 0.0
    notes: tuple[str, ...] = ()


def with_signals(
    snapshot: ProviderSnapshot, signals: Mapping[str, PassiveSignal]
) -> ProviderSnapshot:
    """`snapshot` with what the traffic says laid over it: avoided providers unhealthy."""
    if not signals:
        return snapshot
    states = dict(snapshot.states)
    for cluster, signal in signals.items():
        state = snapshot.state(cluster)
        ttft = state.ttft_s
        if signal.ttft_s is not None:
            # A lower bound: it can only raise what another feed (or the YAML) says.
            ttft = signal.ttft_s if ttft is None else max(ttft, signal.ttft_s)
        waiting = state.queue_waiting
        if signal.own_waiting > (waiting or 0.0):
            waiting = signal.own_waiting
        states[cluster] = replace(
            state,
            healthy=state.healthy and not signal.avoid,
            ttft_s=ttft,
            queue_waiting=waiting,
            notes=state.notes + signal.notes,
        )
    return ProviderSnapshot(states=states)


def retry_after_s(value: str, ended_at: float | None) -> float | None:
    """Seconds to wait from a `retry-after` value (seconds or HTTP-date); None if unreadable.

    An HTTP-date is read against `ended_at`, when the answer was sent (epoch seconds).
    """
    text = value.strip()
    seconds = _number(text)
    if seconds is not None:
        return seconds
    if ended_at is None:
        return None
    try:
        date = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if date.tzinfo is None:  # "-0000": UTC with no claim about the sender's zone
        date = date.replace(tzinfo=UTC)
    return max(0.0, date.timestamp() - ended_at)


def reset_s(value: str) -> float | None:
    """Seconds until a rate limit resets ("6m0s", "20ms", "1.5"); None if unreadable."""
    text = value.strip()
    seconds = _number(text)
    if seconds is not None:
        return seconds
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        return None
    parts = {unit: float(amount) for unit, amount in match.groupdict().items() if amount}
    return (
        parts.get("h", 0.0) * 3600
        + parts.get("m", 0.0) * 60
        + parts.get("s", 0.0)
        + parts.get("ms", 0.0) / 1000
    )


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _ewma(average: float | None, sample: float) -> float:
    return sample if average is None else average + EWMA_ALPHA * (sample - average)


@dataclass
class _Track:
    """What is known of one provider (mutable; one per catalogue cluster, made on demand)."""

    until: float = -math.inf  # avoided until this monotonic time
    why: str = ""  # for the note: what started the current wait
    how: str = ""  # for the note: how its length was chosen
    strikes: int = 0  # waits started in a row with no success in between
    failures: int = 0  # failures in a row since the last success (not counting waits)
    rate_limits: int = 0  # 429s without retry-after in a row
    first_byte_s: float | None = None  # EWMA over successful streams
    streams: int = 0
    stream_seen_at: float = -math.inf
    error_rate: float | None = None  # EWMA over attempts
    seen_at: float = -math.inf


_NOTHING_HEARD = _Track()  # read only: the track of a provider no attempt was logged for


class PassiveLearner:
    """Per-provider avoidance, latency and error rate, learned online from Envoy's log."""

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        max_cooldown_s: float = 60.0,
        backoff_s: float = 1.0,
        failure_run: int = 3,
        max_age_s: float = 60.0,
    ) -> None:
        self._ttft_s = {provider.cluster: provider.ttft_s for provider in catalogue.providers}
        self._slots = {p.cluster: p.max_concurrency for p in catalogue.providers}
        self._in_flight: dict[str, deque[float]] = {}
        self._max_cooldown_s = max_cooldown_s
        self._backoff_s = backoff_s
        self._failure_run = failure_run
        self._max_age_s = max_age_s
        self._tracks: dict[str, _Track] = {}

    def sent(self, cluster: str, now: float) -> None:
        """The router sent a request to `cluster` (its answer will be logged)."""
        if cluster in self._slots:
            queue = self._in_flight.setdefault(cluster, deque(maxlen=MAX_IN_FLIGHT_TRACKED))
            queue.append(now)

    def observe(self, seen: Observation, now: float) -> str | None:
        """Learn from one attempt; a sentence for the log when it starts a wait, else None."""
        if seen.cluster not in self._ttft_s:
            return None  # not a provider of the catalogue: nothing to learn, nothing to keep
        sent = self._in_flight.get(seen.cluster)
        if sent:
            sent.popleft()  # one attempt answered (which one does not matter for a count)
        track = self._tracks.setdefault(seen.cluster, _Track())
        headers = seen.headers or {}
        started = self._rate_limit_spent(track, headers, now)
        retry_after = headers.get(RETRY_AFTER)
        told_s = None if retry_after is None else retry_after_s(retry_after, seen.ended_at)
        if seen.status == 429:
            started = self._rate_limited(track, told_s, now) or started
        elif seen.status >= 500 or (seen.status == 0 and seen.upstream_fault):
            started = self._failed(track, seen.status, now) or started
            if seen.status == 503 and told_s is not None:  # "unavailable for that long"
                why = "503 from provider"
                started = self._avoid(track, now, told_s, why, "retry-after") or started
        elif 0 < seen.status < 400:
            self._succeeded(track, seen, now)
        else:
            return started  # a client error or a client gone: says nothing of the provider
        failed = seen.status == 429 or seen.status >= 500 or seen.status == 0
        # From a prior of no errors, so that one unlucky attempt is not "100 %".
        rate = self._fresh_error_rate(track, now)
        track.error_rate = _ewma(0.0 if rate is None else rate, float(failed))
        track.seen_at = now
        return started

    def signals(self, now: float) -> dict[str, PassiveSignal]:
        """What to tell the decision about each provider with something to say, at `now`."""
        signals: dict[str, PassiveSignal] = {}
        for cluster in self._tracks.keys() | self._in_flight.keys():
            track = self._tracks.get(cluster) or _NOTHING_HEARD  # sent to, nothing heard yet
            notes: list[str] = []
            unanswered = self._unanswered(cluster, now)
            own_waiting = float(max(0, unanswered - self._slots[cluster]))
            if own_waiting:
                notes.append(
                    f"{unanswered} sent by this router unanswered: at least {own_waiting:g} waiting"
                )
            avoid = now < track.until
            if avoid:
                notes.append(
                    f"{track.why}: avoided for {track.until - now:.1f} s more ({track.how})"
                )
            ttft = self._slow_start_s(cluster, track, now)
            if ttft is not None:
                notes.append(
                    f"streams' first byte after {ttft:.2f} s (EWMA of {track.streams}): "
                    "TTFT at least that"
                )
            rate = self._fresh_error_rate(track, now)
            if rate is not None and rate >= NOTABLE_ERROR_RATE:
                notes.append(f"errors in {rate:.0%} of recent attempts")
            if notes:
                signals[cluster] = PassiveSignal(
                    avoid=avoid, ttft_s=ttft, own_waiting=own_waiting, notes=tuple(notes)
                )
        return signals

    def _unanswered(self, cluster: str, now: float) -> int:
        """Requests sent to `cluster` not yet answered, forgetting those older than max_age_s."""
        sent = self._in_flight.get(cluster)
        if not sent:
            return 0
        while sent and now - sent[0] > self._max_age_s:
            sent.popleft()
        return len(sent)

    def _slow_start_s(self, cluster: str, track: _Track, now: float) -> float | None:
        """The streams' first byte when fresh and slower than the catalogue's TTFT."""
        first_byte = track.first_byte_s
        if first_byte is None or now - track.stream_seen_at > self._max_age_s:
            return None
        return first_byte if first_byte > self._ttft_s[cluster] else None

    def _fresh_error_rate(self, track: _Track, now: float) -> float | None:
        return track.error_rate if now - track.seen_at <= self._max_age_s else None

    def _rate_limited(self, track: _Track, told_s: float | None, now: float) -> str | None:
        if told_s is not None:
            track.rate_limits = 0
            return self._avoid(track, now, told_s, "429 from provider", "retry-after")
        if now < track.until:
            return None  # sent before the wait began: not another strike
        track.rate_limits += 1
        wait = self._backoff_s * 2.0 ** (track.rate_limits - 1)
        how = f"backoff, 429 without retry-after {track.rate_limits} in a row"
        return self._avoid(track, now, wait, "429 from provider", how)

    def _failed(self, track: _Track, status: int, now: float) -> str | None:
        if now < track.until:
            return None  # sent before the wait began: not another strike
        track.failures += 1
        if track.failures < self._failure_run and track.strikes == 0:
            return None
        last = status or "no answer"
        what = f"{track.failures} failed attempts in a row (last: {last})"
        track.strikes += 1
        wait = self._backoff_s * 2.0 ** (track.strikes - 1)
        return self._avoid(track, now, wait, what, "backoff")

    def _rate_limit_spent(
        self, track: _Track, headers: Mapping[str, str], now: float
    ) -> str | None:
        started = None
        for remaining, reset in RATE_LIMITS:
            left = _number(headers.get(remaining, "").strip())
            wait = reset_s(headers[reset]) if reset in headers else None
            if left == 0 and wait is not None:
                started = self._avoid(track, now, wait, f"{remaining} 0", "until the reset")
        return started

    def _succeeded(self, track: _Track, seen: Observation, now: float) -> None:
        track.failures = track.strikes = track.rate_limits = 0
        if seen.stream and seen.first_byte_s is not None:
            fresh = now - track.stream_seen_at <= self._max_age_s
            track.first_byte_s = _ewma(track.first_byte_s if fresh else None, seen.first_byte_s)
            track.streams = track.streams + 1 if fresh else 1
            track.stream_seen_at = now

    def _avoid(self, track: _Track, now: float, wait_s: float, why: str, how: str) -> str | None:
        """Avoid until `now + wait_s` (capped) unless already avoided longer."""
        until = now + min(wait_s, self._max_cooldown_s)
        if wait_s <= 0 or until <= track.until:
            return None
        already = now < track.until
        track.until, track.why, track.how = until, why, how
        return None if already else f"{why}: avoided for {until - now:.1f} s ({how})"
