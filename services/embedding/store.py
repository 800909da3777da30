"""The collections of one embedding service: FAISS in memory, durable through a write-ahead
log and snapshots.

Every change (create, upsert, delete, drop, restore) is a record of the write-ahead log
(``wal.py``), fsync'd **before** it is applied and acknowledged: a change the caller saw
succeed survives ``kill -9``. Changes are serialised by one write lock, so the log's order is
the order they were applied in, and replaying it reproduces the state exactly — a delete by
filter is logged as its filter and re-evaluated on replay against the same state. Upserts are
logged with their vectors (texts are embedded before, so a replay needs no model).

``snapshot(name)`` exports the collection at a log position under its lock (a consistent
point) and writes it with ``snapshots.py`` (an atomic, checksummed archive). ``open()`` loads
each collection's latest snapshot, then replays the log, skipping the records a snapshot
already holds.

Collections selected for **Milvus** (``in_milvus``) live there: Milvus keeps their items
durably, so only their creation and drop go through the log (a replayed creation reopens the
Milvus collection); their upserts and deletes are applied directly, their filters compiled
to Milvus expressions, and snapshots/restores are Milvus's own backups (FAILED_PRECONDITION
here). The log is not compacted yet: restart time grows with it (replay reads
~0.7 M records/s), snapshots bound the work of rebuilding indexes, not the reading.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from llmops.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from llmops.v1 import common_pb2
from services.embedding.collection import (
    CollectionSpec,
    CollectionStats,
    Hit,
    VectorCollection,
    validate_spec,
)
from services.embedding.filters import compile_filter
from services.embedding.milvus import MilvusCollection
from services.embedding.snapshots import SnapshotInfo, SnapshotStore
from services.embedding.wal import WriteAheadLog

log = structlog.get_logger("llmops.embedding")

_CREATE, _UPSERT, _DELETE_IDS, _DELETE_FILTER, _DROP, _RESTORE = b"C", b"U", b"I", b"F", b"X", b"R"
_HEADER = struct.Struct("<I")  # length of an upsert record's JSON header


Collection = VectorCollection | MilvusCollection
"""A collection in this replica's memory (FAISS) or in Milvus (same methods)."""


@dataclass
class _Entry:
    collection: Collection
    create_time: float
    update_time: float
    snapshot_sequence: int = 0
    """The log position the loaded snapshot holds (records up to it are skipped on replay)."""
    last_snapshot: SnapshotInfo | None = None


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    spec: CollectionSpec
    item_count: int
    create_time: float
    update_time: float


@dataclass(frozen=True, slots=True)
class Recovery:
    """What ``open()`` did: snapshots loaded and log records replayed."""

    snapshots_loaded: int = 0
    records_replayed: int = 0
    records_skipped: int = 0
    seconds: float = 0.0
    collections: dict[str, int] = field(default_factory=dict)


def _spec_json(spec: CollectionSpec, create_time: float) -> bytes:
    return json.dumps({**asdict(spec), "create_time": create_time}, sort_keys=True).encode()


def _spec_of(data: bytes) -> tuple[CollectionSpec, float]:
    doc = json.loads(data)
    create_time = float(doc.pop("create_time", 0.0))
    return CollectionSpec(**doc), create_time


