"""Events -> ClickHouse columns (llmops.clickhouse.rows)."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid

import numpy as np
import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from llmops.clickhouse import rows, values
from llmops.v1 import common_pb2, events_pb2, feedback_pb2

T0 = 1_790_000_000  # 2026-09-21T14:13:20Z


def _ts(seconds: int, millis: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=millis * 1_000_000)


def prediction(i: int, *, payload: bool = False) -> events_pb2.EventEnvelope:
    ev = events_pb2.PredictionEvent(
        event_id=f"0190f2a4-8c1e-7b3a-9f00-{i:012d}",
        event_time=_ts(T0 + i, 250),
        request_id=f"req-{i}",
        tenant="acme",
        market="NL",
        route="summary",
        model_name="m1",
        model_version=3,
        variant="control",
        total_latency_us=12_345 + i,
        status_code=14 if i % 10 == 0 else 0,
        usage=common_pb2.Usage(
            prompt_tokens=100,
            completion_tokens=20,
            time_to_first_token_ms=12.5,
            cost=common_pb2.Money(currency_code="USD", units=1, nanos=250_000_000),
        ),
        stages=[
            common_pb2.StageLatency(stage="model", duration_us=9000),
            common_pb2.StageLatency(stage="log", duration_us=50),
        ],
        guardrails=[
            common_pb2.GuardrailSummary(
                policy="in", verdict=common_pb2.VERDICT_FLAG, finding_types=["pii.email"]
            ),
            common_pb2.GuardrailSummary(
                policy="out", verdict=common_pb2.VERDICT_BLOCK, finding_types=["toxicity"]
            ),
        ],
        device=common_pb2.DEVICE_MOBILE_WEB,
        user_id=f"u-{i}",
    )
    if payload:
        ev.inputs["question"].string_value = "is breakfast included?"
        ev.output.string_value = "yes"
    return events_pb2.EventEnvelope(key=ev.request_id, prediction=ev)


def test_prediction_columns() -> None:
    items = [("llmops.predictions.v1", 3, 100 + i, prediction(i)) for i in range(3)]
    tables = rows.columns_for(items)
    assert set(tables) == {"predictions"}
    cols = tables["predictions"]
    assert {len(v) for v in cols.values()} == {3}
    assert cols["event_time"][1] == np.datetime64((T0 + 1) * 1000 + 250, "ms")
    assert cols["status_code"].tolist() == [14, 0, 0]
    # timings go to the table's *_in columns exact: the table rounds them (migration 0008)
    assert cols["ttft_us_in"].tolist() == [12_500] * 3
    assert cols["total_latency_us_in"].tolist() == [12_345, 12_346, 12_347]
    assert cols["cost_nanos"].tolist() == [1_250_000_000] * 3
    assert cols["stage_names"][0] == ["model", "log"]
    assert cols["stage_durations_us_in"][0] == [9000, 50]
    assert cols["guardrail_verdict"] == ["BLOCK"] * 3
    assert cols["guardrail_verdicts"][0] == ["FLAG", "BLOCK"]
    assert cols["guardrail_finding_types"][0] == ["pii.email", "toxicity"]
    assert cols["device"] == ["MOBILE_WEB"] * 3
    assert cols["log_offset"].tolist() == [100, 101, 102]
    assert cols["log_partition"].dtype == np.uint32
    assert not cols["has_payload"].any()
    assert cols["request_uuid"][0] == values.request_uuid("req-0")
    assert not {"event_id", "user_id", "session_id"} & cols.keys()  # migration 0003


def test_request_ids_become_uuids() -> None:
    canonical = "0190f2a4-8c1e-7b3a-9f00-00000000002a"
    assert values.request_uuid(canonical) == canonical
    assert values.request_uuid(canonical.upper()) == canonical
    assert values.request_uuid(canonical.replace("-", "")) == canonical
    # anything else: the UUID of its SHA-256's first 16 bytes (migration 0003 does the same)
    assert values.request_uuid("req-1") == str(
        uuid.UUID(bytes=hashlib.sha256(b"req-1").digest()[:16])
    )
    assert values.request_uuid("{" + canonical + "}") != canonical  # only the two plain forms


def test_payloads_go_to_their_own_table() -> None:
    items = [("llmops.predictions.v1", 0, i, prediction(i, payload=i == 1)) for i in range(3)]
    tables = rows.columns_for(items)
    payloads = tables["prediction_payloads"]
    assert payloads["request_id"] == ["req-1"]  # text here: the table keeps the caller's id
    assert payloads["user_id"] == ["u-1"]
    assert payloads["inputs"] == [{"question": '{"string_value":"is breakfast included?"}'}]
    assert payloads["output"] == ['{"string_value":"yes"}']
    assert payloads["log_offset"].tolist() == [1]
    assert tables["predictions"]["has_payload"].tolist() == [False, True, False]


def test_other_kinds_and_grouping() -> None:
    fb = events_pb2.FeedbackEvent(
        event_id="e1",
        event_time=_ts(T0),
        received_time=_ts(T0 + 1),
        kind=feedback_pb2.FEEDBACK_KIND_BOOKING,
        feedback=feedback_pb2.Feedback(
            idempotency_key="k",
            booking=feedback_pb2.Booking(
                booking_id="b1", value=common_pb2.Money(currency_code="EUR", units=120)
            ),
        ),
    )
    before = struct_pb2.Struct()
    before.update({"alias": "champion", "version": 3})
    audit = events_pb2.AuditEvent(
        event_id="a1",
        event_time=_ts(T0),
        chain="tenant:x",
        sequence=1,
        before=before,
        outcome=events_pb2.AUDIT_OUTCOME_SUCCESS,
    )
    items = [
        ("llmops.feedback.v1", 0, 7, events_pb2.EventEnvelope(feedback=fb)),
        ("llmops.audit.v1", 1, 9, events_pb2.EventEnvelope(audit=audit)),
        ("llmops.predictions.v1", 2, 5, prediction(0)),
    ]
    tables = rows.columns_for(items)
    assert set(tables) == {"feedback", "audit", "predictions"}
    assert tables["feedback"]["kind"] == ["BOOKING"]
    assert tables["feedback"]["value_nanos"].tolist() == [120_000_000_000]
    assert tables["feedback"]["value_currency"] == ["EUR"]
    assert tables["audit"]["outcome"] == ["SUCCESS"]
    assert tables["audit"]["before"] == ['{"alias":"champion","version":3.0}']
    record = base64.b64decode(tables["audit"]["record"][0])
    assert events_pb2.AuditEvent.FromString(record) == audit
    assert set(rows.TOPIC_TABLES.values()) == set(rows.KIND_TABLES.values())


def test_envelope_without_event_is_refused() -> None:
    with pytest.raises(rows.UnknownEventKind):
        rows.columns_for([("llmops.predictions.v1", 0, 0, events_pb2.EventEnvelope())])


def test_conversion_rate_is_fit_for_the_hot_path() -> None:
    """Reports rows/s; asserts only a floor far below the measured rate (noisy CI)."""
    items = [("llmops.predictions.v1", i % 6, i, prediction(i)) for i in range(20_000)]
    start = time.perf_counter()
    cols = rows.columns_for(items)["predictions"]
    rate = len(items) / (time.perf_counter() - start)
    print(f"prediction conversion: {rate:,.0f} rows/s")
    assert len(cols["request_uuid"]) == 20_000
    assert rate > 10_000


def test_unknown_enum_values_and_negative_numbers_do_not_fail_the_batch() -> None:
    env = prediction(1)
    env.prediction.device = 99  # a newer producer's enum value
    env.prediction.model_version = -5
    env.prediction.stages[0].duration_us = -1
    cols = rows.columns_for([("llmops.predictions.v1", 0, 0, env)])["predictions"]
    assert cols["device"] == ["99"]
    assert cols["model_version"].tolist() == [0]
    assert cols["stage_durations_us_in"] == [[0, 50]]
