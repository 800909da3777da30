"""Timestamps and Durations checked where requests are parsed: a path and a reason."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2

from llmops.server.times import invalid_time
from llmops.v1 import experiment_pb2, feature_pb2, feedback_pb2


def test_valid_messages_pass() -> None:
    batch = feedback_pb2.SubmitBatchRequest()
    for i in range(3):
        batch.feedback.add().occurred_time.seconds = 1_700_000_000 + i
    assert invalid_time(batch) is None
    assert invalid_time(feature_pb2.GetOnlineFeaturesRequest()) is None  # no time fields
    assert invalid_time(timestamp_pb2.Timestamp(seconds=-62_135_596_800)) is None  # year 1
    assert invalid_time(duration_pb2.Duration(seconds=-5, nanos=-1)) is None


def test_the_first_invalid_time_is_named_by_its_path() -> None:
    batch = feedback_pb2.SubmitBatchRequest()
    for _ in range(5):
        batch.feedback.add().occurred_time.seconds = 1_700_000_000
    batch.feedback[3].occurred_time.seconds = 2**63 - 1
    assert invalid_time(batch) == (
        "feedback[3].occurred_time: not a valid time (years 1 to 9999, nanos 0 to 999999999)"
    )
    batch.feedback[3].occurred_time.seconds = 1
    batch.feedback[3].occurred_time.nanos = -1
    assert (invalid_time(batch) or "").startswith("feedback[3].occurred_time:")
    assert invalid_time(timestamp_pb2.Timestamp(seconds=253_402_300_800)) == (
        "request: not a valid time (years 1 to 9999, nanos 0 to 999999999)"
    )
    assert invalid_time(duration_pb2.Duration(seconds=5, nanos=-1)) == (
        "request: not a valid duration"
    )


def test_nested_times_are_found() -> None:
    request = experiment_pb2.GetResultsRequest(experiment_id="x")
    request.window.start_time.seconds = 1_700_000_000
    request.window.end_time.seconds = 2**62
    assert invalid_time(request) == (
        "window.end_time: not a valid time (years 1 to 9999, nanos 0 to 999999999)"
    )


def test_context_fields_over_their_caps_are_named() -> None:
    from llmops.server.context_limits import MAX_ATTRIBUTES, context_problem

    request = feature_pb2.GetOnlineFeaturesRequest()
    assert context_problem(request) is None  # no context: nothing to cap
    request.context.tenant = "acme"
    request.context.user_id = "u" * 128
    assert context_problem(request) is None
    request.context.tenant = "t" * 65
    assert context_problem(request) == "context.tenant: at most 64 characters"
    request.context.tenant = "acme"
    request.context.attributes["note"].string_value = "n" * 5000
    assert context_problem(request) == "context.attributes[note]: at most 4096 characters"
    del request.context.attributes["note"]
    for i in range(MAX_ATTRIBUTES + 1):
        request.context.attributes[f"a{i}"].int64_value = i
    assert context_problem(request) == "context.attributes: at most 64 attributes"
    assert context_problem(timestamp_pb2.Timestamp()) is None  # a message without a context


def test_top_level_identifiers_over_their_cap_are_named() -> None:
    """Route, task, policy, collection, ids and names of every request are capped at the
    edge (they end up in logs, metric labels, cache keys and events)."""
    from llmops.clients import contract_methods
    from llmops.server.context_limits import MAX_IDENTIFIER, _identifier_fields, identifier_problem
    from llmops.v1 import experiment_pb2, guardrail_pb2, inference_pb2

    run = inference_pb2.RunRequest(task="t" * MAX_IDENTIFIER)
    assert identifier_problem(run) is None
    run.task += "x"
    assert identifier_problem(run) == f"task: at most {MAX_IDENTIFIER} characters"
    check = guardrail_pb2.CheckRequest(policy="p", route="r" * 300, text="x" * 100_000)
    assert identifier_problem(check) == f"route: at most {MAX_IDENTIFIER} characters"  # not text
    assign = experiment_pb2.AssignRequest(unit_id="u", experiment_ids=["a", "b" * 257])
    assert identifier_problem(assign) == f"experiment_ids[1]: at most {MAX_IDENTIFIER} characters"
    # Which fields of the contracts are capped (a new request type is covered by its names).
    capped = {
        (m.input_type.name, name)
        for _, m in contract_methods()
        for name, _ in _identifier_fields(m.input_type)
    }
    expected = {
        ("GenerateRequest", "route"), ("RunRequest", "task"), ("SearchRequest", "collection"),
        ("SetAliasRequest", "alias"), ("CheckBatchRequest", "policy"),
        ("QueryAuditRequest", "actor_id"),
    }  # fmt: skip
    assert expected <= capped
    assert ("CheckRequest", "text") not in capped
