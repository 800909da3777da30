"""``ExportDataset``: logged predictions joined with their feedback, as training-ready files.

ClickHouse does the work in one query per export: the newest record of each idempotency key
*as of* the export's point in time (feedback received later does not exist for it, so the
same request gives the same file later), summarised per prediction, joined to the task's
predictions in the window and to their payloads (inputs after the input guardrail, output),
filtered, sampled (a hash of the request id) and shaped:

- ``EXAMPLES`` — one prediction and its feedback summary;
- ``SFT`` — inputs and an accepted response (a correction wins over the model's output);
- ``PREFERENCE`` — chosen/rejected responses to the same inputs, from pairwise Preference
  feedback and from a thumb up and a thumb down on identical inputs;
- ``EVALUATION`` — inputs, the model's output and the human reference.

The rows land in a scratch table in row order, then leave it a page at a time — JSON lines
formatted by ClickHouse (``formatRow``), or Parquet row groups written by pyarrow — so the
service's memory stays bounded whatever the export's size. Texts people typed were redacted
when the feedback was accepted; inputs were logged after the input guardrail.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from llmops.clickhouse.base import ClickHouseStore
from llmops.clickhouse.sql import identifier
from llmops.errors import FailedPrecondition, InvalidArgument
from llmops.events.ids import uuid7
from llmops.v1 import common_pb2
from services.feedback.sql import KEY_GROUP, inputs_json, output_text, request_uuid

SHAPES = ("EXAMPLES", "SFT", "PREFERENCE", "EVALUATION")
PAGE_ROWS = 50_000
CHUNK_BYTES = 1 << 20
"""Most bytes per streamed data message."""
PAIRS_PER_INPUT = 4
"""Preference pairs from thumbs: at most this many per distinct inputs."""


STRING, INT, FLOAT = pa.string(), pa.int64(), pa.float64()
COLUMNS: Mapping[str, tuple[tuple[str, pa.DataType], ...]] = {
    "EXAMPLES": (
        ("request_id", STRING), ("event_time", STRING), ("task", STRING), ("route", STRING),
        ("model_name", STRING), ("model_version", INT), ("variant", STRING),
        ("market", STRING), ("prompt_name", STRING), ("prompt_version", INT),
        ("inputs", STRING), ("output", STRING), ("thumbs_up", INT), ("thumbs_down", INT),
        ("rating", FLOAT), ("ratings", INT), ("labels", STRING), ("correction", STRING),
        ("clicks", INT), ("bookings", INT),
    ),
    "SFT": (
        ("request_id", STRING), ("event_time", STRING), ("task", STRING),
        ("model_name", STRING), ("model_version", INT), ("prompt_name", STRING),
        ("prompt_version", INT), ("inputs", STRING), ("response", STRING), ("source", STRING),
    ),
    "PREFERENCE": (
        ("chosen_request_id", STRING), ("rejected_request_id", STRING), ("event_time", STRING),
        ("task", STRING), ("inputs", STRING), ("chosen", STRING), ("rejected", STRING),
        ("source", STRING),
    ),
    "EVALUATION": (
        ("request_id", STRING), ("event_time", STRING), ("task", STRING),
        ("model_name", STRING), ("model_version", INT), ("inputs", STRING),
        ("output", STRING), ("reference", STRING), ("labels", STRING),
    ),
}  # fmt: skip
FILTER_COLUMNS: Mapping[str, tuple[str, str]] = {
    # name -> (SQL over the joined row, kind)
    "market": ("p.p_market", "string"),
    "route": ("p.p_route", "string"),
    "variant": ("p.p_variant", "string"),
    "model_name": ("p.p_model_name", "string"),
    "model_version": ("p.p_model_version", "number"),
    "prompt_version": ("p.p_prompt_version", "number"),
    "tenant": ("p.p_tenant", "string"),
    "rating": ("f.rating", "number"),
    "label": ("f.labels", "array"),
}
_OPS = {
    common_pb2.FieldCondition.OPERATOR_EQ: "=",
    common_pb2.FieldCondition.OPERATOR_NE: "!=",
    common_pb2.FieldCondition.OPERATOR_LT: "<",
    common_pb2.FieldCondition.OPERATOR_LTE: "<=",
    common_pb2.FieldCondition.OPERATOR_GT: ">",
    common_pb2.FieldCondition.OPERATOR_GTE: ">=",
}


@dataclass(frozen=True, slots=True)
class Acceptance:
    """What makes a response good enough for SFT."""

    accept_labels: tuple[str, ...] = ("accurate",)
    reject_labels: tuple[str, ...] = ("hallucination", "off_topic", "unsafe", "wrong_language")
    min_rating: float = 0.8
    """Of the scale (4 of 5)."""


@dataclass(frozen=True, slots=True)
class ExportQuery:
    task: str
    start: datetime
    end: datetime
    as_of: datetime
    shape: str = "EXAMPLES"
    kinds: tuple[str, ...] = ()
    """Feedback kinds (THUMBS, RATING, ...) an example must have; empty: any or none."""
    filter: common_pb2.Filter = field(default_factory=common_pb2.Filter)
    include_payloads: bool = True
    max_rows: int = 0
    sample_fraction: float = 1.0
    tenant: str = ""
    acceptance: Acceptance = Acceptance()


@dataclass(frozen=True, slots=True)
class ExportResult:
    rows: int
    bytes: int
    sha256: str
    last_event_time: str
    columns: tuple[str, ...]


class _Params:
    """Named query parameters, minted as they are needed."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def add(self, value: Any) -> str:
        name = f"v{len(self.values)}"
        self.values[name] = value
        return f"%({name})s"


