"""Label queues: rules pick logged predictions for human review; annotators lease, label and
complete them; every label is feedback like any other.

Queues are declared with the signals (``queues:`` in the registry files). A background task
(:meth:`Labelling.fill`) scans ClickHouse for each rule from where it stopped (a watermark
per rule, kept with the items), a little behind real time (``settle_s``: the sink needs a
moment) and with an overlap (``overlap_s``: rows that reached ClickHouse late are still
seen; the store queues a prediction once per queue). Rules: a deterministic ``sample`` of
the task's predictions, outputs with a ``guardrail`` verdict, ``negative_feedback`` (a
thumb down, a low rating, a retry), ``low_confidence`` outputs (the output step fell back).

An item leased to an annotator is theirs until its lease runs out; then the next lease may
take it. Completing it records a Label feedback (``label_queue`` set, validated against the
queue's signal, idempotent on the item) and marks the item done.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from llmops.clickhouse.base import ClickHouseStore
from llmops.errors import FailedPrecondition, InvalidArgument, NotFound
from llmops.events.ids import uuid7
from llmops.v1 import common_pb2, feedback_pb2
from llmops.yamlfiles import HotReload
from services.feedback.intake import Intake
from services.feedback.label_store import ItemRow, NewItem, QueueCounts, SqlLabelStore
from services.feedback.signals import QueueRule, QueueSpec, SignalTable
from services.feedback.sql import KEY_GROUP, output_text, plain_json, request_uuid

log = structlog.get_logger("llmops.feedback")

MAX_LEASE = 100
DEFAULT_LEASE_S = 600
FIRST_SCAN_S = 86_400
"""A rule scanning for the first time looks this far back."""


class CandidateSource(Protocol):
    async def candidates(
        self, queue: QueueSpec, rule: QueueRule, since: float, until: float, limit: int
    ) -> list[tuple[NewItem, float]]:
        """Predictions the rule picks with event time in ``(since, until]``, oldest first,
        at most ``limit``: each with its event time (seconds)."""
        ...


@dataclass(frozen=True, slots=True)
class QueueView:
    spec: QueueSpec
    labels: tuple[str, ...]
    counts: QueueCounts


class Labelling:
    def __init__(
        self,
        signals: HotReload[SignalTable],
        store: SqlLabelStore,
        source: CandidateSource,
        intake: Intake,
        *,
        settle_s: float = 10.0,
        overlap_s: float = 300.0,
        scan_limit: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signals = signals
        self.store = store
        self.source = source
        self.intake = intake
        self.settle_s = settle_s
        self.overlap_s = overlap_s
        self.scan_limit = scan_limit
        self._clock = clock

    def queue(self, name: str) -> QueueSpec:
        spec = self.signals.current.queues.get(name)
        if spec is None:
            raise NotFound(f"label queue: no queue {name[:80]!r}")
        return spec

    async def fill(self) -> dict[str, int]:
        """One scan of every rule of every queue; items added per queue."""
        table = self.signals.current
        added: dict[str, int] = {}
        until = self._clock() - self.settle_s
        for queue in table.queues.values():
            added[queue.name] = 0
            for i, rule in enumerate(queue.rules):
                key = f"{i}:{rule.reason}"
                since = await self.store.watermark(queue.name, key)
                start = (until - FIRST_SCAN_S) if since is None else since - self.overlap_s
                if until <= start:
                    continue
                found = await self.source.candidates(queue, rule, start, until, self.scan_limit)
                added[queue.name] += await self.store.enqueue(
                    queue.name, [item for item, _ in found], uuid7, queue.max_pending
                )
                # a full page: go on from its last row next time, else from ``until``
                reached = found[-1][1] if len(found) >= self.scan_limit else until
                await self.store.set_watermark(queue.name, key, max(reached, since or reached))
        if any(added.values()):
            log.info("label_queues_filled", added=added)
        return added

    async def list_queues(self) -> list[QueueView]:
        table = self.signals.current
        counts = await self.store.counts()
        views = []
        for name, spec in sorted(table.queues.items()):
            signal = table.signals[spec.signal]
            views.append(QueueView(spec, signal.labels, counts.get(name, QueueCounts(0, 0, None))))
        return views

    async def lease(self, name: str, count: int, lease_s: int, annotator: str) -> list[ItemRow]:
        self.queue(name)
        count = count or 1
        if not 1 <= count <= MAX_LEASE:
            raise InvalidArgument("count", f"between 1 and {MAX_LEASE}")
        lease_s = lease_s or DEFAULT_LEASE_S
        if not 10 <= lease_s <= 86_400:
            raise InvalidArgument("lease_seconds", "between 10 and 86400")
        if len(annotator) > 128:
            raise InvalidArgument("annotator_id", "at most 128 characters")
        return await self.store.lease(name, count, lease_s, annotator, secrets.token_hex(16))

    async def complete(
        self, name: str, item_id: str, token: str, label: feedback_pb2.Label, annotator: str
    ) -> str:
        """Record the label as feedback and finish the item; the feedback's event id."""
        queue = self.queue(name)
        signal = self.signals.current.signals[queue.signal]
        if label.value not in signal.labels:
            raise InvalidArgument("label.value", f"one of {list(signal.labels)}")
        item = await self.store.get(name, item_id)
        if item is None:
            raise NotFound(f"label queue {name}: no item {item_id[:64]!r}")
        if item.state == "done":
            raise FailedPrecondition(f"item {item_id} is labelled already")
        if item.state != "leased" or item.lease_token != token or not token:
            raise FailedPrecondition(
                f"item {item_id}: the lease is not held (it ran out and was taken, or the "
                "token is wrong); lease the item again"
            )
        feedback = feedback_pb2.Feedback(
            idempotency_key=f"label:{name}:{item_id}", request_id=item.request_id,
            task=item.task, name=queue.signal, source="annotator", annotator_id=annotator,
            label_queue=name, label=label,
        )  # fmt: skip
        (outcome,) = await self.intake.submit(
            common_pb2.RequestContext(tenant=item.tenant), [feedback], lambda _: "completion"
        )
        if outcome.error is not None:
            raise outcome.error
        if not await self.store.complete(name, item_id, token, outcome.event_id):
            raise FailedPrecondition(
                f"item {item_id}: the lease was lost while labelling (the label is recorded)"
            )
        return outcome.event_id


