"""The mesh's topics: which event kind goes where, under which key, and the topic spec.

``deploy/kafka/topics.yaml`` is the source of truth for names, partitions and configs of the
Kafka cluster; the constants here are what producers need at run time without reading it
(an installed package has no ``deploy/``). ``tests/unit/test_events_topics.py`` checks that
they agree with the YAML.

Cluster operations (apply, check, wait) are in :mod:`llmops.events.topic_admin`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the deploy script imports this module with only PyYAML at hand
    from llmops.v1 import events_pb2

KIND_TOPICS: Mapping[str, str] = {
    "prediction": "llmops.predictions.v1",
    "feedback": "llmops.feedback.v1",
    "exposure": "llmops.exposures.v1",
    "guardrail_decision": "llmops.guardrail-decisions.v1",
    "audit": "llmops.audit.v1",
}
"""EventEnvelope ``event`` oneof field name -> topic."""

AUDIT_CHAINED_TOPIC = "llmops.audit.chained.v1"
"""The hash-chained audit trail: the governance service's audit writer (the chains' single
writer) reads the raw audit topic, fills chain/sequence/prev_hash/hash and appends here;
the ClickHouse sink loads this topic (not the raw one) into the ``audit`` table."""

DLQ_TOPIC = "llmops.dlq.v1"
"""Records a sink could not decode or store, with the reason in headers."""

KIND_EVENTS: Mapping[str, str] = {
    "prediction": "PredictionEvent",
    "feedback": "FeedbackEvent",
    "exposure": "ExposureEvent",
    "guardrail_decision": "GuardrailDecisionEvent",
    "audit": "AuditEvent",
}
"""EventEnvelope ``event`` oneof field name -> message name (the spec's ``event``)."""

LOCAL_PARTITIONS: Mapping[str, int] = {
    **{topic: 6 for topic in KIND_TOPICS.values()},
    AUDIT_CHAINED_TOPIC: 6,
    DLQ_TOPIC: 6,
}
"""Partitions of each topic in the embedded local log (the spec's ``local.max_partitions``)."""

RETENTION_MS: Mapping[str, int] = {
    "llmops.predictions.v1": 3 * 86_400_000,
    "llmops.feedback.v1": 14 * 86_400_000,
    "llmops.exposures.v1": 7 * 86_400_000,
    "llmops.guardrail-decisions.v1": 7 * 86_400_000,
    "llmops.audit.v1": 365 * 86_400_000,
    AUDIT_CHAINED_TOPIC: 365 * 86_400_000,
    DLQ_TOPIC: 30 * 86_400_000,
}
"""``retention.ms`` of each topic (ms), as in the spec; the local log's retention uses it."""

DEFAULT_SPEC_PATH = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "topics.yaml"
"""The spec in a source checkout (absent from an installed wheel: pass a path)."""


def event_key(envelope: events_pb2.EventEnvelope, kind: str) -> str:
    """The ordering key events.proto prescribes for ``kind`` (the envelope's set event).

    prediction, guardrail_decision: request_id; feedback: request_id, else unit_id;
    exposure: unit_id; audit: chain, and before the audit writer assigned one, the chain it
    will join (:func:`audit_chain`), so one chain's raw records stay in order on one
    partition and re-chaining a replay is deterministic. When that field is empty the event
    has no entity to keep in order with, and its event_id is used, which spreads such events
    evenly.
    """
    if kind == "prediction":
        key = envelope.prediction.request_id
    elif kind == "feedback":
        key = envelope.feedback.request_id or envelope.feedback.unit_id
    elif kind == "exposure":
        key = envelope.exposure.unit_id
    elif kind == "guardrail_decision":
        key = envelope.guardrail_decision.request_id
    elif kind == "audit":
        key = envelope.audit.chain or audit_chain(envelope.audit.tenant)
    else:
        raise ValueError(f"unknown event kind {kind!r}")
    return key or str(getattr(envelope, kind).event_id)


def audit_chain(tenant: str) -> str:
    """The audit chain of a tenant's records: ``tenant:<tenant>`` (events.proto), with
    ``default`` for records without a tenant."""
    return f"tenant:{tenant or 'default'}"


# ---------------------------------------------------------------------------------------------
# The spec file (deploy/kafka/topics.yaml).


class SpecError(Exception):
    """The spec file is unreadable or invalid; the message names the file and the entry."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)
    key: str = ""
    event: str = ""


@dataclass(frozen=True)
class Spec:
    topics: list[TopicSpec]
    local_max_partitions: int | None


_REQUIRED_CONFIGS = ("retention.ms", "cleanup.policy", "compression.type")


def load_spec(path: Path = DEFAULT_SPEC_PATH) -> Spec:
    """Parse and validate the spec; raises :class:`SpecError` naming what is wrong."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("topics"), list):
        raise SpecError(f"{path}: expected a mapping with a `topics` list")
    topics: list[TopicSpec] = []
    for i, raw in enumerate(doc["topics"]):
        topic = _topic(raw, f"{path}: topics[{i}]")
        if any(t.name == topic.name for t in topics):
            raise SpecError(f"{path}: topics[{i}]: duplicate topic {topic.name}")
        topics.append(topic)
    local = doc.get("local") or {}
    cap = local.get("max_partitions") if isinstance(local, dict) else None
    return Spec(topics=topics, local_max_partitions=int(cap) if cap else None)


def _topic(raw: Any, where: str) -> TopicSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError(f"{where}: `name` is required")
    partitions, rf = raw.get("partitions"), raw.get("replication_factor")
    if not isinstance(partitions, int) or partitions < 1:
        raise SpecError(f"{where} ({name}): `partitions` must be an integer >= 1")
    if not isinstance(rf, int) or rf < 1:
        raise SpecError(f"{where} ({name}): `replication_factor` must be an integer >= 1")
    configs = raw.get("configs") or {}
    if not isinstance(configs, dict):
        raise SpecError(f"{where} ({name}): `configs` must be a mapping")
    for required in _REQUIRED_CONFIGS:
        if required not in configs:
            raise SpecError(f"{where} ({name}): configs.{required} is required")
    if not raw.get("key"):
        raise SpecError(f"{where} ({name}): `key` (what keeps one entity in order) is required")
    return TopicSpec(
        name=name,
        partitions=partitions,
        replication_factor=rf,
        configs={str(k): config_str(v) for k, v in configs.items()},
        key=str(raw["key"]),
        event=str(raw.get("event") or ""),
    )


def config_str(v: object) -> str:
    """A YAML scalar as Kafka's string form of a topic config."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def effective(t: TopicSpec, brokers: int, max_partitions: int | None) -> TopicSpec:
    """The topic as this cluster can hold it (capped RF, min ISR and partitions)."""
    rf = min(t.replication_factor, max(brokers, 1))
    configs = dict(t.configs)
    if "min.insync.replicas" in configs:
        configs["min.insync.replicas"] = str(min(int(configs["min.insync.replicas"]), rf))
    partitions = min(t.partitions, max_partitions) if max_partitions else t.partitions
    return TopicSpec(t.name, partitions, rf, configs, t.key, t.event)
