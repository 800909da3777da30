"""Versioned schema migrations: ``deploy/clickhouse/migrations/NNNN_name.sql``.

Each file is a list of statements ending in ``;`` at a line end. Applied files are recorded
in ``llmops_migrations`` (version, name, SHA-256 of the file, applied time); a run applies
the files not recorded yet, in version order, and refuses to run at all when a recorded
file's checksum no longer matches (an applied migration was edited: write a new one
instead). Statements must be idempotent (``IF NOT EXISTS``), so a run that died half-way
through a file can simply be repeated: the file is recorded only after its last statement.
Concurrent runners are not coordinated: run ``llmops migrate`` from one place (a deploy job).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np

from llmops.clickhouse.base import ClickHouseStore
from llmops.clickhouse.sql import split_statements
from llmops.errors import FailedPrecondition

MIGRATIONS_TABLE = "llmops_migrations"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def default_directory() -> Path:
    """``deploy/clickhouse/migrations`` of the repository this package lives in."""
    return Path(__file__).resolve().parents[2] / "deploy" / "clickhouse" / "migrations"


class MigrationChecksumMismatch(FailedPrecondition):
    """An already applied migration file was changed."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path
    checksum: str
    """SHA-256 hex of the file bytes."""

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    def statements(self) -> list[str]:
        return split_statements(self.path.read_text(encoding="utf-8"))


def discover(directory: Path | None = None) -> list[Migration]:
    """The migration files of ``directory`` in version order; rejects duplicate versions
    and ``.sql`` files whose names do not follow ``NNNN_name.sql``."""
    root = directory or default_directory()
    found: dict[int, Migration] = {}
    for path in sorted(root.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise ValueError(f"{path}: migration files are named NNNN_lower_snake.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"{path}: version {version} already used by {found[version].path}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        found[version] = Migration(version, match.group(2), path, digest)
    return [found[v] for v in sorted(found)]


def _ensure_table(store: ClickHouseStore) -> None:
    # Plain MergeTree types only: the same DDL runs on chdb, modern servers and 18.16.
    store.execute(
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
        "version UInt32, name String, checksum String, applied_at DateTime"
        ") ENGINE = MergeTree ORDER BY version"
    )


def applied(store: ClickHouseStore) -> dict[int, str]:
    """Applied versions and their recorded checksums."""
    _ensure_table(store)
    rows = store.query(f"SELECT version, checksum FROM {MIGRATIONS_TABLE} ORDER BY version")
    return {int(r["version"]): str(r["checksum"]) for r in rows}


def _check(migrations: list[Migration], done: dict[int, str]) -> None:
    by_version = {m.version: m for m in migrations}
    for version, checksum in done.items():
        current = by_version.get(version)
        if current is not None and current.checksum != checksum:
            raise MigrationChecksumMismatch(
                f"migration {current.label} was changed after it was applied "
                f"(recorded sha256 {checksum[:12]}…, file {current.checksum[:12]}…): "
                "restore it and add a new migration instead"
            )


def _now_utc_s() -> np.datetime64:
    return np.datetime64(int(datetime.now(UTC).timestamp()), "s")


def apply_migrations(store: ClickHouseStore, directory: Path | None = None) -> list[str]:
    """Apply the pending migrations of ``directory`` (default: the repository's
    ``deploy/clickhouse/migrations``) to ``store``; return the labels applied (``[]`` when
    up to date). Raises :class:`MigrationChecksumMismatch` before applying anything when
    an applied file changed."""
    migrations = discover(directory)
    done = applied(store)
    _check(migrations, done)
    labels: list[str] = []
    for migration in migrations:
        if migration.version in done:
            continue
        for statement in migration.statements():
            store.execute(statement)
        store.insert(
            MIGRATIONS_TABLE,
            {
                "version": [migration.version],
                "name": [migration.name],
                "checksum": [migration.checksum],
                "applied_at": cast(Sequence[Any], np.array([_now_utc_s()], dtype="datetime64[s]")),
            },
        )
        labels.append(migration.label)
    return labels
