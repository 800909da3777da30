"""The compliance view (services.governance.compliance) on an embedded SQLite registry with
fake ClickHouse facts: what the report says about a model and a route (risk tier, card gaps,
four eyes, alias history, last evaluation, serving routes, drift, retention) and which
findings it raises; TTL parsing of ``system.tables.engine_full``; aliases at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2

from llmops.errors import InvalidArgument, NotFound
from llmops.v1 import governance_pb2
from services.governance import model
from services.governance.compliance import (
    CARD_REQUIRED,
    MINIMUM_RETENTION_DAYS,
    Compliance,
    DriftStatus,
    Retention,
    aliases_at,
    last_evaluations,
    ttl_days,
)
from services.governance.guard import BuiltinRules
from services.governance.model import AliasChange, AliasMove, Edge, Node, Ref
from services.governance.registry import Registry
from services.governance.store_sql import SqlRegistryStore
from tests.unit.test_governance_registry import (
    ALICE,
    BOB,
    DATASET,
    MODEL,
    PROMPT,
    Clock,
    FakeEvents,
    approved_model,
    complete_card,
    register,
)


class FakeLogs:
    def __init__(self) -> None:
        self.tables = {
            "predictions": Retention("predictions", "prediction log", 90, True),
            "guardrail_decisions": Retention("guardrail_decisions", "guardrails", 90, True),
            "audit": Retention("audit", "audit trail", 0, True),
            "prediction_payloads": Retention("prediction_payloads", "payloads", 7, False),
        }
        self.drift: list[DriftStatus] = []

    def retention(self) -> list[Retention]:
        return list(self.tables.values())

    def latest_drift(self, *, route: str = "", model_name: str = "") -> list[DriftStatus]:
        return [
            d
            for d in self.drift
            if (not route or d.route == route) and (not model_name or d.model_name == model_name)
        ]


def drift(route: str, model_name: str, metric: str, psi: float, drifted: bool) -> DriftStatus:
    return DriftStatus(route, model_name, metric, psi, psi / 2, drifted, 1_700_000_000_000_000,
                       4000, 1500)  # fmt: skip


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    clock = Clock()
    store = SqlRegistryStore.sqlite(tmp_path / "registry.sqlite3")
    await store.open()
    yield Registry(store, FakeEvents(), BuiltinRules(["champion"], clock), clock)
    await store.close()


@pytest.fixture
def logs() -> FakeLogs:
    return FakeLogs()


def test_ttl_days_reads_the_normalised_ttl_of_engine_full() -> None:
    engine = (
        "MergeTree PARTITION BY toDate(event_time) ORDER BY (tenant, route, model_name, "
        "event_time) TTL toDateTime(event_time) + toIntervalDay(90) SETTINGS "
        "index_granularity = 8192, ttl_only_drop_parts = 1"
    )
    assert ttl_days(engine) == 90
    assert ttl_days("MergeTree ORDER BY x TTL d + toIntervalMonth(6)") == 180
    assert ttl_days("MergeTree ORDER BY x TTL d + toIntervalYear(1), d + toIntervalWeek(2)") == 14
    assert ttl_days("MergeTree ORDER BY x TTL d + toIntervalHour(1)") == 1  # under a day: 1
    assert ttl_days("ReplacingMergeTree ORDER BY (a, b) SETTINGS x = 1") == 0  # no TTL
    assert ttl_days("") == 0


def test_retention_meets_the_minimum_with_no_ttl_or_enough_days() -> None:
    assert Retention("audit", "", 0, True).meets_minimum
    assert Retention("audit", "", MINIMUM_RETENTION_DAYS, True).meets_minimum
    assert not Retention("audit", "", MINIMUM_RETENTION_DAYS - 1, True).meets_minimum
    assert not Retention("audit", "", 0, True, found=False).meets_minimum


def test_aliases_at_folds_the_moves_up_to_a_time() -> None:
    moves = [
        AliasChange("champion", 0, 1, "a", "", 10),
        AliasChange("challenger", 0, 2, "a", "", 20),
        AliasChange("champion", 1, 2, "a", "", 30),
        AliasChange("challenger", 2, 0, "a", "", 40),
    ]
    assert aliases_at(moves, 5) == {}
    assert aliases_at(moves, 10) == {"champion": 1}
    assert aliases_at(moves, 35) == {"challenger": 2, "champion": 2}
    assert aliases_at(moves, 99) == {"champion": 2}


def test_last_evaluations_are_the_newest_dated_ones() -> None:
    def result(metric: str, seconds: int | None) -> governance_pb2.EvaluationResult:
        out = governance_pb2.EvaluationResult(metric=metric, value=0.5)
        if seconds is not None:
            out.evaluate_time.CopyFrom(timestamp_pb2.Timestamp(seconds=seconds))
        return out

    card = governance_pb2.ModelCard(
        evaluations=[result("old", 100), result("undated", None), result("a", 200),
                     result("b", 200)]
    )  # fmt: skip
    assert [e.metric for e in last_evaluations(card)] == ["a", "b"]
    undated = governance_pb2.ModelCard(evaluations=[result("x", None), result("y", None)])
    assert [e.metric for e in last_evaluations(undated)] == ["x", "y"]
    assert last_evaluations(None) == ()


async def test_a_model_report_gathers_the_facts_and_raises_no_finding_when_clean(
    registry: Registry, logs: FakeLogs
) -> None:
    dated = governance_pb2.EvaluationResult(metric="rougeL", value=0.41)
    dated.evaluate_time.CopyFrom(timestamp_pb2.Timestamp(seconds=1_700_000_000))
    number = await approved_model(registry, details=complete_card(evaluations=[dated]))
    await registry.set_alias(AliasMove(MODEL, "summary-llm", "champion", number), BOB)
    await registry.add_lineage(
        [Edge(Node(artifact=Ref(MODEL, "summary-llm")), Node(route="summary-small"),
              model.SERVED_BY)],
        BOB,
    )  # fmt: skip
    logs.drift = [drift("summary-small", "summary-llm", "completion_tokens", 0.02, False)]

    report = await Compliance(registry, logs, lambda: 1_800_000_000.0).for_model(
        Ref(MODEL, "summary-llm", alias="champion")
    )

    (m,) = report.models
    assert (m.version.name, m.version.version) == ("summary-llm", number)
    assert m.risk_tier == governance_pb2.RISK_TIER_LIMITED
    assert m.card_missing == () and m.card_required == CARD_REQUIRED == 7
    assert m.four_eyes
    assert [(c.state, c.actor) for c in m.approvals] == [
        (model.REGISTERED, "user:alice"),
        (model.APPROVED, "user:bob"),
    ]
    assert [(c.alias, c.previous_version, c.version, c.actor) for c in m.alias_history] == [
        ("champion", 0, number, "user:bob")
    ]
    assert [e.metric for e in m.last_evaluations] == ["rougeL"]
    assert m.routes == ("summary-small",)
    assert [d.metric for d in m.drift] == ["completion_tokens"]
    assert m.findings == ()
    assert report.findings == ()
    assert {r.table for r in report.retention} >= {"predictions", "audit"}
    assert report.generate_time_us == 1_800_000_000_000_000


async def test_model_findings_name_every_gap(registry: Registry, logs: FakeLogs) -> None:
    # registered and approved by the same person, card missing fields, HIGH risk with
    # 90-day logs, no training data, undated evaluations, drift on a route
    card = complete_card(risk_tier=governance_pb2.RISK_TIER_HIGH, limitations=[], intended_use="")
    number = await register(registry, "risky-llm", "r", details=card)
    await registry.transition(Ref(MODEL, "risky-llm", number), model.APPROVED, ALICE)
    logs.drift = [drift("summary-small", "risky-llm", "guardrail_verdict", 0.4, True)]

    report = await Compliance(registry, logs).for_model(Ref(MODEL, "risky-llm"))

    (m,) = report.models
    assert not m.four_eyes
    assert m.risk_tier == governance_pb2.RISK_TIER_HIGH
    assert set(m.card_missing) == {
        "model_card.intended_use",
        "model_card.limitations",
        "training data (a TRAINED_ON lineage edge from a dataset)",
    }
    text = "\n".join(m.findings)
    assert "model card incomplete" in text and "model_card.limitations" in text
    assert "approved only by its registrant user:alice" in text
    assert "evaluate_time" in text
    assert "predictions keeps rows 90 days" in text
    assert "guardrail_decisions keeps rows 90 days" in text
    assert "audit keeps" not in text  # no TTL: kept
    assert "drift on route summary-small model risky-llm: guardrail_verdict PSI 0.400" in text


async def test_an_unapproved_version_and_a_short_audit_retention_are_findings(
    registry: Registry, logs: FakeLogs
) -> None:
    await register(registry, "draft-llm", "d", details=complete_card())
    logs.tables["audit"] = Retention("audit", "audit trail", 30, True)
    del logs.tables["guardrail_decisions"]
    logs.tables["guardrail_decisions"] = Retention(
        "guardrail_decisions", "guardrails", 0, True, found=False
    )

    report = await Compliance(registry, logs).for_model(Ref(MODEL, "draft-llm"))

    assert "version 1 is REGISTERED, not APPROVED" in report.models[0].findings
    assert any("audit keeps rows 30 days" in f for f in report.findings)
    assert any("guardrail_decisions" in f and "does not exist" in f for f in report.findings)


async def test_a_route_report_covers_every_model_behind_it(
    registry: Registry, logs: FakeLogs
) -> None:
    # model -DERIVED_FROM-> prompt -SERVED_BY-> route, and a second model served directly
    await approved_model(registry, "summary-llm")
    await approved_model(registry, "summary-small-llm")
    await register(registry, "summary-prompt", "p", PROMPT,
                   details=governance_pb2.PromptTemplate(template="Summarize"))  # fmt: skip
    await registry.add_lineage(
        [
            Edge(Node(artifact=Ref(MODEL, "summary-llm")),
                 Node(artifact=Ref(PROMPT, "summary-prompt")), model.DERIVED_FROM),
            Edge(Node(artifact=Ref(PROMPT, "summary-prompt")), Node(route="summary-small"),
                 model.SERVED_BY),
            Edge(Node(artifact=Ref(MODEL, "summary-small-llm")), Node(route="summary-small"),
                 model.SERVED_BY),
        ],
        BOB,
    )  # fmt: skip
    logs.drift = [
        drift("summary-small", "summary-llm", "completion_tokens", 0.5, True),
        drift("other-route", "summary-llm", "latency_ms", 0.3, True),
    ]

    report = await Compliance(registry, logs).for_route("summary-small")

    assert report.route == "summary-small"
    assert [(r.kind, r.name) for r in report.served] == [
        (MODEL, "summary-small-llm"),
        (PROMPT, "summary-prompt"),
    ]
    assert [m.version.name for m in report.models] == ["summary-llm", "summary-small-llm"]
    assert all(m.routes == ("summary-small",) for m in report.models)
    assert [d.model_name for d in report.route_drift] == ["summary-llm"]
    # the route's own drift is the route's finding; the model keeps its drift elsewhere
    assert any("drift on route summary-small" in f for f in report.findings)
    summary = report.models[0]
    assert [f for f in summary.findings if "drift" in f] == [
        "drift on route other-route model summary-llm: latency_ms PSI 0.300 KS 0.150 in the "
        "latest report"
    ]


async def test_a_route_nothing_serves_and_a_deleted_model_are_findings(
    registry: Registry, logs: FakeLogs
) -> None:
    empty = await Compliance(registry, logs).for_route("nobody-home")
    assert empty.models == ()
    assert "no registered model serves route nobody-home" in empty.findings[0]

    await approved_model(registry, "gone-llm")
    await registry.add_lineage(
        [Edge(Node(artifact=Ref(MODEL, "gone-llm")), Node(route="r1"), model.SERVED_BY)], BOB
    )
    await registry.delete(MODEL, "gone-llm", ALICE)
    report = await Compliance(registry, logs).for_route("r1")
    assert report.models == ()
    assert any("gone-llm v1" in f and "deleted" in f for f in report.findings)


async def test_bad_subjects_are_refused_before_clickhouse_is_asked(registry: Registry) -> None:
    class NoLogs(FakeLogs):
        def retention(self) -> list[Retention]:
            raise AssertionError("ClickHouse asked for a request that is refused")

    compliance = Compliance(registry, NoLogs())
    await register(registry, "reviews", "d", DATASET)
    with pytest.raises(NotFound):
        await compliance.for_model(Ref(MODEL, "no-such-model"))
    with pytest.raises(InvalidArgument) as err:
        await compliance.for_model(Ref(DATASET, "reviews", where="model"))
    assert err.value.field == "model.kind"
    with pytest.raises(InvalidArgument) as err:
        await compliance.for_route("Not A Route!")
    assert err.value.field == "route"
    with pytest.raises(InvalidArgument):
        await compliance.for_route("")