def _seconds(value: Any) -> float:
    if isinstance(value, datetime):
        when = value if value.tzinfo else value.replace(tzinfo=UTC)
        return when.timestamp()
    return float(value)


class ClickHouseCandidates:
    """:class:`CandidateSource` over ``predictions`` (with their payloads) and ``feedback``."""

    def __init__(self, clickhouse: Callable[[], ClickHouseStore]) -> None:
        self._clickhouse = clickhouse

    async def candidates(
        self, queue: QueueSpec, rule: QueueRule, since: float, until: float, limit: int
    ) -> list[tuple[NewItem, float]]:
        sql, params = candidate_sql(queue, rule, since, until, limit)
        rows = await asyncio.to_thread(self._clickhouse().query, sql, params)
        out = []
        for r in rows:
            payload: dict[str, Any] = {}
            if r["has_payload"]:
                payload = {"inputs": dict(r["inputs"]), "output": str(r["output"])}
            item = NewItem(
                request_id=str(r["request_id"]), tenant=str(r["tenant"]), task=str(r["task"]),
                route=str(r["route"]), reason=rule.reason, payload=payload,
            )  # fmt: skip
            out.append((item, _seconds(r["event_time"])))
        return out


NEGATIVE_LOOKBACK_S = 30 * 86_400
"""Negative feedback counts against predictions up to this long before it arrived."""


