"""The compliance view: what an auditor asks about a model version or an inference route, in
one report.

For each model version: its EU AI Act risk tier, whether its model card is complete (the
same check the deploy gate makes, :func:`~services.governance.validation.card_gaps`), its
lifecycle moves (who registered and who approved it: four eyes or not), every move of the
artifact's aliases, the card's last evaluation, the routes that serve it (lineage), and the
latest drift of its predictions. For the whole mesh: how long each ClickHouse table keeps its
rows, read from the server now (the TTL in force, not the migration files), against the six
months EU AI Act Art. 19/26 ask high-risk systems to keep their automatic logs. Whatever an
auditor would raise is a *finding*, one sentence each; a report without findings is not a
legal opinion, only the absence of the gaps checked here.

The registry facts come from :class:`~services.governance.registry.Registry`; the ClickHouse
facts through :class:`ComplianceLogs` (blocking, run on a thread), so the domain is testable
without either backend.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from llmops.clickhouse.base import ClickHouseStore
from llmops.errors import InvalidArgument, NotFound
from llmops.v1 import governance_pb2
from services.governance import model, validation
from services.governance.model import AliasChange, Node, Ref, StateChange, Version
from services.governance.registry import Registry

MINIMUM_RETENTION_DAYS = 180
"""EU AI Act Art. 19(1) / 26(6): automatically generated logs of high-risk systems are kept
for at least six months."""

ROUTE_DEPTH = 3
"""Lineage hops between a model and a route (model -> prompt -> route is two)."""


@dataclass(frozen=True, slots=True)
class LogTable:
    purpose: str
    required_log: bool
    """One of the automatic logs (Art. 12) that Art. 19/26 ask to keep >= six months."""


LOG_TABLES: dict[str, LogTable] = {
    "predictions": LogTable("prediction log (every request, its route, model and outcome)", True),
    "guardrail_decisions": LogTable("guardrail decisions", True),
    "audit": LogTable("audit trail (hash-chained state changes)", True),
    "prediction_payloads": LogTable(
        "prediction payloads (prompts and outputs: personal data, short on purpose)", False
    ),
    "predictions_1h": LogTable("hourly prediction rollups", False),
    "feedback": LogTable("feedback", False),
    "exposures": LogTable("experiment exposures", False),
    "drift_reports": LogTable("drift reports", False),
}


@dataclass(frozen=True, slots=True)
class Retention:
    table: str
    purpose: str
    ttl_days: int
    """0: no TTL (rows are kept until deleted)."""
    required_log: bool
    found: bool = True
    """The table exists in the store."""

    @property
    def meets_minimum(self) -> bool:
        return self.found and (self.ttl_days == 0 or self.ttl_days >= MINIMUM_RETENTION_DAYS)


@dataclass(frozen=True, slots=True)
class DriftStatus:
    route: str
    model_name: str
    metric: str
    psi: float
    ks: float
    drifted: bool
    report_time_us: int
    reference_count: int
    latest_count: int


class ComplianceLogs(Protocol):
    """The ClickHouse facts of a report; blocking (called on a thread)."""

    def retention(self) -> list[Retention]:
        """The TTL in force of every table of :data:`LOG_TABLES`."""
        ...

    def latest_drift(self, *, route: str = "", model_name: str = "") -> list[DriftStatus]:
        """The newest drift report per (route, model, metric), filtered by route and/or
        model name (empty: any)."""
        ...


# Interval units ClickHouse writes in a normalised TTL expression, in days.
_UNIT_DAYS = {
    "Second": 1 / 86_400,
    "Minute": 1 / 1_440,
    "Hour": 1 / 24,
    "Day": 1,
    "Week": 7,
    "Month": 30,
    "Quarter": 91,
    "Year": 365,
}
_TTL = re.compile(r"\bTTL\b(.*?)(?:\bSETTINGS\b|$)", re.S)
_INTERVAL = re.compile(r"toInterval(Second|Minute|Hour|Day|Week|Month|Quarter|Year)\((\d+)\)")


def ttl_days(engine_full: str) -> int:
    """The shortest row TTL of a table from ``system.tables.engine_full`` (ClickHouse
    normalises ``INTERVAL 90 DAY`` to ``toIntervalDay(90)``), in whole days rounded down;
    0 when the table has no row TTL (column TTLs are not in ``engine_full``)."""
    match = _TTL.search(engine_full)
    if match is None:
        return 0
    days = [int(n) * _UNIT_DAYS[unit] for unit, n in _INTERVAL.findall(match.group(1))]
    return max(1, int(min(days))) if days else 0


class ClickHouseComplianceLogs:
    """:class:`ComplianceLogs` on the mesh's ClickHouse (chdb or a server)."""

    def __init__(self, store: ClickHouseStore | Callable[[], ClickHouseStore]) -> None:
        self._store = store

    @property
    def store(self) -> ClickHouseStore:
        if callable(self._store):  # opened by the first report, not at start
            self._store = self._store()
        return self._store

    def retention(self) -> list[Retention]:
        rows = self.store.query(
            "SELECT name, engine_full FROM system.tables "
            "WHERE database = currentDatabase() AND name IN %(names)s",
            {"names": tuple(LOG_TABLES)},
        )
        engines = {str(r["name"]): str(r["engine_full"]) for r in rows}
        return [
            Retention(
                table,
                spec.purpose,
                ttl_days(engines.get(table, "")),
                spec.required_log,
                found=table in engines,
            )
            for table, spec in LOG_TABLES.items()
        ]

    def latest_drift(self, *, route: str = "", model_name: str = "") -> list[DriftStatus]:
        conds, params = ["1"], {}
        if route:
            conds.append("route = %(route)s")
            params["route"] = route
        if model_name:
            conds.append("model_name = %(model_name)s")
            params["model_name"] = model_name
        rows = self.store.query(
            "SELECT route, model_name, metric, argMax(psi, event_time) AS psi, "
            "argMax(ks, event_time) AS ks, argMax(drifted, event_time) AS drifted, "
            "toUnixTimestamp64Milli(max(event_time)) AS at_ms, "
            "argMax(n_ref, event_time) AS n_ref, argMax(n_latest, event_time) AS n_latest "
            f"FROM drift_reports WHERE {' AND '.join(conds)} "
            "GROUP BY route, model_name, metric ORDER BY route, model_name, metric",
            params,
        )
        return [
            DriftStatus(
                str(r["route"]),
                str(r["model_name"]),
                str(r["metric"]),
                float(r["psi"]),
                float(r["ks"]),
                bool(r["drifted"]),
                int(r["at_ms"]) * 1000,
                int(r["n_ref"]),
                int(r["n_latest"]),
            )
            for r in rows
        ]


