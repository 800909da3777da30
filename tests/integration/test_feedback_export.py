"""ExportDataset on chdb: predictions joined with feedback as of a point in time, in each shape
(examples, SFT, preference pairs, evaluation) and format (JSONL, Parquet), paged through a
scratch table, filtered and sampled; the request checks that name the field."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from llmops.clickhouse.chdb_store import ChdbStore
from llmops.clickhouse.migrations import apply_migrations
from llmops.clickhouse.rows import columns_for, value_json
from llmops.errors import InvalidArgument
from llmops.v1 import common_pb2, events_pb2, feedback_pb2
from services.feedback.export import Acceptance, Exporter, ExportQuery, ExportResult, sources
from services.feedback.servicer import export_query

pytestmark = pytest.mark.infra

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)  # payloads keep 7 days
R = {c: str(uuid.UUID(int=(9 << 64) + i)) for i, c in enumerate("ABCDEFGHIJ")}
INPUTS = {  # A and B answer the same inputs (a thumbs pair); the others their own
    c: {"property_name": "Casa Azul" if c in "AB" else f"House {c}"} for c in R
}


def logged(text: str) -> str:
    """A Value as the sink logs it (its proto3 JSON)."""
    return value_json(common_pb2.Value(string_value=text))


@pytest.fixture(scope="module")
def store(chdb_session: Any) -> Iterator[ChdbStore]:
    s = ChdbStore(chdb_session, database="it_feedback_export")
    s.execute("DROP DATABASE IF EXISTS it_feedback_export")
    s = ChdbStore(chdb_session, database="it_feedback_export")
    apply_migrations(s)
    names = list(R)
    times = np.array(
        [(T0 + timedelta(minutes=i)).replace(tzinfo=None) for i in range(len(names))],
        dtype="datetime64[ms]",
    )
    s.insert("predictions", {
        "event_time": times, "request_uuid": [R[c] for c in names], "tenant": ["acme"] * 10,
        "market": ["gb"] * 5 + ["de"] * 5, "task": ["property_summary"] * 10,
        "route": ["summary-small"] * 10, "model_name": ["smollm2"] * 10,
        "model_version": [1] * 10, "variant": ["a", "b"] * 5, "prompt_name": ["p"] * 10,
        "prompt_version": [3] * 10,
    })  # fmt: skip
    s.insert("prediction_payloads", {
        "event_time": times, "event_id": [str(uuid.uuid4()) for _ in names],
        "request_id": [R[c] for c in names], "tenant": ["acme"] * 10,
        "task": ["property_summary"] * 10,
        "inputs": [{k: logged(v) for k, v in INPUTS[c].items()} for c in names],
        "output": [logged(f"summary {c}") for c in names],
    })  # fmt: skip
    events: list[events_pb2.EventEnvelope] = []

    def add(key: str, c: str, minutes: int, **kind: Any) -> None:
        env = events_pb2.EventEnvelope()
        ev = env.feedback
        ev.event_id, ev.tenant, ev.request_id = str(uuid.uuid4()), "acme", R.get(c, "")
        ev.event_time.FromDatetime(T0 + timedelta(minutes=minutes))
        ev.received_time.FromDatetime(T0 + timedelta(minutes=minutes))
        name, message = next(iter(kind.items()))
        ev.kind = feedback_pb2.FeedbackKind.Value(f"FEEDBACK_KIND_{name.upper()}")
        ev.feedback.CopyFrom(feedback_pb2.Feedback(
            idempotency_key=key, request_id=R.get(c, ""), name=name, **{name: message}
        ))  # fmt: skip
        events.append(env)

    up, down = feedback_pb2.Thumbs(thumb=1), feedback_pb2.Thumbs(thumb=2)
    add("a", "A", 30, thumbs=up)
    add("b", "B", 30, thumbs=down)
    add("pref", "", 31, preference=feedback_pb2.Preference(
        chosen_request_id=R["C"], rejected_request_id=R["D"]))  # fmt: skip
    add("e", "E", 32, correction=feedback_pb2.Correction(corrected_text="Better summary E."))
    add("f", "F", 33, label=feedback_pb2.Label(value="accurate"))
    add("g", "G", 34, rating=feedback_pb2.Rating(value=5, scale_max=5))
    add("h1", "H", 35, thumbs=up)
    add("h2", "H", 35, label=feedback_pb2.Label(value="hallucination"))
    add("i", "I", 60 * 30, thumbs=up)  # received after the export's point in time
    items = [("llmops.feedback.v1", 0, i, e) for i, e in enumerate(events)]
    for table, cols in columns_for(items).items():
        s.insert(table, cols)
    yield s
    s.execute("DROP DATABASE IF EXISTS it_feedback_export")


def query(shape: str = "EXAMPLES", **kw: Any) -> ExportQuery:
    kw.setdefault("as_of", T0 + timedelta(hours=2))
    return ExportQuery(
        task="property_summary", start=T0 - timedelta(hours=1), end=T0 + timedelta(hours=1),
        shape=shape, tenant="acme", **kw,
    )  # fmt: skip


def run(
    store: ChdbStore, q: ExportQuery, fmt: str, page_rows: int = 3
) -> tuple[bytes, ExportResult]:
    results: list[ExportResult] = []
    data = b"".join(Exporter(lambda: store, page_rows).stream(q, fmt, results.append))
    (result,) = results
    assert result.bytes == len(data) and result.sha256 == hashlib.sha256(data).hexdigest()
    assert not store.query("SHOW TABLES LIKE '_export_%'")  # the scratch table is gone
    return data, result


def rows_of(data: bytes, fmt: str) -> list[dict[str, Any]]:
    if fmt == "JSONL":
        return [json.loads(line) for line in data.decode().splitlines()]
    return pq.read_table(io.BytesIO(data)).to_pylist()  # type: ignore[no-any-return]


@pytest.mark.parametrize("fmt", ["JSONL", "PARQUET"])
def test_examples_join_feedback_as_of_the_cut_off(store: ChdbStore, fmt: str) -> None:
    data, result = run(store, query(), fmt)
    rows = {r["request_id"]: r for r in rows_of(data, fmt)}
    assert result.rows == 10 and set(rows) == set(R.values())  # every prediction, in order
    assert [r["request_id"] for r in rows_of(data, fmt)] == [R[c] for c in "ABCDEFGHIJ"]
    a = rows[R["A"]]
    assert (a["thumbs_up"], a["thumbs_down"], a["variant"], a["model_version"]) == (1, 0, "a", 1)
    assert json.loads(a["inputs"]) == {"property_name": "Casa Azul"} and a["output"] == "summary A"
    assert rows[R["E"]]["correction"] == "Better summary E."
    assert rows[R["G"]]["rating"] == 1.0 and rows[R["G"]]["ratings"] == 1
    assert rows[R["H"]]["labels"] == "hallucination"
    assert rows[R["I"]]["thumbs_up"] == 0  # its thumb came after the point in time
    later, _ = run(store, query(as_of=T0 + timedelta(hours=31)), fmt)
    assert {r["request_id"]: r for r in rows_of(later, fmt)}[R["I"]]["thumbs_up"] == 1


def test_sft_keeps_accepted_responses_and_prefers_corrections(store: ChdbStore) -> None:
    data, _ = run(store, query("SFT"), "JSONL")
    rows = {r["request_id"]: r for r in rows_of(data, "JSONL")}
    assert set(rows) == {R["A"], R["E"], R["F"], R["G"]}  # H: thumbs up but hallucination
    assert (
        rows[R["E"]]["response"] == "Better summary E." and rows[R["E"]]["source"] == "correction"
    )
    assert (rows[R["F"]]["source"], rows[R["G"]]["source"]) == ("label", "rating")
    assert rows[R["A"]]["response"] == "summary A" and rows[R["A"]]["prompt_version"] == 3


@pytest.mark.parametrize("fmt", ["JSONL", "PARQUET"])
def test_preference_pairs_from_choices_and_from_thumbs(store: ChdbStore, fmt: str) -> None:
    data, result = run(store, query("PREFERENCE"), fmt)
    pairs = {(r["source"], r["chosen"], r["rejected"]) for r in rows_of(data, fmt)}
    assert pairs == {
        ("thumbs", "summary A", "summary B"), ("preference", "summary C", "summary D"),
    }  # fmt: skip
    assert result.rows == 2


def test_evaluation_rows_carry_the_human_reference(store: ChdbStore) -> None:
    data, _ = run(store, query("EVALUATION"), "JSONL")
    rows = {r["request_id"]: r for r in rows_of(data, "JSONL")}
    assert set(rows) == {R["E"], R["F"], R["H"]}
    assert rows[R["E"]]["reference"] == "Better summary E." and rows[R["F"]]["labels"] == "accurate"


def test_filters_kinds_sampling_and_limits(store: ChdbStore) -> None:
    by_variant = common_pb2.Filter(condition=common_pb2.FieldCondition(
        field="variant", operator=common_pb2.FieldCondition.OPERATOR_EQ,
        value=common_pb2.Value(string_value="b"),
    ))  # fmt: skip
    data, _ = run(store, query(filter=by_variant), "JSONL")
    assert {r["variant"] for r in rows_of(data, "JSONL")} == {"b"}
    labelled = common_pb2.Filter(condition=common_pb2.FieldCondition(
        field="label", operator=common_pb2.FieldCondition.OPERATOR_EQ,
        value=common_pb2.Value(string_value="accurate"),
    ))  # fmt: skip
    data, _ = run(store, query(filter=labelled), "JSONL")
    assert [r["request_id"] for r in rows_of(data, "JSONL")] == [R["F"]]
    data, _ = run(store, query(kinds=("THUMBS",)), "JSONL")
    assert {r["request_id"] for r in rows_of(data, "JSONL")} == {R["A"], R["B"], R["H"]}
    data, result = run(store, query(max_rows=4), "JSONL")
    assert result.rows == 4 and result.last_event_time.startswith(
        (T0 + timedelta(minutes=3)).strftime("%Y-%m-%d %H:%M")
    )
    half, _ = run(store, query(sample_fraction=0.5), "JSONL")
    again, _ = run(store, query(sample_fraction=0.5), "JSONL")
    assert half == again and 0 < len(rows_of(half, "JSONL")) < 10  # deterministic
    assert sources(store, query()) == [("summary-small", "smollm2", 1)]


def test_requests_are_checked_field_by_field() -> None:
    now = datetime.now(UTC)

    def check(**kw: Any) -> str:
        kw.setdefault("task", "property_summary")
        request = feedback_pb2.ExportDatasetRequest(**kw)
        if "window" not in kw:
            request.window.start_time.FromDatetime(now - timedelta(days=1))
            request.window.end_time.FromDatetime(now)
        with pytest.raises(InvalidArgument) as info:
            export_query(request, now, Acceptance())
        return info.value.field

    assert check(window=common_pb2.TimeRange()) == "window"
    assert check(format=7) == "format"
    assert check(sample_fraction=1.5) == "sample_fraction"
    assert check(shape=feedback_pb2.DATASET_SHAPE_SFT) == "include_payloads"
    assert check(register_as="Bad Name!") == "register_as"
    assert check(kinds=[feedback_pb2.FEEDBACK_KIND_UNSPECIFIED]) == "kinds[0]"
    bad_field = common_pb2.Filter(condition=common_pb2.FieldCondition(
        field="colour", operator=common_pb2.FieldCondition.OPERATOR_EQ,
        value=common_pb2.Value(string_value="red"),
    ))  # fmt: skip
    assert check(filter=bad_field) == "filter.condition.field"
    assert check(task="", include_payloads=True) == "task"


class _Portable:
    """The store as the ClickHouse server backend offers it: no chdb-only bulk reads, so the
    exporter takes its portable path (``query_columns``)."""

    def __init__(self, inner: ChdbStore) -> None:
        self._inner = inner
        self.name, self.database = inner.name, inner.database

    def __getattr__(self, name: str) -> Any:
        if name in ("query_text", "query_arrow"):
            raise AttributeError(name)
        return getattr(self._inner, name)


@pytest.mark.parametrize("fmt", ["JSONL", "PARQUET"])
def test_the_portable_path_writes_the_same_file(store: ChdbStore, fmt: str) -> None:
    fast, _ = run(store, query(), fmt)
    portable: list[ExportResult] = []
    data = b"".join(
        Exporter(lambda: _Portable(store), 3).stream(query(), fmt, portable.append)  # type: ignore[arg-type,return-value]
    )
    assert rows_of(data, fmt) == rows_of(fast, fmt)
    if fmt == "JSONL":
        assert data == fast  # byte for byte
