"""How a long-running subcommand waits: until SIGINT or SIGTERM (or something it watches dies).

One loop for `serve`, `simulate` and `stack`, so every process the project starts stops
the same way: the signal ends the wait, and the caller's `finally` drains and cleans up.
`watch` runs every WATCH_INTERVAL_S on this thread; `stack` supervises its children there
(it must stay short: a signal is handled only between two calls).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

# How often `watch` is asked; the signal itself ends the wait at once.
WATCH_INTERVAL_S = 0.2


async def until_stop_signal(watch: Callable[[], str | None] | None = None) -> str | None:
    """Wait for SIGINT/SIGTERM (returns None) or for `watch` to report a problem (returns it)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        while not stop.is_set():
            problem = watch() if watch is not None else None
            if problem is not None:
                return problem
            try:
                await asyncio.wait_for(stop.wait(), WATCH_INTERVAL_S if watch else None)
            except TimeoutError:
                continue
        return None
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
