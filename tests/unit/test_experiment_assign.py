"""Experiment assignment and lifecycle (domain level, file config store)."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scipy import stats as scipy_stats  # type: ignore[import-untyped]

from llmops.errors import (
    Aborted,
    AlreadyExists,
    AuditNotPublished,
    FailedPrecondition,
    InvalidArgument,
    LLMOpsError,
    NotFound,
    ResourceExhausted,
)
from llmops.events.port import ServiceEvents
from llmops.v1 import common_pb2, events_pb2, experiment_pb2
from services.experiment import hashing, model
from services.experiment.assignment import Assigner, AssignQuery
from services.experiment.catalog import Catalog
from services.experiment.lifecycle import Change, Lifecycle
from services.experiment.scheduling import Schedule
from services.experiment.servicer import assign_query, assign_response
from services.experiment.sticky import MemoryStickyStore
from services.experiment.store import FileConfigStore

CTX = common_pb2.RequestContext(request_id="r-1", tenant="acme", user_id="ops-1")
CHANGE = Change(tenant="acme")


class Clock:
    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now


class FakePublisher:
    """The publisher behind ``ctx.events``: a bounded list; ``broken`` makes publish fail
    although has_room says yes (the buffer filled between the check and the publish)."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.capacity = capacity
        self.events: list[events_pb2.EventEnvelope] = []
        self.broken = False

    def has_room(self, count: int) -> bool:
        return len(self.events) + count <= self.capacity

    def publish(self, envelope: events_pb2.EventEnvelope) -> None:
        self.publish_all([envelope])

    def publish_all(self, envelopes: Any) -> None:
        if self.broken or not self.has_room(len(envelopes)):
            raise ResourceExhausted("event buffer full")
        self.events.extend(envelopes)


@dataclass
class Env:
    catalog: Catalog
    assigner: Assigner
    lifecycle: Lifecycle
    schedule: Schedule
    publisher: FakePublisher
    sticky: MemoryStickyStore
    clock: Clock

    @property
    def published(self) -> list[events_pb2.EventEnvelope]:
        return self.publisher.events

    def audits(self) -> list[events_pb2.AuditEvent]:
        return [e.audit for e in self.published if e.WhichOneof("event") == "audit"]


async def no_rewards(exp: Any) -> tuple[dict[str, int], dict[str, int]]:
    raise AssertionError("no bandit is due")


async def make_env(path: Path, holdout_bps: int = 0, rewards: Any = no_rewards) -> Env:
    clock = Clock()
    publisher = FakePublisher()
    events = ServiceEvents("llmops.v1.ExperimentService", lambda: publisher, clock)  # type: ignore[arg-type,return-value]
    catalog = Catalog(FileConfigStore(path))
    sticky = MemoryStickyStore()
    assigner = Assigner(catalog, events, sticky, holdout_bps=holdout_bps, clock=clock)
    lifecycle = Lifecycle(catalog, events, clock)
    schedule = Schedule(catalog, lifecycle, rewards, clock)
    await catalog.refresh()
    return Env(catalog, assigner, lifecycle, schedule, publisher, sticky, clock)


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
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = await make_env(tmp_path / "experiments.json")
    for name in ("page", "search"):
        await e.lifecycle.create_layer(experiment_pb2.Layer(name=name, unit_type="user"), CHANGE)
    yield e


async def started(env: Env, exp: experiment_pb2.Experiment) -> experiment_pb2.Experiment:
    created = await env.lifecycle.create(exp, CHANGE)
    return await env.lifecycle.transition(created.id, created.version, model.RUNNING, CHANGE)


def assign(env: Env, unit: str, **kw: Any) -> list[experiment_pb2.Assignment]:
    """Assign through the servicer's conversions, run to completion without awaiting: it
    only awaits the sticky store, which (embedded) never suspends."""
    request = experiment_pb2.AssignRequest(unit_type="user", unit_id=unit, **kw)
    coro = env.assigner.assign(assign_query(request))
    try:
        coro.send(None)
    except StopIteration as done:
        return list(assign_response(done.value).assignments)
    raise AssertionError("assign suspended: a store with I/O in a sync test")


async def assign_async(env: Env, unit: str, **kw: Any) -> list[experiment_pb2.Assignment]:
    request = experiment_pb2.AssignRequest(unit_type="user", unit_id=unit, **kw)
    return list(assign_response(await env.assigner.assign(assign_query(request))).assignments)


