"""Rows that ClickHouse derives from the records' bytes (llmops.clickhouse.protobuf_rows)
are the rows the Python path makes (llmops.clickhouse.rows), column by column, on the real
engine (chdb, the full schema with its rollups): realistic events and the edge cases each
rule exists for. And the sink schema stays wire-compatible with events.proto."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor

from llmops.clickhouse import kafka_engine, protobuf_rows, rows
from llmops.clickhouse.chdb_store import ChdbStore
from llmops.clickhouse.migrations import apply_migrations
from llmops.events.synthetic import prediction_envelope
from llmops.v1 import common_pb2, events_pb2

pytestmark = pytest.mark.infra

TOPIC = "llmops.predictions.v1"


@pytest.fixture
def stores(chdb_session: Any) -> Iterator[tuple[ChdbStore, ChdbStore]]:
    """Two databases with the full schema: one loaded by each path."""
    made = []
    for path in ("py", "pb"):
        database = f"it_pbrows_{path}_{uuid.uuid4().hex[:8]}"
        ChdbStore(chdb_session).execute(f"CREATE DATABASE {database}")
        store = ChdbStore(chdb_session, database=database)
        apply_migrations(store)
        made.append(store)
    yield made[0], made[1]
    for store in made:
        store.execute(f"DROP DATABASE IF EXISTS {store.database}")


def _load_both(
    stores: tuple[ChdbStore, ChdbStore], envelopes: list[events_pb2.EventEnvelope]
) -> tuple[bytes, bytes]:
    """The table's rows (TSV, in log order) as each path stores them."""
    python, raw = stores
    items = [(TOPIC, i % 3, 100 + i, e) for i, e in enumerate(envelopes)]
    python.insert("predictions", rows.columns_for(items)["predictions"], dedup_token="t")
    block = protobuf_rows.PREDICTIONS.block(
        [(t, p, o, e.SerializeToString()) for t, p, o, e in items]
    )
    assert raw.insert_protobuf("predictions", block, dedup_token="t") == len(items)
    sql = "SELECT * FROM predictions ORDER BY log_partition, log_offset"
    return python.query_text(sql, None, "TSVWithNames"), raw.query_text(sql, None, "TSVWithNames")


def _differences(a: bytes, b: bytes) -> list[str]:
    lines_a, lines_b = a.splitlines(), b.splitlines()
    names = lines_a[0].split(b"\t")
    out = [f"row count {len(lines_a)} != {len(lines_b)}"] if len(lines_a) != len(lines_b) else []
    for row, (x, y) in enumerate(zip(lines_a[1:], lines_b[1:], strict=False)):
        for name, u, v in zip(names, x.split(b"\t"), y.split(b"\t"), strict=True):
            if u != v:
                out.append(f"row {row} {name.decode()}: python {u[:120]!r} protobuf {v[:120]!r}")
    return out


def test_realistic_predictions_are_stored_alike(stores: tuple[ChdbStore, ChdbStore]) -> None:
    rng = random.Random(7)
    now = time.time_ns()
    envelopes = [prediction_envelope(rng, event_time_ns=now - i * 997_000) for i in range(3000)]
    python, raw = _load_both(stores, envelopes)
    assert _differences(python, raw) == []
    rollup = (
        "SELECT minute, tenant, route, model_name, model_version, variant, requests, errors, "
        "cache_hits, guardrail_blocks, prompt_tokens, completion_tokens, cost_nanos, "
        "finalizeAggregation(latency_us), finalizeAggregation(ttft_us) FROM predictions_1m "
        "ORDER BY minute, tenant, route, model_name, model_version, variant FORMAT TSV"
    )
    assert stores[0].query_text(rollup, None, "TSV") == stores[1].query_text(rollup, None, "TSV")


