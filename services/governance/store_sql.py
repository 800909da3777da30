"""The registry store on SQL: SQLite (embedded) and PostgreSQL (production), one code path.

SQLAlchemy Core over the tables of :mod:`services.governance.schema`; the schema is
brought up to date at start by the Alembic migrations shipped in ``migrations/`` (run
programmatically on the store's own connection, no ``alembic.ini``). Transactions run on
a small thread pool, never on the event loop: one thread for SQLite writes (it has one
writer anyway; every write transaction is ``BEGIN IMMEDIATE``, so two writers never
deadlock on a lock upgrade) and two for its reads (deferred ``BEGIN`` on ``query_only``
connections: a WAL snapshot that neither waits for the writer nor blocks it),
``pool_size`` threads and pooled psycopg 3 connections for PostgreSQL (READ COMMITTED;
compare-and-set updates and unique keys settle races, see :mod:`services.governance.store`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine, make_url

from llmops.callcontext import for_worker
from llmops.errors import FailedPrecondition, LLMOpsError, Unavailable
from services.governance import schema
from services.governance.store import (
    AliasEventRow,
    ArtifactRow,
    EdgeRow,
    NameChangeRow,
    RegistryTx,
    RetryTransaction,
    Side,
    StateChangeRow,
    VersionRow,
)

T = TypeVar("T")

log = structlog.get_logger("llmops.governance")

MIGRATIONS = Path(__file__).with_name("migrations")
WRITE_ATTEMPTS = 8
SQLITE_READERS = 2
"""Threads of SQLite's read path (WAL: readers run beside the one writer)."""
_MIGRATION_LOCK = 0x6C6C6D6F7073  # "llmops": the advisory lock id of schema migrations


class WriteConflict(LLMOpsError):
    """Concurrent writes kept colliding on the same keys; retry later."""

    code = "ABORTED"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def migrate(connection: Connection) -> None:
    """Upgrade the schema to the newest migration, inside ``connection``'s transaction."""
    if connection.dialect.name == "postgresql":  # replicas starting together: one at a time
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK})
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def _sqlite_engine(url: str, *, read_only: bool = False) -> Engine:
    """A SQLite engine whose transactions begin ``IMMEDIATE`` (the write lock at once), or,
    ``read_only``, deferred on ``query_only`` connections: in WAL mode such a read takes a
    snapshot and neither waits for the writer nor holds it up."""
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        # let SQLAlchemy, not the driver, begin transactions (the driver would skip DDL)
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        if read_only:
            cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _postgres_engine(
    url: str, pool_size: int, max_overflow: int, timeout_s: float, *, reads: bool = False
) -> Engine:
    """The pooled psycopg 3 engine; ``reads``: a pool of its own in autocommit (no BEGIN /
    COMMIT, nothing to reset when a connection goes back: a read is 1 round trip per
    statement plus the pre-ping)."""
    options: dict[str, Any] = (
        {"isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None} if reads else {}
    )
    parsed = make_url(url)
    if parsed.drivername == "postgresql":  # the plain scheme means psycopg 3 here
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        return sa.create_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=timeout_s,
            pool_pre_ping=True,
            **options,
        )
    except ModuleNotFoundError as err:
        raise FailedPrecondition(
            f"governance.store=postgres needs psycopg 3: pip install 'llmops[postgres]' ({err})"
        ) from err