async def test_assignment_is_deterministic_across_processes(env: Env, tmp_path: Path) -> None:
    await started(env, experiment("pp-llm", traffic_bps=6000))
    units = [f"u-{i}" for i in range(300)]
    here = {
        u: [(a.experiment_id, a.variant, a.bucket) for a in assign(env, u, skip_exposure=True)]
        for u in units
    }
    script = f"""
import asyncio, json
from pathlib import Path
from services.experiment.assignment import Assigner, AssignQuery
from services.experiment.catalog import Catalog
from services.experiment.sticky import MemoryStickyStore
from services.experiment.store import FileConfigStore
async def main():
    catalog = Catalog(FileConfigStore(Path({str(tmp_path / "experiments.json")!r})))
    await catalog.refresh()
    assigner = Assigner(catalog, None, MemoryStickyStore())
    out = {{}}
    for u in {units!r}:
        got = await assigner.assign(AssignQuery("user", u, log_exposure=False))
        out[u] = [[a.experiment.id, a.experiment.keys[a.variant], a.bucket] for a in got]
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


async def test_variant_split_follows_weights(env: Env) -> None:
    three = [variant("control", 50, True), variant("b", 25), variant("c", 25)]
    await started(env, experiment("split", variants=three))
    counts = Counter(assign(env, f"u{i}", skip_exposure=True)[0].variant for i in range(40_000))
    observed = [counts["control"], counts["b"], counts["c"]]
    assert scipy_stats.chisquare(observed, [20_000, 10_000, 10_000]).pvalue > 0.001


async def test_layers_are_mutually_exclusive_inside_and_independent_across(env: Env) -> None:
    await started(env, experiment("a", traffic_bps=5000))
    await started(env, experiment("b", traffic_bps=5000))
    await started(env, experiment("c", layer="search"))
    both: Counter[tuple[bool, str]] = Counter()
    for i in range(20_000):
        got = {a.experiment_id: a.variant for a in assign(env, f"u{i}", skip_exposure=True)}
        assert len(set(got) & {"a", "b"}) == 1  # the page layer is full: exactly one of a, b
        both["a" in got, got["c"]] += 1
    # c's split is the same among a's units and b's units (independent hashes)
    share_in_a = both[(True, "treatment")] / (both[(True, "treatment")] + both[(True, "control")])
    share_in_b = both[(False, "treatment")] / (
        both[(False, "treatment")] + both[(False, "control")]
    )
    assert abs(share_in_a - share_in_b) < 0.03
    with pytest.raises(FailedPrecondition, match="layer page has 0 free buckets"):
        await started(env, experiment("d", traffic_bps=100))


async def test_holdout_and_overrides(tmp_path: Path) -> None:
    env = await make_env(tmp_path / "e.json", holdout_bps=1000)
    await env.lifecycle.create_layer(experiment_pb2.Layer(name="page", unit_type="user"), CHANGE)
    await started(env, experiment("a", overrides={"qa-1": "treatment"}))
    empty = sum(not assign(env, f"u{i}", skip_exposure=True) for i in range(20_000))
    assert 0.085 < empty / 20_000 < 0.115  # ~10% held out
    (forced,) = assign(env, "qa-1", skip_exposure=True)  # overrides win over the holdout
    assert (forced.variant, forced.reason) == (
        "treatment",
        experiment_pb2.ASSIGNMENT_REASON_OVERRIDE,
    )


async def test_targeting_limits_eligibility(env: Env) -> None:
    only_benelux = common_pb2.Filter(
        condition=common_pb2.FieldCondition(
            field="market",
            operator=common_pb2.FieldCondition.OPERATOR_IN,
            value=common_pb2.Value(string_list_value=common_pb2.StringList(values=["NL", "BE"])),
        )
    )
    await started(env, experiment("benelux", targeting=only_benelux))
    nl = common_pb2.RequestContext(market="NL")
    fr = common_pb2.RequestContext(market="FR")
    assert assign(env, "u1", context=nl, skip_exposure=True)
    assert not assign(env, "u1", context=fr, skip_exposure=True)


async def test_exposures_are_deduplicated_within_the_window(env: Env) -> None:
    await started(env, experiment("a"))
    env.published.clear()
    first = assign(env, "u1", context=CTX)[0]
    again = assign(env, "u1", context=CTX)[0]
    assert first.exposure_id and again.exposure_id == first.exposure_id
    exposures = [e.exposure for e in env.published if e.WhichOneof("event") == "exposure"]
    assert len(exposures) == 1
    ev = exposures[0]
    assert (ev.experiment_id, ev.unit_id, ev.variant, ev.tenant, ev.request_id) == (
        "a",
        "u1",
        first.variant,
        "acme",
        "r-1",
    )
    assign(env, "u2")
    env.clock.now += 1801  # past the 30-minute window: a new exposure
    assert assign(env, "u1")[0].exposure_id != first.exposure_id
    assert sum(e.WhichOneof("event") == "exposure" for e in env.published) == 3
    assert not assign(env, "u3", skip_exposure=True)[0].exposure_id


async def test_assign_is_all_or_nothing_when_the_buffer_is_full(env: Env) -> None:
    """Two layers, one a bandit: with room for one exposure only, Assign fails with
    RESOURCE_EXHAUSTED and leaves nothing behind — no exposure of the first layer, no
    sticky record of the bandit, nothing in the dedup window."""
    await started(env, experiment("page-ab"))
    await started(env, _bandit("search-bandit", layer="search"))
    env.published.clear()
    env.publisher.capacity = 1
    with pytest.raises(ResourceExhausted, match="2 exposure"):
        assign(env, "u1", context=CTX)
    assert env.published == []
    assert await env.sticky.get("user:u1") == {}
    env.publisher.capacity = 10
    got = assign(env, "u1", context=CTX)
    assert {a.experiment_id for a in got} == {"page-ab", "search-bandit"}
    assert len(env.published) == 2  # not deduplicated against the failed call
    assert {e.exposure.event_id for e in env.published} == {a.exposure_id for a in got}
    assert list(await env.sticky.get("user:u1")) == ["search-bandit:search-bandit"]


async def test_lifecycle_versions_and_audit(env: Env) -> None:
    created = await env.lifecycle.create(experiment("life", traffic_bps=2500), CHANGE)
    assert (created.status, created.version) == (model.DRAFT, 1)
    running = await env.lifecycle.transition("life", 1, model.RUNNING, CHANGE)
    assert running.version == 2 and [(r.start, r.end) for r in running.bucket_ranges] == [(0, 2500)]
    assert env.catalog.snapshot.layers["page"].free_buckets == 7500
    with pytest.raises(Aborted, match="version 2"):
        await env.lifecycle.transition("life", 1, model.STOPPED, CHANGE)
    before = [(a.variant, a.bucket) for a in assign(env, "u7", skip_exposure=True)]
    desc = experiment_pb2.Experiment(id="life", version=2, description="now documented")
    updated = await env.lifecycle.update(desc, ["description"], CHANGE)
    assert updated.version == 3 and updated.description == "now documented"
    assert [(a.variant, a.bucket) for a in assign(env, "u7", skip_exposure=True)] == before
    with pytest.raises(FailedPrecondition, match="variants can change only in DRAFT"):
        await env.lifecycle.update(experiment("life", version=3), ["variants"], CHANGE)
    stopped = await env.lifecycle.transition(
        "life", 3, model.STOPPED, Change(tenant="acme", reason="done")
    )
    assert not assign(env, "u7", skip_exposure=True)  # stopped: nobody assigned
    assert env.catalog.snapshot.layers["page"].free_buckets == 7500  # ...but buckets held
    archived = await env.lifecycle.transition("life", stopped.version, model.ARCHIVED, CHANGE)
    assert archived.status == model.ARCHIVED and not archived.bucket_ranges
    assert env.catalog.snapshot.layers["page"].free_buckets == 10_000
    audits = env.audits()
    assert [a.action for a in audits[-5:]] == [
        "experiment.create",
        "experiment.start",
        "experiment.update",
        "experiment.stop",
        "experiment.archive",
    ]
    stop_event = audits[-2]
    assert stop_event.reason == "done" and stop_event.after["status"] == "EXPERIMENT_STATUS_STOPPED"
    assert stop_event.before["status"] == "EXPERIMENT_STATUS_RUNNING"
    assert (stop_event.tenant, stop_event.resource.version) == ("acme", "4")
    assert stop_event.resource.service == "llmops.v1.ExperimentService"


async def test_a_change_whose_audit_cannot_be_published_is_refused_before_the_write(
    env: Env,
) -> None:
    await env.lifecycle.create(experiment("x"), CHANGE)
    revision = env.catalog.snapshot.revision
    env.publisher.capacity = len(env.published)  # the buffer is full
    with pytest.raises(ResourceExhausted, match=r"audit record of experiment\.start x"):
        await env.lifecycle.transition("x", 1, model.RUNNING, CHANGE)
    with pytest.raises(ResourceExhausted, match="nothing was changed"):
        await env.lifecycle.create_layer(experiment_pb2.Layer(name="more", unit_type="u"), CHANGE)
    assert await env.catalog.store.revision() == revision  # nothing written
    assert env.catalog.experiment("x").status == model.DRAFT
    assert "more" not in (await env.catalog.store.load()).layers


async def test_an_audit_publish_failing_after_the_write_is_an_error_the_caller_sees(
    env: Env,
) -> None:
    await env.lifecycle.create(experiment("x"), CHANGE)
    env.publisher.broken = True  # room when checked, refused when published
    with pytest.raises(AuditNotPublished, match=r"experiment\.start of x is stored") as info:
        await env.lifecycle.transition("x", 1, model.RUNNING, CHANGE)
    assert isinstance(info.value, LLMOpsError) and info.value.code == "DATA_LOSS"
    assert env.catalog.experiment("x").status == model.RUNNING  # the change stands, said so


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
    env: Env, change: dict[str, Any], field: str, message: str
) -> None:
    kw = {"exp_id": change.pop("id", "ok-id"), **change}
    with pytest.raises(InvalidArgument) as info:
        await env.lifecycle.create(experiment(**kw), CHANGE)
    assert info.value.field == field and message in info.value.message


async def test_other_admin_errors(env: Env) -> None:
    lifecycle = env.lifecycle
    await lifecycle.create(experiment("x"), CHANGE)
    with pytest.raises(AlreadyExists):
        await lifecycle.create(experiment("x"), CHANGE)
    with pytest.raises(AlreadyExists):
        await lifecycle.create_layer(experiment_pb2.Layer(name="page", unit_type="user"), CHANGE)
    with pytest.raises(InvalidArgument, match=r"layer\.name"):
        await lifecycle.create_layer(experiment_pb2.Layer(name="Page!", unit_type="user"), CHANGE)
    with pytest.raises(InvalidArgument, match=r"layer\.unit_type"):
        await lifecycle.create_layer(experiment_pb2.Layer(name="other"), CHANGE)
    with pytest.raises(NotFound, match="'nope'"):
        await lifecycle.transition("nope", 1, model.RUNNING, CHANGE)
    with pytest.raises(FailedPrecondition, match="is DRAFT; STOPPED needs RUNNING"):
        await lifecycle.transition("x", 1, model.STOPPED, CHANGE)
    with pytest.raises(InvalidArgument, match=r"update_mask.paths\[0\]"):
        await lifecycle.update(experiment("x", version=1), ["status"], CHANGE)
    with pytest.raises(InvalidArgument, match="update_mask"):
        await lifecycle.update(experiment("x", version=1), [], CHANGE)
    with pytest.raises(InvalidArgument, match="unit_id"):
        await env.assigner.assign(AssignQuery("user", ""))
    with pytest.raises(InvalidArgument, match=r"layers\[0\]"):
        await env.assigner.assign(AssignQuery("user", "u", layers=["zz"]))
    with pytest.raises(InvalidArgument, match=r"experiment_ids\[0\]"):
        await env.assigner.assign(AssignQuery("user", "u", experiment_ids=["zz"]))
    with pytest.raises(InvalidArgument, match="layer"):
        env.catalog.experiments((), "zz")
    assert not assign(env, "u1")  # DRAFT: nobody assigned


def _bandit(exp_id: str, layer: str = "page") -> experiment_pb2.Experiment:
    arms = [variant("control", 1, True), variant("arm_b", 1), variant("arm_c", 1)]
    exp = experiment(
        exp_id, layer, variants=arms, type=experiment_pb2.EXPERIMENT_TYPE_MULTI_ARMED_BANDIT
    )
    exp.bandit.reward_metric = "booking"
    exp.bandit.min_weight_bps = 200
    exp.bandit.update_interval.FromSeconds(3600)
    return exp


async def test_bandit_converges_and_units_keep_their_arm(tmp_path: Path) -> None:
    """Thompson sampling in simulation: arms convert at 4%, 5% and 7%; every simulated hour
    500 new units arrive, rewards are drawn from the true rates, and the service re-weights
    from (successes, trials). The best arm ends with most of the traffic, the floor holds,
    and no unit ever changes arm when the weights move (sticky assignment)."""
    rates = {"control": 0.04, "arm_b": 0.05, "arm_c": 0.07}
    successes = dict.fromkeys(rates, 0)
    trials = dict.fromkeys(rates, 0)

    async def rewards(exp: Any) -> tuple[dict[str, int], dict[str, int]]:
        return dict(successes), dict(trials)

    env = await make_env(tmp_path / "experiments.json", rewards=rewards)
    await env.lifecycle.create_layer(experiment_pb2.Layer(name="page", unit_type="user"), CHANGE)
    await started(env, _bandit("bandit-sim"))
    rng = random.Random(3)
    first_arm: dict[str, str] = {}
    for hour in range(40):
        for i in range(500):
            unit = f"h{hour}-u{i}"
            (a,) = await assign_async(env, unit, skip_exposure=True)
            first_arm[unit] = a.variant
            assert a.reason == experiment_pb2.ASSIGNMENT_REASON_BANDIT
            trials[a.variant] += 1
            successes[a.variant] += rng.random() < rates[a.variant]
        env.clock.now += 3601
        assert await env.schedule.update_bandits(seed=hour) == ["bandit-sim"]
        for unit in rng.sample(sorted(first_arm), 50):  # earlier units keep their arm
            (again,) = await assign_async(env, unit, skip_exposure=True)
            assert again.variant == first_arm[unit]
    weights = dict(env.catalog.experiment("bandit-sim").current_weights_bps)
    assert max(weights, key=weights.__getitem__) == "arm_c"
    assert weights["arm_c"] > 6000 and min(weights.values()) >= 200
    assert sum(weights.values()) == 10_000
    last = env.audits()[-1]
    assert (last.action, last.reason) == ("experiment.reweight", "thompson sampling")
    assert last.actor.type == events_pb2.ACTOR_TYPE_SYSTEM
    assert last.actor.id == "system:experiments"


async def test_reweight_is_for_running_bandits_only(env: Env) -> None:
    await started(env, experiment("plain-ab", layer="search"))
    with pytest.raises(FailedPrecondition, match="not a running bandit"):
        await env.lifecycle.reweight("plain-ab", {"control": 5000, "treatment": 5000}, CHANGE)
    await started(env, _bandit("b2"))
    with pytest.raises(InvalidArgument, match="summing to 10000"):
        await env.lifecycle.reweight("b2", {"control": 5000, "arm_b": 5000}, CHANGE)
    bad = _bandit("b3")
    bad.bandit.reward_metric = "clicks"
    with pytest.raises(InvalidArgument, match="binary metric"):
        await env.lifecycle.create(bad, CHANGE)


async def test_read_rpcs_and_paging(env: Env) -> None:
    from services.experiment.servicer import ExperimentAdminServicer, ExperimentServicer

    for i in range(3):
        await env.lifecycle.create(experiment(f"e-{i}"), CHANGE)
    admin = ExperimentAdminServicer(env.catalog, env.lifecycle)
    public = ExperimentServicer(env.catalog, env.assigner, None)  # type: ignore[arg-type]
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


async def test_end_time_stops_and_running_cannot_be_archived(env: Env) -> None:
    exp = experiment("timed", traffic_bps=1000)
    exp.end_time.FromSeconds(int(env.clock.now) + 3600)
    running = await started(env, exp)
    with pytest.raises(FailedPrecondition, match="is RUNNING; ARCHIVED needs DRAFT or STOPPED"):
        await env.lifecycle.transition("timed", running.version, model.ARCHIVED, CHANGE)
    assert await env.schedule.stop_expired() == []
    env.clock.now += 3601
    assert await env.schedule.stop_expired() == ["timed"]
    assert env.catalog.experiment("timed").status == model.STOPPED
    last = env.audits()[-1]
    assert (last.action, last.reason) == ("experiment.stop", "end_time reached")
    assert last.actor.type == events_pb2.ACTOR_TYPE_SYSTEM
    assert last.actor.id == "system:experiments"