def _edge_cases() -> list[events_pb2.EventEnvelope]:
    """Each field at the edge its rule exists for."""
    out = []

    def event(**fields: Any) -> events_pb2.PredictionEvent:
        env = events_pb2.EventEnvelope(producer="test", key="k")
        env.prediction.event_id = str(uuid.uuid4())
        env.prediction.event_time.FromMilliseconds(1_790_000_000_123)
        for name, value in fields.items():
            setattr(env.prediction, name, value)
        out.append(env)
        return env.prediction

    event()  # nothing but the required fields
    event(request_id="0190F2A4-8C1E-7B3A-9F00-0000000000AB")  # upper case UUID
    event(request_id="0190f2a48c1e7b3a9f000000000000ab")  # 32 hex digits
    event(request_id="req-\N{GRINNING FACE}-1")  # any other id: hashed
    event(request_id="0190f2a4-8c1e-7b3a-9f00-0000000000abX")  # almost a UUID
    event(tenant="t\tab", market="", route="r\\n", task="\N{CJK UNIFIED IDEOGRAPH-6F22}")
    event(model_version=-5, total_latency_us=2**40, status_code=-1, prompt_version=2**33)
    event(status_code=300, route_target_index=-2, device=99, finish_reason=42)
    e = event()
    e.usage.prompt_tokens, e.usage.completion_tokens = -1, 2**35
    e.usage.time_to_first_token_ms = 0.0005  # half a microsecond: rounds to even (0)
    e.usage.time_per_output_token_ms = 0.0015  # 1.5 us -> 2
    e.usage.queue_time_ms = float("nan")
    e.usage.total_time_ms = float("inf")
    e.usage.cost.units, e.usage.cost.nanos, e.usage.cost.currency_code = -3, -500, "EUR"
    e = event()
    e.usage.time_to_first_token_ms = -7.0
    e.usage.time_per_output_token_ms = 1e30
    e = event()
    e.stages.add(stage="model", duration_us=-4)
    e.stages.add(stage="", duration_us=2**33)
    e.stages.add(stage="log", duration_us=7)
    e.skipped_steps.extend(["postprocess", ""])
    e = event()  # guardrails: the worst verdict, the first of equals; finding types sorted
    e.guardrails.add(policy="in", verdict=common_pb2.VERDICT_REDACT, finding_types=["b", "a"])
    e.guardrails.add(policy="out", verdict=common_pb2.VERDICT_FLAG, finding_types=["a", "c"])
    e.guardrails.add(policy="x", verdict=77, finding_types=[])
    e = event()
    e.guardrails.add(policy="only-unknown", verdict=0)
    e.guardrails.add(policy="second", verdict=55)
    e = event()
    e.guardrails.add(policy="block", verdict=common_pb2.VERDICT_BLOCK)
    e.guardrails.add(policy="allow", verdict=common_pb2.VERDICT_ALLOW)
    e = event(cache_hit=True, experiment_id="exp", variant="v", prompt_name="p", locale="nl-NL")
    e.feature_vector_hash = "ab" * 16
    e.client_name, e.error_reason = "web", "MODEL_TIMEOUT"
    e = event()  # payloads: inputs only, output only, an empty output (no payload)
    e.inputs["q"].string_value = "breakfast?"
    event().output.string_value = "yes"
    event().output.SetInParent()
    e = event()
    e.inputs[""].SetInParent()  # an entry with the empty key and value: still a payload
    return out


def test_edge_cases_are_stored_alike(stores: tuple[ChdbStore, ChdbStore]) -> None:
    python, raw = _load_both(stores, _edge_cases())
    assert _differences(python, raw) == []
    rows_raw = stores[1].query(
        "SELECT has_payload, device, finish_reason, guardrail_verdict FROM predictions "
        "ORDER BY log_partition, log_offset"
    )
    assert {r["device"] for r in rows_raw} >= {"UNSPECIFIED", "99"}  # an unknown value kept
    assert "42" in {r["finish_reason"] for r in rows_raw}
    assert [r["has_payload"] for r in rows_raw].count(True) == 3


