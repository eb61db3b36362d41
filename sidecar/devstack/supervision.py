"""Supervising a started local stack: restart what dies, with backoff, while the rest serves.

`RestartPolicy` is the pure part (when may a crashed child start again: exponential
backoff over an injected clock, forgiven after a stable run); `Supervisor` is the thin
loop that watches the processes and asks it. Restarting is opt-in: only code that calls
`Supervisor.step` gets it (the `stack` command, the soak), and a child stopped on purpose
with `LocalStack.stop_process` is no longer watched, so it stays down.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Callable

from sidecar.devstack.processes import describe_exit
from sidecar.devstack.stack import LocalStack

log = logging.getLogger(__name__)

# One readiness probe of a restarting child may take this long: the supervisor probes
# between its other duties, so it must never wait on one child for long.
PROBE_TIMEOUT_S = 0.5


class RestartPolicy:
    """When a crashed child may start again: exponential backoff, forgiven after a good run.

    Pure bookkeeping over an injected monotonic clock (seconds); the supervisor reports
    what happened (`up`, `exited`, `restarting`) and asks `due`. The first crash waits
    `first_s`, each further one `factor` times longer, at most `max_s`; a child that had
    stayed up for `stable_s` before it crashed starts over at `first_s`. A child that
    dies before it is up again (a crash loop) keeps climbing.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        first_s: float = 0.5,
        factor: float = 2.0,
        max_s: float = 10.0,
        stable_s: float = 30.0,
    ) -> None:
        if not 0 < first_s <= max_s or factor < 1 or stable_s < 0:
            raise ValueError("want 0 < first_s <= max_s, factor >= 1, stable_s >= 0")
        self._clock = clock
        self._first_s, self._factor, self._max_s = first_s, factor, max_s
        self._stable_s = stable_s
        self._delay: dict[str, float] = {}  # the last delay of each crash streak
        self._up_since: dict[str, float] = {}
        self._due_at: dict[str, float] = {}
        self._restarted_at: dict[str, float] = {}

    def up(self, name: str) -> None:
        """`name` is serving from now on."""
        self._up_since[name] = self._clock()
        self._restarted_at.pop(name, None)
        self._due_at.pop(name, None)

    def exited(self, name: str) -> float:
        """`name` died now; returns how long to wait before starting it again."""
        now = self._clock()
        up_since = self._up_since.pop(name, None)
        self._restarted_at.pop(name, None)
        last = self._delay.get(name)
        if last is None or (up_since is not None and now - up_since >= self._stable_s):
            delay = self._first_s
        else:
            delay = min(self._max_s, last * self._factor)
        self._delay[name] = delay
        self._due_at[name] = now + delay
        return delay

    def pending(self, name: str) -> bool:
        """Whether `name` is dead and waiting for its restart."""
        return name in self._due_at

    def due(self, name: str) -> bool:
        """Whether `name` is dead and its wait is over."""
        due_at = self._due_at.get(name)
        return due_at is not None and self._clock() >= due_at

    def restarting(self, name: str) -> None:
        """`name` is being started again now (it is up once `up` says so)."""
        self._due_at.pop(name, None)
        self._restarted_at[name] = self._clock()

    def starting_for(self, name: str) -> float | None:
        """Seconds since `name` was restarted, while it is not yet up; else None."""
        since = self._restarted_at.get(name)
        return None if since is None else self._clock() - since


class Supervisor:
    """Restarts the children of a started stack that die, one short step at a time.

    Call `step` often (the `stack` command does, every 0.2 s) from the thread that started
    the stack: restarted children are spawned by it (see `die_with_parent`). A step does
    not wait for a restarted child: it probes its readiness once, briefly. Only children
    in `stack.processes` are watched; one its owner starts itself is taken as up.
    """

    def __init__(self, stack: LocalStack, policy: RestartPolicy) -> None:
        self._stack = stack
        self._policy = policy
        self._watched: dict[str, subprocess.Popen[bytes]] = {}

    def step(self) -> None:
        """Notice deaths, restart children whose wait is over, probe restarted ones."""
        for name, process in list(self._stack.processes.items()):
            if self._watched.get(name) is not process:  # started (and awaited) by the owner
                self._watched[name] = process
                self._policy.up(name)
            if process.poll() is not None:
                if not self._policy.pending(name):
                    self._crashed(name, process, f"exited with {describe_exit(process.returncode)}")
                elif self._policy.due(name):
                    self._policy.restarting(name)
                    self._watched[name] = self._stack.spawn(name)
                continue
            starting_for = self._policy.starting_for(name)
            if starting_for is None:
                continue
            child = self._stack.child(name)
            if child.ready(PROBE_TIMEOUT_S):
                self._policy.up(name)
                log.warning(
                    "%s (pid %d) is ready again after %.1fs", name, process.pid, starting_for
                )
            elif starting_for > child.deadline_s:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                self._crashed(name, process, f"was not ready within {child.deadline_s:.0f}s")

    def _crashed(self, name: str, process: subprocess.Popen[bytes], what: str) -> None:
        delay = self._policy.exited(name)
        log.warning("%s (pid %d) %s; restarting it in %.1fs", name, process.pid, what, delay)
