"""The experiment service built by its real ``create()`` and served in-process by the runtime
(``llmops.server.serve``): demo seeding, the periodic tasks, admin errors over gRPC, and
Assign all-or-nothing against a full event buffer. Events are read back from the local
event log the service wrote them to."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from llmops.config import load_config
from llmops.events.local_log import LocalLog
from llmops.events.port import ServiceEvents
from llmops.events.topics import KIND_TOPICS
from llmops.v1 import events_pb2, experiment_pb2, experiment_pb2_grpc
from services.experiment import demo, model
from services.experiment.catalog import Catalog
from services.experiment.lifecycle import Change, Lifecycle
from services.experiment.sticky import MemoryStickyStore
from services.experiment.store import FileConfigStore
from tests.support import mesh_env

T = TypeVar("T")


@dataclass
class Served:
    channel: grpc.aio.Channel
    state: Path
    metrics_url: str

    @property
    def public(self) -> experiment_pb2_grpc.ExperimentServiceStub:
        return experiment_pb2_grpc.ExperimentServiceStub(self.channel)

    @property
    def admin(self) -> experiment_pb2_grpc.ExperimentAdminServiceStub:
        return experiment_pb2_grpc.ExperimentAdminServiceStub(self.channel)

    @property
    def config_path(self) -> Path:
        return self.state / "experiments.json"

    def events(self, kind: str) -> list[events_pb2.EventEnvelope]:
        """Every ``kind`` event in the local log so far (a fresh consumer group)."""
        log = LocalLog(self.state / "events")
        consumer = log.consumer(f"test-{uuid.uuid4().hex}", [KIND_TOPICS[kind]])
        try:
            records = []
            while batch := consumer.poll(10_000, 0.2):
                records += batch
        finally:
            consumer.close()
            log.close()
        return [events_pb2.EventEnvelope.FromString(r.value) for r in records]

    def task_runs(self, task: str) -> float:
        """``llmops_task_runs_total{outcome="ok", task=...}`` from the service's metrics."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as reply:
            text = reply.read().decode()
        prefix = f'llmops_task_runs_total{{outcome="ok",task="{task}"}} '
        return sum(
            float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)
        )


@asynccontextmanager
async def serving(tmp_path: Path, **settings: str) -> AsyncIterator[Served]:
    """The experiment service of an embedded mesh on ``tmp_path``; ``settings`` are env
    overrides, e.g. ``LLMOPS__EXPERIMENTS__DEMO_DATA="off"``."""
    from llmops.server import serve

    env, ports, admin_ports = mesh_env(tmp_path, insecure=True)
    env["LLMOPS__SINK__EMBEDDED"] = "false"  # in-process: this pytest process's chdb is taken
    env.update(settings)
    config = load_config(environ=env)
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve(config, ["experiment"], ready=ready, stop=stop))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['experiment']}") as channel:
            yield Served(
                channel,
                tmp_path / "state",
                f"http://127.0.0.1:{admin_ports['experiment']}/metrics",
            )
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)


async def eventually(probe: Callable[[], Awaitable[T]], what: str, timeout_s: float = 15) -> T:
    """``probe()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = await probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Unbounded:
    """The events port's publisher for writing a store before the service starts."""

    def has_room(self, count: int) -> bool:
        return True

    def publish(self, envelope: events_pb2.EventEnvelope) -> None:
        return None


async def write_store(path: Path, *experiments: experiment_pb2.Experiment) -> None:
    """Another writer: the layers ``page`` and ``search`` and ``experiments``, started."""
    catalog = Catalog(FileConfigStore(path))
    events = ServiceEvents("test", lambda: Unbounded())  # type: ignore[arg-type,return-value]
    lifecycle = Lifecycle(catalog, events)
    change = Change()
    for name in ("page", "search"):
        await lifecycle.create_layer(experiment_pb2.Layer(name=name, unit_type="user"), change)
    for exp in experiments:
        created = await lifecycle.create(exp, change)
        await lifecycle.transition(created.id, created.version, model.RUNNING, change)


def ab(
    exp_id: str, layer: str = "page", traffic_bps: int = 10_000, **kw: Any
) -> experiment_pb2.Experiment:
    exp = experiment_pb2.Experiment(
        id=exp_id, unit_type="user", layer=layer, traffic_bps=traffic_bps, metrics=["booking"], **kw
    )
    exp.variants.add(key="control", weight=1, is_control=True)
    exp.variants.add(key="treatment", weight=1)
    return exp


# -- demo data ------------------------------------------------------------------------------


