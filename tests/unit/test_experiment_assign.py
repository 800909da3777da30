"""Experiment assignment and lifecycle (domain level, file config store)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from scipy import stats as scipy_stats  # type: ignore[import-untyped]

from llmops.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from llmops.v1 import common_pb2, events_pb2, experiment_pb2
from services.experiment import hashing, model
from services.experiment.domain import Experiments
from services.experiment.store import Aborted, FileConfigStore

CTX = common_pb2.RequestContext(request_id="r-1", tenant="acme", user_id="ops-1")


class Clock:
    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now


def variant(key: str, weight: int, control: bool = False) -> experiment_pb2.Variant:
    return experiment_pb2.Variant(
        key=key,
        weight=weight,
        is_control=control,
        payload=experiment_pb2.VariantPayload(model_route=f"route-{key}"),
    )


def experiment(exp_id: str, layer: str = "page", traffic_bps: int = 10_000, **kw: Any) -> Any:
    exp = experiment_pb2.Experiment(
        id=exp_id,
        unit_type=kw.pop("unit_type", "user"),
        layer=layer,
        traffic_bps=traffic_bps,
        variants=kw.pop("variants", [variant("control", 50, True), variant("treatment", 50)]),
        metrics=["booking"],
        **kw,
    )
    return exp


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[Experiments, list[Any], Clock]]:
    published: list[events_pb2.EventEnvelope] = []
    clock = Clock()
    exps = Experiments(
        FileConfigStore(tmp_path / "experiments.json"), published.append, clock=clock
    )
    await exps.refresh()
    for name in ("page", "search"):
        await exps.create_layer(experiment_pb2.Layer(name=name, unit_type="user"), CTX)
    yield exps, published, clock


async def started(exps: Experiments, exp: experiment_pb2.Experiment) -> experiment_pb2.Experiment:
    created = await exps.create(exp, CTX)
    return await exps.transition(created.id, created.version, model.RUNNING, CTX)


def assign(exps: Experiments, unit: str, **kw: Any) -> list[experiment_pb2.Assignment]:
    request = experiment_pb2.AssignRequest(unit_type="user", unit_id=unit, **kw)
    return (
        list(asyncio.run(exps.assign(request)).assignments) if _no_loop() else _sync(exps, request)
    )


def _no_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


def _sync(
    exps: Experiments, request: experiment_pb2.AssignRequest
) -> list[experiment_pb2.Assignment]:
    """Run ``assign`` to completion inside a running loop: it only awaits the sticky store,
    which (embedded) never suspends, so stepping the coroutine once finishes it."""
    coro = exps.assign(request)
    try:
        coro.send(None)
    except StopIteration as done:
        return list(done.value.assignments)
    raise AssertionError("assign suspended: a store with I/O in a sync test")


async def test_assignment_is_deterministic_across_processes(
    env: tuple[Experiments, list[Any], Clock], tmp_path: Path
) -> None:
    exps, _, _ = env
    await started(exps, experiment("pp-llm", traffic_bps=6000))
    units = [f"u-{i}" for i in range(300)]
    here = {
        u: [(a.experiment_id, a.variant, a.bucket) for a in assign(exps, u, skip_exposure=True)]
        for u in units
    }
    script = f"""
import asyncio, json
from pathlib import Path
from llmops.v1 import experiment_pb2
from services.experiment.domain import Experiments
from services.experiment.store import FileConfigStore
async def main():
    e = Experiments(FileConfigStore(Path({str(tmp_path / "experiments.json")!r})), lambda env: None)
    await e.refresh()
    out = {{}}
    for u in {units!r}:
        req = experiment_pb2.AssignRequest(unit_type="user", unit_id=u, skip_exposure=True)
        r = await e.assign(req)
        out[u] = [[a.experiment_id, a.variant, a.bucket] for a in r.assignments]
    print(json.dumps(out))
