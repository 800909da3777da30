"""Log records -> rows parsed by ClickHouse itself (its ``Protobuf`` input format).

The Python path (:mod:`llmops.clickhouse.rows`) reads every field of every decoded event
in Python: ~30-50k prediction rows/s per core. Here the record's bytes go to ClickHouse as
they are, framed as length-delimited messages, and one ``INSERT ... SELECT`` turns them
into the table's columns: ClickHouse parses the protobuf in C++ and derives every column
in SQL (the same rules as the Python path, checked column by column by
tests/unit/test_protobuf_rows.py).

The message ClickHouse parses is ``SinkRecord`` of ``format_schemas/llmops_sink.proto``:
the event's envelope with the record's log position appended as fields 100-102 (appended
protobuf fields merge into the message), so framing a record costs a few byte-string
joins, not a decode. Only the fields the tables read are declared there; the rest of the
envelope is skipped by the parser.

What stays in Python, and why:

* ``prediction_payloads`` rows (inputs/output): ``Value`` is a recursive message that the
  Protobuf format cannot map to columns, and the rows carry its JSON text. Only the
  predictions that carry a payload (a task's logging policy allows it) take that path.
* the other event kinds, until their tables move here (predictions are the volume).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmops.v1 import common_pb2, inference_pb2

SCHEMA_DIR = Path(__file__).parent / "format_schemas"
SCHEMA_FILE = SCHEMA_DIR / "llmops_sink.proto"
MESSAGE = "SinkRecord"

# Tags of the position fields appended to each record (field << 3 | wire type).
_TOPIC_TAG = b"\xa2\x06"  # 100, length-delimited
_PARTITION_TAG = b"\xa8\x06"  # 101, varint
_OFFSET_TAG = b"\xb1\x06"  # 102, fixed64
_OFFSET_BYTES = 8


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_VARINTS = tuple(_encode_varint(n) for n in range(1 << 14))
"""Two bytes or fewer: every record up to 16 KiB, looked up instead of encoded."""


def varint(n: int) -> bytes:
    return _SMALL_VARINTS[n] if n < 16384 else _encode_varint(n)


def position_head(topic: str, partition: int) -> bytes:
    """The bytes every record of ``topic``[``partition``] ends with, before its offset."""
    name = topic.encode()
    return _TOPIC_TAG + varint(len(name)) + name + _PARTITION_TAG + varint(partition) + _OFFSET_TAG


def frame(records: Sequence[tuple[str, int, int, bytes]]) -> bytes:
    """Length-delimited ``SinkRecord`` messages of (topic, partition, offset, record value)
    in the given order: each value with its log position appended."""
    runs: list[tuple[str, int, list[int], list[bytes]]] = []
    for (topic, partition), grouped in itertools.groupby(records, lambda r: (r[0], r[1])):
        run = list(grouped)
        runs.append((topic, partition, [r[2] for r in run], [r[3] for r in run]))
    return frame_runs(runs)[0]


def frame_runs(
    runs: Sequence[tuple[str, int, Sequence[int], Sequence[bytes]]], pieces: int = 1
) -> tuple[bytes, ...]:
    """Length-delimited ``SinkRecord`` messages of runs of one partition each, (topic,
    partition, offsets, values), in order: each value with its log position appended; cut
    into ``pieces`` of about as many messages each (ClickHouse parses pieces in parallel),
    one empty piece when there is no message."""
    parts: list[bytes] = []
    append = parts.append
    small = _SMALL_VARINTS
    for topic, partition, offsets, values in runs:
        head = position_head(topic, partition)
        extra = len(head) + _OFFSET_BYTES
        for offset, value in zip(offsets, values, strict=True):
            size = len(value) + extra
            append(small[size] if size < 16384 else _encode_varint(size))
            append(value)
            append(head)
            append(offset.to_bytes(_OFFSET_BYTES, "little"))
    rows = len(parts) // 4  # four parts a message
    cuts = [4 * (rows * k // pieces) for k in range(pieces + 1)]
    return tuple(b"".join(parts[lo:hi]) for lo, hi in itertools.pairwise(cuts) if hi > lo) or (b"",)


@dataclass(frozen=True, slots=True)
class ProtobufBlock:
    """One table's rows as length-delimited ``SinkRecord`` messages, and the SQL that turns
    them into the table's columns."""

    pieces: tuple[bytes, ...]
    """The messages, in one or more pieces (each a whole number of messages)."""
    rows: int
    structure: str
    """The columns ClickHouse reads from each message (``input``/``file`` structure)."""
    select: str
    """``WITH ... SELECT ...`` over the structure's columns, one expression per column."""
    columns: tuple[str, ...]
    """The table's columns the SELECT fills, in its order."""

    order_by: str = ""
    """A query's (not an insert's) order: the pieces of a block are parsed in parallel."""

    @property
    def data(self) -> bytes:
        """The messages in one piece."""
        return self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)