# -- the report -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelReport:
    version: Version
    risk_tier: int
    card_missing: tuple[str, ...]
    card_required: int
    approvals: tuple[StateChange, ...]
    four_eyes: bool
    alias_history: tuple[AliasChange, ...]
    last_evaluations: tuple[governance_pb2.EvaluationResult, ...]
    routes: tuple[str, ...]
    drift: tuple[DriftStatus, ...]
    findings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ComplianceReport:
    route: str
    served: tuple[Ref, ...]
    models: tuple[ModelReport, ...]
    retention: tuple[Retention, ...]
    route_drift: tuple[DriftStatus, ...]
    findings: tuple[str, ...]
    generate_time_us: int
    minimum_retention_days: int = MINIMUM_RETENTION_DAYS


CARD_REQUIRED = len(validation.card_gaps(governance_pb2.ModelCard(), trained_on=0))
"""Fields a complete card needs (what an empty card lacks)."""


def last_evaluations(
    card: governance_pb2.ModelCard | None,
) -> tuple[governance_pb2.EvaluationResult, ...]:
    """The card's results with the latest ``evaluate_time``; all of them when none is dated."""
    if card is None or not card.evaluations:
        return ()
    dated = [e for e in card.evaluations if e.HasField("evaluate_time")]
    if not dated:
        return tuple(card.evaluations)
    newest = max(e.evaluate_time.ToMicroseconds() for e in dated)
    return tuple(e for e in dated if e.evaluate_time.ToMicroseconds() == newest)