async def test_demo_experiments_are_seeded_into_an_empty_store(tmp_path: Path) -> None:
    async with serving(tmp_path) as served:  # embedded mode: demo_data auto = on
        everything = len(demo.EXPERIMENTS) + len(demo.TASK_EXPERIMENTS)

        async def running() -> list[experiment_pb2.Experiment]:
            reply = await served.admin.ListExperiments(
                experiment_pb2.ListExperimentsRequest(statuses=[model.RUNNING])
            )
            # the seeding is done once every demo experiment runs
            return list(reply.experiments) if len(reply.experiments) == everything else []

        seeded = await eventually(running, "the demo experiments")
        assert {e.id for e in seeded} == {e.id for e in (*demo.EXPERIMENTS, *demo.TASK_EXPERIMENTS)}
        layers = await served.admin.ListLayers(experiment_pb2.ListLayersRequest())
        assert [layer.name for layer in layers.layers] == [
            "content_tools", "property_page", "search_box", "search_ranking",
        ]  # fmt: skip
        for user in ("u-000001", "u-000002"):
            reply = await served.public.Assign(
                experiment_pb2.AssignRequest(unit_type="user", unit_id=user, skip_exposure=True)
            )
            # property_page is shared 60/40 by two experiments, content_tools 50/50: every
            # shopper is in one of each (search_box assigns sessions, not users)
            assert sorted(a.layer for a in reply.assignments) == [
                "content_tools",
                "property_page",
                "search_ranking",
            ]
            ranking = next(a for a in reply.assignments if a.layer == "search_ranking")
            assert ranking.payload.model_route.startswith("rank-")
    audits = [e.audit for e in served.events("audit")]
    assert len(audits) == len(demo.LAYERS) + 2 * (
        len(demo.EXPERIMENTS) + len(demo.TASK_EXPERIMENTS)
    )
    assert {a.actor.id for a in audits} == {"system:experiments"}
    assert {a.actor.type for a in audits} == {events_pb2.ACTOR_TYPE_SYSTEM}


async def test_demo_data_leaves_a_store_with_content_alone(tmp_path: Path) -> None:
    path = tmp_path / "state" / "experiments.json"
    await write_store(path)  # two layers, no experiment
    revision = await FileConfigStore(path).revision()
    async with serving(tmp_path) as served:
        await eventually(lambda: asyncio.to_thread(served.task_runs, "demo_data"), "demo_data")
        listed = await served.admin.ListExperiments(experiment_pb2.ListExperimentsRequest())
        assert not listed.experiments
        layers = await served.admin.ListLayers(experiment_pb2.ListLayersRequest())
        assert [layer.name for layer in layers.layers] == ["page", "search"]
    assert await FileConfigStore(path).revision() == revision


# -- periodic tasks ---------------------------------------------------------------------------


async def test_end_time_expiry_and_other_writers_changes_are_picked_up(tmp_path: Path) -> None:
    async with serving(
        tmp_path,
        LLMOPS__EXPERIMENTS__DEMO_DATA="off",
        LLMOPS__EXPERIMENTS__RELOAD_INTERVAL_S="0.1",
        LLMOPS__EXPERIMENTS__BANDIT_CHECK_INTERVAL_S="0.1",
    ) as served:
        admin = served.admin
        await admin.CreateLayer(
            experiment_pb2.CreateLayerRequest(
                layer=experiment_pb2.Layer(name="page", unit_type="user")
            )
        )
        timed = ab("timed", traffic_bps=5000)
        timed.end_time.FromNanoseconds(time.time_ns() + 1_500_000_000)  # 1.5 s from now
        created = await admin.CreateExperiment(
            experiment_pb2.CreateExperimentRequest(experiment=timed)
        )
        started = await admin.StartExperiment(
            experiment_pb2.StartExperimentRequest(id="timed", version=created.experiment.version)
        )
        assert started.experiment.status == model.RUNNING

        async def status_of(exp_id: str) -> int:
            reply = await served.public.GetExperiment(
                experiment_pb2.GetExperimentRequest(id=exp_id)
            )
            return reply.experiment.status

        await eventually(lambda: _is(status_of("timed"), model.STOPPED), "the end_time stop")

        # another replica writes the store: the refresh task brings the change in
        other = ab("other-writer", traffic_bps=5000)
        other.version = 1
        await FileConfigStore(served.config_path).write([(other, 0)], [])

        async def visible() -> bool:
            reply = await admin.ListExperiments(experiment_pb2.ListExperimentsRequest())
            return "other-writer" in {e.id for e in reply.experiments}

        await eventually(visible, "the other writer's experiment")
    audits = [e.audit for e in served.events("audit")]  # stopped: every event delivered
    by_action = {a.action: a for a in audits}
    stop = by_action["experiment.stop"]
    assert (stop.reason, stop.resource.name) == ("end_time reached", "timed")
    assert stop.actor.type == events_pb2.ACTOR_TYPE_SYSTEM
    assert stop.actor.id == "system:experiments"
    start = by_action["experiment.start"]  # a caller's change: its identity, not a field
    assert start.actor.id.startswith("unauthenticated:")
    assert start.actor.via == "llmops.v1.ExperimentAdminService"


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


# -- admin errors -----------------------------------------------------------------------------