def candidate_sql(
    queue: QueueSpec, rule: QueueRule, since: float, until: float, limit: int
) -> tuple[str, dict[str, Any]]:
    """The rule's query: candidates ordered by the time the rule scans (the prediction's, or
    for negative feedback the feedback's), with their payloads when logged (the registry
    validated the signal names a rule gives)."""
    params: dict[str, Any] = {
        "task": queue.task, "since": since, "until": until, "limit": limit,
        "lookback": NEGATIVE_LOOKBACK_S,
    }  # fmt: skip
    window = "toFloat64(event_time) > %(since)s AND toFloat64(event_time) <= %(until)s"
    if rule.negative_feedback is not None:
        params["signals"] = tuple(rule.negative_feedback.signals)
        params["share"] = rule.negative_feedback.max_rating_share
        picked = f"""
    SELECT p.request_id AS request_id, any(p.tenant) AS c_tenant, any(p.task) AS c_task,
           any(p.route) AS c_route, min(f.at) AS at
    FROM predictions AS p
    INNER JOIN
    (
        SELECT {request_uuid("fb_request_id")} AS rid, at
        FROM
        (
            SELECT argMax(request_id, received_time) AS fb_request_id,
                   argMax(kind, received_time) AS k, argMax(thumb, received_time) AS t,
                   argMax(rating, received_time) AS r,
                   argMax(rating_scale_max, received_time) AS s,
                   max(toFloat64(event_time)) AS at
            FROM feedback
            WHERE {window} AND name IN %(signals)s AND request_id != ''
            GROUP BY {KEY_GROUP}
        )
        WHERE (k != 'THUMBS' OR t = 'DOWN') AND (k != 'RATING' OR r <= %(share)s * s)
    ) AS f ON f.rid = p.request_id
    WHERE p.task = %(task)s
      AND toFloat64(p.event_time) > %(since)s - %(lookback)s
      AND toFloat64(p.event_time) <= %(until)s
    GROUP BY p.request_id"""
    else:
        if rule.sample is not None:
            params["per_million"] = int(rule.sample * 1_000_000)
            condition = "cityHash64(toString(request_id)) % 1000000 < %(per_million)s"
        elif rule.guardrail is not None:
            params["verdicts"] = tuple(rule.guardrail)
            condition = "guardrail_verdict IN %(verdicts)s"
        else:
            condition = "has(skipped_steps, 'postprocess')"
        picked = f"""
    SELECT request_id, any(tenant) AS c_tenant, any(task) AS c_task, any(route) AS c_route,
           min(toFloat64(event_time)) AS at
    FROM predictions
    WHERE task = %(task)s AND {window} AND {condition}
    GROUP BY request_id"""
    sql = f"""
SELECT toString(c.request_id) AS request_id, c.c_tenant AS tenant, c.c_task AS task,
       c.c_route AS route, c.at AS event_time,
       pp.p_request_id != '' AS has_payload, pp.p_inputs AS inputs, pp.p_output AS output
FROM
(
    SELECT * FROM ({picked}
    )
    ORDER BY at, request_id
    LIMIT %(limit)s
) AS c
LEFT JOIN
(
    SELECT {request_uuid("request_id")} AS rid, any(request_id) AS p_request_id,
           mapApply((k, v) -> (k, {plain_json("v")}), any(inputs)) AS p_inputs,
           {output_text("any(output)")} AS p_output
    FROM prediction_payloads
    WHERE task = %(task)s
    GROUP BY rid
) AS pp ON pp.rid = c.request_id
ORDER BY event_time, request_id
"""
    return sql, params


def item_proto(item: ItemRow) -> feedback_pb2.LabelItem:
    out = feedback_pb2.LabelItem(
        queue=item.queue, item_id=item.item_id, request_id=item.request_id, task=item.task,
        route=item.route, tenant=item.tenant, reason=item.reason,
        inputs={str(k): str(v) for k, v in item.payload.get("inputs", {}).items()},
        output=str(item.payload.get("output", "")), lease_token=item.lease_token,
    )  # fmt: skip
    out.enqueued_time.FromNanoseconds(int(item.enqueued_at * 1e9))
    if item.lease_expires:
        out.lease_expire_time.FromNanoseconds(int(item.lease_expires * 1e9))
    return out


def queue_views_proto(views: Sequence[QueueView]) -> list[feedback_pb2.LabelQueue]:
    out = []
    for v in views:
        q = feedback_pb2.LabelQueue(
            name=v.spec.name, task=v.spec.task, description=v.spec.description,
            labels=list(v.labels), pending_count=v.counts.pending,
            completed_count=v.counts.completed,
        )  # fmt: skip
        if v.counts.oldest_pending is not None:
            q.oldest_pending_time.FromNanoseconds(int(v.counts.oldest_pending * 1e9))
        out.append(q)
    return out
