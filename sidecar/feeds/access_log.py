"""Envoy's gRPC access-log stream in, `Observation`s for the passive learner out.

Theory. The router filter's `upstream_log` writes one entry per upstream attempt, after
the attempt ends, and Envoy's gRPC access logger streams the entries to this servicer
in batches (`buffer_flush_interval`) on a long-lived stream per worker thread. Nothing
waits for it: a request is never held for its log entry, and the sidecar's ext_proc
answer is the only round trip on the request path. Per attempt, and not per request,
because a retry hides the failure it recovers from: a 429 that Envoy retried on the
other provider of the same model shows in the listener's access log only as the 200
that followed; the upstream log shows both. Envoy logs the real cluster of the attempt
(`upstream_cluster`), also behind a failover aggregate.

`observation_of` is the whole translation (pure, one entry in, an `Observation` or None
out); `AccessLogReceiver` reads the streams, stamps each entry with the time it was
heard and hands it to the learner. A malformed entry is skipped and counted, never a
failed stream: Envoy would only send it again. `close` ends the open streams, so the
server's graceful stop does not wait its whole grace period for them (they never end by
themselves); Envoy opens new ones with its next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from sidecar.feeds.passive import LOGGED_RESPONSE_HEADERS, Observation, PassiveLearner

log = logging.getLogger(__name__)

UPSTREAM_END = accesslog_pb2.AccessLogType.Value("UpstreamEnd")
# The request header the Lua filter sets on streaming requests (logged by Envoy).
STREAM_HEADER = "x-router-stream"
# Response flags that put an attempt without an answer on the provider, not the client.
UPSTREAM_FAULT_FLAGS = (
    "upstream_connection_failure",
    "upstream_connection_termination",
    "upstream_remote_reset",
    "upstream_request_timeout",
    "upstream_protocol_error",
)


def _seconds(duration: Any) -> float:
    return float(duration.seconds) + float(duration.nanos) / 1e9


def observation_of(entry: Any) -> Observation | None:
    """The attempt an `HTTPAccessLogEntry` describes; None for any other kind of entry."""
    common = entry.common_properties
    if common.access_log_type != UPSTREAM_END or not common.upstream_cluster:
        return None  # a listener's (downstream) entry, or an attempt that found no cluster
    response = entry.response
    status = response.response_code.value if response.HasField("response_code") else 0
    flags = common.response_flags
    first_byte_s = None
    if common.HasField("time_to_first_upstream_rx_byte"):
        # Both times count from the attempt's start; the difference leaves out the time
        # the request took to send.
        sent = _seconds(common.time_to_first_upstream_tx_byte)
        first_byte_s = max(0.0, _seconds(common.time_to_first_upstream_rx_byte) - sent)
    ended_at = None
    if common.HasField("start_time"):
        ended_at = _seconds(common.start_time) + _seconds(common.duration)
    logged = {name.lower(): value for name, value in response.response_headers.items()}
    return Observation(
        cluster=common.upstream_cluster,
        status=status,
        upstream_fault=any(getattr(flags, name) for name in UPSTREAM_FAULT_FLAGS),
        stream=entry.request.request_headers.get(STREAM_HEADER) == "true",
        first_byte_s=first_byte_s,
        ended_at=ended_at,
        headers={name: logged[name] for name in LOGGED_RESPONSE_HEADERS if name in logged},
    )


class AccessLogReceiver(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    """Envoy's `AccessLogService`: every upstream attempt it logs goes to the learner."""

    def __init__(
        self, learner: PassiveLearner, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._learner = learner
        self._clock = clock
        self._closing = asyncio.Event()
        self.entries = 0  # attempts learned from
        self.skipped = 0  # entries that were not attempts, or could not be read

    def close(self) -> None:
        """End every open stream now, and any opened later at once."""
        self._closing.set()

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        """Read one of Envoy's log streams until Envoy ends it or the sidecar stops."""
        reading = asyncio.ensure_future(self._read(request_iterator))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({reading, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reading, closing):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return als_pb2.StreamAccessLogsResponse()

    async def _read(self, messages: AsyncIterator[Any]) -> None:
        async for message in messages:
            if message.HasField("identifier"):  # only the first message of a stream
                log.info("reading Envoy's access log %r", message.identifier.log_name)
            for entry in message.http_logs.log_entry:
                self.receive(entry)

    def receive(self, entry: Any) -> None:
        """Learn from one log entry, heard now."""
        try:
            seen = observation_of(entry)
        except (AttributeError, ValueError) as error:  # not shaped like Envoy's entry
            self.skipped += 1
            log.debug("skipped an access-log entry Envoy's schema does not explain: %s", error)
            return
        if seen is None:
            self.skipped += 1
            return
        self.entries += 1
        started = self._learner.observe(seen, self._clock())
        if started is not None:
            log.warning("provider %s: %s", seen.cluster, started)
