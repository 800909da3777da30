"""Collection snapshots: deterministic archives, integrity checks, retention, URI confinement."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from llmops.errors import FailedPrecondition, InvalidArgument, NotFound
from services.embedding.snapshots import SnapshotInfo, SnapshotStore

FILES = {
    "index.faiss": bytes(range(256)) * 40,
    "ids.json": b'["a", "b", "c"]',
    "metadata.json": b'{"a": {"lang": "en"}}',
    "spec.json": b'{"dimension": 384}',
}


@pytest.fixture
def store(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "snapshots")


def _path(info: SnapshotInfo) -> Path:
    assert info.uri.startswith("file:///")
    return Path(info.uri.removeprefix("file://"))


def test_write_list_latest_load_round_trip(store: SnapshotStore) -> None:
    first = store.write("docs", FILES, wal_sequence=10, item_count=3)
    second = store.write("docs", {**FILES, "ids.json": b"[]"}, wal_sequence=20, item_count=0)
    other = store.write("faq", {"spec.json": b"{}"}, wal_sequence=1, item_count=0)

    archive = _path(first)
    assert archive == store.root / "docs" / f"{first.snapshot_id}.tar"
    assert first.size_bytes == archive.stat().st_size
    assert first.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert first.snapshot_id[14] == "7"  # a UUIDv7
    assert (first.collection, first.wal_sequence, first.item_count) == ("docs", 10, 3)

    assert store.list("docs") == [second, first]  # newest first, same info as write gave
    assert store.latest("docs") == second
    assert store.latest("empty") is None
    assert store.list() == sorted([first, second, other], key=lambda i: -i.create_time)

    info, files = store.load(first.snapshot_id)
    assert info == first
    assert files == FILES
    assert store.load_uri(second.uri) == (second, {**FILES, "ids.json": b"[]"})


def test_the_archive_is_a_deterministic_tar(store: SnapshotStore) -> None:
    info = store.write("docs", FILES, wal_sequence=5, item_count=3)
    with tarfile.open(_path(info)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == sorted([*FILES, "manifest.json"])
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
            (0, 0, 0, "", "", 0o644)
        }
        manifest_file = tar.extractfile("manifest.json")
        assert manifest_file is not None
        manifest = json.loads(manifest_file.read())
    assert manifest["snapshot_id"] == info.snapshot_id
    assert manifest["wal_sequence"] == 5 and manifest["item_count"] == 3
    assert manifest["files"]["ids.json"]["sha256"] == hashlib.sha256(FILES["ids.json"]).hexdigest()
    sidecar = _path(info).with_suffix(".sha256").read_text()
    assert sidecar == f"{info.sha256}  {info.snapshot_id}.tar\n"
    # Only the manifest (id, time) differs between two snapshots of the same files.
    again = store.write("docs", FILES, wal_sequence=5, item_count=3)
    assert _path(again).stat().st_size == _path(info).stat().st_size


def test_a_tampered_archive_is_refused(store: SnapshotStore) -> None:
    info = store.write("docs", FILES, wal_sequence=1, item_count=3)
    archive = _path(info)
    data = bytearray(archive.read_bytes())
    data[2000] ^= 1  # inside index.faiss
    archive.write_bytes(bytes(data))
    with pytest.raises(FailedPrecondition, match=f"snapshot {info.snapshot_id} .*is corrupt"):
        store.load(info.snapshot_id)
    with pytest.raises(FailedPrecondition, match="corrupt"):
        store.load_uri(info.uri)
    archive.with_suffix(".sha256").unlink()
    with pytest.raises(FailedPrecondition, match=r"checksum file .* is missing"):
        store.load(info.snapshot_id)


def test_unknown_and_malformed_ids_and_names(store: SnapshotStore) -> None:
    with pytest.raises(NotFound):
        store.load("01890a5d-ac96-774b-bcce-b302099a8057")
    with pytest.raises(InvalidArgument) as err:
        store.load("../../etc/passwd")
    assert err.value.field == "snapshot_id"
    for bad in ("Docs", "9lives", "a-b", "a/b", "..", "", "x" * 65):
        with pytest.raises(InvalidArgument) as err:
            store.write(bad, FILES, wal_sequence=0, item_count=0)
        assert err.value.field == "collection"
    with pytest.raises(InvalidArgument) as err:
        store.list("../x")
    for name in ("manifest.json", "../x", "a/b", ".hidden", ""):
        with pytest.raises(InvalidArgument) as err:
            store.write("docs", {name: b""}, wal_sequence=0, item_count=0)
        assert err.value.field == "files"


def test_temporary_and_stray_files_are_not_listed(store: SnapshotStore) -> None:
    info = store.write("docs", FILES, wal_sequence=1, item_count=3)
    cdir = store.root / "docs"
    (cdir / f".{info.snapshot_id}.tar.123.456.tmp").write_bytes(b"half written")
    (cdir / "notes.tar").write_bytes(b"")
    (cdir / "01890a5d-ac96-774b-bcce-b302099a8057.sha256").write_text("orphan sidecar\n")
    (store.root / "NotACollection").mkdir()
    assert store.list("docs") == [info]
    assert store.list() == [info]


def test_retention_keeps_the_newest(store: SnapshotStore) -> None:
    infos = [store.write("docs", FILES, wal_sequence=i, item_count=3) for i in range(4)]
    other = store.write("faq", FILES, wal_sequence=0, item_count=3)
    assert store.delete_older("docs", keep=2) == 2
    assert store.list("docs") == [infos[3], infos[2]]
    assert not _path(infos[0]).exists()
    assert not _path(infos[0]).with_suffix(".sha256").exists()
    assert store.delete_older("docs", keep=2) == 0
    assert store.delete_older("docs", keep=0) == 2
    assert store.list() == [other]
    with pytest.raises(InvalidArgument):
        store.delete_older("docs", keep=-1)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every os.open call from now on (refused URIs must not open anything)."""
    calls: list[Any] = []
    real = os.open

    def spy(path: Any, *args: Any, **kwargs: Any) -> int:
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    return calls


