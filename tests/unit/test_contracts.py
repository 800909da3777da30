"""Contract tests of the llmops.v1 protobuf API (protos/llmops/v1, stubs in llmops/v1).

They pin what runtime code and external consumers rely on: the service and RPC names, the
streaming shape of each RPC, the event header fields, enum zero values, and that events
survive a serialize/parse round trip.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf import struct_pb2, timestamp_pb2

from llmops.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
    events_pb2,
    experiment_pb2,
    experiment_pb2_grpc,
    feature_pb2,
    feature_pb2_grpc,
    feedback_pb2,
    feedback_pb2_grpc,
    governance_pb2,
    governance_pb2_grpc,
    guardrail_pb2,
    guardrail_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
)

PACKAGE = "llmops.v1"

PB2_MODULES: tuple[ModuleType, ...] = (
    admin_pb2,
    common_pb2,
    embedding_pb2,
    events_pb2,
    experiment_pb2,
    feature_pb2,
    feedback_pb2,
    governance_pb2,
    guardrail_pb2,
    inference_pb2,
)

# (pb2 module, pb2_grpc module, service name) -> RPC names, exactly.
EXPECTED_SERVICES: dict[tuple[ModuleType, ModuleType, str], list[str]] = {
    (admin_pb2, admin_pb2_grpc, "AdminService"): ["GetInfo", "Drain", "Resume"],
    (feature_pb2, feature_pb2_grpc, "FeatureService"): [
        "GetOnlineFeatures",
        "PushFeatures",
        "Materialize",
        "GetHistoricalFeatures",
    ],
    (feature_pb2, feature_pb2_grpc, "FeatureAdminService"): [
        "ListFeatureViews",
        "GetFeatureView",
        "ListFeatureServices",
        "GetFreshness",
        "ReloadRegistry",
    ],
    (embedding_pb2, embedding_pb2_grpc, "EmbeddingService"): [
        "Embed",
        "CreateCollection",
        "Upsert",
        "Delete",
        "Search",
    ],
    (embedding_pb2, embedding_pb2_grpc, "EmbeddingAdminService"): [
        "ListCollections",
        "GetCollection",
        "DropCollection",
        "Snapshot",
        "Restore",
    ],
    (inference_pb2, inference_pb2_grpc, "InferenceService"): ["Generate", "GenerateStream", "Run"],
    (inference_pb2, inference_pb2_grpc, "InferenceAdminService"): [
        "ListRoutes",
        "GetRoute",
        "ListModels",
        "ReloadRoutes",
    ],
    (guardrail_pb2, guardrail_pb2_grpc, "GuardrailService"): ["Check", "CheckStream", "CheckBatch"],
    (guardrail_pb2, guardrail_pb2_grpc, "GuardrailAdminService"): [
        "ListPolicies",
        "GetPolicy",
        "TestPolicy",
        "ReloadPolicies",
    ],
    (experiment_pb2, experiment_pb2_grpc, "ExperimentService"): [
        "Assign",
        "GetExperiment",
        "GetResults",
    ],
    (experiment_pb2, experiment_pb2_grpc, "ExperimentAdminService"): [
        "CreateExperiment",
        "UpdateExperiment",
        "StartExperiment",
        "StopExperiment",
        "ArchiveExperiment",
        "ListExperiments",
        "CreateLayer",
        "ListLayers",
    ],
    (feedback_pb2, feedback_pb2_grpc, "FeedbackService"): [
        "Submit",
        "SubmitBatch",
        "ExportDataset",
    ],
    (feedback_pb2, feedback_pb2_grpc, "FeedbackAdminService"): [
        "ListLabelQueues",
        "GetFeedbackStats",
        "LeaseLabelItems",
        "CompleteLabelItem",
    ],
    (governance_pb2, governance_pb2_grpc, "GovernanceService"): [
        "Register",
        "GetArtifact",
        "ListArtifacts",
        "SetAlias",
        "Transition",
        "AddLineage",
        "GetLineage",
        "Evaluate",
        "QueryAudit",
        "VerifyAudit",
        "GetAliasHistory",
        "GetComplianceReport",
    ],
    (governance_pb2, governance_pb2_grpc, "GovernanceAdminService"): [
        "ReloadPolicies",
        "GetPolicyBundle",
    ],
}

# RPC full name -> (client streaming, server streaming); every other RPC is unary.
STREAMING = {
    "llmops.v1.FeatureService.GetHistoricalFeatures": (False, True),
    "llmops.v1.InferenceService.GenerateStream": (False, True),
    "llmops.v1.GuardrailService.CheckStream": (True, True),
    "llmops.v1.FeedbackService.ExportDataset": (False, True),
}

EVENT_MESSAGES: tuple[type[_message.Message], ...] = (
    events_pb2.PredictionEvent,
    events_pb2.FeedbackEvent,
    events_pb2.ExposureEvent,
    events_pb2.GuardrailDecisionEvent,
    events_pb2.AuditEvent,
)


def _all_enums() -> Iterator[_descriptor.EnumDescriptor]:
    def nested(message: _descriptor.Descriptor) -> Iterator[_descriptor.EnumDescriptor]:
        yield from message.enum_types
        for inner in message.nested_types:
            yield from nested(inner)

    for module in PB2_MODULES:
        yield from module.DESCRIPTOR.enum_types_by_name.values()
        for message in module.DESCRIPTOR.message_types_by_name.values():
            yield from nested(message)


def _service_id(key: tuple[ModuleType, ModuleType, str]) -> str:
    return key[2]


def test_every_service_is_expected() -> None:
    declared = {
        service.full_name
        for module in PB2_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
    }
    expected = {f"{PACKAGE}.{name}" for (_, _, name) in EXPECTED_SERVICES}
    assert declared == expected


@pytest.mark.parametrize("key", list(EXPECTED_SERVICES), ids=_service_id)
def test_service_has_exactly_the_expected_rpcs(key: tuple[ModuleType, ModuleType, str]) -> None:
    pb2, pb2_grpc, name = key
    service = pb2.DESCRIPTOR.services_by_name[name]
    assert service.full_name == f"{PACKAGE}.{name}"
    assert [method.name for method in service.methods] == EXPECTED_SERVICES[key]
    # The generated gRPC module exposes the stub, the servicer and the registration helper.
    assert hasattr(pb2_grpc, f"{name}Stub")
    assert hasattr(pb2_grpc, f"{name}Servicer")
    assert hasattr(pb2_grpc, f"add_{name}Servicer_to_server")


@pytest.mark.parametrize("key", list(EXPECTED_SERVICES), ids=_service_id)
def test_rpc_streaming_shape_and_message_names(key: tuple[ModuleType, ModuleType, str]) -> None:
    pb2, _, name = key
    for method in pb2.DESCRIPTOR.services_by_name[name].methods:
        shape = (method.client_streaming, method.server_streaming)
        assert shape == STREAMING.get(method.full_name, (False, False)), method.full_name
        # buf STANDARD: <Rpc>Request / <Rpc>Response, or <Service><Rpc>... when two
        # services of the package share an RPC name.
        for suffix, message in (("Request", method.input_type), ("Response", method.output_type)):
            assert message.full_name.startswith(f"{PACKAGE}.")
            assert message.name in {f"{method.name}{suffix}", f"{name}{method.name}{suffix}"}


@pytest.mark.parametrize("event", EVENT_MESSAGES, ids=lambda e: e.DESCRIPTOR.name)
def test_event_has_id_and_time(event: type[_message.Message]) -> None:
    fields = event.DESCRIPTOR.fields_by_name
    assert fields["event_id"].number == 1
    assert fields["event_id"].type == _descriptor.FieldDescriptor.TYPE_STRING
    assert fields["event_time"].number == 2
    assert fields["event_time"].message_type.full_name == "google.protobuf.Timestamp"


def test_envelope_covers_every_event() -> None:
    oneof = events_pb2.EventEnvelope.DESCRIPTOR.oneofs_by_name["event"]
    carried = {field.message_type.full_name for field in oneof.fields}
    assert carried == {event.DESCRIPTOR.full_name for event in EVENT_MESSAGES}


def test_every_enum_zero_value_is_unspecified() -> None:
    enums = list(_all_enums())
    assert len(enums) > 20  # guards against the walk silently finding nothing
    for enum in enums:
        zero = enum.values_by_number[0]
        assert zero.name.endswith("_UNSPECIFIED"), enum.full_name
        assert zero is enum.values[0], enum.full_name


def test_generate_stream_request_mirrors_generate_request() -> None:
    def type_name(field: _descriptor.FieldDescriptor) -> str | None:
        message = field.message_type
        if message is None:
            return None
        if message.GetOptions().map_entry:  # map entries are named after their parent
            return f"map<{type_name(message.fields_by_name['value']) or 'scalar'}>"
        return str(message.full_name)

    def shape(message: _descriptor.Descriptor) -> list[tuple[str, int, int, str | None]]:
        return [(f.name, f.number, f.type, type_name(f)) for f in message.fields]

    plain = inference_pb2.GenerateRequest.DESCRIPTOR
    stream = inference_pb2.GenerateStreamRequest.DESCRIPTOR
    assert shape(plain) == shape(stream)
    request = inference_pb2.GenerateRequest(route="summary-small", prompt="hi")
    request.sampling.temperature = 0.0
    parsed = inference_pb2.GenerateStreamRequest.FromString(request.SerializeToString())
    assert parsed.route == "summary-small" and parsed.prompt == "hi"
    assert parsed.sampling.HasField("temperature")


def _timestamp(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=123_000)


def _envelopes() -> list[events_pb2.EventEnvelope]:
    usage = common_pb2.Usage(
        prompt_tokens=812,
        completion_tokens=96,
        time_to_first_token_ms=41.5,
        time_per_output_token_ms=6.25,
        cost=common_pb2.Money(currency_code="USD", units=0, nanos=1_250_000),
    )
    prediction = events_pb2.PredictionEvent(
        event_id="0190f2a4-8c1e-7b3a-9f00-2d6c1a4b5e77",
        event_time=_timestamp(1_767_225_600),
        request_id="0190f2a4-8c1e-7b3a-9f00-000000000001",
        tenant="acme",
        market="NL",
        route="summary-small",
        task="property_summary",
        model_name="property-summary-llm",
        model_version=7,
        experiment_id="pp-summary-llm-v2",
        variant="treatment_a",
        total_latency_us=18_400,
        cache_hit=False,
        usage=usage,
        stages=[
            common_pb2.StageLatency(stage="features", duration_us=900, start_offset_us=120),
            common_pb2.StageLatency(stage="model", duration_us=15_000, start_offset_us=2_000),
        ],
        guardrails=[
            common_pb2.GuardrailSummary(
                direction=common_pb2.DIRECTION_OUTPUT,
                policy="storefront-output-default",
                policy_version=3,
                verdict=common_pb2.VERDICT_REDACT,
                finding_types=["pii.email"],
            )
        ],
        feature_vector_hash="5f1d0c0e7a3b4c2d9e8f7a6b5c4d3e2f",
        finish_reason=inference_pb2.FINISH_REASON_END_OF_SEQUENCE,
        inputs={"property_id": common_pb2.Value(int64_value=123)},
        output=common_pb2.Value(string_value="Quiet canal-side rooms."),
    )
    feedback = events_pb2.FeedbackEvent(
        event_id="0190f2a4-8c1e-7b3a-9f00-2d6c1a4b5e78",
        event_time=_timestamp(1_767_225_660),
        request_id=prediction.request_id,
        tenant="acme",
        kind=feedback_pb2.FEEDBACK_KIND_BOOKING,
        feedback=feedback_pb2.Feedback(
            idempotency_key="k-1",
            request_id=prediction.request_id,
            booking=feedback_pb2.Booking(
                booking_id="B123",
                value=common_pb2.Money(currency_code="EUR", units=431, nanos=500_000_000),
            ),
        ),
    )
    exposure = events_pb2.ExposureEvent(
        event_id="0190f2a4-8c1e-7b3a-9f00-2d6c1a4b5e79",
        event_time=_timestamp(1_767_225_599),
        unit_type="user",
        unit_id="u-42",
        experiment_id="pp-summary-llm-v2",
        experiment_version=4,
        layer="property_page_llm",
        variant="treatment_a",
        bucket=8123,
        reason=experiment_pb2.ASSIGNMENT_REASON_BUCKETED,
    )
    decision = events_pb2.GuardrailDecisionEvent(
        event_id="0190f2a4-8c1e-7b3a-9f00-2d6c1a4b5e7a",
        event_time=_timestamp(1_767_225_600),
        direction=common_pb2.DIRECTION_OUTPUT,
        policy="storefront-output-default",
        policy_version=3,
        verdict=common_pb2.VERDICT_REDACT,
        findings=[
            common_pb2.GuardrailFinding(
                type="pii.email",
                detector="pii",
                span_start=10,
                span_end=27,
                score=0.99,
                action=common_pb2.VERDICT_REDACT,
                match_hash="ab" * 32,
            )
        ],
        text_length=140,
    )
    before = struct_pb2.Struct()
    before.update({"alias": "champion", "version": "6"})
    after = struct_pb2.Struct()
    after.update({"alias": "champion", "version": "7"})
    audit = events_pb2.AuditEvent(
        event_id="0190f2a4-8c1e-7b3a-9f00-2d6c1a4b5e7b",
        event_time=_timestamp(1_767_225_700),
        actor=events_pb2.Actor(type=events_pb2.ACTOR_TYPE_USER, id="user:7d1f"),
        action="alias.set",
        resource=events_pb2.Resource(type="model", name="property-summary-llm", version="7"),
        before=before,
        after=after,
        outcome=events_pb2.AUDIT_OUTCOME_SUCCESS,
        chain="tenant:acme",
        sequence=42,
        prev_hash="0" * 64,
        hash="f" * 64,
    )
    return [
        events_pb2.EventEnvelope(producer="test", key=prediction.request_id, prediction=prediction),
        events_pb2.EventEnvelope(key=feedback.request_id, feedback=feedback),
        events_pb2.EventEnvelope(key=exposure.unit_id, exposure=exposure),
        events_pb2.EventEnvelope(key=prediction.request_id, guardrail_decision=decision),
        events_pb2.EventEnvelope(key=audit.chain, audit=audit),
    ]


@pytest.mark.parametrize("envelope", _envelopes(), ids=lambda e: e.WhichOneof("event"))
def test_event_envelope_round_trip(envelope: events_pb2.EventEnvelope) -> None:
    envelope.publish_time.CopyFrom(_timestamp(1_767_225_701))
    wire = envelope.SerializeToString(deterministic=True)
    parsed = events_pb2.EventEnvelope.FromString(wire)
    assert parsed == envelope
    assert parsed.WhichOneof("event") == envelope.WhichOneof("event")
    assert parsed.SerializeToString(deterministic=True) == wire
    inner = getattr(parsed, parsed.WhichOneof("event") or "")
    assert inner.event_id and inner.HasField("event_time")


def test_value_kinds_round_trip() -> None:
    values = [
        common_pb2.Value(int64_value=-(2**62)),
        common_pb2.Value(double_value=0.5),
        common_pb2.Value(string_value="naïve"),
        common_pb2.Value(bool_value=False),
        common_pb2.Value(bytes_value=b"\x00\xff"),
        common_pb2.Value(int64_list_value=common_pb2.Int64List(values=[1, 2])),
        common_pb2.Value(double_list_value=common_pb2.DoubleList(values=[1.5])),
        common_pb2.Value(string_list_value=common_pb2.StringList(values=["a"])),
        common_pb2.Value(bool_list_value=common_pb2.BoolList(values=[True])),
        common_pb2.Value(float_vector_value=common_pb2.FloatVector(values=[0.25, -1.0])),
        common_pb2.Value(timestamp_value=_timestamp(1)),
        common_pb2.Value(null_value=struct_pb2.NULL_VALUE),
    ]
    kinds = {field.name for field in common_pb2.Value.DESCRIPTOR.oneofs_by_name["kind"].fields}
    assert {value.WhichOneof("kind") for value in values} == kinds
    for value in values:
        parsed = common_pb2.Value.FromString(value.SerializeToString())
        assert parsed.WhichOneof("kind") == value.WhichOneof("kind")
        assert parsed == value