class CollectionStore:
    """The service's collections (see the module docstring). Blocking: call from threads."""

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        clock: Any = time.time,
        milvus: Callable[[], Any] | None = None,
        in_milvus: Callable[[str], bool] = lambda name: False,
    ) -> None:
        """``milvus`` opens the Milvus client (on first use); ``in_milvus`` says which
        collections live there (embedding.milvus_collections)."""
        self.root = root
        self.fsync = fsync
        self._clock = clock
        self._milvus_open = milvus
        self._milvus: Any = None
        self.in_milvus = in_milvus
        self._wal: WriteAheadLog | None = None
        self.snapshots = SnapshotStore(root / "snapshots", fsync=fsync)
        self._entries: dict[str, _Entry] = {}
        self._write = threading.Lock()
        self.recovery = Recovery()

    # -- lifecycle ------------------------------------------------------------------------

    def open(self) -> Recovery:
        """Load the latest snapshots, then replay the log (see the module docstring)."""
        start = time.perf_counter()
        loaded = 0
        for info in self.snapshots.list():
            if info.collection in self._entries:
                continue  # newest first: an older snapshot of a loaded collection
            self._load_snapshot(info, info.collection)
            loaded += 1
        self._wal = WriteAheadLog(self.root / "wal", fsync=self.fsync)
        replayed = skipped = 0
        for sequence, record in self._wal.replay():
            if self._apply(record, sequence, replaying=True):
                replayed += 1
            else:
                skipped += 1
        self.recovery = Recovery(
            snapshots_loaded=loaded,
            records_replayed=replayed,
            records_skipped=skipped,
            seconds=time.perf_counter() - start,
            collections={n: e.collection.item_count for n, e in self._entries.items()},
        )
        log.info("embedding_collections_recovered", **asdict(self.recovery))
        return self.recovery

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()
            self._wal = None

    def milvus_client(self) -> Any:
        """The Milvus client, opened on first use (only collections that live there need it)."""
        if self._milvus is None:
            if self._milvus_open is None:
                raise FailedPrecondition("no Milvus is configured (embedding.milvus_uri)")
            self._milvus = self._milvus_open()
        return self._milvus

    @property
    def wal(self) -> WriteAheadLog:
        if self._wal is None:
            raise FailedPrecondition("the collection store is not open")
        return self._wal

    # -- reads ----------------------------------------------------------------------------

    def get(self, name: str, where: str = "collection") -> Collection:
        entry = self._entries.get(name)
        if entry is None:
            raise NotFound(f"{where}: no collection {name!r}")
        return entry.collection

    def info(self, name: str, where: str = "name") -> CollectionInfo:
        entry = self._entries.get(name)
        if entry is None:
            raise NotFound(f"{where}: no collection {name!r}")
        c = entry.collection
        return CollectionInfo(c.spec, c.item_count, entry.create_time, entry.update_time)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def stats(self, name: str) -> tuple[CollectionStats, SnapshotInfo | None]:
        entry = self._entries.get(name)
        if entry is None:
            raise NotFound(f"name: no collection {name!r}")
        return entry.collection.stats(), entry.last_snapshot

    def search(
        self,
        name: str,
        query: np.ndarray,
        k: int,
        filter: common_pb2.Filter | None,
        params: Mapping[str, Any],
        include_metadata: bool,
        include_vectors: bool,
        min_score: float | None,
    ) -> list[Hit]:
        collection = self.get(name)
        if isinstance(collection, MilvusCollection):  # compiled to a Milvus expression there
            return collection.search(
                query, k, filter, params, include_metadata, include_vectors, min_score
            )
        compiled = (
            compile_filter(filter, collection.spec.metadata_schema) if filter is not None else None
        )
        return collection.search(
            query, k, compiled, params, include_metadata, include_vectors, min_score
        )

    # -- writes ---------------------------------------------------------------------------

    def create(self, spec: CollectionSpec, *, if_not_exists: bool = False) -> CollectionInfo:
        validate_spec(spec)
        with self._write:
            existing = self._entries.get(spec.name)
            if existing is not None:
                if if_not_exists and existing.collection.spec == spec:
                    return self.info(spec.name)
                raise AlreadyExists(
                    f"collection.name: collection {spec.name!r} exists"
                    + (" with another definition" if if_not_exists else "")
                )
            self._log_and_apply(_CREATE + _spec_json(spec, self._clock()))
        return self.info(spec.name)

    def upsert(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadata: Sequence[Mapping[str, Any]],
    ) -> int:
        """Validated by the collection first (nothing is logged for a bad request)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        header = json.dumps(
            {"c": name, "ids": list(ids), "m": [dict(m) for m in metadata],
             "d": int(vectors.shape[1]) if vectors.ndim == 2 else 0},
            sort_keys=True,
        ).encode()  # fmt: skip
        record = _UPSERT + _HEADER.pack(len(header)) + header + vectors.tobytes()
        with self._write:
            collection = self.get(name)
            if isinstance(collection, MilvusCollection):  # Milvus keeps it durably itself
                written = collection.upsert(ids, vectors, metadata)
                self._entries[name].update_time = self._clock()
                return written
            with collection.lock:
                collection.check_upsert(ids, vectors, metadata)
                return int(self._log_and_apply(record))

    def delete_ids(self, name: str, ids: Sequence[str]) -> int:
        with self._write:
            collection = self.get(name)
            if isinstance(collection, MilvusCollection):
                return collection.delete_ids(ids)
            payload = json.dumps({"c": name, "ids": list(ids)}).encode()
            return int(self._log_and_apply(_DELETE_IDS + payload))

    def delete_where(self, name: str, filter: common_pb2.Filter) -> int:
        with self._write:
            collection = self.get(name)
            compiled = compile_filter(filter, collection.spec.metadata_schema)
            if compiled.is_empty:
                raise InvalidArgument(
                    "filter", "must not be empty (DropCollection deletes a whole collection)"
                )
            if isinstance(collection, MilvusCollection):
                return collection.delete_where(filter)
            name_bytes = name.encode()
            payload = _HEADER.pack(len(name_bytes)) + name_bytes + filter.SerializeToString()
            return int(self._log_and_apply(_DELETE_FILTER + payload))

    def drop(self, name: str, *, if_exists: bool = False) -> int:
        with self._write:
            entry = self._entries.get(name)
            if entry is None:
                if if_exists:
                    return 0
                raise NotFound(f"name: no collection {name!r}")
            return int(self._log_and_apply(_DROP + name.encode()))

    def snapshot(self, name: str) -> SnapshotInfo:
        """A consistent snapshot: exported under the write lock at the current log position,
        written to the snapshot store outside it."""
        with self._write:
            entry = self._entries.get(name)
            if entry is None:
                raise NotFound(f"collection: no collection {name!r}")
            files = entry.collection.export_state()  # Milvus: FAILED_PRECONDITION, its backups
            files["spec.json"] = _spec_json(entry.collection.spec, entry.create_time)
            sequence = self.wal.last_sequence
            count = entry.collection.item_count
        info = self.snapshots.write(name, files, wal_sequence=sequence, item_count=count)
        entry.last_snapshot = info
        log.info("embedding_snapshot_written", collection=name, items=count, uri=info.uri)
        return info

    def restore(
        self, snapshot_id: str, name: str = "", *, overwrite: bool = False
    ) -> CollectionInfo:
        info, _ = self.snapshots.load(snapshot_id)  # NotFound / integrity checked first
        target = name or info.collection
        if self.in_milvus(target):
            raise FailedPrecondition(
                f"collection: {target!r} lives in Milvus; restore it from a Milvus backup"
            )
        with self._write:
            if target in self._entries and not overwrite:
                raise AlreadyExists(f"collection: collection {target!r} exists (set overwrite)")
            payload = json.dumps({"s": snapshot_id, "c": target}).encode()
            self._log_and_apply(_RESTORE + payload)
        return self.info(target)

    def restore_uri(self, uri: str, name: str = "", *, overwrite: bool = False) -> CollectionInfo:
        """``uri`` must name an archive inside the snapshot store (never opened otherwise)."""
        info, _ = self.snapshots.load_uri(uri)
        return self.restore(info.snapshot_id, name, overwrite=overwrite)

    # -- the log --------------------------------------------------------------------------

    def _log_and_apply(self, record: bytes) -> Any:
        sequence = self.wal.append([record])  # durable before it is applied and acknowledged
        return self._apply(record, sequence, replaying=False, result=True)

    def _apply(self, record: bytes, sequence: int, *, replaying: bool, result: bool = False) -> Any:
        """Apply one log record; on replay, returns whether it was applied (not skipped)."""
        kind, body = record[:1], record[1:]
        now = self._clock()
        if kind == _CREATE:
            spec, create_time = _spec_of(body)
            if replaying and self._held(spec.name, sequence):
                return False
            collection: Collection = (
                MilvusCollection.open(spec, self.milvus_client())  # created, or reopened
                if self.in_milvus(spec.name)
                else VectorCollection(spec)
            )
            self._entries[spec.name] = _Entry(collection, create_time, create_time)
            return True
        if kind == _UPSERT:
            (size,) = _HEADER.unpack_from(body)
            header = json.loads(body[4 : 4 + size])
            name, ids, dim = header["c"], header["ids"], int(header["d"])
            if replaying and self._held(name, sequence):
                return False
            vectors = np.frombuffer(body[4 + size :], dtype=np.float32).reshape(len(ids), dim)
            entry = self._entries[name]
            written = entry.collection.upsert(ids, vectors, header["m"])
            entry.update_time = now
            return written if result else True
        if kind == _DELETE_IDS:
            doc = json.loads(body)
            if replaying and self._held(doc["c"], sequence):
                return False
            entry = self._entries[doc["c"]]
            deleted = entry.collection.delete_ids(doc["ids"])
            entry.update_time = now
            return deleted if result else True
        if kind == _DELETE_FILTER:
            (size,) = _HEADER.unpack_from(body)
            name = body[4 : 4 + size].decode()
            if replaying and self._held(name, sequence):
                return False
            entry = self._entries[name]
            spec = entry.collection.spec
            compiled = compile_filter(
                common_pb2.Filter.FromString(body[4 + size :]), spec.metadata_schema
            )
            deleted = entry.collection.delete_where(compiled)
            entry.update_time = now
            return deleted if result else True
        if kind == _DROP:
            name = body.decode()
            if replaying and name not in self._entries:
                return False
            dropped = self._entries.pop(name)
            count = dropped.collection.item_count
            if isinstance(dropped.collection, MilvusCollection):
                dropped.collection.drop()
            return count if result else True
        if kind == _RESTORE:
            doc = json.loads(body)
            if replaying and self._held(doc["c"], sequence):
                return False
            snapshot_info, _ = self.snapshots.load(doc["s"])
            self._load_snapshot(snapshot_info, doc["c"], at_sequence=sequence)
            return True
        raise FailedPrecondition(f"write-ahead log record {sequence}: unknown kind {kind!r}")

    def _held(self, name: str, sequence: int) -> bool:
        """On replay: the record is already in the loaded snapshot of ``name``."""
        entry = self._entries.get(name)
        return entry is not None and sequence <= entry.snapshot_sequence

    def _load_snapshot(self, info: SnapshotInfo, name: str, at_sequence: int = 0) -> None:
        _, files = self.snapshots.load(info.snapshot_id)
        spec, create_time = _spec_of(files["spec.json"])
        spec = replace(spec, name=name)
        state = {k: v for k, v in files.items() if k != "spec.json"}
        collection = VectorCollection.from_state(spec, state)
        # A restore logged at `at_sequence` holds nothing of the records before it; a snapshot
        # loaded at start holds the records up to its own position.
        held = at_sequence or info.wal_sequence
        self._entries[name] = _Entry(
            collection, create_time, self._clock(), snapshot_sequence=held, last_snapshot=info
        )