def test_load_uri_is_confined_to_the_store(
    store: SnapshotStore, tmp_path: Path, opened: list[Any]
) -> None:
    info = store.write("docs", FILES, wal_sequence=1, item_count=3)
    archive = _path(info)
    outside = tmp_path / "outside" / "docs"  # a look-alike store next to the real one
    outside.mkdir(parents=True)
    shutil.copy(archive, outside / archive.name)
    shutil.copy(archive.with_suffix(".sha256"), outside / f"{info.snapshot_id}.sha256")
    # A symlink in the store pointing out, under a valid snapshot name.
    evil_id = "01890a5d-ac96-774b-bcce-b302099a8057"
    (store.root / "docs" / f"{evil_id}.tar").symlink_to(outside / archive.name)
    # A collection directory that is a symlink to the look-alike store's directory.
    (store.root / "linked").symlink_to(outside, target_is_directory=True)
    opened.clear()

    refused = [
        f"file://{store.root}/docs/../../outside/docs/{archive.name}",  # ../ escape
        f"file://{outside}/{archive.name}",  # an absolute path elsewhere
        f"file://{store.root}/docs/{evil_id}.tar",  # a symlink pointing out
        f"file://{store.root}/linked/{archive.name}",  # a symlinked directory pointing out
        f"file://{store.root}/docs/{info.snapshot_id}.sha256",  # in the store, not an archive
        f"file://{store.root}/docs/01890a5d-ac96-774b-bcce-b302099a8058.tar",  # no such file
        f"file://{store.root}/docs",
        "file:///etc/passwd",
        f"file:{archive}",  # no authority part
        f"file://otherhost{archive}",
        f"{info.uri}?x=1",
        f"https://example.com/{archive.name}",
        f"s3://bucket/docs/{archive.name}",
        str(archive),  # a bare path
        "",
    ]
    for uri in refused:
        with pytest.raises(InvalidArgument) as err:
            store.load_uri(uri)
        assert err.value.field == "uri", uri
    assert opened == []  # refused before anything was opened

    # The same snapshot named through a harmless detour inside the store is fine.
    detour = f"file://{store.root}/docs/../docs/{archive.name}"
    assert store.load_uri(detour)[1] == FILES
    assert store.load_uri(info.uri.replace("file://", "file://localhost"))[0] == info
    # The planted symlink is not a snapshot of the store either.
    assert [i.snapshot_id for i in store.list("docs")] == [info.snapshot_id]
    with pytest.raises(FailedPrecondition):
        store.load(evil_id)
