"""The experiment config stores (file and real Redis): one contract, replicas kept in sync."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmops.errors import Aborted
from llmops.events.outbox import StagedAudit
from llmops.v1 import events_pb2, experiment_pb2
from services.experiment import model
from services.experiment.assignment import Assigner, AssignQuery
from services.experiment.catalog import Catalog
from services.experiment.lifecycle import Change, Lifecycle
from services.experiment.sticky import MemoryStickyStore
from services.experiment.store import ConfigStore, FileConfigStore, RedisConfigStore

CHANGE = Change(tenant="acme")


class Events:
    """``ctx.events`` with room for everything; audit records built by the real port."""

    def __init__(self) -> None:
        from llmops.events.port import ServiceEvents

        self.published: list[events_pb2.EventEnvelope] = []
        self.port = ServiceEvents("llmops.v1.ExperimentService", lambda: self)  # type: ignore[arg-type,return-value]

    def has_room(self, count: int) -> bool:
        return True

    def publish(self, envelope: events_pb2.EventEnvelope) -> int:
        self.published.append(envelope)
        return len(self.published)

    def is_durable(self, sequence: int) -> bool:
        return True

    async def publish_durable(
        self, envelopes: list[events_pb2.EventEnvelope], timeout_s: float
    ) -> None:
        self.published.extend(envelopes)


class Dies(Events):
    """A process killed between its write and its publish: nothing reaches the log."""

    def publish(self, envelope: events_pb2.EventEnvelope) -> int:
        raise SystemExit("killed")


@pytest.fixture(params=["file", "redis"])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[ConfigStore, ConfigStore]]:
    """Two handles on one store, as two replicas of the service have."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        ns = f"test-exp:{uuid.uuid4().hex[:8]}"
        pair: tuple[ConfigStore, ConfigStore] = (
            RedisConfigStore(url, ns),
            RedisConfigStore(url, ns),
        )
    else:
        path = tmp_path / "experiments.json"
        pair = (FileConfigStore(path), FileConfigStore(path))
    yield pair
    for s in pair:
        await s.close()


def _exp(exp_id: str, version: int = 1) -> experiment_pb2.Experiment:
    exp = experiment_pb2.Experiment(
        id=exp_id, unit_type="user", layer="page", traffic_bps=5000, version=version
    )
    exp.variants.add(key="control", weight=1, is_control=True)
    exp.variants.add(key="treatment", weight=1)
    return exp


async def test_writes_are_guarded_by_versions(stores: tuple[ConfigStore, ConfigStore]) -> None:
    a, b = stores
    layer = model.validate_layer(experiment_pb2.Layer(name="page", unit_type="user"))
    r1 = await a.write([(_exp("x"), 0)], [(layer, 0)])
    assert r1 == 1 and await b.revision() == 1
    loaded = await b.load()
    assert loaded.experiments["x"].variants[1].key == "treatment"
    assert loaded.layers["page"].bucket_count == 10_000
    with pytest.raises(Aborted):
        await b.write([(_exp("x"), 0)], [])  # "must not exist yet", but it does
    assert await b.write([(_exp("x", 2), 1)], []) == 2
    with pytest.raises(Aborted):
        await a.write([(_exp("x", 3), 1)], [])  # a stale version loses
    with pytest.raises(Aborted):
        await a.write([], [(layer, 0)])  # the layer exists already
    assert (await a.load()).experiments["x"].version == 2


