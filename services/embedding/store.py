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
here).

**Checkpoints** keep the log short: ``checkpoint()`` snapshots every collection changed since
its last snapshot (origin ``checkpoint``), re-logs the creation of the Milvus collections, and
deletes the log segments no collection needs any more — each collection needs the log from
just after its latest snapshot, or from its create/restore record when it has none. Two
things make old records safe to delete:

- **floors** (``floors.json``, written atomically before a drop or restore is acknowledged,
  and again after a replay): a drop or a restore of ``name`` at sequence s makes every older
  snapshot of ``name`` stale. ``open()`` loads only a snapshot taken at or after its name's
  floor, so a dropped collection is not resurrected from its snapshots once the drop record
  is gone, and a restored one is not loaded from what it was before.
- **pins**: a collection restored from a snapshot and not snapshotted since is rebuilt by
  replaying its restore record, so that snapshot is kept whatever its age.

Checkpoint snapshots beyond the newest ``keep`` of each collection are deleted; snapshots a
client asked for (``Snapshot``) are never deleted by the service.

**The audit outbox** (:class:`llmops.events.outbox.AuditOutbox` reads it): a create, drop or
restore carries its audit record inside its own log record (one frame, so one atomic append),
and a snapshot's record is logged right after the snapshot is written. A record stays
*staged* until ``delete_outbox`` logs that the event log holds it; staged records come back
on replay, and a checkpoint logs the ones it would cut off again, later. So a process killed
between a change and the publish of its record leaves the record for the next one, which
publishes it at once (``outbox_before`` treats what it recovered as old enough: one process
holds this log, so whoever staged it is dead).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from llmops.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from llmops.events.outbox import StagedAudit
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
from services.embedding.snapshots import SnapshotInfo, SnapshotStore, validate_collection
from services.embedding.wal import WriteAheadLog

log = structlog.get_logger("llmops.embedding")

_CREATE, _UPSERT, _DELETE_IDS, _DELETE_FILTER, _DROP, _RESTORE = b"C", b"U", b"I", b"F", b"X", b"R"
_AUDITED, _STAGED, _OUTBOX_DONE = b"A", b"S", b"O"  # a change with its audit record; see above
_HEADER = struct.Struct("<I")  # length of an upsert record's JSON header
_STAGE = struct.Struct("<QHI")  # an audit record's staging time (µs), event id and envelope sizes

AuditFor = Callable[[str, int], StagedAudit]
"""Builds a change's audit record under the store's write lock, given the collection and the
item count the change removes or brings (a drop's count, a restore's target name when the
caller named none: only known there)."""


Collection = VectorCollection | MilvusCollection
"""A collection in this replica's memory (FAISS) or in Milvus (same methods)."""


@dataclass
class _Entry:
    collection: Collection
    create_time: float
    update_time: float
    log_from: int
    """The first log record this collection needs to be rebuilt: just after its latest
    snapshot, or its create/restore record when it has none (checkpoints keep it)."""
    snapshot_sequence: int = 0
    """The log position the loaded snapshot holds (records up to it are skipped on replay)."""
    last_snapshot: SnapshotInfo | None = None
    pinned_snapshot: str | None = None
    """The snapshot a restore record of this collection loads, until a newer snapshot."""
    last_change: int = 0
    """The sequence of the last record that changed it (or of the snapshot it came from)."""


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
    wal_first_sequence: int = 0
    snapshots_stale: int = 0
    """Snapshots not loaded: older than a drop or restore of their collection (its floor)."""
    audit_records_staged: int = 0
    """Audit records a previous process staged and never saw in the event log (relayed)."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What one ``checkpoint()`` did."""

    snapshots_written: int
    milvus_reanchored: int
    segments_deleted: int
    snapshots_deleted: int
    audit_records_reanchored: int
    wal_first_sequence: int
    """The first record the log still holds (it needs nothing before it)."""
    wal_bytes: int
    seconds: float


@dataclass(slots=True)
class _Staged:
    sequence: int
    """The log record holding it (a checkpoint re-logs it before cutting that far)."""
    at_us: int
    envelope: bytes
    recovered: bool
    """Staged by a previous process (found on replay)."""