# -- SQL helpers ----------------------------------------------------------------------------


def _enum_names_sql(expr: str, enum: object, prefix: str) -> str:
    """An int32 enum field as its value's name without ``prefix`` (the Python path's
    ``_EnumNames``); a number this build does not know as its decimal text."""
    values = enum.DESCRIPTOR.values  # type: ignore[attr-defined]
    numbers = ", ".join(str(v.number) for v in values)
    names = ", ".join(f"'{v.name.removeprefix(prefix)}'" for v in values)
    return f"transform({expr}, [{numbers}], [{names}], toString({expr}))"


def _clip_u(expr: str, bits: int) -> str:
    """An integer clipped into UInt<bits> (the Python path's ``_ints``)."""
    top = (1 << bits) - 1
    return f"toUInt{bits}(least(greatest({expr}, 0), {top}))"


def _us_sql(expr: str) -> str:
    """Milliseconds (double) as integer microseconds, rounded half to even (numpy's
    ``rint``; ClickHouse's ``round`` on floats does the same) and clipped into UInt32."""
    return f"toUInt32(if(isNaN({expr}), 0, least(greatest(round({expr} * 1000), 0), 4294967295)))"


_UUID_PATTERN = (
    "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    "|[0-9a-fA-F]{32})$"
)


def _request_uuid_sql(expr: str) -> str:
    """:func:`llmops.clickhouse.values.request_uuid` in SQL: a UUID's text is itself, any
    other id the UUID of the first 16 bytes of its SHA-256."""
    plain = f"lower(replaceAll({expr}, '-', ''))"
    dashed = (
        f"concat(substring({plain}, 1, 8), '-', substring({plain}, 9, 4), '-', "
        f"substring({plain}, 13, 4), '-', substring({plain}, 17, 4), '-', "
        f"substring({plain}, 21, 12))"
    )
    hashed = f"UUIDNumToString(toFixedString(substring(SHA256({expr}), 1, 16), 16))"
    return f"toUUID(if(match({expr}, '{_UUID_PATTERN}'), {dashed}, {hashed}))"


def _field(name: str) -> str:
    return f"`prediction.{name}`"


_PREDICTION_STRUCTURE: tuple[tuple[str, str], ...] = (
    ("prediction.event_time.seconds", "Int64"),
    ("prediction.event_time.nanos", "Int32"),
    ("prediction.request_id", "String"),
    ("prediction.tenant", "String"),
    ("prediction.market", "String"),
    ("prediction.route", "String"),
    ("prediction.task", "String"),
    ("prediction.model_name", "String"),
    ("prediction.model_version", "Int64"),
    ("prediction.experiment_id", "String"),
    ("prediction.variant", "String"),
    ("prediction.total_latency_us", "Int64"),
    ("prediction.cache_hit", "Bool"),
    ("prediction.status_code", "Int32"),
    ("prediction.usage.prompt_tokens", "Int64"),
    ("prediction.usage.completion_tokens", "Int64"),
    ("prediction.usage.cached_prompt_tokens", "Int64"),
    ("prediction.usage.time_to_first_token_ms", "Float64"),
    ("prediction.usage.time_per_output_token_ms", "Float64"),
    ("prediction.usage.queue_time_ms", "Float64"),
    ("prediction.usage.total_time_ms", "Float64"),
    ("prediction.usage.cost.currency_code", "String"),
    ("prediction.usage.cost.units", "Int64"),
    ("prediction.usage.cost.nanos", "Int32"),
    ("prediction.stages.stage", "Array(String)"),
    ("prediction.stages.duration_us", "Array(Int64)"),
    ("prediction.guardrails.policy", "Array(String)"),
    ("prediction.guardrails.verdict", "Array(Int32)"),
    ("prediction.guardrails.finding_types", "Array(Array(String))"),
    ("prediction.feature_vector_hash", "String"),
    ("prediction.prompt_name", "String"),
    ("prediction.prompt_version", "Int64"),
    ("prediction.route_target_index", "Int32"),
    ("prediction.locale", "String"),
    ("prediction.device", "Int32"),
    ("prediction.client_name", "String"),
    ("prediction.finish_reason", "Int32"),
    ("prediction.error_reason", "String"),
    ("prediction.skipped_steps", "Array(String)"),
    ("prediction.inputs", "Array(String)"),
    ("prediction.output", "String"),
    ("log_topic", "String"),
    ("log_partition", "UInt32"),
    ("log_offset", "UInt64"),
)

_SEVERITY_NAMES = "['ALLOW', 'FLAG', 'REDACT', 'BLOCK']"  # rows._SEVERITY: others rank 0