async def test_replicas_follow_each_others_changes(
    stores: tuple[ConfigStore, ConfigStore],
) -> None:
    first, second = stores
    one, two = Catalog(first), Catalog(second)
    await one.refresh()
    await two.refresh()
    writer_one = Lifecycle(one, Events().port)  # type: ignore[arg-type]
    writer_two = Lifecycle(two, Events().port)  # type: ignore[arg-type]
    await writer_one.create_layer(experiment_pb2.Layer(name="page", unit_type="user"), CHANGE)
    created = await writer_one.create(_exp("shared"), CHANGE)
    await writer_one.transition("shared", created.version, model.RUNNING, CHANGE)
    assert "shared" not in two.snapshot.running
    assert await two.refresh()  # what the periodic refresh task runs
    assert "shared" in two.snapshot.running
    assert not await two.refresh()  # the revision did not move: nothing reloaded
    async with asyncio.timeout(20):
        query = AssignQuery("user", "u1", log_exposure=False)
        got_one = await Assigner(one, Events(), MemoryStickyStore()).assign(query)
        got_two = await Assigner(two, Events(), MemoryStickyStore()).assign(query)
        assert [(a.experiment.id, a.variant, a.bucket) for a in got_one] == [
            (a.experiment.id, a.variant, a.bucket) for a in got_two
        ]  # same config, same answer
        with pytest.raises(Aborted):  # replica two acts on what it read: version 2 now
            await writer_two.transition("shared", 1, model.STOPPED, CHANGE)


async def test_a_change_and_its_audit_record_are_stored_together(
    stores: tuple[ConfigStore, ConfigStore],
) -> None:
    """The audit outbox: a writer killed between its write and its publish leaves the record
    with the change; another replica's relay publishes it (once old enough: the writer may
    be alive), once; a live writer's own records are only forgotten, never sent twice."""
    first, second = stores
    now = [1_800_000_000.0]
    dying = Lifecycle(Catalog(first), Dies().port, lambda: now[0])  # type: ignore[arg-type]
    await dying.catalog.refresh()
    with pytest.raises(SystemExit):
        await dying.create_layer(experiment_pb2.Layer(name="page", unit_type="user"), CHANGE)
    assert "page" in (await second.load()).layers  # the change is stored...
    staged = await second.outbox_before(2**62, 10)  # ...and its audit record with it
    assert len(staged) == 1
    record = events_pb2.EventEnvelope.FromString(staged[0][1])
    assert (record.audit.action, record.audit.resource.name) == ("layer.create", "page")
    assert staged[0][0] == record.audit.event_id

    events = Events()
    survivor = Lifecycle(Catalog(second), events.port, lambda: now[0], outbox_min_age_s=60)  # type: ignore[arg-type]
    await survivor.catalog.refresh()
    assert await survivor.relay_outbox() == 0  # too young: its writer may still be alive
    now[0] += 61
    assert await survivor.relay_outbox() == 1
    assert [e.audit.event_id for e in events.published] == [record.audit.event_id]
    assert await second.outbox_before(2**62, 10) == []
    assert await survivor.relay_outbox() == 0

    created = await survivor.create(_exp("x"), CHANGE)  # a live writer publishes its own
    assert events.published[-1].audit.resource.name == "x" and created.version == 1
    assert len(await first.outbox_before(2**62, 10)) == 1  # staged until the log has it
    now[0] += 3600
    assert await survivor.relay_outbox() == 0  # durable: forgotten, not sent again
    assert await first.outbox_before(2**62, 10) == []
    assert len(events.published) == 2
    assert (await first.load()).experiments["x"].version == 1


async def test_outbox_records_come_oldest_first_and_are_not_config(
    stores: tuple[ConfigStore, ConfigStore],
) -> None:
    store, _ = stores
    layer = model.validate_layer(experiment_pb2.Layer(name="page", unit_type="user"))
    await store.write([], [(layer, 0)], StagedAudit("b", b"\x00second", 20))
    await store.write([(_exp("x"), 0)], [], StagedAudit("a", b"first \xff", 10))
    assert await store.outbox_before(30, 10) == [("a", b"first \xff"), ("b", b"\x00second")]
    assert await store.outbox_before(30, 1) == [("a", b"first \xff")]
    assert await store.outbox_before(15, 10) == [("a", b"first \xff")]
    loaded = await store.load()
    assert (set(loaded.layers), set(loaded.experiments), loaded.revision) == ({"page"}, {"x"}, 2)
    await store.write([(_exp("y"), 0)], [], StagedAudit("c", b"third", 25))
    await store.delete_outbox(["missing", "a", "c"])  # every one of them, not the first
    assert await store.outbox_before(30, 10) == [("b", b"\x00second")]
    assert (await store.revision()) == 3  # forgetting a record is not a config change