def _stage_header(audit: StagedAudit) -> bytes:
    event_id = audit.event_id.encode()
    return _STAGE.pack(audit.at_us, len(event_id), len(audit.envelope)) + event_id + audit.envelope


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
        wal_segment_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        """``milvus`` opens the Milvus client (on first use); ``in_milvus`` says which
        collections live there (embedding.milvus_collections)."""
        self.root = root
        self.fsync = fsync
        self._clock = clock
        self._milvus_open = milvus
        self._milvus: Any = None
        self.in_milvus = in_milvus
        self.wal_segment_bytes = wal_segment_bytes
        self._wal: WriteAheadLog | None = None
        self.snapshots = SnapshotStore(root / "snapshots", fsync=fsync)
        self._entries: dict[str, _Entry] = {}
        self._floors: dict[str, int] = {}
        self._wal_bytes_checkpointed = 0
        self._write = threading.Lock()
        self._outbox: dict[str, _Staged] = {}
        self.recovery = Recovery()

    # -- lifecycle ------------------------------------------------------------------------

    def open(self) -> Recovery:
        """Load the latest snapshots, then replay the log (see the module docstring)."""
        start = time.perf_counter()
        self._floors = self._read_floors()
        loaded = stale = 0
        best: dict[str, SnapshotInfo] = {}
        for info in self.snapshots.list():
            if info.wal_sequence < self._floors.get(info.collection, 0):
                stale += 1  # taken before a drop or restore of its name
                continue
            held = best.get(info.collection)
            if held is None or (info.wal_sequence, info.create_time) > (
                held.wal_sequence,
                held.create_time,
            ):
                best[info.collection] = info
        for name, info in sorted(best.items()):
            self._load_snapshot(info, name)
            loaded += 1
        self._wal = WriteAheadLog(
            self.root / "wal", fsync=self.fsync, segment_bytes=self.wal_segment_bytes
        )
        floors = dict(self._floors)
        self._outbox = {}
        replayed = skipped = 0
        # From the oldest record kept: checkpoints deleted only what the snapshots hold.
        for sequence, record in self._wal.replay(after=self._wal.first_sequence - 1):
            if self._apply(record, sequence, replaying=True):
                replayed += 1
            else:
                skipped += 1
        if self._floors != floors:  # a drop or restore whose floor a crash did not write
            self._write_floors()
        self.recovery = Recovery(
            snapshots_loaded=loaded,
            records_replayed=replayed,
            records_skipped=skipped,
            seconds=time.perf_counter() - start,
            collections={n: e.collection.item_count for n, e in self._entries.items()},
            wal_first_sequence=self._wal.first_sequence,
            snapshots_stale=stale,
            audit_records_staged=len(self._outbox),
        )
        log.info("embedding_collections_recovered", **asdict(self.recovery))
        return self.recovery

    def _read_floors(self) -> dict[str, int]:
        path = self.root / "floors.json"
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise FailedPrecondition(f"{path}: unreadable ({exc})") from None
        if not isinstance(doc, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in doc.items()
        ):
            raise FailedPrecondition(f"{path}: not a map of collection names to sequences")
        return doc

    def _write_floors(self) -> None:
        """floors.json, atomically (temporary file, fsync, rename, directory fsync)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "floors.json"
        tmp = path.with_name(f".floors.json.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(json.dumps(self._floors, sort_keys=True).encode())
            if self.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if self.fsync:
            fd = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

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

    @contextlib.contextmanager
    def uncontended(self, name: str, max_items: int) -> Iterator[bool]:
        """True inside when :meth:`search` of ``name`` cannot hold the caller up: a FAISS
        collection of at most ``max_items`` items whose lock was free and is held here
        until the block ends. False otherwise (the caller searches on a worker thread).
        Handing a search of a small collection to a thread costs more than the search
        (~0.1 ms of thread switches against ~6 us for 80 items)."""
        collection = self.get(name)
        if isinstance(collection, MilvusCollection):
            yield False
            return
        if not collection.lock.acquire(blocking=False):  # a write or rebuild is running
            yield False
            return
        try:
            yield collection.item_count <= max_items
        finally:
            collection.lock.release()

    # -- writes ---------------------------------------------------------------------------

    def create(
        self, spec: CollectionSpec, *, if_not_exists: bool = False, audit: AuditFor | None = None
    ) -> CollectionInfo:
        """``audit`` (here and in ``drop``/``restore``): its record is logged with the change,
        and only when there is one (an ``if_not_exists`` create of what exists logs nothing)."""
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
            staged = audit(spec.name, 0) if audit is not None else None
            self._log_and_apply(_CREATE + _spec_json(spec, self._clock()), staged=staged)
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

    def drop(self, name: str, *, if_exists: bool = False, audit: AuditFor | None = None) -> int:
        with self._write:
            entry = self._entries.get(name)
            if entry is None:
                if if_exists:
                    return 0
                raise NotFound(f"name: no collection {name!r}")
            staged = audit(name, entry.collection.item_count) if audit is not None else None
            return int(self._log_and_apply(_DROP + name.encode(), staged=staged))

    def snapshot(self, name: str, *, origin: str = "request") -> SnapshotInfo:
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
        info = self.snapshots.write(
            name, files, wal_sequence=sequence, item_count=count, origin=origin
        )
        with self._write:
            if self._entries.get(name) is entry:  # not dropped or restored over meanwhile
                entry.last_snapshot = info
                entry.log_from = max(entry.log_from, sequence + 1)
                entry.pinned_snapshot = None
        log.info("embedding_snapshot_written", collection=name, items=count, uri=info.uri)
        return info

    def restore(
        self,
        snapshot_id: str,
        name: str = "",
        *,
        overwrite: bool = False,
        audit: AuditFor | None = None,
    ) -> CollectionInfo:
        if name:
            validate_collection(name)
        with self._write:
            # Loaded under the lock (NotFound / integrity checked before anything is logged):
            # a checkpoint's clean-up cannot delete it between the check and the record.
            loaded = self.snapshots.load(snapshot_id)
            target = name or loaded[0].collection
            if self.in_milvus(target):
                raise FailedPrecondition(
                    f"collection: {target!r} lives in Milvus; restore it from a Milvus backup"
                )
            if target in self._entries and not overwrite:
                raise AlreadyExists(f"collection: collection {target!r} exists (set overwrite)")
            payload = json.dumps({"s": snapshot_id, "c": target}).encode()
            staged = audit(target, loaded[0].item_count) if audit is not None else None
            self._log_and_apply(_RESTORE + payload, loaded, staged=staged)
        return self.info(target)

    def restore_uri(
        self, uri: str, name: str = "", *, overwrite: bool = False, audit: AuditFor | None = None
    ) -> CollectionInfo:
        """``uri`` must name an archive inside the snapshot store (never opened otherwise)."""
        info, _ = self.snapshots.load_uri(uri)
        return self.restore(info.snapshot_id, name, overwrite=overwrite, audit=audit)

    # -- the audit outbox (see the module docstring) ---------------------------------------

    def stage_audit(self, audit: StagedAudit) -> None:
        """Log an audit record on its own (a snapshot's: the snapshot is no log record)."""
        record = _STAGED + _stage_header(audit)
        with self._write:
            self._apply(record, self.wal.append([record]), replaying=False)

    def outbox_before(self, cutoff_us: int, limit: int) -> list[tuple[str, bytes]]:
        """Staged records (event id, envelope) staged before ``cutoff_us`` or recovered from
        a previous process, oldest first."""
        with self._write:
            due = [
                (staged.at_us, event_id, staged.envelope)
                for event_id, staged in self._outbox.items()
                if staged.recovered or staged.at_us < cutoff_us
            ]
        due.sort()
        return [(event_id, envelope) for _, event_id, envelope in due[:limit]]

    def delete_outbox(self, event_ids: Sequence[str]) -> None:
        """The event log holds these: logged as done, so a replay does not stage them again."""
        with self._write:
            known = [e for e in event_ids if e in self._outbox]
            if known:
                record = _OUTBOX_DONE + json.dumps(known).encode()
                self._apply(record, self.wal.append([record]), replaying=False)

    def staged_audits(self) -> list[str]:
        """The event ids in the outbox, oldest first."""
        with self._write:
            return [e for e, _ in sorted(self._outbox.items(), key=lambda kv: kv[1].at_us)]

    # -- checkpoints ----------------------------------------------------------------------

    def checkpoint(self, *, keep: int = 2) -> Checkpoint:
        """Snapshot what changed, then delete the log segments and the checkpoint snapshots
        (beyond the newest ``keep`` of each collection) that nothing needs any more (see the
        module docstring). Writes are blocked only while each collection is exported and
        while the log is cut, as by ``snapshot``."""
        if keep < 1:
            raise InvalidArgument("keep", f"must be >= 1, got {keep}")
        start = time.perf_counter()
        wal = self.wal
        written = 0
        for name in self.names():
            entry = self._entries.get(name)
            if entry is None or isinstance(entry.collection, MilvusCollection):
                continue  # dropped meanwhile; Milvus keeps its items itself
            if entry.last_change < entry.log_from:
                continue  # unchanged since its last snapshot
            try:
                self.snapshot(name, origin="checkpoint")
            except NotFound:
                continue
            written += 1
        with self._write:
            faiss = [
                e for e in self._entries.values() if not isinstance(e.collection, MilvusCollection)
            ]
            for entry in faiss:
                if entry.last_change < entry.log_from:  # its snapshot holds all it needs
                    entry.log_from = wal.last_sequence + 1
            faiss_from = min((e.log_from for e in faiss), default=wal.last_sequence + 1)
            reanchored = 0
            for entry in self._entries.values():
                if isinstance(entry.collection, MilvusCollection) and entry.log_from < faiss_from:
                    # Its create record is all the log holds of it: log it again, later.
                    spec = _spec_json(entry.collection.spec, entry.create_time)
                    entry.log_from = wal.append([_CREATE + spec])
                    reanchored += 1
            # The floors must be durable before the drop/restore records that set them go.
            self._write_floors()
            cut = min((e.log_from for e in self._entries.values()), default=wal.last_sequence + 1)
            audits = 0
            for event_id, staged in self._outbox.items():
                if staged.sequence < cut:  # not yet in the event log: keep it, logged later
                    again = StagedAudit(event_id, staged.envelope, staged.at_us)
                    staged.sequence = wal.append([_STAGED + _stage_header(again)])
                    audits += 1
            segments = wal.truncate_before(cut - 1)
            pinned = {e.pinned_snapshot for e in self._entries.values() if e.pinned_snapshot}
            pruned = self._prune_checkpoint_snapshots(keep, pinned)
            result = Checkpoint(
                snapshots_written=written,
                milvus_reanchored=reanchored,
                segments_deleted=segments,
                snapshots_deleted=pruned,
                audit_records_reanchored=audits,
                wal_first_sequence=wal.first_sequence,
                wal_bytes=wal.size_bytes,
                seconds=time.perf_counter() - start,
            )
        self._wal_bytes_checkpointed = result.wal_bytes
        log.info("embedding_checkpoint", **asdict(result))
        return result

    def wal_growth(self) -> int:
        """Bytes the log has grown by since the last checkpoint (all of it before the first)."""
        return self.wal.size_bytes - self._wal_bytes_checkpointed

    def _prune_checkpoint_snapshots(self, keep: int, pinned: set[str]) -> int:
        """Delete checkpoint snapshots beyond the newest ``keep`` per collection, except the
        pinned ones. The snapshot ``open()`` would load is the newest of its collection, so it
        is always kept (``keep >= 1``)."""
        by_collection: dict[str, list[SnapshotInfo]] = {}
        for info in self.snapshots.list():
            if info.origin == "checkpoint":
                by_collection.setdefault(info.collection, []).append(info)
        deleted = 0
        for collection, infos in by_collection.items():
            infos.sort(key=lambda i: (i.wal_sequence, i.create_time), reverse=True)
            doomed = [i for i in infos[keep:] if i.snapshot_id not in pinned]
            deleted += self.snapshots.delete(collection, doomed)
        return deleted

    # -- the log --------------------------------------------------------------------------

    def _log_and_apply(
        self,
        record: bytes,
        loaded: tuple[SnapshotInfo, dict[str, bytes]] | None = None,
        *,
        staged: StagedAudit | None = None,
    ) -> Any:
        if staged is not None:  # one frame: the change and its audit record, or neither
            record = _AUDITED + _stage_header(staged) + record
        sequence = self.wal.append([record])  # durable before it is applied and acknowledged
        return self._apply(record, sequence, replaying=False, result=True, loaded=loaded)

    def _unstage(self, body: bytes, sequence: int, *, recovered: bool) -> bytes:
        """Put the audit record at the head of ``body`` in the outbox; returns the rest."""
        at_us, id_size, envelope_size = _STAGE.unpack_from(body)
        start = _STAGE.size + id_size
        event_id = body[_STAGE.size : start].decode()
        self._outbox[event_id] = _Staged(
            sequence, at_us, body[start : start + envelope_size], recovered
        )
        return body[start + envelope_size :]

    def _apply(
        self,
        record: bytes,
        sequence: int,
        *,
        replaying: bool,
        result: bool = False,
        loaded: tuple[SnapshotInfo, dict[str, bytes]] | None = None,
    ) -> Any:
        """Apply one log record; on replay, returns whether it was applied (not skipped).
        ``loaded``: a restore record's snapshot, already read."""
        kind, body = record[:1], record[1:]
        if kind == _AUDITED:
            inner = self._unstage(body, sequence, recovered=replaying)
            return self._apply(inner, sequence, replaying=replaying, result=result, loaded=loaded)
        if kind == _STAGED:
            self._unstage(body, sequence, recovered=replaying)
            return True
        if kind == _OUTBOX_DONE:
            for event_id in json.loads(body):
                self._outbox.pop(event_id, None)
            return True
        now = self._clock()
        if kind == _CREATE:
            spec, create_time = _spec_of(body)
            if replaying and self._held(spec.name, sequence):
                return False
            present = self._entries.get(spec.name)
            if present is not None and isinstance(present.collection, MilvusCollection):
                present.log_from = sequence  # a checkpoint re-logged a Milvus collection
                return True
            collection: Collection = (
                MilvusCollection.open(spec, self.milvus_client())  # created, or reopened
                if self.in_milvus(spec.name)
                else VectorCollection(spec)
            )
            self._entries[spec.name] = _Entry(
                collection, create_time, create_time, sequence, last_change=sequence
            )
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
            entry.last_change = sequence
            return written if result else True
        if kind == _DELETE_IDS:
            doc = json.loads(body)
            if replaying and self._held(doc["c"], sequence):
                return False
            entry = self._entries[doc["c"]]
            deleted = entry.collection.delete_ids(doc["ids"])
            entry.update_time = now
            entry.last_change = sequence
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
            entry.last_change = sequence
            return deleted if result else True
        if kind == _DROP:
            name = body.decode()
            if replaying and (name not in self._entries or self._held(name, sequence)):
                return False
            self._set_floor(name, sequence, persist=not replaying)
            dropped = self._entries.pop(name)
            count = dropped.collection.item_count
            if isinstance(dropped.collection, MilvusCollection):
                dropped.collection.drop()
            return count if result else True
        if kind == _RESTORE:
            doc = json.loads(body)
            if replaying and self._held(doc["c"], sequence):
                return False
            snapshot_info, files = loaded or self.snapshots.load(doc["s"])
            self._load_snapshot(snapshot_info, doc["c"], at_sequence=sequence, files=files)
            self._set_floor(doc["c"], sequence, persist=not replaying)
            return True
        raise FailedPrecondition(f"write-ahead log record {sequence}: unknown kind {kind!r}")

    def _held(self, name: str, sequence: int) -> bool:
        """On replay: the record is already in the loaded snapshot of ``name``, or it is older
        than the last drop/restore of ``name`` (its floor) and so superseded by it."""
        if sequence < self._floors.get(name, 0):
            return True
        entry = self._entries.get(name)
        return entry is not None and sequence <= entry.snapshot_sequence

    def _set_floor(self, name: str, sequence: int, *, persist: bool) -> None:
        """Snapshots of ``name`` older than ``sequence`` are stale (a drop or restore)."""
        self._floors[name] = max(self._floors.get(name, 0), sequence)
        if persist:  # before the change is acknowledged (open() rewrites it after a crash)
            self._write_floors()

    def _load_snapshot(
        self,
        info: SnapshotInfo,
        name: str,
        at_sequence: int = 0,
        files: dict[str, bytes] | None = None,
    ) -> None:
        if files is None:
            _, files = self.snapshots.load(info.snapshot_id)
        spec, create_time = _spec_of(files["spec.json"])
        spec = replace(spec, name=name)
        state = {k: v for k, v in files.items() if k != "spec.json"}
        collection = VectorCollection.from_state(spec, state)
        # A restore logged at `at_sequence` holds nothing of the records before it (and is
        # rebuilt from that record: its snapshot stays pinned); a snapshot loaded at start
        # holds the records up to its own position.
        held = at_sequence or info.wal_sequence
        self._entries[name] = _Entry(
            collection,
            create_time,
            self._clock(),
            log_from=at_sequence or info.wal_sequence + 1,
            snapshot_sequence=held,
            last_snapshot=info,
            pinned_snapshot=info.snapshot_id if at_sequence else None,
            last_change=held,
        )
