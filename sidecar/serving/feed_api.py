"""The push feed's gRPC edge (proto/inference_router/v1/feeds.proto): proto in, board out.

A controller's `Push` (one batch) or `StreamPush` (a stream of batches) is converted to
`ProviderPush` updates, checked as a whole by `sidecar.feeds.push.check_push` and only
then recorded on the live board, so a refused batch changes nothing. A refusal is the
caller's fault and says which field: INVALID_ARGUMENT, mapped in `serving/statuses.py`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection

import grpc

from inference_router.v1 import feeds_pb2, feeds_pb2_grpc
from sidecar.core.catalogue import Price
from sidecar.errors import RequestError
from sidecar.feeds.live import LiveBoard
from sidecar.feeds.push import ProviderPush, check_push
from sidecar.serving.statuses import grpc_status

log = logging.getLogger(__name__)


def from_proto(update: feeds_pb2.ProviderUpdate) -> ProviderPush:
    """One update as the feed's core sees it: a fact the message lacks is None."""

    def given(field: str) -> float | None:
        return float(getattr(update, field)) if update.HasField(field) else None

    price = None
    if update.HasField("price"):
        price = Price(update.price.input_per_mtok, update.price.output_per_mtok)
    return ProviderPush(
        cluster=update.cluster,
        queue_waiting=given("queue_waiting"),
        queue_running=given("queue_running"),
        healthy=update.healthy if update.HasField("healthy") else None,
        price=price,
        ttft_s=given("ttft_s"),
        tokens_per_s=given("tokens_per_s"),
        age_s=update.age_s,
    )


class FeedApi(feeds_pb2_grpc.FeedServiceServicer):
    """Records what a controller pushes about the catalogue's providers."""

    def __init__(self, board: LiveBoard, clusters: Collection[str]) -> None:
        self._board = board
        self._clusters = frozenset(clusters)

    def record(self, request: feeds_pb2.PushRequest) -> int:
        """Check a whole batch, then record it; the number of updates recorded."""
        updates = [from_proto(update) for update in request.updates]
        check_push(updates, self._clusters)
        for update in updates:
            self._board.record_push(update)
        return len(updates)

    async def Push(
        self,
        request: feeds_pb2.PushRequest,
        context: grpc.aio.ServicerContext[feeds_pb2.PushRequest, feeds_pb2.PushResponse],
    ) -> feeds_pb2.PushResponse:
        """Record one batch of updates, or none of it."""
        try:
            accepted = self.record(request)
        except RequestError as error:
            log.info("refused a push: %s", error.message)
            await context.abort(grpc_status(error), error.message)
        return feeds_pb2.PushResponse(accepted=accepted)

    async def StreamPush(
        self,
        request_iterator: AsyncIterator[feeds_pb2.PushRequest],
        context: grpc.aio.ServicerContext[feeds_pb2.PushRequest, feeds_pb2.PushResponse],
    ) -> feeds_pb2.PushResponse:
        """Record each batch as it arrives; a bad one ends the stream."""
        accepted = 0
        batch = 0
        async for request in request_iterator:
            try:
                accepted += self.record(request)
            except RequestError as error:
                message = f"message {batch}: {error.message} ({accepted} updates recorded before)"
                log.info("ended a push stream: %s", message)
                await context.abort(grpc_status(error), message)
            batch += 1
        return feeds_pb2.PushResponse(accepted=accepted)