_PREDICTION_WITH = (
    ("_verdicts", "arrayMap(v -> {}, {})".format(
        _enum_names_sql("v", common_pb2.Verdict, "VERDICT_"), _field("guardrails.verdict"))),
    ("_severity", f"arrayMap(v -> transform(v, {_SEVERITY_NAMES}, [1, 2, 3, 4], 0), _verdicts)"),
)  # fmt: skip

_PREDICTION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_time", "fromUnixTimestamp64Milli(toInt64({s} * 1000 + floor({n} / 1000000)), 'UTC')"
     .format(s=_field("event_time.seconds"), n=_field("event_time.nanos"))),
    ("request_uuid", _request_uuid_sql(_field("request_id"))),
    ("tenant", _field("tenant")),
    ("market", _field("market")),
    ("route", _field("route")),
    ("task", _field("task")),
    ("model_name", _field("model_name")),
    ("model_version", _clip_u(_field("model_version"), 32)),
    ("experiment_id", _field("experiment_id")),
    ("variant", _field("variant")),
    ("total_latency_us_in", _clip_u(_field("total_latency_us"), 32)),
    ("cache_hit", _field("cache_hit")),
    ("status_code", _clip_u(_field("status_code"), 8)),
    ("prompt_tokens", _clip_u(_field("usage.prompt_tokens"), 32)),
    ("completion_tokens", _clip_u(_field("usage.completion_tokens"), 32)),
    ("cached_prompt_tokens", _clip_u(_field("usage.cached_prompt_tokens"), 32)),
    ("ttft_us_in", _us_sql(_field("usage.time_to_first_token_ms"))),
    ("tpot_us_in", _us_sql(_field("usage.time_per_output_token_ms"))),
    ("queue_us_in", _us_sql(_field("usage.queue_time_ms"))),
    ("model_time_us_in", _us_sql(_field("usage.total_time_ms"))),
    ("cost_nanos", "{u} * 1000000000 + {n}".format(
        u=_field("usage.cost.units"), n=_field("usage.cost.nanos"))),
    ("cost_currency", _field("usage.cost.currency_code")),
    ("stage_names", _field("stages.stage")),
    ("stage_durations_us_in",
     f"arrayMap(d -> {_clip_u('d', 32)}, {_field('stages.duration_us')})"),
    ("guardrail_verdict",
     "if(empty(_verdicts), '', _verdicts[indexOf(_severity, arrayMax(_severity))])"),
    ("guardrail_policies", _field("guardrails.policy")),
    ("guardrail_verdicts", "_verdicts"),
    ("guardrail_finding_types",
     f"arraySort(arrayDistinct(arrayFlatten({_field('guardrails.finding_types')})))"),
    ("feature_vector_hash", _field("feature_vector_hash")),
    ("prompt_name", _field("prompt_name")),
    ("prompt_version", _clip_u(_field("prompt_version"), 32)),
    ("route_target_index", _clip_u(_field("route_target_index"), 8)),
    ("locale", _field("locale")),
    ("device", _enum_names_sql(_field("device"), common_pb2.Device, "DEVICE_")),
    ("client_name", _field("client_name")),
    ("finish_reason", _enum_names_sql(
        _field("finish_reason"), inference_pb2.FinishReason, "FINISH_REASON_")),
    ("error_reason", _field("error_reason")),
    ("skipped_steps", _field("skipped_steps")),
    ("has_payload", f"notEmpty({_field('inputs')}) OR notEmpty({_field('output')})"),
    ("log_topic", "log_topic"),
    ("log_partition", "log_partition"),
    ("log_offset", "log_offset"),
)  # fmt: skip


def _select(
    with_: Sequence[tuple[str, str]], columns: Sequence[tuple[str, str]]
) -> tuple[str, tuple[str, ...]]:
    head = ("WITH " + ", ".join(f"{expr} AS {name}" for name, expr in with_) + " ") if with_ else ""
    body = ", ".join(f"{expr} AS `{name}`" for name, expr in columns)
    return f"{head}SELECT {body}", tuple(name for name, _ in columns)


def _structure(fields: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"`{name}` {kind}" for name, kind in fields)


SCREEN_COLUMNS = ("log_partition", "log_offset", "event_id", "unusable", "has_payload")
"""What a screen of a block returns per record (see :attr:`TableSpec.screen_select`), in
log order: by topic, partition and offset."""


