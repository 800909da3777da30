"""The collection store: every acknowledged change is logged before it is applied and comes
back after a restart (replay, snapshot + replay, a real kill -9 during a stream of upserts),
a restore by id or by a URI inside the store only, and a bad request logs nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from llmops.errors import AlreadyExists, InvalidArgument, NotFound
from llmops.v1 import common_pb2
from services.embedding.collection import CollectionSpec
from services.embedding.store import CollectionStore

T = common_pb2.ValueType
DIM = 16


def spec(name: str = "places", kind: str = "flat") -> CollectionSpec:
    return CollectionSpec(
        name=name,
        dimension=DIM,
        metric="cosine",
        index_kind=kind,
        index_params={},
        metadata_schema={"city": T.VALUE_TYPE_STRING, "price": T.VALUE_TYPE_DOUBLE},
    )


def vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, DIM))
    return (centres[rng.integers(0, 8, n)] + 0.05 * rng.normal(size=(n, DIM))).astype(np.float32)


def meta(i: int) -> dict[str, object]:
    return {"city": ["Paris", "Rome", "Lisbon"][i % 3], "price": float(50 + i)}


def opened(root: Path) -> CollectionStore:
    store = CollectionStore(root, fsync=True)
    store.open()
    return store


def city(name: str) -> common_pb2.Filter:
    return common_pb2.Filter(
        condition=common_pb2.FieldCondition(
            field="city",
            operator=common_pb2.FieldCondition.OPERATOR_EQ,
            value=common_pb2.Value(string_value=name),
        )
    )


def top_ids(store: CollectionStore, query: np.ndarray, k: int = 5) -> list[str]:
    return [h.id for h in store.search("places", query, k, None, {}, False, False, None)]


def test_changes_come_back_after_a_restart(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.create(spec())
    x = vectors(300, 1)
    ids = [f"p{i}" for i in range(300)]
    assert store.upsert("places", ids, x, [meta(i) for i in range(300)]) == 300
    store.upsert("places", ["p0"], x[1:2], [{"city": "Oslo", "price": 1.0}])  # overwrite
    assert store.delete_ids("places", ["p1", "p2", "nope"]) == 2
    rome = store.delete_where("places", city("Rome"))
    assert rome == 100 - 1  # p1 was a Rome item and is gone already
    before = top_ids(store, x[5])
    store.close()

    again = opened(tmp_path)
    assert again.recovery.records_replayed == 5 and again.recovery.snapshots_loaded == 0
    assert again.info("places").item_count == 300 - 2 - rome
    assert top_ids(again, x[5]) == before
    (item,) = again.get("places").get(["p0"])
    assert item.metadata == {"city": "Oslo", "price": 1.0}
    again.close()


def test_snapshot_then_replay_of_what_came_after(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.create(spec(kind="hnsw"))
    x = vectors(400, 2)
    store.upsert("places", [f"p{i}" for i in range(200)], x[:200], [meta(i) for i in range(200)])
    snap = store.snapshot("places")
    assert snap.item_count == 200 and snap.wal_sequence == 2
    store.upsert("places", [f"p{i}" for i in range(200, 400)], x[200:],
                 [meta(i) for i in range(200, 400)])  # fmt: skip
    store.delete_ids("places", ["p3"])
    before = top_ids(store, x[10], 10)
    store.close()

    again = opened(tmp_path)
    r = again.recovery
    assert (r.snapshots_loaded, r.records_skipped, r.records_replayed) == (1, 2, 2)
    assert again.info("places").item_count == 399
    assert top_ids(again, x[10], 10) == before
    _, last = again.stats("places")
    assert last is not None and last.snapshot_id == snap.snapshot_id
    again.close()


def test_restore_by_id_and_uri_and_drop(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.create(spec())
    x = vectors(50, 3)
    store.upsert("places", [f"p{i}" for i in range(50)], x, [meta(i) for i in range(50)])
    snap = store.snapshot("places")
    store.delete_ids("places", [f"p{i}" for i in range(25)])
    with pytest.raises(AlreadyExists):
        store.restore(snap.snapshot_id)
    assert store.restore(snap.snapshot_id, "places_copy").item_count == 50
    assert store.restore(snap.snapshot_id, overwrite=True).item_count == 50
    with pytest.raises(InvalidArgument):
        store.restore_uri("file:///etc/passwd", "x")
    with pytest.raises(InvalidArgument):
        store.restore_uri(snap.uri.replace("/places/", "/places/../../"), "x")
    assert store.restore_uri(snap.uri, "from_uri").item_count == 50
    assert store.drop("places_copy") == 50
    with pytest.raises(NotFound):
        store.drop("places_copy")
    assert store.drop("places_copy", if_exists=True) == 0
    store.close()

    again = opened(tmp_path)
    assert again.names() == ["from_uri", "places"]
    assert again.info("places").item_count == 50
    again.close()


def test_a_bad_request_logs_and_changes_nothing(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.create(spec())
    x = vectors(3, 4)
    last = store.wal.last_sequence
    with pytest.raises(InvalidArgument) as err:
        store.upsert("places", ["a", "b", "c"], x, [meta(0), {"price": "cheap"}, meta(2)])
    assert "items[1].metadata" in err.value.field
    with pytest.raises(InvalidArgument):
        store.upsert("places", ["a", "a"], x[:2], [meta(0), meta(1)])
    with pytest.raises(InvalidArgument):
        store.delete_where("places", common_pb2.Filter())
    with pytest.raises(InvalidArgument):
        store.delete_where(
            "places",
            common_pb2.Filter(
                condition=common_pb2.FieldCondition(
                    field="stars",
                    operator=common_pb2.FieldCondition.OPERATOR_EQ,
                    value=common_pb2.Value(int64_value=3),
                )
            ),
        )
    with pytest.raises(NotFound):
        store.upsert("nowhere", ["a"], x[:1], [meta(0)])
    assert store.wal.last_sequence == last and store.info("places").item_count == 0
    with pytest.raises(AlreadyExists):
        store.create(spec())
    assert store.create(spec(), if_not_exists=True).spec == spec()
    store.close()


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from services.embedding.store import CollectionStore
    from tests.unit.test_embedding_store import spec, vectors, meta

    store = CollectionStore(Path(sys.argv[1]), fsync=True)
    store.open()
    if "places" not in store.names():
        store.create(spec())
    x = vectors(10_000, 5)
    i = 0
    while True:
        ids = [f"k{i}-{j}" for j in range(10)]
        store.upsert("places", ids, x[(i * 10) % 9_990 :][:10], [meta(j) for j in range(10)])
        print("ACK", i, flush=True)  # acknowledged
        i += 1
    """
)


