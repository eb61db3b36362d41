"""The project's own gRPC API (proto/inference_router/v1/router.proto).

`Decide` runs exactly the path Envoy's requests take, minus Envoy, and returns the
decision with its full explanation. `ReloadIndex` swaps the exemplar index. Errors map
to gRPC statuses here and nowhere else: the caller's bad request is INVALID_ARGUMENT
(or NOT_FOUND for an unknown model), a broken index is FAILED_PRECONDITION.
"""

from __future__ import annotations

import grpc

from inference_router.v1 import router_pb2, router_pb2_grpc
from sidecar.core.request import CHAT_PATH
from sidecar.errors import IndexLoadError, RequestError
from sidecar.serving.composition import IndexReloader
from sidecar.serving.service import Routed, RoutingService
from sidecar.serving.statuses import grpc_status

# Neighbours shown in an explanation; the vote itself uses all k.
EXPLAIN_NEIGHBOURS = 5


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
    verdict = routed.verdict
    if verdict is not None:
        explanation.route_scores.update(verdict.scores)
        explanation.confidence = verdict.confidence
        explanation.abstained = verdict.route is None
        explanation.abstain_reason = verdict.abstain_reason or ""
        explanation.threshold = verdict.threshold
        explanation.neighbours.extend(
            router_pb2.Neighbour(route=n.route, similarity=n.similarity)
            for n in verdict.neighbours[:EXPLAIN_NEIGHBOURS]
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
            await context.abort(grpc_status(error), error.message)
        return to_proto(routed)

    async def ReloadIndex(
        self, request: router_pb2.ReloadIndexRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ReloadIndexResponse:
        """Load an index from disk and swap it in; the old one serves if this fails."""
        try:
            if self._reload_index is None:
                raise IndexLoadError("semantic routing is disabled: there is no index to reload")
            info = await self._reload_index(request.path or None)
        except IndexLoadError as error:
            await context.abort(grpc_status(error), str(error))
        return router_pb2.ReloadIndexResponse(
            path=info.path, exemplars=info.exemplars, fingerprint=info.fingerprint
        )