@dataclass(frozen=True, slots=True)
class TableSpec:
    """How ClickHouse derives one raw table's columns from a batch of records."""

    table: str
    kind: str
    """The envelope's event field (``prediction``) whose records the table holds."""
    fields: tuple[tuple[str, str], ...]
    """(name, ClickHouse type) of each message field read, then the log position."""
    select: str
    columns: tuple[str, ...]
    screen_fields: tuple[tuple[str, str], ...]
    screen_select: str
    """Per record, before a sink's bulk insert (:data:`SCREEN_COLUMNS`): its position, its
    event id, whether the Python path would refuse it (no event id, no event time, another
    event kind in the envelope, an event id that is not UTF-8), and whether it carries a
    payload (rows of ``prediction_payloads``, made in Python)."""

    @property
    def structure(self) -> str:
        """:attr:`fields` as an ``input``/``file`` structure."""
        return _structure(self.fields)

    def block(self, records: Sequence[tuple[str, int, int, bytes]]) -> ProtobufBlock:
        return ProtobufBlock(
            (frame(records),), len(records), self.structure, self.select, self.columns
        )

    def run_block(
        self, runs: Sequence[tuple[str, int, Sequence[int], Sequence[bytes]]], pieces: int = 1
    ) -> ProtobufBlock:
        """:meth:`block` of runs, (topic, partition, offsets, values) of one partition each,
        in ``pieces`` (:func:`frame_runs`)."""
        rows = sum(len(values) for _, _, _, values in runs)
        framed = frame_runs(runs, pieces)
        return ProtobufBlock(framed, rows, self.structure, self.select, self.columns)

    def screen(self, block: ProtobufBlock) -> ProtobufBlock:
        """The screen query (:attr:`screen_select`) over ``block``'s messages."""
        return ProtobufBlock(
            block.pieces, block.rows, _structure(self.screen_fields), self.screen_select,
            SCREEN_COLUMNS, order_by="log_topic, log_partition, log_offset",
        )  # fmt: skip


_OTHER_KINDS = ("prediction", "feedback", "exposure", "guardrail_decision", "audit")
"""The envelope's event fields; SinkRecord declares those a table does not read as bytes, so
a screen sees an envelope that holds one of them."""


def _screen(
    kind: str, structure: Sequence[tuple[str, str]], payload_fields: Sequence[str]
) -> tuple[tuple[tuple[str, str], ...], str]:
    """(fields, select) of the screen of ``kind``'s table (:attr:`TableSpec.screen_select`)."""
    types = dict(structure)
    others = [k for k in _OTHER_KINDS if k != kind]
    payload = [f"{kind}.{name}" for name in payload_fields]
    fields = [
        (f"{kind}.event_id", "String"),
        (f"{kind}.event_time.seconds", "Int64"),
        (f"{kind}.event_time.nanos", "Int32"),
        *((name, types[name]) for name in payload),
        *((name, "String") for name in others),
        ("log_topic", "String"),
        ("log_partition", "UInt32"),
        ("log_offset", "UInt64"),
    ]
    event_id = f"`{kind}.event_id`"
    unusable = " OR ".join(
        [
            f"empty({event_id})",
            f"NOT isValidUTF8({event_id})",
            f"(`{kind}.event_time.seconds` = 0 AND `{kind}.event_time.nanos` = 0)",
            *(f"notEmpty(`{name}`)" for name in others),
        ]
    )
    paid = " OR ".join(f"notEmpty(`{name}`)" for name in payload) or "false"
    select = (
        f"SELECT log_partition, log_offset, {event_id} AS event_id, "
        f"({unusable}) AS unusable, ({paid}) AS has_payload"
    )
    return tuple(fields), select


def _spec(
    table: str,
    kind: str,
    structure: Sequence[tuple[str, str]],
    with_: Sequence[tuple[str, str]],
    columns: Sequence[tuple[str, str]],
    payload_fields: Sequence[str] = (),
) -> TableSpec:
    select, names = _select(with_, columns)
    screen_fields, screen_select = _screen(kind, structure, payload_fields)
    return TableSpec(table, kind, tuple(structure), select, names, screen_fields, screen_select)


PREDICTIONS = _spec(
    "predictions", "prediction", _PREDICTION_STRUCTURE, _PREDICTION_WITH, _PREDICTION_COLUMNS,
    payload_fields=("inputs", "output"),
)  # fmt: skip

KIND_SPECS: dict[str, TableSpec] = {"prediction": PREDICTIONS}
"""Event kinds whose raw table ClickHouse fills from the records' bytes."""


def insert_sql(qualified_table: str, block: ProtobufBlock, source: str, settings: str) -> str:
    """``INSERT INTO <table> (<columns>) SETTINGS ... WITH ... SELECT ... FROM <source>``:
    ``source`` is where the framed messages come from (``input(...)`` for a server's HTTP
    body, ``file(...)`` for chdb)."""
    cols = ", ".join(f"`{c}`" for c in block.columns)
    return (
        f"INSERT INTO {qualified_table} ({cols}) SETTINGS {settings} {block.select} FROM {source}"
    )
