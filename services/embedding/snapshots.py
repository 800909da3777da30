"""Snapshots of vector collections: one deterministic tar archive per snapshot, on local disk.

Layout::

    <root>/<collection>/<snapshot_id>.tar      the archive (members sorted, mtime 0, uid/gid 0)
    <root>/<collection>/<snapshot_id>.sha256   its SHA-256, ``sha256sum`` format

The archive holds the files the caller gives (``index.faiss``, ``ids.json``, ...) plus
``manifest.json``: the snapshot id (UUIDv7), the collection, the WAL sequence the snapshot
covers, the item count, the creation time and each file's size and SHA-256. Both files are
written to a temporary name (``.<name>.<pid>.tmp``), fsynced and renamed, the sidecar first, so
an archive that is visible always has its checksum; loading verifies it.

``load_uri`` takes URIs from gRPC clients: it accepts only ``file://`` URIs that resolve (after
following symlinks) to an archive of this store, and every archive is opened relative to a
descriptor of the store's root with ``O_NOFOLLOW`` at each step, so no path outside the store
is ever opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import structlog

from llmops.errors import FailedPrecondition, InvalidArgument, NotFound
from llmops.events.ids import uuid7

log = structlog.get_logger("llmops.embedding")

MANIFEST = "manifest.json"
ORIGINS = frozenset({"request", "checkpoint"})
_COLLECTION = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SNAPSHOT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_ARCHIVE = re.compile(r"^([0-9a-f-]{36})\.tar$")
_MEMBER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")  # fits a ustar name field
_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar's default record size: archives are padded to a multiple of it


@dataclass(frozen=True)
class SnapshotInfo:
    """What the store knows of one snapshot (the manifest plus the archive's size and hash)."""

    snapshot_id: str
    collection: str
    uri: str
    """``file:///abs/path/<snapshot_id>.tar``."""
    item_count: int
    size_bytes: int
    sha256: str
    """Hex SHA-256 of the whole archive."""
    create_time: float
    """Epoch seconds."""
    wal_sequence: int
    """The last write-ahead log record the snapshot includes."""
    origin: str = "request"
    """Who asked for it: ``request`` (the Snapshot RPC; never deleted by the service) or
    ``checkpoint`` (the service's own, to shorten the log; only the newest few are kept)."""


def validate_collection(name: str) -> str:
    """``name`` if it is a valid collection name (it becomes a directory name)."""
    if not _COLLECTION.match(name):
        raise InvalidArgument(
            "collection", f"{name[:80]!r} is not a valid name (^[a-z][a-z0-9_]{{0,63}}$)"
        )
    return name


def _member_header(name: str, size: int) -> bytes:
    """The ustar header of a regular file, with nothing that varies between runs."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.USTAR_FORMAT)


class SnapshotStore:
    """Snapshots of every collection under ``root`` (see the module docstring).

    Thread-safe: writers use unique temporary names and readers open archives by descriptor.
    ``fsync=False`` skips the syncs (tests, throwaway stores).
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        Path(root).mkdir(parents=True, exist_ok=True)
        self.root = Path(root).resolve(strict=True)  # symlinks resolved once: containment checks
        self.fsync = fsync
        self._mkdir_lock = threading.Lock()

    # -- descriptors ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _dir(self, collection: str, *, create: bool = False) -> Iterator[int]:
        """A descriptor of ``root/<collection>`` opened without following symlinks."""
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if create:
                with self._mkdir_lock:
                    try:
                        os.mkdir(collection, 0o755, dir_fd=root_fd)
                        if self.fsync:
                            os.fsync(root_fd)
                    except FileExistsError:
                        pass
            try:
                fd = os.open(
                    collection, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd
                )
            except (FileNotFoundError, NotADirectoryError):
                raise NotFound(f"collection {collection!r} has no snapshots") from None
            except OSError as exc:  # ELOOP: a symlink where a directory should be
                raise FailedPrecondition(
                    f"snapshot directory of {collection!r} is not a plain directory: {exc}"
                ) from None
        finally:
            os.close(root_fd)
        try:
            yield fd
        finally:
            os.close(fd)

    def _read(self, dir_fd: int, name: str) -> bytes:
        """The content of regular file ``name`` in ``dir_fd`` (no symlinks followed)."""
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise FailedPrecondition(f"snapshot file {name} is not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as fh:
                return fh.read()
        finally:
            os.close(fd)

    def _write_atomic(self, dir_fd: int, name: str, chunks: Iterator[bytes]) -> None:
        """Write ``name`` in ``dir_fd`` via a synced temporary file and a rename."""
        tmp = f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd
        )
        try:
            with os.fdopen(fd, "wb", closefd=False) as fh:
                for chunk in chunks:
                    fh.write(chunk)
                fh.flush()
                if self.fsync:
                    os.fsync(fd)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        finally:
            os.close(fd)
        if self.fsync:
            os.fsync(dir_fd)  # the rename itself must be durable

    # -- API --------------------------------------------------------------------------------

    def write(
        self,
        collection: str,
        files: dict[str, bytes],
        *,
        wal_sequence: int,
        item_count: int,
        origin: str = "request",
    ) -> SnapshotInfo:
        """Store ``files`` as a new snapshot of ``collection`` covering the WAL up to
        ``wal_sequence``; returns its info once it is durable."""
        validate_collection(collection)
        if origin not in ORIGINS:
            raise InvalidArgument("origin", f"{origin[:40]!r} is not one of {sorted(ORIGINS)}")
        for name in files:
            if name == MANIFEST or not _MEMBER.match(name):
                raise InvalidArgument(
                    "files", f"bad file name {name[:80]!r} (plain names, no {MANIFEST!r})"
                )
        if wal_sequence < 0 or item_count < 0:
            raise InvalidArgument("wal_sequence", "wal_sequence and item_count must be >= 0")
        snapshot_id = uuid7()
        create_time = time.time()
        manifest = {
            "snapshot_id": snapshot_id,
            "collection": collection,
            "wal_sequence": wal_sequence,
            "item_count": item_count,
            "create_time": create_time,
            "origin": origin,
            "files": {
                name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                for name, data in sorted(files.items())
            },
        }
        members = dict(files)
        members[MANIFEST] = json.dumps(manifest, sort_keys=True, indent=2).encode() + b"\n"
        digest = hashlib.sha256()
        size = 0
        for chunk in self._tar_chunks(members):
            digest.update(chunk)
            size += len(chunk)
        sha = digest.hexdigest()
        archive = f"{snapshot_id}.tar"
        with self._dir(collection, create=True) as dir_fd:
            # The sidecar first: an archive that is visible always has its checksum.
            self._write_atomic(
                dir_fd, f"{snapshot_id}.sha256", iter([f"{sha}  {archive}\n".encode()])
            )
            self._write_atomic(dir_fd, archive, self._tar_chunks(members))
        path = self.root / collection / archive
        return SnapshotInfo(
            snapshot_id=snapshot_id,
            collection=collection,
            uri=path.as_uri(),
            item_count=item_count,
            size_bytes=size,
            sha256=sha,
            create_time=create_time,
            wal_sequence=wal_sequence,
            origin=origin,
        )

    @staticmethod
    def _tar_chunks(members: dict[str, bytes]) -> Iterator[bytes]:
        """The bytes of a ustar archive of ``members`` in name order (what ``tarfile`` writes,
        produced here so it can be hashed while written and is byte-for-byte reproducible)."""
        total = 0
        for name in sorted(members):
            data = members[name]
            pad = -len(data) % _BLOCK
            header = _member_header(name, len(data))
            yield header
            yield data
            yield b"\0" * pad
            total += len(header) + len(data) + pad
        total += 2 * _BLOCK  # the end-of-archive marker
        yield b"\0" * (2 * _BLOCK + (-total % _RECORD))

    def list(self, collection: str | None = None) -> list[SnapshotInfo]:
        """Snapshots of ``collection`` (every collection when None), newest first. Archives
        whose manifest cannot be read are skipped with a warning (``load`` reports why)."""
        if collection is not None:
            names = [validate_collection(collection)]
        else:
            names = sorted(n for n in os.listdir(self.root) if _COLLECTION.match(n))
        out: list[SnapshotInfo] = []
        for name in names:
            try:
                with self._dir(name) as dir_fd:
                    for entry in sorted(os.listdir(dir_fd)):
                        m = _ARCHIVE.match(entry)
                        if m is None or not _SNAPSHOT_ID.match(m.group(1)):
                            continue  # temporary files, sidecars, strays
                        try:
                            out.append(self._info(dir_fd, name, m.group(1)))
                        except (FailedPrecondition, OSError, tarfile.TarError, ValueError) as exc:
                            log.warning(
                                "embedding_snapshot_unreadable",
                                collection=name,
                                snapshot_id=m.group(1),
                                error=str(exc),
                            )
            except (NotFound, FailedPrecondition) as exc:
                if isinstance(exc, FailedPrecondition):
                    log.warning("embedding_snapshot_dir_skipped", collection=name, error=str(exc))
                continue
        out.sort(key=lambda i: (i.create_time, i.snapshot_id), reverse=True)
        return out

    def latest(self, collection: str) -> SnapshotInfo | None:
        """The newest snapshot of ``collection``, or None."""
        found = self.list(collection)
        return found[0] if found else None

    def _info(self, dir_fd: int, collection: str, snapshot_id: str) -> SnapshotInfo:
        """Info from the manifest and sidecar, without reading the whole archive."""
        archive = f"{snapshot_id}.tar"
        fd = os.open(archive, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            with tarfile.open(fileobj=fh, mode="r:") as tar:
                member = tar.extractfile(MANIFEST)
                if member is None:
                    raise FailedPrecondition(f"snapshot {snapshot_id}: no {MANIFEST}")
                manifest = json.loads(member.read())
        return self._make_info(
            collection, snapshot_id, manifest, size, self._sidecar(dir_fd, snapshot_id)
        )

    def _sidecar(self, dir_fd: int, snapshot_id: str) -> str:
        try:
            text = self._read(dir_fd, f"{snapshot_id}.sha256").decode()
        except FileNotFoundError:
            raise FailedPrecondition(
                f"snapshot {snapshot_id}: its checksum file {snapshot_id}.sha256 is missing"
            ) from None
        sha = text.split(maxsplit=1)[0] if text.strip() else ""
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise FailedPrecondition(f"snapshot {snapshot_id}: malformed checksum file")
        return sha

    def _make_info(
        self,
        collection: str,
        snapshot_id: str,
        manifest: object,
        size: int,
        sha: str,
    ) -> SnapshotInfo:
        if not isinstance(manifest, dict):
            raise FailedPrecondition(f"snapshot {snapshot_id}: malformed manifest")
        if manifest.get("snapshot_id") != snapshot_id or manifest.get("collection") != collection:
            raise FailedPrecondition(
                f"snapshot {snapshot_id}: its manifest names snapshot "
                f"{manifest.get('snapshot_id')!r} of {manifest.get('collection')!r}"
            )
        item_count = manifest.get("item_count")
        wal_sequence = manifest.get("wal_sequence")
        create_time = manifest.get("create_time")
        origin = manifest.get("origin", "request")  # written before checkpoints existed
        if not (
            isinstance(item_count, int)
            and isinstance(wal_sequence, int)
            and isinstance(create_time, int | float)
            and origin in ORIGINS
        ):
            raise FailedPrecondition(f"snapshot {snapshot_id}: malformed manifest")
        return SnapshotInfo(
            snapshot_id=snapshot_id,
            collection=collection,
            uri=(self.root / collection / f"{snapshot_id}.tar").as_uri(),
            item_count=item_count,
            size_bytes=size,
            sha256=sha,
            create_time=float(create_time),
            wal_sequence=wal_sequence,
            origin=str(origin),
        )

    def _locate(self, snapshot_id: str) -> str:
        """The collection holding ``snapshot_id``; NotFound when none does."""
        if not _SNAPSHOT_ID.match(snapshot_id):
            raise InvalidArgument("snapshot_id", f"{snapshot_id[:80]!r} is not a snapshot id")
        for name in sorted(os.listdir(self.root)):
            if _COLLECTION.match(name) and os.path.lexists(self.root / name / f"{snapshot_id}.tar"):
                return name
        raise NotFound(f"snapshot {snapshot_id} not found")

    def load(self, snapshot_id: str) -> tuple[SnapshotInfo, dict[str, bytes]]:
        """The snapshot's info and files (without the manifest), after verifying the archive
        against its recorded SHA-256 and each file against the manifest."""
        return self._load(self._locate(snapshot_id), snapshot_id)

    def load_uri(self, uri: str) -> tuple[SnapshotInfo, dict[str, bytes]]:
        """``load`` of the snapshot a client names by URI. Only ``file://`` URIs whose path,
        with symlinks followed, is an archive of this store are accepted; anything else raises
        InvalidArgument("uri", ...) without the path being opened."""
        parts = urlsplit(uri)
        if parts.scheme != "file" or not uri.startswith("file://"):
            raise InvalidArgument(
                "uri", "only file:// URIs of this service's snapshots are accepted"
            )
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise InvalidArgument("uri", "a file:// URI with a host, query or fragment")
        path = unquote(parts.path)
        if "\0" in path or not path.startswith("/"):
            raise InvalidArgument("uri", "the path must be absolute")
        try:
            # resolve(strict=True) follows every symlink (and ..) before the checks below; it
            # stats and reads links, it opens nothing.
            resolved = Path(path).resolve(strict=True)
        except (OSError, RuntimeError):
            raise InvalidArgument("uri", "no snapshot archive at that path") from None
        m = _ARCHIVE.match(resolved.name)
        collection = resolved.parent.name
        if (
            resolved.parent.parent != self.root
            or not _COLLECTION.match(collection)
            or m is None
            or not _SNAPSHOT_ID.match(m.group(1))
        ):
            raise InvalidArgument("uri", "the path is not a snapshot archive of this store")
        if not resolved.is_file():
            raise InvalidArgument("uri", "the path is not a snapshot archive of this store")
        return self._load(collection, m.group(1))

    def _load(self, collection: str, snapshot_id: str) -> tuple[SnapshotInfo, dict[str, bytes]]:
        archive = f"{snapshot_id}.tar"
        with self._dir(collection) as dir_fd:
            try:
                data = self._read(dir_fd, archive)
            except FileNotFoundError:
                raise NotFound(f"snapshot {snapshot_id} not found") from None
            except OSError as exc:  # ELOOP: the archive is a symlink
                raise FailedPrecondition(f"snapshot {snapshot_id}: cannot read: {exc}") from None
            want = self._sidecar(dir_fd, snapshot_id)
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise FailedPrecondition(
                f"snapshot {snapshot_id} of {collection!r} is corrupt: the archive's SHA-256 is "
                f"{got}, {want} was recorded when it was written"
            )
        files: dict[str, bytes] = {}
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                for member in tar:
                    if not member.isreg() or not _MEMBER.match(member.name):
                        raise FailedPrecondition(
                            f"snapshot {snapshot_id}: unexpected member {member.name[:80]!r}"
                        )
                    start = member.offset_data
                    files[member.name] = data[start : start + member.size]
        except tarfile.TarError as exc:
            raise FailedPrecondition(f"snapshot {snapshot_id}: unreadable archive: {exc}") from None
        raw = files.pop(MANIFEST, None)
        if raw is None:
            raise FailedPrecondition(f"snapshot {snapshot_id}: no {MANIFEST}")
        try:
            manifest = json.loads(raw)
        except ValueError:
            raise FailedPrecondition(f"snapshot {snapshot_id}: malformed manifest") from None
        info = self._make_info(collection, snapshot_id, manifest, len(data), got)
        listed = manifest.get("files")
        if not isinstance(listed, dict) or set(listed) != set(files):
            raise FailedPrecondition(f"snapshot {snapshot_id}: files do not match the manifest")
        for name, content in files.items():
            entry = listed[name]
            if not isinstance(entry, dict) or hashlib.sha256(content).hexdigest() != entry.get(
                "sha256"
            ):
                raise FailedPrecondition(f"snapshot {snapshot_id}: {name} does not match its hash")
        return info, files

    def delete_older(self, collection: str, keep: int) -> int:
        """Delete all but the ``keep`` newest snapshots of ``collection``; returns how many
        were deleted."""
        if keep < 0:
            raise InvalidArgument("keep", f"must be >= 0, got {keep}")
        return self.delete(collection, self.list(collection)[keep:])

    def delete(self, collection: str, doomed: Sequence[SnapshotInfo]) -> int:
        """Delete the snapshots ``doomed`` of ``collection``; returns how many."""
        if not doomed:
            return 0
        with self._dir(collection) as dir_fd:
            for info in doomed:
                # The archive first: a listed archive must never lack its checksum.
                for name in (f"{info.snapshot_id}.tar", f"{info.snapshot_id}.sha256"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=dir_fd)
            if self.fsync:
                os.fsync(dir_fd)
        return len(doomed)
