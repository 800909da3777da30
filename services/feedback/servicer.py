"""gRPC servicers of the feedback service: protobuf <-> :mod:`services.feedback.intake`."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from llmops.errors import InvalidArgument
from llmops.server import paginate
from llmops.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc
from services.feedback.export import (
    COLUMNS,
    SHAPES,
    Acceptance,
    ExportQuery,
    Exports,
    export_sql,
)
from services.feedback.intake import MAX_BATCH, Intake, Outcome
from services.feedback.labelling import Labelling, item_proto, queue_views_proto
from services.feedback.stats import (
    SignalSummary,
    StatsQuery,
    StatsStore,
    check_group_by,
    summarise,
)

CONTENT_TYPES = {"JSONL": "application/x-ndjson", "PARQUET": "application/vnd.apache.parquet"}
MAX_EXPORT_WINDOW = timedelta(days=400)
_DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,126}$")


def export_query(
    request: feedback_pb2.ExportDatasetRequest, now: datetime, acceptance: Acceptance
) -> tuple[ExportQuery, str]:
    """The request as the domain's query and the file format (INVALID_ARGUMENT naming the
    field)."""
    if not request.task:
        raise InvalidArgument("task", "required")
    w = request.window
    if not (w.HasField("start_time") and w.HasField("end_time")):
        raise InvalidArgument("window", "both start_time and end_time are required")
    start = w.start_time.ToDatetime(tzinfo=UTC)
    end = w.end_time.ToDatetime(tzinfo=UTC)
    if start >= end:
        raise InvalidArgument("window", "start_time must be before end_time")
    if end - start > MAX_EXPORT_WINDOW:
        raise InvalidArgument("window", "at most 400 days (the feedback retention)")
    as_of = request.as_of_time.ToDatetime(tzinfo=UTC) if request.HasField("as_of_time") else now
    if as_of > now:
        raise InvalidArgument("as_of_time", "in the future")
    fmt = _enum_name(feedback_pb2.DatasetFormat, request.format, "DATASET_FORMAT_") or "JSONL"
    if fmt not in CONTENT_TYPES:
        raise InvalidArgument("format", "JSONL or PARQUET")
    shape = _enum_name(feedback_pb2.DatasetShape, request.shape, "DATASET_SHAPE_") or "EXAMPLES"
    if shape not in SHAPES:
        raise InvalidArgument("shape", f"one of {list(SHAPES)}")
    if request.max_rows < 0:
        raise InvalidArgument("max_rows", "must not be negative")
    if not 0 <= request.sample_fraction <= 1:
        raise InvalidArgument("sample_fraction", "in (0, 1]; 0 means everything")
    kinds = []
    for i, kind in enumerate(request.kinds):
        name = _enum_name(feedback_pb2.FeedbackKind, kind, "FEEDBACK_KIND_")
        if not name:
            raise InvalidArgument(f"kinds[{i}]", "a feedback kind")
        kinds.append(name)
    if request.register_as and not _DATASET_NAME.match(request.register_as):
        raise InvalidArgument("register_as", "lowercase letters, digits, '.', '_', '-'")
    if shape != "EXAMPLES" and not request.include_payloads:
        raise InvalidArgument(
            "include_payloads", f"{shape} rows are made of the payloads: set it to true"
        )
    query = ExportQuery(
        task=request.task, start=start, end=end, as_of=as_of, shape=shape, kinds=tuple(kinds),
        filter=request.filter, include_payloads=request.include_payloads,
        max_rows=request.max_rows, sample_fraction=request.sample_fraction or 1.0,
        tenant=request.context.tenant, acceptance=acceptance,
    )  # fmt: skip
    # the filter is checked before anything streams: a bad field fails the call cleanly
    export_sql(query)
    return query, fmt


def _enum_name(enum: Any, number: int, prefix: str) -> str:
    """The enum value's name without its prefix; "" for UNSPECIFIED; "?" for an unknown
    number (a newer client's value)."""
    try:
        name = str(enum.Name(number)).removeprefix(prefix)
    except ValueError:
        return "?"
    return "" if name == "UNSPECIFIED" else name


def _error(outcome: Outcome) -> common_pb2.ErrorDetail:
    exc = outcome.error
    assert exc is not None
    return common_pb2.ErrorDetail(
        reason=exc.reason or exc.code, message=exc.message, field=exc.field
    )


class FeedbackServicer(feedback_pb2_grpc.FeedbackServiceServicer):
    def __init__(self, intake: Intake, exports: Exports, acceptance: Acceptance | None = None):
        self.intake = intake
        self.exports = exports
        self.acceptance = acceptance or Acceptance()

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
        response = feedback_pb2.SubmitBatchResponse()
        add = response.results.add
        for o in outcomes:  # only the fields set: a thousand results per call
            if o.error is not None:
                add(error=_error(o))
            elif o.duplicate or o.replaced:
                add(event_id=o.event_id, duplicate=o.duplicate, replaced=o.replaced)
            else:
                add(event_id=o.event_id)
        return response

    async def ExportDataset(
        self, request: feedback_pb2.ExportDatasetRequest, context: Any
    ) -> AsyncIterator[feedback_pb2.ExportDatasetResponse]:
        query, fmt = export_query(request, datetime.now(UTC), self.acceptance)
        self.exports.check_registry(request.register_as)  # before anything streams
        yield feedback_pb2.ExportDatasetResponse(
            header=feedback_pb2.ExportHeader(
                format=feedback_pb2.DatasetFormat.Value(f"DATASET_FORMAT_{fmt}"),
                content_type=CONTENT_TYPES[fmt],
                columns=[name for name, _ in COLUMNS[query.shape]],
            )
        )
        async for part in self.exports.run(query, fmt, request.register_as, request.context):
            if isinstance(part, bytes):
                yield feedback_pb2.ExportDatasetResponse(data=part)
                continue
            summary = feedback_pb2.ExportSummary(
                row_count=part.result.rows, byte_count=part.result.bytes, sha256=part.result.sha256
            )
            summary.window.start_time.FromDatetime(part.window[0])
            summary.window.end_time.FromDatetime(part.window[1])
            summary.as_of_time.FromDatetime(query.as_of)
            if part.dataset is not None:
                summary.dataset_name = part.dataset.name
                summary.dataset_version = part.dataset.version
            yield feedback_pb2.ExportDatasetResponse(summary=summary)


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