def test_every_acknowledged_upsert_survives_kill_9(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=root,
    )
    assert child.stdout is not None
    acknowledged = -1
    deadline = time.monotonic() + 30
    while acknowledged < 30 and time.monotonic() < deadline:  # a stream is flowing
        line = child.stdout.readline()
        if line.startswith("ACK "):
            acknowledged = int(line.split()[1])
    time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    rest, _ = child.communicate(timeout=10)
    acks = [int(line.split()[1]) for line in rest.splitlines() if line.startswith("ACK ")]
    acknowledged = max([acknowledged, *acks])
    assert acknowledged >= 30

    store = opened(tmp_path)
    collection = store.get("places")
    got = collection.get([f"k{i}-{j}" for i in range(acknowledged + 1) for j in range(10)])
    assert len(got) == (acknowledged + 1) * 10  # nothing acknowledged is lost
    assert collection.item_count in ((acknowledged + 1) * 10, (acknowledged + 2) * 10)
    store.close()


async def test_an_online_rebuild_keeps_serving_and_loses_no_write(tmp_path: Path) -> None:
    """HNSW deletes are tombstones: the background rebuild compacts them while searches and
    writes go on; writes made during the build are in the swapped-in index, and no search
    ever returns a deleted id."""
    import threading

    from services.embedding.service import rebuild_worn

    store = opened(tmp_path)
    store.create(spec(kind="hnsw"))
    x = vectors(1_500, 6)
    store.upsert("places", [f"p{i}" for i in range(1000)], x[:1000], [meta(i) for i in range(1000)])
    deleted = {f"p{i}" for i in range(0, 1000, 3)}
    store.delete_ids("places", sorted(deleted))
    collection = store.get("places")
    assert collection.stats().tombstone_ratio > 0.3

    stop = threading.Event()
    seen_deleted: list[str] = []
    kept = {f"p{i}" for i in range(1000)} - deleted

    def search_and_write() -> None:
        i = 1000
        while not stop.is_set():
            for hit in store.search("places", x[i % 1000], 10, None, {}, False, False, None):
                if hit.id in deleted:
                    seen_deleted.append(hit.id)
            if i < 1_500:  # writes during the build
                store.upsert("places", [f"p{i}"], x[i : i + 1], [meta(i)])
                kept.add(f"p{i}")
                if i % 5 == 0:
                    store.delete_ids("places", [f"p{i}"])
                    deleted.add(f"p{i}")
                    kept.discard(f"p{i}")
            i += 1

    worker = threading.Thread(target=search_and_write)
    worker.start()
    try:
        rebuilt = await rebuild_worn(store, 0.2)
    finally:
        stop.set()
        worker.join(10)
    assert rebuilt == ["places"]
    assert not seen_deleted
    assert {item.id for item in collection.get(sorted(kept))} == kept  # no write was lost
    assert collection.item_count == len(kept) and len(kept) > 666  # writes came in meanwhile
    assert collection.stats().tombstone_ratio < 0.1
    for i in (1, 2, 4, 5):  # live items are still found by their own vector
        assert top_ids(store, x[i], 1) == [f"p{i}"]
    store.close()