class SqlRegistryStore:
    """:class:`~services.governance.store.RegistryStore` on SQLite or PostgreSQL."""

    def __init__(
        self, engine: Engine, workers: int, read_engine: Engine | None = None, readers: int = 0
    ) -> None:
        """``read_engine``/``readers``: SQLite's read path, a deferred-``BEGIN`` engine on
        threads of its own, so a read never queues behind a write (the registry's, or the
        audit writer's anchors on the same file). Without them reads share ``engine`` and
        its pool of threads (PostgreSQL: MVCC reads never wait for writers anyway; there
        ``read_engine`` is a second pool, in autocommit)."""
        self.engine = engine
        self.read_engine = read_engine or engine
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="registry-db")
        self._readers = (
            ThreadPoolExecutor(readers, thread_name_prefix="registry-db-read")
            if read_engine is not None and readers
            else self._executor
        )

    @classmethod
    def sqlite(cls, path: Path) -> SqlRegistryStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls._sqlite(sqlite_url(path))

    @classmethod
    def _sqlite(cls, url: str) -> SqlRegistryStore:
        return cls(
            _sqlite_engine(url), 1, _sqlite_engine(url, read_only=True), readers=SQLITE_READERS
        )

    @classmethod
    def from_url(
        cls, url: str, pool_size: int = 8, max_overflow: int = 4, timeout_s: float = 10.0
    ) -> SqlRegistryStore:
        if make_url(url).get_backend_name() == "sqlite":
            if make_url(url).database in (None, "", ":memory:"):  # one connection's database
                return cls(_sqlite_engine(url), workers=1)
            return cls._sqlite(url)
        engine = _postgres_engine(url, pool_size, max_overflow, timeout_s)
        # Reads in autocommit: under READ COMMITTED every statement takes its own snapshot
        # anyway, so a read transaction only added round trips (BEGIN, COMMIT, the reset).
        reads = _postgres_engine(url, pool_size, max_overflow, timeout_s, reads=True)
        return cls(engine, workers=pool_size, read_engine=reads)

    @property
    def description(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    async def open(self) -> None:
        await self._run(self._migrate)

    def _migrate(self) -> None:
        with self.engine.begin() as conn:
            migrate(conn)

    async def read(self, work: Callable[[RegistryTx], T]) -> T:
        def run() -> T:
            with self.read_engine.begin() as conn:
                return work(_Tx(conn))

        return await self._run(run, self._readers)

    async def write(self, work: Callable[[RegistryTx], T]) -> T:
        def run() -> T:
            for attempt in range(1, WRITE_ATTEMPTS + 1):
                if attempt > 1:  # spread the retries of writers that keep colliding
                    time.sleep(random.uniform(0, 0.002 * attempt))
                try:
                    with self.engine.begin() as conn:
                        return work(_Tx(conn))
                except exc.IntegrityError as err:  # a concurrent write took the same key
                    log.info("registry_write_retry", attempt=attempt, error=str(err.orig))
                except RetryTransaction as err:  # a compare-and-set lost a race
                    log.info("registry_write_retry", attempt=attempt, error=str(err))
            raise WriteConflict(
                f"registry write collided with concurrent writes {WRITE_ATTEMPTS} times; retry"
            )

        return await self._run(run)

    async def _run(self, fn: Callable[[], T], executor: ThreadPoolExecutor | None = None) -> T:
        try:
            # not started once the RPC's deadline has passed: a write its caller was told
            # timed out must not be applied afterwards
            return await asyncio.get_running_loop().run_in_executor(
                executor or self._executor, for_worker(fn)
            )
        except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError) as err:
            raise Unavailable(f"registry database {self.description}: {err}") from err

    async def close(self) -> None:
        if self._readers is not self._executor:
            self._readers.shutdown(wait=True)
        self._executor.shutdown(wait=True)
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