def test_a_repeated_insert_with_its_token_is_dropped(stores: tuple[ChdbStore, ChdbStore]) -> None:
    rng = random.Random(8)
    now = time.time_ns()
    items = [(TOPIC, 0, i, prediction_envelope(rng, event_time_ns=now)) for i in range(500)]
    block = protobuf_rows.PREDICTIONS.block(
        [(t, p, o, e.SerializeToString()) for t, p, o, e in items]
    )
    _, raw = stores
    for _ in range(2):
        raw.insert_protobuf("predictions", block, dedup_token="same")
    raw.insert_protobuf("predictions", block, dedup_token="another")
    counts = raw.query(
        "SELECT (SELECT count() FROM predictions) AS raw, "
        "(SELECT sum(requests) FROM predictions_1m) AS rollup"
    )[0]
    assert (counts["raw"], counts["rollup"]) == (1000, 1000)


def test_a_block_in_pieces_is_parsed_in_parallel_and_stored_as_one_part(
    stores: tuple[ChdbStore, ChdbStore],
) -> None:
    """The bulk path's blocks come in pieces (one per core): still one atomic part per
    insert, the same rows as one piece, and the token still drops a repeat."""
    rng = random.Random(11)
    now = time.time_ns()
    values = [prediction_envelope(rng, event_time_ns=now).SerializeToString() for _ in range(3000)]
    runs = [(TOPIC, p, range(p * 1000, p * 1000 + 1000), values[p::3]) for p in range(3)]
    whole, pieces = (protobuf_rows.PREDICTIONS.run_block(runs, n) for n in (1, 3))
    assert len(pieces.pieces) == 3 and pieces.data == whole.data
    python, raw = stores
    python.insert_protobuf("predictions", whole, dedup_token="one")
    for _ in range(2):
        raw.insert_protobuf("predictions", pieces, dedup_token="three")
    parts = raw.query(
        "SELECT count() AS n FROM system.parts WHERE database = currentDatabase() "
        "AND table = 'predictions' AND active"
    )[0]["n"]
    assert parts == 1
    ordered = "SELECT * FROM predictions ORDER BY log_partition, log_offset FORMAT TSV"
    assert python.query_text(ordered, None, "TSV") == raw.query_text(ordered, None, "TSV")
    assert raw.query("SELECT sum(requests) AS n FROM predictions_1m")[0]["n"] == 3000


def test_the_screen_flags_what_the_python_path_would_refuse(
    stores: tuple[ChdbStore, ChdbStore],
) -> None:
    """Per record, in log order whatever the pieces: its event id, whether the Python path
    refuses it (no event id, no event time, another event in the envelope), whether it
    carries a payload."""
    _, raw = stores
    rng = random.Random(12)
    now = time.time_ns()
    good = [prediction_envelope(rng, event_time_ns=now) for _ in range(4)]
    good[1].prediction.output.string_value = "a payload"
    no_id = events_pb2.EventEnvelope()
    no_id.prediction.event_time.GetCurrentTime()
    no_time = events_pb2.EventEnvelope()
    no_time.prediction.event_id = "e-1"
    audit = events_pb2.EventEnvelope()
    audit.audit.event_id = "a-1"
    audit.audit.event_time.GetCurrentTime()
    # a producer that wrote two events into one envelope: Python keeps the last one
    two = good[3].SerializeToString() + audit.SerializeToString()
    envelopes = [*good[:3], no_id, no_time, audit]
    values = [e.SerializeToString() for e in envelopes] + [two]
    runs = [(TOPIC, 1, range(10, 14), values[3:]), (TOPIC, 0, range(0, 3), values[:3])]
    runs.sort(key=lambda r: (r[0], r[1]))
    spec = protobuf_rows.PREDICTIONS
    for pieces in (1, 2):
        table = raw.query_protobuf(spec.screen(spec.run_block(runs, pieces)))
        assert table.column_names == list(protobuf_rows.SCREEN_COLUMNS)
        rows = table.to_pylist()
        assert [(r["log_partition"], r["log_offset"]) for r in rows] == [
            (0, 0), (0, 1), (0, 2), (1, 10), (1, 11), (1, 12), (1, 13)
        ]  # fmt: skip
        assert [r["unusable"] for r in rows] == [False] * 3 + [True] * 4
        assert [r["has_payload"] for r in rows] == [False, True] + [False] * 5
        assert [r["event_id"] for r in rows[:3]] == [e.prediction.event_id for e in good[:3]]


