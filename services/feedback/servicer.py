"""gRPC servicers of the feedback service: protobuf <-> :mod:`services.feedback.intake`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from llmops.errors import InvalidArgument, NotImplementedYet
from llmops.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc
from services.feedback.intake import MAX_BATCH, Intake, Outcome

EXPORT_PENDING = (
    "llmops.v1.FeedbackService.ExportDataset is not implemented yet: it arrives with the next "
    "part of issue #14 (Feedback service)"
)


def _error(outcome: Outcome) -> common_pb2.ErrorDetail:
    exc = outcome.error
    assert exc is not None
    return common_pb2.ErrorDetail(
        reason=exc.reason or exc.code, message=exc.message, field=exc.field
    )


class FeedbackServicer(feedback_pb2_grpc.FeedbackServiceServicer):
    def __init__(self, intake: Intake) -> None:
        self.intake = intake

    async def Submit(
        self, request: feedback_pb2.SubmitRequest, context: Any
    ) -> feedback_pb2.SubmitResponse:
        (outcome,) = await self.intake.submit(
            request.context, [request.feedback], lambda _: "feedback"
        )
        if outcome.error is not None:
            raise outcome.error
        return feedback_pb2.SubmitResponse(
            event_id=outcome.event_id, duplicate=outcome.duplicate, replaced=outcome.replaced
        )

    async def SubmitBatch(
        self, request: feedback_pb2.SubmitBatchRequest, context: Any
    ) -> feedback_pb2.SubmitBatchResponse:
        if not request.feedback:
            raise InvalidArgument("feedback", "at least one record")
        if len(request.feedback) > MAX_BATCH:
            raise InvalidArgument("feedback", f"at most {MAX_BATCH} records per batch")
        outcomes = await self.intake.submit(
            request.context, request.feedback, lambda i: f"feedback[{i}]"
        )
        return feedback_pb2.SubmitBatchResponse(
            results=[
                feedback_pb2.SubmitResult(error=_error(o))
                if o.error is not None
                else feedback_pb2.SubmitResult(
                    event_id=o.event_id, duplicate=o.duplicate, replaced=o.replaced
                )
                for o in outcomes
            ]
        )

    async def ExportDataset(
        self, request: feedback_pb2.ExportDatasetRequest, context: Any
    ) -> AsyncIterator[feedback_pb2.ExportDatasetResponse]:
        raise NotImplementedYet(EXPORT_PENDING)
        yield  # an async generator, as a server-streaming handler must be