# The statements of the hot reads (GetArtifact), built once: constructing a Core statement
# per call was a third of a read's time.
_A, _V, _AL = schema.artifacts, schema.versions, schema.aliases
_ARTIFACT = sa.select(_A).where(
    _A.c.kind == sa.bindparam("kind"), _A.c.name == sa.bindparam("name")
)
_VERSION = sa.select(_V).where(
    _V.c.artifact_id == sa.bindparam("artifact_id"), _V.c.version == sa.bindparam("version")
)
_VERSION_FOR_UPDATE = _VERSION.with_for_update()
_LATEST = (
    sa.select(_V.c.artifact_id, sa.func.max(_V.c.version))
    .where(_V.c.artifact_id.in_(sa.bindparam("ids", expanding=True)))
    .group_by(_V.c.artifact_id)
)
_ALIASES = (
    sa.select(_AL.c.artifact_id, _AL.c.alias, _AL.c.version)
    .where(_AL.c.artifact_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(_AL.c.artifact_id, _AL.c.alias)
)


def _artifact(row: sa.Row[Any]) -> ArtifactRow:
    m = row._mapping
    return ArtifactRow(
        id=m["id"],
        kind=m["kind"],
        name=m["name"],
        description=m["description"],
        owner=m["owner"],
        tags_json=m["tags"],
        created_by=m["created_by"],
        create_time_us=m["create_time_us"],
        deleted=bool(m["deleted"]),
    )


def _version(row: sa.Row[Any]) -> VersionRow:
    m = row._mapping
    return VersionRow(
        artifact_id=m["artifact_id"],
        version=m["version"],
        uri=m["uri"],
        content_digest=m["content_digest"],
        state=m["state"],
        metadata_json=m["metadata"],
        details_json=m["details"],
        created_by=m["created_by"],
        create_time_us=m["create_time_us"],
    )


def _edge(row: sa.Row[Any]) -> EdgeRow:
    m = row._mapping
    return EdgeRow(
        upstream=m["upstream"],
        downstream=m["downstream"],
        relation=m["relation"],
        created_by=m["created_by"],
        create_time_us=m["create_time_us"],
    )


def escape_like(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class _Tx:
    """:class:`~services.governance.store.RegistryTx` on one SQLAlchemy connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # artifacts ----------------------------------------------------------------------------

    def artifact(self, kind: str, name: str) -> ArtifactRow | None:
        row = self.conn.execute(_ARTIFACT, {"kind": kind, "name": name}).first()
        return _artifact(row) if row is not None else None

    def artifacts_by_id(self, ids: Collection[int]) -> dict[int, ArtifactRow]:
        if not ids:
            return {}
        t = schema.artifacts
        rows = self.conn.execute(sa.select(t).where(t.c.id.in_(list(ids))))
        return {r.id: _artifact(r) for r in rows}

    def insert_artifact(
        self,
        kind: str,
        name: str,
        description: str,
        owner: str,
        tags_json: str,
        created_by: str,
        time_us: int,
    ) -> int:
        result = self.conn.execute(
            schema.artifacts.insert().values(
                kind=kind,
                name=name,
                description=description,
                owner=owner,
                tags=tags_json,
                created_by=created_by,
                create_time_us=time_us,
                deleted=False,
            )
        )
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    def list_artifacts(
        self, kind: str | None, name_prefix: str, offset: int, limit: int
    ) -> list[ArtifactRow]:
        t = schema.artifacts
        query = sa.select(t).where(t.c.deleted == sa.false())
        if kind is not None:
            query = query.where(t.c.kind == kind)
        if name_prefix:
            query = query.where(t.c.name.like(escape_like(name_prefix) + "%", escape="\\"))
        query = query.order_by(t.c.kind, t.c.name).offset(offset).limit(limit)
        return [_artifact(r) for r in self.conn.execute(query)]

    def rename_artifact(self, artifact_id: int, new_name: str) -> None:
        t = schema.artifacts
        self.conn.execute(t.update().where(t.c.id == artifact_id).values(name=new_name))

    def mark_deleted(self, artifact_id: int) -> None:
        t = schema.artifacts
        self.conn.execute(t.update().where(t.c.id == artifact_id).values(deleted=True))

    def insert_name_change(self, row: NameChangeRow) -> None:
        self.conn.execute(
            schema.name_changes.insert().values(
                artifact_id=row.artifact_id,
                old_name=row.old_name,
                new_name=row.new_name,
                actor=row.actor,
                reason=row.reason,
                time_us=row.time_us,
            )
        )

    def name_changes(self, artifact_id: int) -> list[NameChangeRow]:
        t = schema.name_changes
        rows = self.conn.execute(
            sa.select(t).where(t.c.artifact_id == artifact_id).order_by(t.c.id)
        )
        return [
            NameChangeRow(r.artifact_id, r.old_name, r.new_name, r.actor, r.reason, r.time_us)
            for r in rows
        ]

    # versions -----------------------------------------------------------------------------

    def version(self, artifact_id: int, version: int, lock: bool = False) -> VersionRow | None:
        query = _VERSION_FOR_UPDATE if lock else _VERSION
        row = self.conn.execute(query, {"artifact_id": artifact_id, "version": version}).first()
        return _version(row) if row is not None else None

    def version_by_digest(self, artifact_id: int, digest: str) -> VersionRow | None:
        t = schema.versions
        row = self.conn.execute(
            sa.select(t).where(t.c.artifact_id == artifact_id, t.c.content_digest == digest)
        ).first()
        return _version(row) if row is not None else None

    def latest_versions(self, artifact_ids: Collection[int]) -> dict[int, int]:
        if not artifact_ids:
            return {}
        rows = self.conn.execute(_LATEST, {"ids": list(artifact_ids)})
        return {int(a): int(v) for a, v in rows}

    def versions(
        self, artifact_id: int, states: Collection[str], offset: int, limit: int
    ) -> list[VersionRow]:
        t = schema.versions
        query = sa.select(t).where(t.c.artifact_id == artifact_id)
        if states:
            query = query.where(t.c.state.in_(list(states)))
        query = query.order_by(t.c.version.desc()).offset(offset).limit(limit)
        return [_version(r) for r in self.conn.execute(query)]

    def insert_version(self, row: VersionRow) -> None:
        self.conn.execute(
            schema.versions.insert().values(
                artifact_id=row.artifact_id,
                version=row.version,
                uri=row.uri,
                content_digest=row.content_digest,
                state=row.state,
                metadata=row.metadata_json,
                details=row.details_json,
                created_by=row.created_by,
                create_time_us=row.create_time_us,
            )
        )

    def set_state(self, artifact_id: int, version: int, expected: str, state: str) -> bool:
        t = schema.versions
        result = self.conn.execute(
            t.update()
            .where(t.c.artifact_id == artifact_id, t.c.version == version, t.c.state == expected)
            .values(state=state)
        )
        return result.rowcount == 1

    def insert_state_change(self, row: StateChangeRow) -> None:
        self.conn.execute(
            schema.state_changes.insert().values(
                artifact_id=row.artifact_id,
                version=row.version,
                previous_state=row.previous_state,
                state=row.state,
                actor=row.actor,
                reason=row.reason,
                time_us=row.time_us,
            )
        )

    def state_changes(self, artifact_id: int, version: int) -> list[StateChangeRow]:
        t = schema.state_changes
        rows = self.conn.execute(
            sa.select(t)
            .where(t.c.artifact_id == artifact_id, t.c.version == version)
            .order_by(t.c.id)
        )
        return [
            StateChangeRow(
                r.artifact_id, r.version, r.previous_state, r.state, r.actor, r.reason, r.time_us
            )
            for r in rows
        ]

    # aliases ------------------------------------------------------------------------------

    def aliases(self, artifact_ids: Collection[int]) -> dict[int, dict[str, int]]:
        if not artifact_ids:
            return {}
        rows = self.conn.execute(_ALIASES, {"ids": list(artifact_ids)})
        found: dict[int, dict[str, int]] = {}
        for artifact_id, alias, version in rows:
            found.setdefault(int(artifact_id), {})[alias] = int(version)
        return found

    def move_alias(
        self, artifact_id: int, alias: str, expected: int, version: int, time_us: int
    ) -> bool:
        t = schema.aliases
        where = (t.c.artifact_id == artifact_id, t.c.alias == alias, t.c.version == expected)
        if expected == 0:
            if version == 0:  # removing an absent alias: true only while it stays absent
                row = self.conn.execute(
                    sa.select(t.c.version).where(t.c.artifact_id == artifact_id, t.c.alias == alias)
                ).first()
                return row is None
            # a concurrent insert of the same alias raises IntegrityError: the write retries
            self.conn.execute(
                t.insert().values(
                    artifact_id=artifact_id, alias=alias, version=version, update_time_us=time_us
                )
            )
            return True
        if version == 0:
            return self.conn.execute(t.delete().where(*where)).rowcount == 1
        result = self.conn.execute(
            t.update().where(*where).values(version=version, update_time_us=time_us)
        )
        return result.rowcount == 1

    def insert_alias_event(self, row: AliasEventRow) -> None:
        self.conn.execute(
            schema.alias_events.insert().values(
                artifact_id=row.artifact_id,
                alias=row.alias,
                previous_version=row.previous_version,
                version=row.version,
                actor=row.actor,
                reason=row.reason,
                time_us=row.time_us,
            )
        )

    def alias_events(
        self, artifact_id: int, alias: str | None, until_us: int | None
    ) -> list[AliasEventRow]:
        t = schema.alias_events
        query = sa.select(t).where(t.c.artifact_id == artifact_id)
        if alias is not None:
            query = query.where(t.c.alias == alias)
        if until_us is not None:
            query = query.where(t.c.time_us <= until_us)
        rows = self.conn.execute(query.order_by(t.c.time_us, t.c.id))
        return [
            AliasEventRow(
                r.artifact_id, r.alias, r.previous_version, r.version, r.actor, r.reason, r.time_us
            )
            for r in rows
        ]

    # lineage ------------------------------------------------------------------------------

    def insert_edge(self, row: EdgeRow) -> bool:
        t = schema.edges
        exists = self.conn.execute(
            sa.select(t.c.id).where(
                t.c.upstream == row.upstream,
                t.c.downstream == row.downstream,
                t.c.relation == row.relation,
            )
        ).first()
        if exists is not None:
            return False
        # a concurrent insert of the same edge raises IntegrityError: the write retries
        self.conn.execute(
            t.insert().values(
                upstream=row.upstream,
                downstream=row.downstream,
                relation=row.relation,
                created_by=row.created_by,
                create_time_us=row.create_time_us,
            )
        )
        return True

    def edges(self, side: Side, keys: Iterable[str]) -> list[EdgeRow]:
        wanted = sorted(set(keys))
        if not wanted:
            return []
        t = schema.edges
        column = t.c.upstream if side == "upstream" else t.c.downstream
        rows = self.conn.execute(sa.select(t).where(column.in_(wanted)).order_by(t.c.id))
        return [_edge(r) for r in rows]

    # the audit outbox ---------------------------------------------------------------------

    def insert_outbox(self, event_id: str, envelope: bytes, created_at_us: int) -> None:
        self.conn.execute(
            schema.audit_outbox.insert().values(
                event_id=event_id, envelope=envelope, created_at_us=created_at_us
            )
        )

    def delete_outbox(self, event_ids: Collection[str]) -> None:
        if event_ids:
            t = schema.audit_outbox
            self.conn.execute(t.delete().where(t.c.event_id.in_(sorted(event_ids))))

    def outbox_before(self, created_before_us: int, limit: int) -> list[tuple[str, bytes]]:
        t = schema.audit_outbox
        rows = self.conn.execute(
            sa.select(t.c.event_id, t.c.envelope)
            .where(t.c.created_at_us < created_before_us)
            .order_by(t.c.created_at_us)
            .limit(limit)
        )
        return [(str(r.event_id), bytes(r.envelope)) for r in rows]
