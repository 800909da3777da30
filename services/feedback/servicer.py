"""gRPC servicers of the feedback service: protobuf <-> :mod:`services.feedback.intake`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from llmops.errors import InvalidArgument, NotImplementedYet
from llmops.server import paginate
from llmops.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc
from services.feedback.intake import MAX_BATCH, Intake, Outcome
from services.feedback.labelling import Labelling, item_proto, queue_views_proto
from services.feedback.stats import (
    SignalSummary,
    StatsQuery,
    StatsStore,
    check_group_by,
    summarise,
)

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


def _kind_enum(name: str) -> feedback_pb2.FeedbackKind.ValueType:
    return feedback_pb2.FeedbackKind.Value(f"FEEDBACK_KIND_{name}")


def _money(currency: str, nanos: int) -> common_pb2.Money:
    units, rest = divmod(abs(nanos), 1_000_000_000)
    sign = -1 if nanos < 0 else 1
    return common_pb2.Money(currency_code=currency, units=sign * units, nanos=sign * rest)


def _signal_proto(s: SignalSummary) -> feedback_pb2.SignalStats:
    return feedback_pb2.SignalStats(
        signal=s.signal, kind=_kind_enum(s.kind), count=s.count,
        distinct_requests=s.distinct_requests, mean=s.mean, ci_low=s.ci_low, ci_high=s.ci_high,
        values=[_money(c, v) for c, v in sorted(s.values_nanos.items())], top_label=s.top_label,
    )  # fmt: skip


def _window(
    request: feedback_pb2.GetFeedbackStatsRequest,
) -> tuple[datetime | None, datetime | None]:
    w = request.window
    start = w.start_time.ToDatetime(tzinfo=UTC) if w.HasField("start_time") else None
    end = w.end_time.ToDatetime(tzinfo=UTC) if w.HasField("end_time") else None
    if start is not None and end is not None and start >= end:
        raise InvalidArgument("window", "start_time must be before end_time")
    return start, end


class FeedbackAdminServicer(feedback_pb2_grpc.FeedbackAdminServiceServicer):
    def __init__(self, stats: StatsStore, labelling: Labelling) -> None:
        self.stats = stats
        self.labelling = labelling

    async def GetFeedbackStats(
        self, request: feedback_pb2.GetFeedbackStatsRequest, context: Any
    ) -> feedback_pb2.GetFeedbackStatsResponse:
        group_by = check_group_by(request.group_by)
        start, end = _window(request)
        raw = await self.stats.raw(
            StatsQuery(start, end, task=request.task, tenant=request.tenant, group_by=group_by)
        )
        result = summarise(raw, group_by)
        response = feedback_pb2.GetFeedbackStatsResponse(
            received_count=result.received, duplicate_count=result.superseded,
            pending_sink_count=-1, unmatched_count=result.unmatched,
        )  # fmt: skip
        for k in result.kinds:
            kind = response.kinds.add(
                kind=_kind_enum(k.kind), count=k.count, distinct_requests=k.distinct_requests,
                mean=k.mean,
            )  # fmt: skip
            if len(k.values_nanos) == 1:  # one currency: its total (no exchange rates here)
                ((currency, nanos),) = k.values_nanos.items()
                kind.total_value.CopyFrom(_money(currency, nanos))
        for g in result.groups:
            response.groups.add(
                dimensions=g.dimensions, prediction_count=g.prediction_count,
                signals=[_signal_proto(s) for s in g.signals],
            )  # fmt: skip
        return response

    async def ListLabelQueues(
        self, request: feedback_pb2.ListLabelQueuesRequest, context: Any
    ) -> feedback_pb2.ListLabelQueuesResponse:
        queues = queue_views_proto(await self.labelling.list_queues())
        page, token = paginate(queues, request.page_size, request.page_token)
        return feedback_pb2.ListLabelQueuesResponse(queues=page, next_page_token=token)

    async def LeaseLabelItems(
        self, request: feedback_pb2.LeaseLabelItemsRequest, context: Any
    ) -> feedback_pb2.LeaseLabelItemsResponse:
        items = await self.labelling.lease(
            request.queue, request.count, request.lease_seconds, request.annotator_id
        )
        return feedback_pb2.LeaseLabelItemsResponse(items=[item_proto(i) for i in items])

    async def CompleteLabelItem(
        self, request: feedback_pb2.CompleteLabelItemRequest, context: Any
    ) -> feedback_pb2.CompleteLabelItemResponse:
        event_id = await self.labelling.complete(
            request.queue, request.item_id, request.lease_token, request.label,
            request.annotator_id,
        )  # fmt: skip
        return feedback_pb2.CompleteLabelItemResponse(event_id=event_id)