def test_a_record_clickhouse_cannot_parse_fails_the_insert(
    stores: tuple[ChdbStore, ChdbStore],
) -> None:
    """The sink isolates such a record by halving the batch (as for any refused row)."""
    from llmops.clickhouse.base import ClickHouseQueryError

    _, raw = stores
    good = prediction_envelope(random.Random(9), event_time_ns=time.time_ns())
    block = protobuf_rows.PREDICTIONS.block(
        [(TOPIC, 0, 0, good.SerializeToString()), (TOPIC, 0, 1, b"\x52\xff\xff\xff\x0f")]
    )
    with pytest.raises(ClickHouseQueryError):
        raw.insert_protobuf("predictions", block)
    assert raw.query("SELECT count() AS n FROM predictions")[0]["n"] == 0  # atomic


# -- the sink schema against the contract -----------------------------------------------------


def _sink_messages() -> dict[str, Any]:
    """The sink schema's messages, compiled by protoc (grpc_tools) into descriptors."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out = protobuf_rows.SCHEMA_DIR / "__descriptor_check.pb"
    try:
        code = protoc.main(
            [
                "protoc",
                f"-I{protobuf_rows.SCHEMA_DIR}",
                f"--descriptor_set_out={out}",
                protobuf_rows.SCHEMA_FILE.name,
            ]
        )
        assert code == 0, "llmops_sink.proto does not compile"
        from google.protobuf import descriptor_pb2

        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    finally:
        out.unlink(missing_ok=True)
    return {m.name: m for f in files.file for m in f.message_type}


_WIRE = {
    descriptor.FieldDescriptor.TYPE_STRING: "len",
    descriptor.FieldDescriptor.TYPE_BYTES: "len",
    descriptor.FieldDescriptor.TYPE_MESSAGE: "len",
    descriptor.FieldDescriptor.TYPE_DOUBLE: "i64",
    descriptor.FieldDescriptor.TYPE_FIXED64: "i64",
    descriptor.FieldDescriptor.TYPE_INT64: "varint",
    descriptor.FieldDescriptor.TYPE_INT32: "varint",
    descriptor.FieldDescriptor.TYPE_UINT32: "varint",
    descriptor.FieldDescriptor.TYPE_BOOL: "varint",
    descriptor.FieldDescriptor.TYPE_ENUM: "varint",
}


def test_the_sink_schema_reads_the_contracts_fields_by_number_and_wire_type() -> None:
    """Every field the sink schema declares is the contract's field of that number, with
    the same name and wire type (an enum read as int32, a Value or a map entry as bytes),
    so a record's bytes parse as the schema says. Fields 100+ of SinkRecord are the sink's
    own (the log position it appends)."""
    sink = _sink_messages()
    contract = {
        "SinkRecord": events_pb2.EventEnvelope.DESCRIPTOR,
        "PredictionEvent": events_pb2.PredictionEvent.DESCRIPTOR,
        "Timestamp": events_pb2.PredictionEvent.DESCRIPTOR.fields_by_name[
            "event_time"
        ].message_type,
        "Usage": common_pb2.Usage.DESCRIPTOR,
        "Money": common_pb2.Money.DESCRIPTOR,
        "StageLatency": common_pb2.StageLatency.DESCRIPTOR,
        "GuardrailSummary": common_pb2.GuardrailSummary.DESCRIPTOR,
    }
    assert set(sink) == set(contract)
    for name, message in sink.items():
        theirs = contract[name].fields_by_number
        for f in message.field:
            if name == "SinkRecord" and f.number >= 100:
                continue
            assert f.number in theirs, f"{name}.{f.name} = {f.number} is not in the contract"
            other = theirs[f.number]
            assert f.name == other.name, f"{name} field {f.number}: {f.name} vs {other.name}"
            assert _WIRE[f.type] == _WIRE[other.type], f"{name}.{f.name}: wire type differs"  # type: ignore[index]
            repeated = f.label == f.LABEL_REPEATED
            assert repeated == other.is_repeated, f"{name}.{f.name}"
            if f.type == f.TYPE_MESSAGE:
                assert f.type_name.rsplit(".", 1)[-1] == other.message_type.name
    assert events_pb2.EventEnvelope.DESCRIPTOR.fields_by_name["prediction"].number == 10


def test_kafka_engine_view_stores_what_the_sink_stores(
    chdb_session: Any, stores: tuple[ChdbStore, ChdbStore], tmp_path: Path
) -> None:
    """The Kafka table engine's statements (llmops.clickhouse.kafka_engine) with the Kafka
    table swapped for a Null table of the same columns plus the engine's virtual columns
    (chdb has no Kafka engine): the view stores the rows the sink's Protobuf path stores,
    drops records of other kinds and routes unparsed ones to the error table."""
    database = f"it_kafka_engine_{uuid.uuid4().hex[:8]}"
    ChdbStore(chdb_session).execute(f"CREATE DATABASE {database}")
    store = ChdbStore(chdb_session, database=database)
    try:
        apply_migrations(store)
        made = kafka_engine.statements("kafka-1:9092", queue="stub")
        assert "ENGINE = Kafka" in made[0] and "ProtobufSingle" in made[0]
        for statement in made:
            store.query("EXPLAIN AST " + statement)
        store.execute(
            f"CREATE TABLE stub ({kafka_engine.queue_columns()}, _topic String, "
            "_partition UInt64, _offset UInt64, _error String, _raw_message String) "
            "ENGINE = Null"
        )
        for statement in made[1:]:
            store.execute(statement)
        rng = random.Random(11)
        now = time.time_ns()
        envelopes = [prediction_envelope(rng, event_time_ns=now - i * 991_000) for i in range(500)]
        envelopes += _edge_cases()
        items = [(TOPIC, i % 3, 100 + i, e.SerializeToString()) for i, e in enumerate(envelopes)]
        other = events_pb2.EventEnvelope(producer="t", key="k")
        other.exposure.event_id = str(uuid.uuid4())
        items.append((TOPIC, 0, 99_999, other.SerializeToString()))
        block = protobuf_rows.PREDICTIONS.block(items)
        path = tmp_path / "records.bin"
        path.write_bytes(block.data)
        fields = ", ".join(
            f"`{n}`" for n, _ in protobuf_rows.PREDICTIONS.fields if not n.startswith("log_")
        )  # the stub's columns are these, underscored, in this order
        store.execute(
            f"INSERT INTO stub SELECT {fields}, log_topic, log_partition, log_offset, '', '' "
            f"FROM file('{path}', 'Protobuf', '{block.structure}') SETTINGS format_schema = "
            f"'{protobuf_rows.SCHEMA_FILE}:{protobuf_rows.MESSAGE}'"
        )
        store.execute(
            "INSERT INTO stub (_topic, _partition, _offset, _error, _raw_message) "
            f"VALUES ('{TOPIC}', 1, 5, 'Cannot parse input', 'garbage')"
        )
        sink = stores[1]
        assert sink.insert_protobuf("predictions", protobuf_rows.PREDICTIONS.block(items[:-1])) > 0
        sql = "SELECT * FROM predictions ORDER BY log_partition, log_offset"
        assert (
            _differences(
                sink.query_text(sql, None, "TSVWithNames"),
                store.query_text(sql, None, "TSVWithNames"),
            )
            == []
        )
        errors = store.query("SELECT log_offset, error, record FROM stub_errors")
        assert [(r["log_offset"], r["error"], r["record"]) for r in errors] == [
            (5, "Cannot parse input", "garbage")
        ]
    finally:
        store.execute(f"DROP DATABASE IF EXISTS {database}")