def _python(v: common_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("filter", "a condition needs a value")
    if kind.endswith("_list_value"):
        return list(getattr(v, kind).values)
    return getattr(v, kind)


def filter_sql(f: common_pb2.Filter, params: _Params, at: str = "filter") -> str:
    """A Filter over the export's columns as SQL (INVALID_ARGUMENT naming the field)."""
    kind = f.WhichOneof("kind")
    if kind is None:
        return "1"
    if kind in ("all_of", "any_of"):
        parts = [
            filter_sql(sub, params, f"{at}.{kind}.filters[{i}]")
            for i, sub in enumerate(getattr(f, kind).filters)
        ]
        if not parts:
            return "1" if kind == "all_of" else "0"
        return "(" + (" AND " if kind == "all_of" else " OR ").join(parts) + ")"
    if kind == "negate":
        return f"NOT ({filter_sql(f.negate, params, f'{at}.negate')})"
    c = f.condition
    where = f"{at}.condition"
    if c.field not in FILTER_COLUMNS:
        raise InvalidArgument(f"{where}.field", f"one of {sorted(FILTER_COLUMNS)}")
    column, column_kind = FILTER_COLUMNS[c.field]
    op = c.operator
    if op == common_pb2.FieldCondition.OPERATOR_EXISTS:
        return f"notEmpty({column})" if column_kind != "number" else "1"
    value = _python(c.value)
    if column_kind == "array":
        if op in (
            common_pb2.FieldCondition.OPERATOR_EQ,
            common_pb2.FieldCondition.OPERATOR_CONTAINS,
        ):
            return f"has({column}, {params.add(str(value))})"
        if op == common_pb2.FieldCondition.OPERATOR_NE:
            return f"NOT has({column}, {params.add(str(value))})"
        if op in (common_pb2.FieldCondition.OPERATOR_IN, common_pb2.FieldCondition.OPERATOR_NOT_IN):
            if not isinstance(value, list):
                raise InvalidArgument(f"{where}.value", "IN takes a list")
            test = f"hasAny({column}, {params.add([str(x) for x in value])})"
            return test if op == common_pb2.FieldCondition.OPERATOR_IN else f"NOT {test}"
        raise InvalidArgument(f"{where}.operator", f"{c.field}: EQ, NE, IN, NOT_IN, CONTAINS")
    if op in (common_pb2.FieldCondition.OPERATOR_IN, common_pb2.FieldCondition.OPERATOR_NOT_IN):
        if not isinstance(value, list) or not value:
            raise InvalidArgument(f"{where}.value", "IN takes a non-empty list")
        word = "IN" if op == common_pb2.FieldCondition.OPERATOR_IN else "NOT IN"
        return f"{column} {word} {params.add(tuple(value))}"
    if op == common_pb2.FieldCondition.OPERATOR_CONTAINS and column_kind == "string":
        return f"position({column}, {params.add(str(value))}) > 0"
    if op not in _OPS:
        raise InvalidArgument(f"{where}.operator", "not supported on this field")
    if column_kind == "number" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise InvalidArgument(f"{where}.value", f"{c.field} compares with a number")
    if column_kind == "string" and not isinstance(value, str):
        raise InvalidArgument(f"{where}.value", f"{c.field} compares with a string")
    if column_kind == "string" and op not in (
        common_pb2.FieldCondition.OPERATOR_EQ,
        common_pb2.FieldCondition.OPERATOR_NE,
    ):
        raise InvalidArgument(f"{where}.operator", f"{c.field}: EQ, NE, IN, NOT_IN, CONTAINS")
    return f"{column} {_OPS[op]} {params.add(value)}"


def export_sql(q: ExportQuery) -> tuple[str, dict[str, Any]]:
    """The query whose rows are the dataset, in file order (``event_time``, then ids)."""
    params = _Params()
    start, end, as_of = params.add(q.start), params.add(q.end), params.add(q.as_of)
    task = params.add(q.task)
    tenant = f"AND tenant = {params.add(q.tenant)}" if q.tenant else ""
    sample = ""
    if 0 < q.sample_fraction < 1:
        per_million = params.add(int(q.sample_fraction * 1_000_000))
        sample = f"AND cityHash64(toString(request_id)) % 1000000 < {per_million}"
    where = filter_sql(q.filter, params)
    if q.kinds:
        where += f" AND hasAny(f.kinds, {params.add(list(q.kinds))})"
    fb_uuid = request_uuid("fb_request_id")
    ctes = f"""
WITH
fb AS (
    SELECT {fb_uuid} AS rid, k, t, r, s, l, c, ch, rj, at
    FROM (
        SELECT argMax(request_id, received_time) AS fb_request_id,
               argMax(kind, received_time) AS k, argMax(thumb, received_time) AS t,
               argMax(rating, received_time) AS r, argMax(rating_scale_max, received_time) AS s,
               argMax(label, received_time) AS l, argMax(corrected_text, received_time) AS c,
               argMax(chosen_request_id, received_time) AS ch,
               argMax(rejected_request_id, received_time) AS rj,
               max(received_time) AS at
        FROM feedback
        WHERE received_time <= {as_of} AND event_time >= {start} {tenant}
        GROUP BY {KEY_GROUP}
    )
    WHERE fb_request_id != '' OR k = 'PREFERENCE'
),
summary AS (
    SELECT rid,
           countIf(k = 'THUMBS' AND t = 'UP') AS thumbs_up,
           countIf(k = 'THUMBS' AND t = 'DOWN') AS thumbs_down,
           ifNotFinite(avgIf(r / s, k = 'RATING' AND s > 0), 0) AS rating,
           countIf(k = 'RATING') AS ratings,
           arraySort(groupUniqArrayIf(l, k = 'LABEL')) AS labels,
           argMaxIf(c, at, k = 'CORRECTION') AS correction,
           countIf(k = 'CLICK') AS clicks,
           countIf(k = 'BOOKING') AS bookings,
           groupUniqArray(k) AS kinds
    FROM fb
    WHERE k != 'PREFERENCE'
    GROUP BY rid
),
pred AS (
    SELECT request_id AS rid, min(event_time) AS p_time, any(tenant) AS p_tenant,
           any(market) AS p_market, any(route) AS p_route, any(model_name) AS p_model_name,
           any(model_version) AS p_model_version, any(variant) AS p_variant,
           any(prompt_name) AS p_prompt_name, any(prompt_version) AS p_prompt_version
    FROM predictions
    WHERE task = {task} AND event_time >= {start} AND event_time < {end} {tenant} {sample}
    GROUP BY request_id
),
pay AS (
    SELECT rid, {inputs_json("pl_inputs")} AS inputs_json, {output_text("pl_output")} AS output
    FROM (
        SELECT {request_uuid("request_id")} AS rid, any(inputs) AS pl_inputs,
               any(output) AS pl_output
        FROM prediction_payloads
        WHERE task = {task} AND event_time >= {start} AND event_time < {end} {tenant}
        GROUP BY rid
    )
),
joined AS (
    SELECT p.rid AS rid, p.p_time AS p_time, p.p_tenant AS tenant, p.p_market AS market,
           p.p_route AS route, p.p_model_name AS model_name,
           p.p_model_version AS model_version, p.p_variant AS variant,
           p.p_prompt_name AS prompt_name, p.p_prompt_version AS prompt_version,
           f.thumbs_up AS thumbs_up, f.thumbs_down AS thumbs_down, f.rating AS rating,
           f.ratings AS ratings, f.labels AS labels, f.correction AS correction,
           f.clicks AS clicks, f.bookings AS bookings,
           pl.inputs_json AS inputs, pl.output AS output,
           pl.rid != toUUID('00000000-0000-0000-0000-000000000000') AS has_payload
    FROM pred AS p
    LEFT JOIN summary AS f ON f.rid = p.rid
    LEFT JOIN pay AS pl ON pl.rid = p.rid
    WHERE {where}
)"""
    time_text = "toString(p_time, 'UTC')"
    limit = f"LIMIT {int(q.max_rows)}" if q.max_rows > 0 else ""
    keep_payloads = q.include_payloads
    inputs = "inputs" if keep_payloads else "''"
    output = "output" if keep_payloads else "''"
    acc = q.acceptance
    if q.shape == "EXAMPLES":
        body = f"""
SELECT toString(rid) AS request_id, {time_text} AS event_time, {task} AS task, route,
       model_name, toInt64(model_version) AS model_version, variant, market, prompt_name,
       toInt64(prompt_version) AS prompt_version, {inputs} AS inputs, {output} AS output,
       toInt64(thumbs_up) AS thumbs_up, toInt64(thumbs_down) AS thumbs_down,
       toFloat64(rating) AS rating, toInt64(ratings) AS ratings,
       arrayStringConcat(labels, '|') AS labels, correction,
       toInt64(clicks) AS clicks, toInt64(bookings) AS bookings
FROM joined
ORDER BY p_time, rid
{limit}"""
    elif q.shape == "SFT":
        accept, reject = params.add(list(acc.accept_labels)), params.add(list(acc.reject_labels))
        min_rating = params.add(acc.min_rating)
        body = f"""
SELECT toString(rid) AS request_id, {time_text} AS event_time, {task} AS task, model_name,
       toInt64(model_version) AS model_version, prompt_name,
       toInt64(prompt_version) AS prompt_version, inputs,
       if(correction != '', correction, output) AS response,
       multiIf(correction != '', 'correction', hasAny(labels, {accept}), 'label',
               thumbs_up > thumbs_down, 'thumbs', 'rating') AS source
FROM joined
WHERE has_payload AND (
    correction != ''
    OR ((hasAny(labels, {accept}) OR thumbs_up > thumbs_down
         OR (ratings > 0 AND rating >= {min_rating}))
        AND NOT hasAny(labels, {reject}) AND thumbs_down <= thumbs_up)
)
ORDER BY p_time, rid
{limit}"""
    elif q.shape == "EVALUATION":
        body = f"""
SELECT toString(rid) AS request_id, {time_text} AS event_time, {task} AS task, model_name,
       toInt64(model_version) AS model_version, inputs, output, correction AS reference,
       arrayStringConcat(labels, '|') AS labels
FROM joined
WHERE has_payload AND (correction != '' OR notEmpty(labels))
ORDER BY p_time, rid
{limit}"""
    else:  # PREFERENCE
        pairs = int(PAIRS_PER_INPUT)
        ch_uuid, rj_uuid = request_uuid("ch"), request_uuid("rj")
        body = f"""
SELECT chosen_request_id, rejected_request_id, event_time, {task} AS task, inputs, chosen,
       rejected, source
FROM (
    SELECT toString(a.rid) AS chosen_request_id, toString(b.rid) AS rejected_request_id,
           toString(a.p_time, 'UTC') AS event_time, a.p_time AS sort_time,
           a.inputs AS inputs, a.output AS chosen, b.output AS rejected,
           'preference' AS source
    FROM (SELECT {ch_uuid} AS c_rid, {rj_uuid} AS r_rid FROM fb WHERE k = 'PREFERENCE') AS pr
    INNER JOIN (SELECT * FROM joined WHERE has_payload) AS a ON a.rid = pr.c_rid
    INNER JOIN (SELECT rid, output FROM pay) AS b ON b.rid = pr.r_rid
    UNION ALL
    SELECT toString(tupleElement(up, 1)) AS chosen_request_id,
           toString(tupleElement(down, 1)) AS rejected_request_id,
           toString(greatest(tupleElement(up, 3), tupleElement(down, 3)), 'UTC') AS event_time,
           greatest(tupleElement(up, 3), tupleElement(down, 3)) AS sort_time, inputs,
           tupleElement(up, 2) AS chosen, tupleElement(down, 2) AS rejected,
           'thumbs' AS source
    FROM (
        SELECT inputs,
               arraySort(x -> x.3,
                         groupArrayIf((rid, output, p_time), thumbs_up > thumbs_down)) AS ups,
               arraySort(x -> x.3,
                         groupArrayIf((rid, output, p_time), thumbs_down > thumbs_up)) AS downs
        FROM joined
        WHERE has_payload
        GROUP BY inputs
        HAVING notEmpty(ups) AND notEmpty(downs)
    )
    ARRAY JOIN
        arraySlice(ups, 1, least(length(ups), length(downs), {pairs})) AS up,
        arraySlice(downs, 1, least(length(ups), length(downs), {pairs})) AS down
)
ORDER BY sort_time, chosen_request_id, rejected_request_id
{limit}"""
    return ctes + body, params.values


class Exporter:
    """Runs an export against ClickHouse and streams the file (see the module docstring)."""

    def __init__(self, clickhouse: Callable[[], ClickHouseStore], page_rows: int = PAGE_ROWS):
        self._clickhouse = clickhouse
        self.page_rows = page_rows

    def sources(self, q: ExportQuery) -> list[tuple[str, str, int]]:
        """(route, model, version) of the predictions the export draws on (blocking)."""
        return sources(self._clickhouse(), q)

    def stream(
        self, q: ExportQuery, fmt: str, done: Callable[[ExportResult], None]
    ) -> Iterator[bytes]:
        """The file's bytes in chunks of at most CHUNK_BYTES (blocking: run it off the event
        loop); ``done`` gets the totals after the last chunk."""
        store = self._clickhouse()
        sql, params = export_sql(q)
        scratch = identifier(f"_export_{uuid7().replace('-', '')}")
        columns = COLUMNS[q.shape]
        names = [n for n, _ in columns]
        store.execute(
            f"CREATE TABLE {scratch} ENGINE = MergeTree ORDER BY n AS "
            f"SELECT rowNumberInAllBlocks() AS n, * FROM ({sql})",
            params,
        )
        digest = hashlib.sha256()
        size = rows = 0
        last_time = ""
        try:
            total = int(store.query(f"SELECT count() AS c FROM {scratch}")[0]["c"])
            if total:
                last_time = str(store.query(f"SELECT max(event_time) AS t FROM {scratch}")[0]["t"])
            pages = (
                self._jsonl_pages(store, scratch, names, total)
                if fmt == "JSONL"
                else self._parquet_pages(store, scratch, columns, total)
            )
            for data in pages:
                for i in range(0, len(data), CHUNK_BYTES):
                    chunk = data[i : i + CHUNK_BYTES]
                    digest.update(chunk)
                    size += len(chunk)
                    yield chunk
            rows = total
        finally:
            store.execute(f"DROP TABLE IF EXISTS {scratch}")
        done(ExportResult(rows, size, digest.hexdigest(), last_time, tuple(names)))

    def _page(
        self, store: ClickHouseStore, scratch: str, select: str, first: int
    ) -> dict[str, list[Any]]:
        return store.query_columns(
            f"SELECT {select} FROM {scratch} WHERE n >= %(a)s AND n < %(b)s ORDER BY n "
            "SETTINGS output_format_json_quote_64bit_integers = 0",
            {"a": first, "b": first + self.page_rows},
        )

    def _jsonl_pages(
        self, store: ClickHouseStore, scratch: str, names: Sequence[str], total: int
    ) -> Iterator[bytes]:
        columns = ", ".join(identifier(n) for n in names)
        query_text = getattr(store, "query_text", None)
        for first in range(0, total, self.page_rows):
            if query_text is not None:  # chdb: ClickHouse's own JSONEachRow bytes, as they are
                yield query_text(
                    f"SELECT {columns} FROM {scratch} WHERE n >= %(a)s AND n < %(b)s ORDER BY n "
                    "SETTINGS output_format_json_quote_64bit_integers = 0",
                    {"a": first, "b": first + self.page_rows},
                    "JSONEachRow",
                )
            else:  # the server: each line formatted by ClickHouse, read as a column
                select = f"formatRow('JSONEachRow', {columns}) AS line"
                yield b"".join(self._page(store, scratch, select, first)["line"])

    def _parquet_pages(
        self, store: ClickHouseStore, scratch: str, columns: Sequence[tuple[str, pa.DataType]],
        total: int,
    ) -> Iterator[bytes]:  # fmt: skip
        schema = pa.schema(list(columns))
        sink = _Sink()
        writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema, compression="zstd")
        select = ", ".join(identifier(n) for n, _ in columns)
        query_arrow = getattr(store, "query_arrow", None)
        try:
            for first in range(0, total, self.page_rows):
                if query_arrow is not None:  # chdb: Arrow batches straight into Parquet
                    table = query_arrow(
                        f"SELECT {select} FROM {scratch} WHERE n >= %(a)s AND n < %(b)s ORDER BY n",
                        {"a": first, "b": first + self.page_rows},
                    )
                    if table is None:
                        continue
                    writer.write_table(table.cast(schema))
                else:
                    page = self._page(store, scratch, select, first)
                    arrays = [
                        pa.array(page[n], pa.binary()).cast(t)
                        if t == STRING
                        else pa.array(page[n], t)
                        for n, t in columns
                    ]
                    writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                yield sink.drain()
        finally:
            writer.close()
        yield sink.drain()