async def test_admin_rpc_errors_carry_their_codes(tmp_path: Path) -> None:
    async with serving(tmp_path, LLMOPS__EXPERIMENTS__DEMO_DATA="off") as served:
        admin, public = served.admin, served.public
        layer = experiment_pb2.Layer(name="page", unit_type="user")
        await admin.CreateLayer(experiment_pb2.CreateLayerRequest(layer=layer))
        created = await admin.CreateExperiment(
            experiment_pb2.CreateExperimentRequest(experiment=ab("x"))
        )
        version = created.experiment.version
        bad_variants = ab("y")
        bad_variants.variants[1].key = "control"
        cases: list[tuple[Awaitable[Any], grpc.StatusCode, str]] = [
            (admin.CreateLayer(experiment_pb2.CreateLayerRequest(layer=layer)),
             grpc.StatusCode.ALREADY_EXISTS, "layer 'page' already exists"),
            (admin.CreateLayer(experiment_pb2.CreateLayerRequest(
                layer=experiment_pb2.Layer(name="Page!", unit_type="user"))),
             grpc.StatusCode.INVALID_ARGUMENT, "layer.name"),
            (admin.CreateExperiment(experiment_pb2.CreateExperimentRequest(experiment=ab("x"))),
             grpc.StatusCode.ALREADY_EXISTS, "experiment 'x' already exists"),
            (admin.CreateExperiment(
                experiment_pb2.CreateExperimentRequest(experiment=bad_variants)),
             grpc.StatusCode.INVALID_ARGUMENT, "experiment.variants[1].key: 'control' repeats"),
            (admin.StartExperiment(experiment_pb2.StartExperimentRequest(id="nope", version=1)),
             grpc.StatusCode.NOT_FOUND, "experiment 'nope' does not exist"),
            (admin.StartExperiment(
                experiment_pb2.StartExperimentRequest(id="x", version=version + 1)),
             grpc.StatusCode.ABORTED, "is at version 1"),
            (admin.StopExperiment(experiment_pb2.StopExperimentRequest(id="x", version=version)),
             grpc.StatusCode.FAILED_PRECONDITION, "is DRAFT; STOPPED needs RUNNING"),
            (admin.UpdateExperiment(experiment_pb2.UpdateExperimentRequest(experiment=ab("x"))),
             grpc.StatusCode.INVALID_ARGUMENT, "update_mask"),
            (admin.ListLayers(experiment_pb2.ListLayersRequest(page_token="zz")),
             grpc.StatusCode.INVALID_ARGUMENT, "page_token"),
            (admin.ListExperiments(experiment_pb2.ListExperimentsRequest(layer="zz")),
             grpc.StatusCode.INVALID_ARGUMENT, "unknown layer 'zz'"),
            (public.GetResults(experiment_pb2.GetResultsRequest(experiment_id="x")),
             grpc.StatusCode.FAILED_PRECONDITION, "has not started"),
            (public.Assign(experiment_pb2.AssignRequest(unit_type="user")),
             grpc.StatusCode.INVALID_ARGUMENT, "unit_id"),
        ]  # fmt: skip
        for call, code, message in cases:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert (info.value.code(), message in (info.value.details() or "")) == (code, True), (
                info.value.details()
            )
        # nothing of the refused calls was stored or audited
        listed = await admin.ListExperiments(experiment_pb2.ListExperimentsRequest())
        assert [(e.id, e.version) for e in listed.experiments] == [("x", 1)]
    audits = [e.audit.action for e in served.events("audit")]
    assert sorted(audits) == ["experiment.create", "layer.create"]  # partitions: no order


# -- Assign all or nothing --------------------------------------------------------------------


async def test_assign_with_no_room_for_its_exposures_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    """A buffer of one event: an Assign over two layers (two exposures) is refused whole —
    no exposure of the first layer, no sticky record of the bandit in the second."""
    bandit = ab("search-bandit", layer="search", type=model.BANDIT)
    bandit.bandit.reward_metric = "booking"
    state = tmp_path / "state"
    await write_store(state / "experiments.json", ab("page-ab"), bandit)
    async with serving(
        tmp_path,
        LLMOPS__EXPERIMENTS__DEMO_DATA="off",
        LLMOPS__EVENTS__BUFFER_CAPACITY="1",
    ) as served:
        both = experiment_pb2.AssignRequest(unit_type="user", unit_id="u-full")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await served.public.Assign(both)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 exposure(s)" in (info.value.details() or "")
        one = experiment_pb2.AssignRequest(unit_type="user", unit_id="u-full", layers=["page"])
        (page,) = (await served.public.Assign(one)).assignments
        assert page.experiment_id == "page-ab" and page.exposure_id

        async def delivered() -> list[events_pb2.EventEnvelope]:
            return await asyncio.to_thread(served.events, "exposure")

        exposures = await eventually(delivered, "the page exposure")
        await asyncio.sleep(0.3)  # a stray exposure of the refused call would show by now
        exposures = served.events("exposure")
    assert [e.exposure.event_id for e in exposures] == [page.exposure_id]
    sticky = MemoryStickyStore(state / "experiments" / "sticky.sqlite3")
    try:
        assert await sticky.get("user:u-full") == {}
    finally:
        await sticky.close()
