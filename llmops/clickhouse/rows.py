"""Decoded events -> columns for :meth:`ClickHouseStore.insert` (the sink's hot path).

One entry point, :func:`columns_for`: a batch of ``(topic, partition, offset, envelope)``
becomes ``{table: {column: values}}``, grouped by the event kind the envelope's oneof names
(``prediction`` -> ``predictions`` and, when it carries inputs/output,
``prediction_payloads``; ``feedback``, ``exposure``, ``guardrail_decision``, ``audit``).
Columns are built one list comprehension per column over the batch (protobuf attribute
reads are the cost; see ``test_clickhouse_rows`` for the measured rate), times as numpy
``datetime64[ms]`` (UTC), integers as typed numpy arrays, enums as their names without the
proto prefix (``VERDICT_BLOCK`` -> ``BLOCK``), money as integer nanos, Values/Structs as
JSON text, the audit record as base64 of its deterministic serialization.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
from google.protobuf import json_format
from google.protobuf.message import Message

from llmops.v1 import common_pb2, events_pb2, experiment_pb2, feedback_pb2, inference_pb2

Item = tuple[str, int, int, events_pb2.EventEnvelope]
"""(log topic, log partition, log offset, decoded envelope)."""
Columns = dict[str, Any]

TOPIC_KINDS: dict[str, str] = {
    "llmops.predictions.v1": "prediction",
    "llmops.feedback.v1": "feedback",
    "llmops.exposures.v1": "exposure",
    "llmops.guardrail-decisions.v1": "guardrail_decision",
    "llmops.audit.v1": "audit",
}
"""Topic -> the envelope oneof it carries (deploy/kafka/topics.yaml)."""

KIND_TABLES: dict[str, str] = {
    "prediction": "predictions",
    "feedback": "feedback",
    "exposure": "exposures",
    "guardrail_decision": "guardrail_decisions",
    "audit": "audit",
}
"""Envelope oneof -> raw table."""

TOPIC_TABLES: dict[str, str] = {t: KIND_TABLES[k] for t, k in TOPIC_KINDS.items()}
_SEVERITY = {"": 0, "ALLOW": 1, "FLAG": 2, "REDACT": 3, "BLOCK": 4}


class UnknownEventKind(ValueError):
    """An envelope with no event set (or a kind this version does not know)."""


def _enum_names(enum: Any, prefix: str) -> dict[int, str]:
    return {v.number: v.name.removeprefix(prefix) for v in enum.DESCRIPTOR.values}


_VERDICT = _enum_names(common_pb2.Verdict, "VERDICT_")
_DIRECTION = _enum_names(common_pb2.Direction, "DIRECTION_")
_DEVICE = _enum_names(common_pb2.Device, "DEVICE_")
_FINISH = _enum_names(inference_pb2.FinishReason, "FINISH_REASON_")
_FEEDBACK_KIND = _enum_names(feedback_pb2.FeedbackKind, "FEEDBACK_KIND_")
_THUMB = _enum_names(feedback_pb2.Thumb, "THUMB_")
_REASON = _enum_names(experiment_pb2.AssignmentReason, "ASSIGNMENT_REASON_")
_ACTOR = _enum_names(events_pb2.ActorType, "ACTOR_TYPE_")
_OUTCOME = _enum_names(events_pb2.AuditOutcome, "AUDIT_OUTCOME_")


def _ms(events: Sequence[Any], field: str = "event_time") -> np.ndarray:
    ts = [getattr(e, field) for e in events]
    return np.array([t.seconds * 1000 + t.nanos // 1_000_000 for t in ts], dtype="datetime64[ms]")


def _u32(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint32)


def _nanos(money: common_pb2.Money) -> int:
    return money.units * 1_000_000_000 + money.nanos


def _us(ms: float) -> int:
    return max(0, round(ms * 1000))


def value_json(value: Message) -> str:
    """A protobuf message (Value, Struct) as compact JSON text (proto3 JSON mapping)."""
    return orjson.dumps(
        json_format.MessageToDict(value, preserving_proto_field_name=True),
        option=orjson.OPT_SORT_KEYS,
    ).decode()


def _position(items: Sequence[Item]) -> Columns:
    return {
        "log_topic": [i[0] for i in items],
        "log_partition": np.array([i[1] for i in items], dtype=np.uint32),
        "log_offset": np.array([i[2] for i in items], dtype=np.uint64),
    }


def _worst(verdicts: list[str]) -> str:
    return max(verdicts, key=_SEVERITY.__getitem__) if verdicts else ""


def prediction_columns(items: Sequence[Item]) -> Columns:
    """Columns of ``predictions`` for envelopes carrying a PredictionEvent."""
    ev = [i[3].prediction for i in items]
    usage = [e.usage for e in ev]
    verdicts = [[_VERDICT[g.verdict] for g in e.guardrails] for e in ev]
    return {
        "event_time": _ms(ev),
        "event_id": [e.event_id for e in ev],
        "request_id": [e.request_id for e in ev],
        "tenant": [e.tenant for e in ev],
        "market": [e.market for e in ev],
        "route": [e.route for e in ev],
        "task": [e.task for e in ev],
        "model_name": [e.model_name for e in ev],
        "model_version": _u32([e.model_version for e in ev]),
        "experiment_id": [e.experiment_id for e in ev],
        "variant": [e.variant for e in ev],
        "total_latency_us": _u32([max(0, e.total_latency_us) for e in ev]),
        "cache_hit": np.array([e.cache_hit for e in ev], dtype=bool),
        "status_code": np.array([e.status_code for e in ev], dtype=np.uint8),
        "prompt_tokens": _u32([u.prompt_tokens for u in usage]),
        "completion_tokens": _u32([u.completion_tokens for u in usage]),
        "cached_prompt_tokens": _u32([u.cached_prompt_tokens for u in usage]),
        "ttft_us": _u32([_us(u.time_to_first_token_ms) for u in usage]),
        "tpot_us": _u32([_us(u.time_per_output_token_ms) for u in usage]),
        "queue_us": _u32([_us(u.queue_time_ms) for u in usage]),
        "model_time_us": _u32([_us(u.total_time_ms) for u in usage]),
        "cost_nanos": np.array([_nanos(u.cost) for u in usage], dtype=np.int64),
        "cost_currency": [u.cost.currency_code for u in usage],
        "stage_names": [[s.stage for s in e.stages] for e in ev],
        "stage_durations_us": [[max(0, s.duration_us) for s in e.stages] for e in ev],
        "guardrail_verdict": [_worst(v) for v in verdicts],
        "guardrail_policies": [[g.policy for g in e.guardrails] for e in ev],
        "guardrail_verdicts": verdicts,
        "guardrail_finding_types": [
            sorted({t for g in e.guardrails for t in g.finding_types}) for e in ev
        ],
        "feature_vector_hash": [e.feature_vector_hash for e in ev],
        "prompt_name": [e.prompt_name for e in ev],
        "prompt_version": _u32([e.prompt_version for e in ev]),
        "route_target_index": np.array([e.route_target_index for e in ev], dtype=np.uint8),
        "locale": [e.locale for e in ev],
        "device": [_DEVICE[e.device] for e in ev],
        "client_name": [e.client_name for e in ev],
        "user_id": [e.user_id for e in ev],
        "session_id": [e.session_id for e in ev],
        "finish_reason": [_FINISH[e.finish_reason] for e in ev],
        "error_reason": [e.error_reason for e in ev],
        "has_payload": np.array([_has_payload(e) for e in ev], dtype=bool),
        **_position(items),
    }


def _has_payload(e: events_pb2.PredictionEvent) -> bool:
    return bool(e.inputs) or e.HasField("output")


def payload_columns(items: Sequence[Item]) -> Columns:
    """Columns of ``prediction_payloads`` for the predictions that carry inputs/output."""
    kept = [i for i in items if _has_payload(i[3].prediction)]
    ev = [i[3].prediction for i in kept]
    return {
        "event_time": _ms(ev),
        "event_id": [e.event_id for e in ev],
        "request_id": [e.request_id for e in ev],
        "tenant": [e.tenant for e in ev],
        "route": [e.route for e in ev],
        "task": [e.task for e in ev],
        "model_name": [e.model_name for e in ev],
        "model_version": _u32([e.model_version for e in ev]),
        "inputs": [{k: value_json(v) for k, v in e.inputs.items()} for e in ev],
        "output": [value_json(e.output) if e.HasField("output") else "" for e in ev],
        **_position(kept),
    }


def feedback_columns(items: Sequence[Item]) -> Columns:
    """Columns of ``feedback``."""
    ev = [i[3].feedback for i in items]
    fb = [e.feedback for e in ev]
    value = [f.booking.value if f.HasField("booking") else f.conversion.value for f in fb]
    return {
        "event_time": _ms(ev),
        "received_time": _ms(ev, "received_time"),
        "event_id": [e.event_id for e in ev],
        "request_id": [e.request_id for e in ev],
        "tenant": [e.tenant for e in ev],
        "market": [e.market for e in ev],
        "unit_type": [e.unit_type for e in ev],
        "unit_id": [e.unit_id for e in ev],
        "kind": [_FEEDBACK_KIND[e.kind] for e in ev],
        "idempotency_key": [f.idempotency_key for f in fb],
        "task": [f.task for f in fb],
        "source": [f.source for f in fb],
        "annotator_id": [f.annotator_id for f in fb],
        "label_queue": [f.label_queue for f in fb],
        "thumb": [_THUMB[f.thumbs.thumb] if f.HasField("thumbs") else "" for f in fb],
        "rating": np.array([f.rating.value for f in fb], dtype=np.int32),
        "rating_scale_max": np.array([f.rating.scale_max for f in fb], dtype=np.int32),
        "label": [f.label.value for f in fb],
        "label_confidence": np.array([f.label.confidence for f in fb], dtype=np.float32),
        "label_note": [f.label.note for f in fb],
        "corrected_text": [f.correction.corrected_text for f in fb],
        "correction_field": [f.correction.field for f in fb],
        "item_id": [f.click.item_id or f.booking.item_id for f in fb],
        "position": np.array([f.click.position for f in fb], dtype=np.int32),
        "booking_id": [f.booking.booking_id for f in fb],
        "conversion_type": [f.conversion.conversion_type for f in fb],
        "value_nanos": np.array([_nanos(v) for v in value], dtype=np.int64),
        "value_currency": [v.currency_code for v in value],
        "dwell_ms": np.array([f.dwell.dwell_ms for f in fb], dtype=np.int64),
        "attributes": [{k: value_json(v) for k, v in f.attributes.items()} for f in fb],
        **_position(items),
    }


def exposure_columns(items: Sequence[Item]) -> Columns:
    """Columns of ``exposures``."""
    ev = [i[3].exposure for i in items]
    return {
        "event_time": _ms(ev),
        "event_id": [e.event_id for e in ev],
        "request_id": [e.request_id for e in ev],
        "tenant": [e.tenant for e in ev],
        "market": [e.market for e in ev],
        "unit_type": [e.unit_type for e in ev],
        "unit_id": [e.unit_id for e in ev],
        "experiment_id": [e.experiment_id for e in ev],
        "experiment_version": _u32([e.experiment_version for e in ev]),
        "layer": [e.layer for e in ev],
        "variant": [e.variant for e in ev],
        "bucket": _u32([max(0, e.bucket) for e in ev]),
        "reason": [_REASON[e.reason] for e in ev],
        "device": [_DEVICE[e.device] for e in ev],
        **_position(items),
    }


def guardrail_columns(items: Sequence[Item]) -> Columns:
    """Columns of ``guardrail_decisions``."""
    ev = [i[3].guardrail_decision for i in items]
    return {
        "event_time": _ms(ev),
        "event_id": [e.event_id for e in ev],
        "request_id": [e.request_id for e in ev],
        "tenant": [e.tenant for e in ev],
        "market": [e.market for e in ev],
        "direction": [_DIRECTION[e.direction] for e in ev],
        "policy": [e.policy for e in ev],
        "policy_version": _u32([e.policy_version for e in ev]),
        "verdict": [_VERDICT[e.verdict] for e in ev],
        "finding_types": [[f.type for f in e.findings] for e in ev],
        "finding_detectors": [[f.detector for f in e.findings] for e in ev],
        "finding_span_starts": [[max(0, f.span_start) for f in e.findings] for e in ev],
        "finding_span_ends": [[max(0, f.span_end) for f in e.findings] for e in ev],
        "finding_scores": [[f.score for f in e.findings] for e in ev],
        "finding_actions": [[_VERDICT[f.action] for f in e.findings] for e in ev],
        "finding_match_hashes": [[f.match_hash for f in e.findings] for e in ev],
        "detector_names": [[d.stage for d in e.detector_latencies] for e in ev],
        "detector_latencies_us": [
            [max(0, d.duration_us) for d in e.detector_latencies] for e in ev
        ],
        "latency_us": _u32([max(0, e.latency_us) for e in ev]),
        "text_length": _u32([max(0, e.text_length) for e in ev]),
        "route": [e.route for e in ev],
        "task": [e.task for e in ev],
        "streamed": np.array([e.streamed for e in ev], dtype=bool),
        "degraded": np.array([e.degraded for e in ev], dtype=bool),
        **_position(items),
    }


def audit_columns(items: Sequence[Item]) -> Columns:
    """Columns of ``audit`` (``record``: base64 of the deterministic serialization)."""
    ev = [i[3].audit for i in items]
    return {
        "event_time": _ms(ev),
        "event_id": [e.event_id for e in ev],
        "request_id": [e.request_id for e in ev],
        "tenant": [e.tenant for e in ev],
        "actor_type": [_ACTOR[e.actor.type] for e in ev],
        "actor_id": [e.actor.id for e in ev],
        "actor_via": [e.actor.via for e in ev],
        "action": [e.action for e in ev],
        "resource_type": [e.resource.type for e in ev],
        "resource_name": [e.resource.name for e in ev],
        "resource_version": [e.resource.version for e in ev],
        "resource_service": [e.resource.service for e in ev],
        "before": [value_json(e.before) if e.HasField("before") else "" for e in ev],
        "after": [value_json(e.after) if e.HasField("after") else "" for e in ev],
        "outcome": [_OUTCOME[e.outcome] for e in ev],
        "reason": [e.reason for e in ev],
        "policy_decision_id": [e.policy_decision_id for e in ev],
        "chain": [e.chain for e in ev],
        "sequence": np.array([max(0, e.sequence) for e in ev], dtype=np.uint64),
        "prev_hash": [e.prev_hash for e in ev],
        "hash": [e.hash for e in ev],
        "record": [base64.b64encode(e.SerializeToString(deterministic=True)).decode() for e in ev],
        **_position(items),
    }


_CONVERTERS: dict[str, Callable[[Sequence[Item]], Columns]] = {
    "prediction": prediction_columns,
    "feedback": feedback_columns,
    "exposure": exposure_columns,
    "guardrail_decision": guardrail_columns,
    "audit": audit_columns,
}


def kind_of(envelope: events_pb2.EventEnvelope) -> str:
    """The envelope's event kind (its oneof); raises :class:`UnknownEventKind` if unset."""
    kind = envelope.WhichOneof("event")
    if kind is None or kind not in _CONVERTERS:
        raise UnknownEventKind(f"envelope carries no known event (oneof: {kind!r})")
    return kind


def columns_for(items: Sequence[Item]) -> dict[str, Columns]:
    """``{table: columns}`` for a batch of decoded envelopes with their log positions.

    Rows keep the batch order within each table. Predictions with inputs/output also
    yield ``prediction_payloads`` rows. Raises :class:`UnknownEventKind` for an envelope
    without a known event (the sink dead-letters it before calling this).
    """
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(kind_of(item[3]), []).append(item)
    out: dict[str, Columns] = {}
    for kind, group in groups.items():
        out[KIND_TABLES[kind]] = _CONVERTERS[kind](group)
        if kind == "prediction" and any(_has_payload(i[3].prediction) for i in group):
            out["prediction_payloads"] = payload_columns(group)
    return out