class _Sink:
    """A write-only file that hands its bytes over as they come (``drain``) while keeping the
    position the Parquet writer records offsets by."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data: bytes | memoryview) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts = []
        return data


def sources_sql(q: ExportQuery) -> tuple[str, dict[str, Any]]:
    """The routes and model versions of the task's predictions in the window: the
    dataset's lineage."""
    params = _Params()
    start, end, task = params.add(q.start), params.add(q.end), params.add(q.task)
    tenant = f"AND tenant = {params.add(q.tenant)}" if q.tenant else ""
    sql = f"""
SELECT DISTINCT route, model_name, toInt64(model_version) AS model_version
FROM predictions
WHERE task = {task} AND event_time >= {start} AND event_time < {end} {tenant}
ORDER BY route, model_name, model_version
LIMIT 100"""
    return sql, params.values


def sources(store: ClickHouseStore, q: ExportQuery) -> list[tuple[str, str, int]]:
    sql, params = sources_sql(q)
    return [
        (str(r["route"]), str(r["model_name"]), int(r["model_version"]))
        for r in store.query(sql, params)
    ]


@dataclass(frozen=True, slots=True)
class DatasetVersion:
    name: str
    version: int


class DatasetRegistry(Protocol):
    async def register(
        self, context: common_pb2.RequestContext, name: str, task: str, digest: str, rows: int,
        columns: Sequence[tuple[str, str]], window: tuple[datetime, datetime],
        produced_by: str, sources: Sequence[tuple[str, str, int]], timeout_s: float,
    ) -> DatasetVersion:  # fmt: skip
        """Register a file as a DATASET version; ``columns``: (name, ``string`` / ``int64`` /
        ``double``); ``sources``: (route, model, version) for its lineage."""
        ...


