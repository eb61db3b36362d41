"""The local stack's restart policy, on a fake clock: backoff, forgiveness, per-child state."""

from __future__ import annotations

import pytest

from sidecar.devstack.processes import describe_exit
from sidecar.devstack.supervision import RestartPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def policy(clock: FakeClock) -> RestartPolicy:
    policy = RestartPolicy(clock, first_s=0.5, factor=2.0, max_s=10.0, stable_s=30.0)
    policy.up("sidecar")
    return policy


def crash_and_restart(policy: RestartPolicy, clock: FakeClock, name: str) -> float:
    """One crash, waited out, then a restart that dies before it is up."""
    delay = policy.exited(name)
    clock.advance(delay)
    assert policy.due(name)
    policy.restarting(name)
    return delay


def test_a_crash_waits_first_s_before_the_restart_is_due(
    policy: RestartPolicy, clock: FakeClock
) -> None:
    assert not policy.pending("sidecar") and not policy.due("sidecar")
    assert policy.exited("sidecar") == 0.5
    assert policy.pending("sidecar")
    clock.advance(0.49)
    assert not policy.due("sidecar")
    clock.advance(0.01)
    assert policy.due("sidecar")
    policy.restarting("sidecar")
    assert not policy.pending("sidecar") and not policy.due("sidecar")


def test_a_crash_loop_doubles_up_to_the_cap(policy: RestartPolicy, clock: FakeClock) -> None:
    delays = [crash_and_restart(policy, clock, "sidecar") for _ in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_the_cap_holds_for_ever(policy: RestartPolicy, clock: FakeClock) -> None:
    # The delay is kept, not recomputed from a crash count: no overflow after many crashes.
    for _ in range(5000):
        delay = crash_and_restart(policy, clock, "sidecar")
    assert delay == 10.0


def test_a_short_run_does_not_forgive(policy: RestartPolicy, clock: FakeClock) -> None:
    crash_and_restart(policy, clock, "sidecar")
    clock.advance(1.0)
    policy.up("sidecar")
    clock.advance(29.9)  # up, but not for stable_s
    assert policy.exited("sidecar") == 1.0


def test_a_stable_run_starts_the_backoff_over(policy: RestartPolicy, clock: FakeClock) -> None:
    for _ in range(4):
        crash_and_restart(policy, clock, "sidecar")
    policy.up("sidecar")
    clock.advance(30.0)
    assert policy.exited("sidecar") == 0.5


def test_a_child_that_dies_while_starting_climbs_even_after_a_long_start(
    policy: RestartPolicy, clock: FakeClock
) -> None:
    crash_and_restart(policy, clock, "sidecar")
    clock.advance(120.0)  # loading a model for two minutes is not being up
    assert policy.exited("sidecar") == 1.0


def test_starting_for_counts_from_the_restart_until_up(
    policy: RestartPolicy, clock: FakeClock
) -> None:
    assert policy.starting_for("sidecar") is None
    crash_and_restart(policy, clock, "sidecar")
    assert policy.starting_for("sidecar") == 0.0
    clock.advance(2.5)
    assert policy.starting_for("sidecar") == 2.5
    policy.up("sidecar")
    assert policy.starting_for("sidecar") is None


def test_children_are_independent(policy: RestartPolicy, clock: FakeClock) -> None:
    for _ in range(3):
        crash_and_restart(policy, clock, "sidecar")
    policy.up("envoy")
    assert policy.exited("envoy") == 0.5
    assert policy.pending("envoy") and not policy.pending("sidecar")
    clock.advance(0.5)
    assert policy.due("envoy") and not policy.due("sidecar")


def test_a_child_never_reported_up_starts_at_first_s(clock: FakeClock) -> None:
    assert RestartPolicy(clock).exited("sim-small") == 0.5


@pytest.mark.parametrize(
    "settings",
    [{"first_s": 0}, {"first_s": 11, "max_s": 10}, {"factor": 0.5}, {"stable_s": -1}],
)
def test_nonsense_settings_are_refused(clock: FakeClock, settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="first_s"):
        RestartPolicy(clock, **settings)


@pytest.mark.parametrize(
    ("returncode", "said"),
    [(0, "status 0"), (2, "status 2"), (-9, "signal SIGKILL"), (-15, "signal SIGTERM")],
)
def test_an_exit_is_described_as_status_or_signal(returncode: int, said: str) -> None:
    assert describe_exit(returncode) == said
