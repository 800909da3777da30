"""The load test's pages (loadtests/storefront.py), report (loadtests/report.py) and run
checks (loadtests/run.py), without a mesh: fake stubs and a synthetic run directory."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmops.config import MeshConfig
from llmops.v1 import embedding_pb2, inference_pb2
from loadtests import report, run
from loadtests.spec import Objectives, Scenario, load_scenarios
from loadtests.storefront import RESULTS_PER_PAGE, TENANT, Shopper, Stubs, zipf_index


class _Refused(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED


class _Method:
    def __init__(self, calls: list[tuple[str, Any]], name: str, reply: Any) -> None:
        self.calls, self.name, self.reply = calls, name, reply

    def __call__(self, request: Any, timeout: float) -> Any:
        self.calls.append((self.name, request))
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


class _Stub:
    def __init__(self, calls: list[tuple[str, Any]], replies: dict[str, Any]) -> None:
        self._calls, self._replies = calls, replies

    def __getattr__(self, method: str) -> _Method:
        return _Method(self._calls, method, self._replies.get(method, object()))


def _shopper(scenario: Scenario, replies: dict[str, Any]) -> tuple[Shopper, list, list]:
    calls: list[tuple[str, Any]] = []
    recorded: list[tuple[str, str, float, str]] = []
    stub = _Stub(calls, replies)
    stubs = Stubs(stub, stub, stub, stub, stub)  # type: ignore[arg-type]
    shopper = Shopper(stubs, scenario, lambda *row: recorded.append(row), rng=random.Random(3))
    return shopper, calls, recorded


def test_a_search_page_makes_its_four_calls_and_a_click_on_the_intent() -> None:
    scenario = load_scenarios()["storefront"].model_copy(update={"click_rate": 1.0})
    hits = embedding_pb2.SearchResponse(hits=[embedding_pb2.SearchHit(id="property-7")])
    shopper, calls, recorded = _shopper(scenario, {
        "Run": inference_pb2.RunResponse(request_id="r-1"), "Search": hits})  # fmt: skip
    shopper.search_results()
    assert [name for name, _ in calls] == [
        "GetOnlineFeatures", "Assign", "Run", "Search", "Submit"]  # fmt: skip
    features, assign, intent = calls[0][1], calls[1][1], calls[2][1]
    assert len(features.entity_keys) == RESULTS_PER_PAGE
    assert assign.unit_id == shopper.user_id and not assign.skip_exposure
    assert intent.task == "query_intent" and intent.context.tenant == TENANT
    click = calls[4][1].feedback
    assert (click.request_id, click.task, click.click.item_id) == (
        "r-1",
        "query_intent",
        "property-7",
    )
    assert click.idempotency_key
    names = [r[0] for r in recorded]
    assert names[-2:] == ["page:search_results", "FeedbackService/Submit"]
    assert "InferenceService/Run[query_intent]" in names
    assert all(r[3] == "OK" for r in recorded)


def test_a_refused_call_is_recorded_with_its_status_and_fails_the_page() -> None:
    scenario = load_scenarios()["storefront"].model_copy(update={"booking_rate": 1.0})
    shopper, calls, recorded = _shopper(scenario, {"Run": _Refused()})
    shopper.property_page()
    by_name = {r[0]: r[3] for r in recorded}
    assert by_name["InferenceService/Run[property_highlights]"] == "RESOURCE_EXHAUSTED"
    assert by_name["FeatureService/GetOnlineFeatures"] == "OK"
    assert by_name["page:property_page"] == "FAILED_CALL"
    assert "Submit" not in [n for n, _ in calls]  # no booking on a prediction that failed


def test_zipf_draws_favour_the_head() -> None:
    rng = random.Random(1)
    draws = [zipf_index(rng, 200) for _ in range(20_000)]
    assert all(0 <= d < 200 for d in draws)
    assert draws.count(0) > draws.count(9) * 5 > 0


def _run_dir(tmp_path: Path, *, slow: bool = False, errors: int = 0) -> Path:
    out = tmp_path / "run"
    out.mkdir(parents=True)
    rng = random.Random(5)
    with (out / "samples.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("t_s", "name", "kind", "latency_ms", "code"))
        for i in range(600):
            ms = rng.uniform(1, 4) * (30 if slow else 1)
            w.writerow((i / 20, "ExperimentService/Assign", "rpc", ms, "OK"))
            w.writerow((i / 20, "page:search_results", "page", ms + 1, "OK"))
        for i in range(errors):
            w.writerow((i / 10, "ExperimentService/Assign", "rpc", 1.0, "UNAVAILABLE"))
    with (out / "users.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("t_s", "users", "generator_cpu_percent"))
        w.writerows((t, 4, 20.0) for t in range(30))
    scenario = load_scenarios()["smoke"]
    (out / "run.json").write_text(json.dumps({
        "scenario": scenario.model_dump(mode="json"), "target": "embedded", "mode": "embedded",
        "started_unix": 1_800_000_000, "elapsed_s": 30.0, "stopped_by": "duration"}))  # fmt: skip
    return out


_SLO = Objectives.model_validate({"objectives": {
    "ExperimentService/Assign": {"p50_ms": 5, "p99_ms": 10},
    "page:search_results": {"p99_ms": 20},
    "FeedbackService/Submit": {"p99_ms": 20},
}})  # fmt: skip


def test_a_report_that_meets_its_objectives_passes(tmp_path: Path) -> None:
    out = _run_dir(tmp_path)
    result = report.write(out, _SLO)
    assert result.passed
    stats = {s.name: s for s in result.stats}
    assert stats["ExperimentService/Assign"].calls == 600
    assert stats["ExperimentService/Assign"].per_s == pytest.approx(20.0)
    assert 1 <= stats["ExperimentService/Assign"].p50_ms <= 4
    assert result.notes == ["FeedbackService/Submit: not called in this run"]
    md = (out / "report.md").read_text()
    assert md.startswith("# Load test: smoke") and "**PASS: all 5 objectives met**" in md
    assert "| ExperimentService/Assign | p99 |" in md and "not called in this run" in md
    for png in ("latency.png", "throughput.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")
    page = (out / "report.html").read_text()
    # self-contained: the plots inline, nothing fetched from anywhere
    assert page.count("data:image/png;base64,") == 2
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is True and summary["run"]["target"] == "embedded"


def test_a_slow_run_and_its_errors_fail_with_each_miss_named(tmp_path: Path) -> None:
    out = _run_dir(tmp_path, slow=True, errors=5)
    result = report.write(out, _SLO)
    assert not result.passed
    text = report.console_summary(result)
    assert text.startswith("FAIL: 4 of 5 objectives missed")
    assert "missed ExperimentService/Assign p99" in text
    assert "missed ExperimentService/Assign error_rate" in text
    assert "UNAVAILABLE" in (out / "report.md").read_text()


def test_a_run_that_measured_nothing_fails(tmp_path: Path) -> None:
    out = _run_dir(tmp_path)
    result = report.write(out, Objectives.model_validate({"objectives": {"X/Y": {"p99_ms": 1}}}))
    assert not result.passed
    assert report.console_summary(result).startswith("FAIL: nothing to judge")


def test_a_comparison_shows_both_runs_side_by_side(tmp_path: Path) -> None:
    first = _run_dir(tmp_path / "a")
    report.write(first, _SLO)
    second = _run_dir(tmp_path / "b", slow=True)
    report.write(second, _SLO, compare=first)
    md = (second / "report.md").read_text()
    assert "## Compared with embedded (embedded mode)" in md
    assert re.search(r"\| ExperimentService/Assign \| 20\.0 / 20\.0 \|", md)


def test_run_checks_refuse_what_a_load_test_must_not_do() -> None:
    assert run.parse_duration("90") == 90 and run.parse_duration("5m") == 300
    assert run.parse_duration(None) is None
    for bad in ("soon", "0", "-3s"):
        with pytest.raises(run.LoadtestError, match="--duration"):
            run.parse_duration(bad)
    with pytest.raises(run.LoadtestError, match="no scenario 'nope'; known: "):
        run.pick("nope", None, None)
    assert run.pick("smoke", 12.0, 3).duration_s == 12.0
    run.check_loopback(MeshConfig.model_validate({}))  # the defaults: 127.0.0.1
    remote = MeshConfig.model_validate({"services": {"feature": {"host": "192.0.2.10"}}})
    with pytest.raises(run.LoadtestError, match="loopback only"):
        run.check_loopback(remote)
