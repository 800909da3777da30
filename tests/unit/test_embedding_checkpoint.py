"""Checkpoints of the collection store: the log is cut to what the snapshots do not hold, and
a restart still brings back exactly what was acknowledged — including collections dropped or
restored before the cut (floors), a restore racing a checkpoint (pins), collections that did
not change (no new snapshot) and collections that live in Milvus (re-logged creation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmops.errors import InvalidArgument
from llmops.v1 import common_pb2
from services.embedding.collection import CollectionSpec
from services.embedding.store import CollectionStore

T = common_pb2.ValueType
DIM = 16
SEGMENT = 8 * 1024
"""Small WAL segments, so that a few upserts fill several and a cut deletes some."""


def spec(name: str, kind: str = "flat", dim: int = DIM) -> CollectionSpec:
    return CollectionSpec(
        name=name,
        dimension=dim,
        metric="cosine",
        index_kind=kind,
        index_params={},
        metadata_schema={"city": T.VALUE_TYPE_STRING, "price": T.VALUE_TYPE_DOUBLE},
    )


def vectors(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def meta(i: int) -> dict[str, object]:
    return {"city": ["Paris", "Rome", "Lisbon"][i % 3], "price": float(50 + i)}


def opened(root: Path, **kwargs: Any) -> CollectionStore:
    store = CollectionStore(root, fsync=True, wal_segment_bytes=SEGMENT, **kwargs)
    store.open()
    return store


def fill(store: CollectionStore, name: str, start: int, n: int, seed: int) -> None:
    """Upsert ids start..start+n in batches of 20 (each ~2 KB in the log)."""
    x = vectors(n, seed)
    for lo in range(0, n, 20):
        ids = [f"{name}{start + i}" for i in range(lo, min(lo + 20, n))]
        store.upsert(name, ids, x[lo : lo + len(ids)], [meta(start + i) for i in range(len(ids))])


def state(store: CollectionStore) -> dict[str, tuple[int, list[str]]]:
    """Per collection: the item count and the top 10 for a fixed query."""
    out = {}
    for name in store.names():
        info = store.info(name)
        q = vectors(1, 99, dim=info.spec.dimension)[0]
        hits = store.search(name, q, 10, None, {}, False, False, None)
        out[name] = (info.item_count, [h.id for h in hits])
    return out


def city(name: str) -> common_pb2.Filter:
    return common_pb2.Filter(
        condition=common_pb2.FieldCondition(
            field="city",
            operator=common_pb2.FieldCondition.OPERATOR_EQ,
            value=common_pb2.Value(string_value=name),
        )
    )


def test_a_checkpoint_cuts_the_log_and_a_restart_brings_everything_back(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.create(spec("hotels", "hnsw"))
    store.create(spec("flats"))
    fill(store, "hotels", 0, 400, 1)
    fill(store, "flats", 0, 200, 2)
    store.delete_ids("hotels", ["hotels3", "hotels4"])
    store.delete_where("flats", city("Rome"))
    before_bytes = store.wal.size_bytes
    assert len(list((tmp_path / "wal").glob("*.wal"))) > 4

    done = store.checkpoint()
    assert done.snapshots_written == 2 and done.segments_deleted > 0
    assert done.wal_first_sequence == store.wal.first_sequence > 1
    assert done.wal_bytes < before_bytes / 4
    fill(store, "flats", 200, 60, 3)  # after the checkpoint: only in the log
    store.delete_ids("hotels", ["hotels10"])
    expected = state(store)
    store.close()

    again = opened(tmp_path)
    assert state(again) == expected
    r = again.recovery
    assert r.snapshots_loaded == 2 and r.records_replayed == 4  # 3 upserts + 1 delete
    assert r.wal_first_sequence == done.wal_first_sequence
    (item,) = again.get("flats").get(["flats205"])
    assert item.metadata == meta(205)

    # Nothing changed: a second checkpoint writes no snapshot, and still cuts the log.
    fill(again, "hotels", 400, 100, 4)
    second = again.checkpoint()
    third = again.checkpoint()
    assert second.snapshots_written == 2 and third.snapshots_written == 0
    assert third.wal_first_sequence >= second.wal_first_sequence
    expected = state(again)
    again.close()
    assert state(opened(tmp_path)) == expected


def test_only_the_newest_checkpoint_snapshots_are_kept_and_requested_ones_never_go(
    tmp_path: Path,
) -> None:
    store = opened(tmp_path)
    store.create(spec("hotels"))
    requested = store.snapshot("hotels")  # a client's: kept whatever its age
    for round_ in range(4):
        fill(store, "hotels", round_ * 40, 40, round_)
        store.checkpoint(keep=2)
    kept = store.snapshots.list("hotels")
    assert [i.origin for i in kept].count("checkpoint") == 2
    assert requested.snapshot_id in {i.snapshot_id for i in kept}
    with pytest.raises(InvalidArgument):
        store.checkpoint(keep=0)
    expected = state(store)
    store.close()
    assert state(opened(tmp_path)) == expected


def test_a_dropped_collection_stays_dropped_once_its_drop_record_is_gone(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.create(spec("hotels"))
    fill(store, "hotels", 0, 100, 1)
    old = store.snapshot("hotels")
    store.drop("hotels")
    store.create(spec("flats"))
    fill(store, "flats", 0, 300, 2)
    store.checkpoint()
    assert store.wal.first_sequence > old.wal_sequence + 1  # the drop record is gone
    store.close()

    again = opened(tmp_path)
    assert again.names() == ["flats"]
    assert again.recovery.snapshots_stale == 1
    # The name is free for a new collection (another dimension), and the old snapshot can
    # still be restored under a name of its own.
    again.create(spec("hotels", dim=8))
    again.upsert("hotels", ["h"], vectors(1, 5, dim=8), [meta(0)])
    assert again.restore(old.snapshot_id, "hotels_before").item_count == 100
    again.checkpoint()
    expected = state(again)
    again.close()
    assert state(opened(tmp_path)) == expected


def test_a_restore_over_a_collection_is_not_undone_by_its_older_snapshots(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.create(spec("hotels"))
    fill(store, "hotels", 0, 60, 1)
    small = store.snapshot("hotels")
    fill(store, "hotels", 60, 200, 2)
    store.checkpoint()  # a newer snapshot of hotels (260 items)
    store.restore(small.snapshot_id, overwrite=True)  # back to 60
    store.close()

    again = opened(tmp_path)  # the restore record is replayed; the newer snapshot is stale
    assert again.info("hotels").item_count == 60
    assert again.recovery.snapshots_stale >= 1
    again.close()


def test_a_restore_during_a_checkpoint_keeps_its_snapshot_pinned(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.create(spec("hotels"))
    fill(store, "hotels", 0, 80, 1)
    first = store.checkpoint(keep=1)
    assert first.snapshots_written == 1
    (source,) = store.snapshots.list("hotels")
    fill(store, "hotels", 80, 80, 2)

    snapshot = store.snapshot

    def snapshot_then_restore(name: str, *, origin: str = "request") -> Any:
        info = snapshot(name, origin=origin)
        if name == "hotels":  # after the checkpoint has passed over the collections
            store.restore(source.snapshot_id, "hotels_copy")
        return info

    store.snapshot = snapshot_then_restore  # type: ignore[method-assign]
    store.checkpoint(keep=1)
    # keep=1 would delete the older checkpoint snapshot, but the copy is rebuilt from it.
    assert source.snapshot_id in {i.snapshot_id for i in store.snapshots.list("hotels")}
    assert store.info("hotels_copy").item_count == 80
    expected = state(store)
    store.close()
    assert state(opened(tmp_path)) == expected


def test_a_drop_whose_floor_a_crash_did_not_write_is_replayed_and_written(
    tmp_path: Path,
) -> None:
    store = opened(tmp_path)
    store.create(spec("hotels"))
    fill(store, "hotels", 0, 40, 1)
    store.snapshot("hotels")
    store.drop("hotels")
    store.close()
    (tmp_path / "floors.json").unlink()  # as if killed between the drop record and the floor

    again = opened(tmp_path)
    assert again.names() == []
    assert (tmp_path / "floors.json").exists()
    again.create(spec("flats"))
    fill(again, "flats", 0, 300, 2)
    again.checkpoint()
    again.close()
    assert opened(tmp_path).names() == ["flats"]


def test_a_collection_in_milvus_is_relogged_so_the_log_can_be_cut(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    from services.embedding.milvus import connect

    def open_store() -> CollectionStore:
        return opened(
            tmp_path / "state",
            milvus=lambda: connect(str(tmp_path / "milvus.db")),
            in_milvus=lambda name: name == "big",
        )

    store = open_store()
    store.create(spec("big"))
    store.upsert("big", [f"b{i}" for i in range(50)], vectors(50, 1), [meta(i) for i in range(50)])
    store.create(spec("small"))
    fill(store, "small", 0, 300, 2)
    done = store.checkpoint()
    assert done.milvus_reanchored == 1 and done.wal_first_sequence > 1
    expected = state(store)
    store.close()

    again = open_store()
    assert state(again) == expected and again.info("big").item_count == 50
    again.close()