def mesh_findings(retention: Iterable[Retention]) -> list[str]:
    """Findings about the logging in force whatever the model: a required log table that
    does not exist, an audit trail kept less than six months."""
    findings = []
    for r in retention:
        if r.required_log and not r.found:
            findings.append(f"table {r.table} ({r.purpose}) does not exist: nothing is logged")
        elif r.table == "audit" and not r.meets_minimum:
            findings.append(
                f"audit keeps rows {r.ttl_days} days: the audit trail must be kept at least "
                f"{MINIMUM_RETENTION_DAYS} days"
            )
    return findings


def high_risk_findings(retention: Iterable[Retention]) -> list[str]:
    """Findings for a high-risk model: each automatic log kept less than six months."""
    findings = []
    for r in retention:
        if r.required_log and r.found and not r.meets_minimum and r.table != "audit":
            findings.append(
                f"{r.table} keeps rows {r.ttl_days} days: EU AI Act Art. 19/26 ask high-risk "
                f"systems to keep their automatic logs at least {MINIMUM_RETENTION_DAYS} days "
                f"(ALTER TABLE {r.table} MODIFY TTL ...)"
            )
    return findings


def _drift_findings(drift: Iterable[DriftStatus]) -> list[str]:
    return [
        f"drift on route {d.route} model {d.model_name}: {d.metric} PSI {d.psi:.3f} "
        f"KS {d.ks:.3f} in the latest report"
        for d in drift
        if d.drifted
    ]


def model_findings(
    version: Version,
    card_missing: Sequence[str],
    approvals: Sequence[StateChange],
    retention: Sequence[Retention],
    drift: Sequence[DriftStatus],
) -> tuple[list[str], bool]:
    """The findings about one model version, and whether it passed four eyes."""
    findings = []
    card = version.details if isinstance(version.details, governance_pb2.ModelCard) else None
    tier = card.risk_tier if card is not None else governance_pb2.RISK_TIER_UNSPECIFIED
    if card_missing:
        findings.append("model card incomplete; missing: " + ", ".join(card_missing))
    approvers = [c.actor for c in approvals if c.state == model.APPROVED]
    four_eyes = any(a != version.created_by for a in approvers)
    if version.state != model.APPROVED:
        findings.append(
            f"version {version.version} is {model.state_name(version.state)}, not APPROVED"
        )
    if approvers and not four_eyes:
        findings.append(
            f"version {version.version} was approved only by its registrant {version.created_by}"
        )
    if tier == governance_pb2.RISK_TIER_UNACCEPTABLE:
        findings.append("risk tier UNACCEPTABLE: a prohibited practice (EU AI Act Art. 5)")
    if (
        card is not None
        and card.evaluations
        and not any(e.HasField("evaluate_time") for e in card.evaluations)
    ):
        findings.append("no evaluation on the card says when it was made (evaluate_time)")
    if tier == governance_pb2.RISK_TIER_HIGH:
        findings.extend(high_risk_findings(retention))
    findings.extend(_drift_findings(drift))
    return findings, four_eyes