def test_a_collection_in_milvus_keeps_its_items_there(tmp_path: Path) -> None:
    """Selected collections live in Milvus (milvus-lite here, the real pymilvus client):
    only their creation and drop are logged, items survive a restart in Milvus, filters and
    searches go there, snapshots are Milvus's own business."""
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    from llmops.errors import FailedPrecondition
    from services.embedding.milvus import MilvusCollection, connect

    def open_store() -> CollectionStore:
        store = CollectionStore(
            tmp_path / "state",
            milvus=lambda: connect(str(tmp_path / "milvus.db")),
            in_milvus=lambda name: name == "big",
        )
        store.open()
        return store

    store = open_store()
    store.create(spec("big"))
    store.create(spec("small"))
    assert isinstance(store.get("big"), MilvusCollection)
    x = vectors(200, 7)
    assert (
        store.upsert("big", [f"b{i}" for i in range(200)], x, [meta(i) for i in range(200)]) == 200
    )
    assert store.delete_where("big", city("Rome")) == 67
    hits = store.search("big", x[0], 5, city("Paris"), {}, True, False, None)
    assert hits and all(h.metadata is not None and h.metadata["city"] == "Paris" for h in hits)
    assert store.wal.last_sequence == 2  # the two creations: Milvus keeps the items
    with pytest.raises(FailedPrecondition):
        store.snapshot("big")
    store.close()

    again = open_store()
    assert again.info("big").item_count == 200 - 67
    assert [h.id for h in again.search("big", x[0], 5, city("Paris"), {}, False, False, None)] == [
        h.id for h in hits
    ]
    assert again.drop("big") == 133
    again.close()
    third = open_store()
    assert third.names() == ["small"]
    assert not third.milvus_client().has_collection("big")
    third.close()