@dataclass(frozen=True, slots=True)
class ExportDone:
    """What the last chunk leaves: the totals, the window actually covered, the dataset."""

    result: ExportResult
    window: tuple[datetime, datetime]
    dataset: DatasetVersion | None


class Exports:
    """An export from the first chunk to its registration: the file streamed off the event
    loop, the window it covers, and with ``register_as`` its DATASET version."""

    def __init__(
        self,
        exporter: Exporter,
        datasets: DatasetRegistry | None = None,
        register_timeout_s: float = 10.0,
    ) -> None:
        self.exporter = exporter
        self.datasets = datasets
        self.register_timeout_s = register_timeout_s

    def check_registry(self, register_as: str) -> None:
        if register_as and self.datasets is None:
            raise FailedPrecondition("register_as: no governance registry is configured")

    async def run(
        self, q: ExportQuery, fmt: str, register_as: str, context: common_pb2.RequestContext
    ) -> AsyncIterator[bytes | ExportDone]:
        """The file's chunks, then one :class:`ExportDone`."""
        self.check_registry(register_as)
        results: list[ExportResult] = []
        async for chunk in stream_in_thread(self.exporter.stream(q, fmt, results.append)):
            yield chunk
        (result,) = results
        end = q.end
        if q.max_rows and result.rows >= q.max_rows and result.last_event_time:
            # the rows stop before the window's end: the window actually covered
            last = datetime.fromisoformat(result.last_event_time).replace(tzinfo=UTC)
            end = last + timedelta(milliseconds=1)
        dataset = None
        if register_as and self.datasets is not None:
            lineage = await asyncio.to_thread(self.exporter.sources, q)
            dataset = await self.datasets.register(
                context, register_as, q.task, result.sha256, result.rows,
                [(name, str(t)) for name, t in COLUMNS[q.shape]], (q.start, end),
                f"feedback.ExportDataset task={q.task} shape={q.shape} format={fmt} "
                f"as_of={q.as_of.isoformat()}",
                lineage, self.register_timeout_s,
            )  # fmt: skip
        yield ExportDone(result, (q.start, end), dataset)


async def stream_in_thread(chunks: Iterator[bytes], depth: int = 8) -> AsyncIterator[bytes]:
    """A blocking iterator's items, produced on a worker thread (at most ``depth`` ahead:
    a slow client slows the producer instead of filling memory)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                asyncio.run_coroutine_threadsafe(queue.put(("data", chunk)), loop).result()
            asyncio.run_coroutine_threadsafe(queue.put(("end", None)), loop).result()
        except BaseException as exc:  # handed to the consumer, raised there
            if not stop.is_set():
                asyncio.run_coroutine_threadsafe(queue.put(("error", exc)), loop).result()

    worker = loop.run_in_executor(None, produce)
    try:
        while True:
            kind, item = await queue.get()
            if kind == "end":
                break
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        while not queue.empty():  # unblock a producer waiting on a full queue
            queue.get_nowait()
        await asyncio.shield(worker)