asyncio.run(main())
"""
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    there = json.loads(proc.stdout)
    assert {u: [tuple(a) for a in v] for u, v in there.items()} == here
    assert 0.5 < sum(bool(v) for v in here.values()) / len(units) < 0.7  # 60% traffic


def test_hashing_is_uniform_over_a_million_units() -> None:
    buckets = Counter(hashing.bucket("layer-salt", f"user-{i}", 100) for i in range(1_000_000))
    chi2, p = scipy_stats.chisquare([buckets[b] for b in range(100)])
    assert p > 0.001, (chi2, p)
    points = Counter(hashing.point("exp-salt", f"user-{i}") // 100 for i in range(1_000_000))
    assert scipy_stats.chisquare([points[b] for b in range(100)]).pvalue > 0.001
    # sequential ids that differ in their last character spread like random ones
    tail = Counter(hashing.bucket("s", f"10000{i:02d}", 10) for i in range(100))
    assert max(tail.values()) <= 20


async def test_variant_split_follows_weights(env: tuple[Experiments, list[Any], Clock]) -> None:
    exps, _, _ = env
    three = [variant("control", 50, True), variant("b", 25), variant("c", 25)]
    await started(exps, experiment("split", variants=three))
    counts = Counter(assign(exps, f"u{i}", skip_exposure=True)[0].variant for i in range(40_000))
    observed = [counts["control"], counts["b"], counts["c"]]
    assert scipy_stats.chisquare(observed, [20_000, 10_000, 10_000]).pvalue > 0.001


async def test_layers_are_mutually_exclusive_inside_and_independent_across(
    env: tuple[Experiments, list[Any], Clock],
) -> None:
    exps, _, _ = env
    await started(exps, experiment("a", traffic_bps=5000))
    await started(exps, experiment("b", traffic_bps=5000))
    await started(exps, experiment("c", layer="search"))
    both = Counter()
    for i in range(20_000):
        got = {a.experiment_id for a in assign(exps, f"u{i}", skip_exposure=True)}
        assert len(got & {"a", "b"}) == 1  # the page layer is full: exactly one of a, b
        assert "c" in got
        both[
            (
                "a" in got,
                next(
                    a.variant
                    for a in assign(exps, f"u{i}", skip_exposure=True)
                    if a.experiment_id == "c"
                ),
            )
        ] += 1
    # c's split is the same among a's units and b's units (independent hashes)
    share_in_a = both[(True, "treatment")] / (both[(True, "treatment")] + both[(True, "control")])
    share_in_b = both[(False, "treatment")] / (
        both[(False, "treatment")] + both[(False, "control")]
    )
    assert abs(share_in_a - share_in_b) < 0.03
    with pytest.raises(FailedPrecondition, match="layer page has 0 free buckets"):
        await started(exps, experiment("d", traffic_bps=100))


async def test_holdout_and_overrides(tmp_path: Path) -> None:
    published: list[Any] = []
    exps = Experiments(FileConfigStore(tmp_path / "e.json"), published.append, holdout_bps=1000)
    await exps.refresh()
    await exps.create_layer(experiment_pb2.Layer(name="page", unit_type="user"), CTX)
    await started(exps, experiment("a", overrides={"qa-1": "treatment"}))
    empty = sum(not assign(exps, f"u{i}", skip_exposure=True) for i in range(20_000))
    assert 0.085 < empty / 20_000 < 0.115  # ~10% held out
    held = next(f"u{i}" for i in range(20_000) if not assign(exps, f"u{i}", skip_exposure=True))
    assert held  # overrides win over the holdout:
    (forced,) = assign(exps, "qa-1", skip_exposure=True)
    assert (forced.variant, forced.reason) == (
        "treatment",
        experiment_pb2.ASSIGNMENT_REASON_OVERRIDE,
    )


async def test_targeting_limits_eligibility(env: tuple[Experiments, list[Any], Clock]) -> None:
    exps, _, _ = env
    only_benelux = common_pb2.Filter(
        condition=common_pb2.FieldCondition(
            field="market",
            operator=common_pb2.FieldCondition.OPERATOR_IN,
            value=common_pb2.Value(string_list_value=common_pb2.StringList(values=["NL", "BE"])),
        )
    )
    await started(exps, experiment("benelux", targeting=only_benelux))
    nl = common_pb2.RequestContext(market="NL")
    fr = common_pb2.RequestContext(market="FR")
    assert assign(exps, "u1", context=nl, skip_exposure=True)
    assert not assign(exps, "u1", context=fr, skip_exposure=True)


async def test_exposures_are_deduplicated_within_the_window(
    env: tuple[Experiments, list[Any], Clock],
) -> None:
    exps, published, clock = env
    await started(exps, experiment("a"))
    published.clear()
    first = assign(exps, "u1", context=CTX)[0]
    again = assign(exps, "u1", context=CTX)[0]
    assert first.exposure_id and again.exposure_id == first.exposure_id
    exposures = [e.exposure for e in published if e.WhichOneof("event") == "exposure"]
    assert len(exposures) == 1
    ev = exposures[0]
    assert (ev.experiment_id, ev.unit_id, ev.variant, ev.tenant) == (
        "a",
        "u1",
        first.variant,
        "acme",
    )
    assign(exps, "u2")
    clock.now += 1801  # past the 30-minute window: a new exposure
    assert assign(exps, "u1")[0].exposure_id != first.exposure_id
    assert sum(e.WhichOneof("event") == "exposure" for e in published) == 3
    assert not assign(exps, "u3", skip_exposure=True)[0].exposure_id


async def test_lifecycle_versions_and_audit(env: tuple[Experiments, list[Any], Clock]) -> None:
    exps, published, _ = env
    created = await exps.create(experiment("life", traffic_bps=2500), CTX)
    assert (created.status, created.version) == (model.DRAFT, 1)
    running = await exps.transition("life", 1, model.RUNNING, CTX)
    assert running.version == 2 and [(r.start, r.end) for r in running.bucket_ranges] == [(0, 2500)]
    assert exps.snapshot.layers["page"].free_buckets == 7500
    with pytest.raises(Aborted, match="version 2"):
        await exps.transition("life", 1, model.STOPPED, CTX)
    before = [(a.variant, a.bucket) for a in assign(exps, "u7", skip_exposure=True)]
    desc = experiment_pb2.Experiment(id="life", version=2, description="now documented")
    updated = await exps.update(desc, ["description"], CTX)
    assert updated.version == 3 and updated.description == "now documented"
    assert [(a.variant, a.bucket) for a in assign(exps, "u7", skip_exposure=True)] == before
    with pytest.raises(FailedPrecondition, match="variants can change only in DRAFT"):
        await exps.update(experiment("life", version=3), ["variants"], CTX)
    stopped = await exps.transition("life", 3, model.STOPPED, CTX, reason="done")
    assert not assign(exps, "u7", skip_exposure=True)  # stopped: nobody assigned
    assert exps.snapshot.layers["page"].free_buckets == 7500  # ...but buckets still held
    archived = await exps.transition("life", stopped.version, model.ARCHIVED, CTX)
    assert archived.status == model.ARCHIVED and not archived.bucket_ranges
    assert exps.snapshot.layers["page"].free_buckets == 10_000
    actions = [e.audit.action for e in published if e.WhichOneof("event") == "audit"]
    assert actions[-5:] == [
        "experiment.create",
        "experiment.start",
        "experiment.update",
        "experiment.stop",
        "experiment.archive",
    ]
    stop_event = [e.audit for e in published if e.WhichOneof("event") == "audit"][-2]
    assert stop_event.reason == "done" and stop_event.after["status"] == "EXPERIMENT_STATUS_STOPPED"


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"id": "Bad_Id"}, "experiment.id", "lower-kebab-case"),
        ({"layer": "nope"}, "experiment.layer", "unknown layer 'nope'"),
        ({"unit_type": "session"}, "experiment.unit_type", "randomizes 'user'"),
        ({"traffic_bps": 0}, "experiment.traffic_bps", "1..10000"),
        ({"variants": [variant("c", 0, True), variant("b", 0)]}, "experiment.variants",
         "sum to 0"),
        ({"variants": [variant("a", 1, True), variant("b", 1, True)]}, "experiment.variants",
         "exactly one"),
        ({"variants": [variant("a", 1, True), variant("a", 1)]}, "experiment.variants[1].key",
         "repeats"),
        ({"variants": [variant("a", 1, True)]}, "experiment.variants", "at least two"),
        ({"overrides": {"u1": "zzz"}}, 'experiment.overrides["u1"]', "unknown variant"),
        ({"type": experiment_pb2.EXPERIMENT_TYPE_MULTI_ARMED_BANDIT},
         "experiment.bandit.reward_metric", "required"),
        ({"alpha": 0.7}, "experiment.alpha", "[0, 0.5)"),
    ],
)  # fmt: skip
async def test_create_rejects_bad_experiments(
    env: tuple[Experiments, list[Any], Clock], change: dict[str, Any], field: str, message: str
) -> None:
    exps, _, _ = env
    kw = {"exp_id": change.pop("id", "ok-id"), **change}
    with pytest.raises(InvalidArgument) as info:
        await exps.create(experiment(**kw), CTX)
    assert info.value.field == field and message in info.value.message


async def test_other_admin_errors(env: tuple[Experiments, list[Any], Clock]) -> None:
    exps, _, _ = env
    await exps.create(experiment("x"), CTX)
    with pytest.raises(AlreadyExists):
        await exps.create(experiment("x"), CTX)
    with pytest.raises(AlreadyExists):
        await exps.create_layer(experiment_pb2.Layer(name="page", unit_type="user"), CTX)
    with pytest.raises(InvalidArgument, match=r"layer\.name"):
        await exps.create_layer(experiment_pb2.Layer(name="Page!", unit_type="user"), CTX)
    with pytest.raises(InvalidArgument, match=r"layer\.unit_type"):
        await exps.create_layer(experiment_pb2.Layer(name="other"), CTX)
    with pytest.raises(NotFound, match="'nope'"):
        await exps.transition("nope", 1, model.RUNNING, CTX)
    with pytest.raises(FailedPrecondition, match="is DRAFT; STOPPED needs RUNNING"):
        await exps.transition("x", 1, model.STOPPED, CTX)
    with pytest.raises(InvalidArgument, match=r"update_mask.paths\[0\]"):
        await exps.update(experiment("x", version=1), ["status"], CTX)
    with pytest.raises(InvalidArgument, match="update_mask"):
        await exps.update(experiment("x", version=1), [], CTX)
    with pytest.raises(InvalidArgument, match="unit_id"):
        await exps.assign(experiment_pb2.AssignRequest(unit_type="user"))
    with pytest.raises(InvalidArgument, match=r"layers\[0\]"):
        await exps.assign(
            experiment_pb2.AssignRequest(unit_type="user", unit_id="u", layers=["zz"])
        )
    with pytest.raises(InvalidArgument, match="layer"):
        exps.list_experiments([], "zz")
    assert not assign(exps, "u1")  # DRAFT: nobody assigned


def _bandit(exp_id: str) -> experiment_pb2.Experiment:
    arms = [variant("control", 1, True), variant("arm_b", 1), variant("arm_c", 1)]
    exp = experiment(exp_id, variants=arms, type=experiment_pb2.EXPERIMENT_TYPE_MULTI_ARMED_BANDIT)
    exp.bandit.reward_metric = "booking"
    exp.bandit.min_weight_bps = 200
    exp.bandit.update_interval.FromSeconds(3600)
    return exp


async def test_bandit_converges_and_units_keep_their_arm(
    env: tuple[Experiments, list[Any], Clock],
) -> None:
    """Thompson sampling in simulation: arms convert at 4%, 5% and 7%; every simulated hour
    500 new units arrive, rewards are drawn from the true rates, and the service re-weights
    from (successes, trials). The best arm ends with most of the traffic, the floor holds,
    and no unit ever changes arm when the weights move (sticky assignment)."""
    exps, published, clock = env
    await started(exps, _bandit("bandit-sim"))
    rates = {"control": 0.04, "arm_b": 0.05, "arm_c": 0.07}
    rng = __import__("random").Random(3)
    successes = dict.fromkeys(rates, 0)
    trials = dict.fromkeys(rates, 0)
    first_arm: dict[str, str] = {}

    async def rewards(exp: Any) -> tuple[dict[str, int], dict[str, int]]:
        return dict(successes), dict(trials)

    for hour in range(40):
        for i in range(500):
            unit = f"h{hour}-u{i}"
            (a,) = (
                await exps.assign(
                    experiment_pb2.AssignRequest(unit_type="user", unit_id=unit, skip_exposure=True)
                )
            ).assignments
            first_arm[unit] = a.variant
            assert a.reason == experiment_pb2.ASSIGNMENT_REASON_BANDIT
            trials[a.variant] += 1
            successes[a.variant] += rng.random() < rates[a.variant]
        clock.now += 3601
        assert await exps.update_bandits(rewards, seed=hour) == ["bandit-sim"]
        for unit in rng.sample(sorted(first_arm), 50):  # earlier units keep their arm
            (again,) = (
                await exps.assign(
                    experiment_pb2.AssignRequest(unit_type="user", unit_id=unit, skip_exposure=True)
                )
            ).assignments
            assert again.variant == first_arm[unit]
    weights = dict(exps.get("bandit-sim").current_weights_bps)
    assert max(weights, key=weights.__getitem__) == "arm_c"
    assert weights["arm_c"] > 6000 and min(weights.values()) >= 200
    assert sum(weights.values()) == 10_000
    audit = [e.audit for e in published if e.WhichOneof("event") == "audit"]
    assert audit[-1].action == "experiment.reweight"
    assert audit[-1].actor.type == events_pb2.ACTOR_TYPE_SYSTEM


async def test_reweight_is_for_running_bandits_only(
    env: tuple[Experiments, list[Any], Clock],
) -> None:
    exps, _, _ = env
    await started(exps, experiment("plain-ab", layer="search"))
    with pytest.raises(FailedPrecondition, match="not a running bandit"):
        await exps.reweight("plain-ab", {"control": 5000, "treatment": 5000})
    await started(exps, _bandit("b2"))
    with pytest.raises(InvalidArgument, match="summing to 10000"):
        await exps.reweight("b2", {"control": 5000, "arm_b": 5000})
    bad = _bandit("b3")
    bad.bandit.reward_metric = "clicks"
    with pytest.raises(InvalidArgument, match="binary metric"):
        await exps.create(bad, CTX)


async def test_read_rpcs_and_paging(env: tuple[Experiments, list[Any], Clock]) -> None:
    from services.experiment.servicer import ExperimentAdminServicer, ExperimentServicer

    exps, _, _ = env
    for i in range(3):
        await exps.create(experiment(f"e-{i}"), CTX)
    admin, public = ExperimentAdminServicer(exps), ExperimentServicer(exps)
    page = await admin.ListExperiments(experiment_pb2.ListExperimentsRequest(page_size=2), None)
    assert [e.id for e in page.experiments] == ["e-0", "e-1"] and page.next_page_token
    rest = await admin.ListExperiments(
        experiment_pb2.ListExperimentsRequest(page_size=2, page_token=page.next_page_token), None
    )
    assert [e.id for e in rest.experiments] == ["e-2"] and not rest.next_page_token
    running = await admin.ListExperiments(
        experiment_pb2.ListExperimentsRequest(statuses=[model.RUNNING]), None
    )
    assert not running.experiments
    layers = await admin.ListLayers(experiment_pb2.ListLayersRequest(), None)
    assert [layer.name for layer in layers.layers] == ["page", "search"]
    with pytest.raises(InvalidArgument, match="page_token"):
        await admin.ListLayers(experiment_pb2.ListLayersRequest(page_token="x"), None)
    with pytest.raises(InvalidArgument, match="page_size"):
        await admin.ListExperiments(experiment_pb2.ListExperimentsRequest(page_size=-1), None)
    got = await public.GetExperiment(experiment_pb2.GetExperimentRequest(id="e-1"), None)
    assert got.experiment.status == model.DRAFT
    with pytest.raises(NotFound):
        await public.GetExperiment(experiment_pb2.GetExperimentRequest(id="zz"), None)
    with pytest.raises(InvalidArgument, match="id"):
        await public.GetExperiment(experiment_pb2.GetExperimentRequest(), None)


async def test_end_time_stops_and_running_cannot_be_archived(
    env: tuple[Experiments, list[Any], Clock],
) -> None:
    exps, published, clock = env
    exp = experiment("timed", traffic_bps=1000)
    exp.end_time.FromSeconds(int(clock.now) + 3600)
    running = await started(exps, exp)
    with pytest.raises(FailedPrecondition, match="is RUNNING; ARCHIVED needs DRAFT or STOPPED"):
        await exps.transition("timed", running.version, model.ARCHIVED, CTX)
    assert await exps.stop_expired() == []
    clock.now += 3601
    assert await exps.stop_expired() == ["timed"]
    assert exps.get("timed").status == model.STOPPED
    last = [e.audit for e in published if e.WhichOneof("event") == "audit"][-1]
    assert (last.action, last.reason) == ("experiment.stop", "end_time reached")
    assert last.actor.type == events_pb2.ACTOR_TYPE_SYSTEM