class Compliance:
    """Builds :class:`ComplianceReport` from the registry and the ClickHouse logs."""

    def __init__(
        self,
        registry: Registry,
        logs: ComplianceLogs,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.logs = logs
        self._clock = clock

    async def for_model(self, ref: Ref) -> ComplianceReport:
        if ref.kind != model.MODEL:
            raise InvalidArgument(f"{ref.where}.kind", "a compliance report is for a MODEL")
        _, version = await self.registry.get(ref)  # NOT_FOUND before ClickHouse is asked
        retention = await asyncio.to_thread(self.logs.retention)
        report = await self._model(version, retention)
        return ComplianceReport(
            route="",
            served=(),
            models=(report,),
            retention=tuple(retention),
            route_drift=(),
            findings=tuple(mesh_findings(retention)),
            generate_time_us=int(self._clock() * 1e6),
        )

    async def for_route(self, route: str) -> ComplianceReport:
        validation.route(route, "route")
        edges = await self.registry.lineage(Node(route=route), model.UPSTREAM, ROUTE_DEPTH)
        served = _unique(e.upstream.artifact for e in edges if e.downstream.route == route)
        models = _unique(
            e.upstream.artifact
            for e in edges
            if e.upstream.artifact is not None and e.upstream.artifact.kind == model.MODEL
        )
        retention, route_drift = await asyncio.gather(
            asyncio.to_thread(self.logs.retention),
            asyncio.to_thread(self.logs.latest_drift, route=route),
        )
        reports, findings = [], []
        for ref in models:
            try:
                _, version = await self.registry.get(ref)
            except NotFound:  # deleted: its lineage stays, its versions leave lookups
                findings.append(
                    f"model {ref.name} v{ref.version} is in the lineage of route {route} "
                    "but was deleted from the registry"
                )
                continue
            reports.append(await self._model(version, retention, route=route))
        if not models:
            findings.append(
                f"no registered model serves route {route} (no SERVED_BY lineage to it)"
            )
        findings.extend(mesh_findings(retention))
        findings.extend(_drift_findings(route_drift))
        return ComplianceReport(
            route=route,
            served=tuple(served),
            models=tuple(reports),
            retention=tuple(retention),
            route_drift=tuple(route_drift),
            findings=tuple(findings),
            generate_time_us=int(self._clock() * 1e6),
        )

    async def _model(
        self, version: Version, retention: Sequence[Retention], route: str = ""
    ) -> ModelReport:
        pinned = Ref(model.MODEL, version.name, version.version)
        upstream, downstream, approvals, aliases, drift = await asyncio.gather(
            self.registry.lineage(Node(artifact=pinned), model.UPSTREAM, 1),
            self.registry.lineage(Node(artifact=pinned), model.DOWNSTREAM, ROUTE_DEPTH),
            self.registry.state_history(pinned),
            self.registry.alias_history(model.MODEL, version.name),
            asyncio.to_thread(self.logs.latest_drift, model_name=version.name),
        )
        trained_on = sum(1 for e in upstream if e.relation == model.TRAINED_ON)
        card = version.details if isinstance(version.details, governance_pb2.ModelCard) else None
        missing = validation.card_gaps(card, trained_on)
        routes = sorted({e.downstream.route for e in downstream if e.downstream.route})
        # On a route's report the route's own drift is a finding of the route.
        elsewhere = [d for d in drift if d.route != route] if route else drift
        findings, four_eyes = model_findings(version, missing, approvals, retention, elsewhere)
        return ModelReport(
            version=version,
            risk_tier=card.risk_tier if card is not None else 0,
            card_missing=tuple(missing),
            card_required=CARD_REQUIRED,
            approvals=tuple(approvals),
            four_eyes=four_eyes,
            alias_history=tuple(aliases),
            last_evaluations=last_evaluations(card),
            routes=tuple(routes),
            drift=tuple(drift),
            findings=tuple(findings),
        )


def _unique(refs: Iterable[Ref | None]) -> list[Ref]:
    seen: dict[tuple[int, str, int], Ref] = {}
    for ref in refs:
        if ref is not None:
            seen.setdefault((ref.kind, ref.name, ref.version), ref)
    return sorted(seen.values(), key=lambda r: (r.kind, r.name, r.version))


def aliases_at(changes: Iterable[AliasChange], at_us: int) -> dict[str, int]:
    """Alias -> version at time ``at_us`` from a history of moves (oldest first)."""
    held: dict[str, int] = {}
    for change in changes:
        if change.time_us > at_us:
            break
        if change.version:
            held[change.alias] = change.version
        else:
            held.pop(change.alias, None)
    return dict(sorted(held.items()))
