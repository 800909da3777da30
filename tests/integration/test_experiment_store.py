"""The experiment config stores (file and real Redis): one contract, replicas kept in sync."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmops.v1 import common_pb2, experiment_pb2
from services.experiment import model
from services.experiment.domain import Experiments
from services.experiment.store import Aborted, ConfigStore, FileConfigStore, RedisConfigStore

CTX = common_pb2.RequestContext(request_id="r", tenant="acme")


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
    one = Experiments(first, lambda e: None)
    two = Experiments(second, lambda e: None)
    await one.refresh()
    await two.refresh()
    await one.create_layer(experiment_pb2.Layer(name="page", unit_type="user"), CTX)
    created = await one.create(_exp("shared"), CTX)
    await one.transition("shared", created.version, model.RUNNING, CTX)
    two.start_polling(0.05)
    try:
        for _ in range(400):  # the poller picks the change up
            if "shared" in two.snapshot.running:
                break
            await asyncio.sleep(0.05)
        assert "shared" in two.snapshot.running
    finally:
        await two.stop_polling()
    async with asyncio.timeout(20):
        request = experiment_pb2.AssignRequest(unit_type="user", unit_id="u1", skip_exposure=True)
        assert await one.assign(request) == await two.assign(request)  # same config, same answer
        with pytest.raises(Aborted):  # replica two acts on what it read: version 2 now
            await two.transition("shared", 1, model.STOPPED, CTX)
