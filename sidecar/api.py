"""The project's own gRPC API (proto/inference_router/v1/router.proto).

`Decide` runs exactly the path Envoy's requests take, minus Envoy, and returns the
decision with its full explanation. `ReloadIndex` swaps the exemplar index. Errors map
to gRPC statuses here and nowhere else: the caller's bad request is INVALID_ARGUMENT
(or NOT_FOUND for an unknown model), a broken index is FAILED_PRECONDITION.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from inference_router.v1 import router_pb2, router_pb2_grpc
from sidecar.errors import IndexLoadError, RequestError
from sidecar.request import CHAT_PATH
from sidecar.service import Routed, RoutingService


@dataclass(frozen=True)
class IndexInfo:
    """What a reload installed."""

    path: str
    exemplars: int
    fingerprint: str


IndexReloader = Callable[[str | None], Awaitable[IndexInfo]]


def to_proto(routed: Routed) -> router_pb2.DecideResponse:
    """Convert a decision and its evidence to the API's message."""
    decision = routed.decision
    explanation = router_pb2.Explanation(
        reason=decision.reason,
        predicted_output_tokens=decision.predicted_output_tokens,
        candidates=[
            router_pb2.Candidate(
                cluster=c.cluster,
                model=c.model,
                tier=c.tier,
                expected_cost_usd=c.expected_cost_usd,
                chosen=c.cluster == decision.upstream,
            )
            for c in decision.candidates
        ],
    )
    classification = routed.classification
    if classification is not None:
        explanation.route_scores.update(classification.route_scores)
        explanation.confidence = classification.semantic.confidence
        explanation.abstained = classification.semantic.route is None
        explanation.abstain_reason = classification.abstain_reason or ""
        explanation.threshold = classification.threshold
        explanation.neighbours.extend(
            router_pb2.Neighbour(route=n.route, similarity=n.similarity)
            for n in classification.neighbours
        )
    return router_pb2.DecideResponse(
        decision_id=decision.decision_id,
        upstream=decision.upstream,
        route=decision.route,
        tier=decision.tier,
        policy=decision.policy.value,
        model=decision.model,
        model_rewritten=decision.model_rewritten,
        explanation=explanation,
    )


class RouterApi(router_pb2_grpc.RouterServicer):
    """Operator-facing gRPC API."""

    def __init__(self, service: RoutingService, reload_index: IndexReloader | None) -> None:
        self._service = service
        self._reload_index = reload_index

    async def Decide(
        self, request: router_pb2.DecideRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.DecideResponse:
        """Route a request body without sending it anywhere."""
        headers = {key.lower(): value for key, value in request.headers.items()}
        try:
            routed = await self._service.route(request.path or CHAT_PATH, headers, request.body)
        except RequestError as error:
            status = (
                grpc.StatusCode.NOT_FOUND
                if error.status == 404
                else (grpc.StatusCode.INVALID_ARGUMENT)
            )
            await context.abort(status, error.message)
        return to_proto(routed)

    async def ReloadIndex(
        self, request: router_pb2.ReloadIndexRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ReloadIndexResponse:
        """Load an index from disk and swap it in; the old one serves if this fails."""
        if self._reload_index is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "semantic routing is disabled")
        assert self._reload_index is not None
        try:
            info = await self._reload_index(request.path or None)
        except IndexLoadError as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        return router_pb2.ReloadIndexResponse(
            path=info.path, exemplars=info.exemplars, fingerprint=info.fingerprint
        )
