"""The project's own gRPC API (proto/inference_router/v1/router.proto).

`Decide` runs exactly the path Envoy's requests take, minus Envoy, and returns the
decision with its full explanation: each candidate's expected cost and latency, the
queue depth and price used, and where those came from and how old they were. `ReloadIndex`
swaps the exemplar index. Errors map to gRPC statuses in `statuses` only: the caller's
bad request is INVALID_ARGUMENT (or NOT_FOUND for an unknown model), limits no provider
can meet and a broken index are FAILED_PRECONDITION.
"""

from __future__ import annotations

import logging

import grpc

from inference_router.v1 import router_pb2, router_pb2_grpc
from sidecar.core.request import CHAT_PATH
from sidecar.errors import IndexLoadError, RequestError
from sidecar.serving.composition import IndexReloader
from sidecar.serving.metrics import RouterMetrics
from sidecar.serving.service import Routed, RoutingService, new_decision_id
from sidecar.serving.statuses import grpc_status

log = logging.getLogger(__name__)

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
                expected_latency_s=c.expected_latency_s,
                healthy=c.healthy,
                queue_waiting=c.queue_waiting,
                notes=c.notes,
                input_per_mtok=c.price.input_per_mtok,
                output_per_mtok=c.price.output_per_mtok,
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
        explanation.stage = verdict.stage or 0
        explanation.overloaded = verdict.overloaded
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

    def __init__(
        self,
        service: RoutingService,
        metrics: RouterMetrics,
        reload_index: IndexReloader | None,
    ) -> None:
        self._service = service
        self._metrics = metrics
        self._reload_index = reload_index

    async def Decide(
        self,
        request: router_pb2.DecideRequest,
        context: grpc.aio.ServicerContext[router_pb2.DecideRequest, router_pb2.DecideResponse],
    ) -> router_pb2.DecideResponse:
        """Route a request body without sending it anywhere."""
        headers = {key.lower(): value for key, value in request.headers.items()}
        decision_id = new_decision_id()
        try:
            routed = await self._service.route(
                request.path or CHAT_PATH, headers, request.body, decision_id=decision_id
            )
        except RequestError as error:
            await context.abort(grpc_status(error), error.message)
        except Exception:
            # Never send exception text to a caller: the log has it under the decision id.
            log.exception("decision %s: Decide failed", decision_id)
            self._metrics.error("decide")
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error (decision {decision_id}); see the log"
            )
        return to_proto(routed)

    async def ReloadIndex(
        self,
        request: router_pb2.ReloadIndexRequest,
        context: grpc.aio.ServicerContext[
            router_pb2.ReloadIndexRequest, router_pb2.ReloadIndexResponse
        ],
    ) -> router_pb2.ReloadIndexResponse:
        """Load an index from disk and swap it in; the old one serves if this fails."""
        try:
            if self._reload_index is None:
                raise IndexLoadError("semantic routing is disabled: there is no index to reload")
            info = await self._reload_index(request.path or None)
        except IndexLoadError as error:
            await context.abort(grpc_status(error), str(error))
        except Exception:
            log.exception("ReloadIndex failed; the old index keeps serving")
            self._metrics.error("reload_index")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the sidecar log")
        return router_pb2.ReloadIndexResponse(
            path=info.path, exemplars=info.exemplars, fingerprint=info.fingerprint
        )
