"""Label queue items on SQL: SQLite (embedded) and PostgreSQL (production), one code path.

One table, ``label_items``, keyed by (queue, item_id) and unique on (queue, request_id) — a
prediction is queued once per queue whatever rules pick it — plus ``label_watermarks``, how
far each rule has scanned. An item is ``pending``, ``leased`` (until ``lease_expires``:
then pending again for the next lease) or ``done``.

Leasing is one ``WITH chosen AS (SELECT ... FOR UPDATE SKIP LOCKED) UPDATE ... FROM chosen``:
on PostgreSQL concurrent annotators never get the same item and never wait for each other; on
SQLite (one writer) the writes are serialised on one thread. SQLAlchemy Core, on a thread
pool: the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

T = TypeVar("T")

METADATA = sa.MetaData()
ITEMS = sa.Table(
    "label_items",
    METADATA,
    sa.Column("queue", sa.String(64), primary_key=True),
    sa.Column("item_id", sa.String(40), primary_key=True),
    sa.Column("request_id", sa.String(256), nullable=False),
    sa.Column("tenant", sa.String(128), nullable=False, default=""),
    sa.Column("task", sa.String(128), nullable=False, default=""),
    sa.Column("route", sa.String(128), nullable=False, default=""),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("payload", sa.Text, nullable=False, default="{}"),
    sa.Column("state", sa.String(8), nullable=False, default="pending"),
    sa.Column("enqueued_at", sa.Float, nullable=False),
    sa.Column("lease_token", sa.String(40), nullable=False, default=""),
    sa.Column("lease_expires", sa.Float, nullable=False, default=0.0),
    sa.Column("annotator", sa.String(128), nullable=False, default=""),
    sa.Column("completed_at", sa.Float, nullable=False, default=0.0),
    sa.Column("event_id", sa.String(40), nullable=False, default=""),
    sa.UniqueConstraint("queue", "request_id", name="uq_label_items_request"),
    sa.Index("ix_label_items_next", "queue", "state", "enqueued_at"),
)
WATERMARKS = sa.Table(
    "label_watermarks",
    METADATA,
    sa.Column("queue", sa.String(64), primary_key=True),
    sa.Column("rule", sa.String(64), primary_key=True),
    sa.Column("scanned_until", sa.Float, nullable=False),
)


@dataclass(frozen=True, slots=True)
class NewItem:
    request_id: str
    tenant: str
    task: str
    route: str
    reason: str
    payload: dict[str, Any]
    """``{"inputs": {name: json}, "output": text}`` when the prediction logged payloads."""


@dataclass(frozen=True, slots=True)
class ItemRow:
    queue: str
    item_id: str
    request_id: str
    tenant: str
    task: str
    route: str
    reason: str
    payload: dict[str, Any]
    state: str
    enqueued_at: float
    lease_token: str
    lease_expires: float
    annotator: str


@dataclass(frozen=True, slots=True)
class QueueCounts:
    pending: int
    completed: int
    oldest_pending: float | None


def _row(r: Any) -> ItemRow:
    return ItemRow(
        queue=r.queue,
        item_id=r.item_id,
        request_id=r.request_id,
        tenant=r.tenant,
        task=r.task,
        route=r.route,
        reason=r.reason,
        payload=json.loads(r.payload or "{}"),
        state=r.state,
        enqueued_at=r.enqueued_at,
        lease_token=r.lease_token,
        lease_expires=r.lease_expires,
        annotator=r.annotator,
    )


def _pending(now: float) -> Any:
    """Pending, or leased with the lease run out."""
    return sa.or_(
        ITEMS.c.state == "pending",
        sa.and_(ITEMS.c.state == "leased", ITEMS.c.lease_expires < now),
    )


class SqlLabelStore:
    """The items of every label queue; ``url`` is a SQLAlchemy URL (``sqlite:///path`` or
    ``postgresql+psycopg://...``)."""

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        self.url = url
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            path = url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = sa.create_engine(url, connect_args={"timeout": 30})
            event.listen(self.engine, "connect", _sqlite_pragmas)
            workers = 1  # one writer: transactions never fight over SQLite's lock
        else:
            self.engine = sa.create_engine(url, pool_size=pool_size, pool_pre_ping=True)
            workers = pool_size
        METADATA.create_all(self.engine)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="label-store")

    async def _run(self, work: Callable[[Connection], T]) -> T:
        def tx() -> T:
            with self.engine.begin() as conn:
                return work(conn)

        return await asyncio.get_running_loop().run_in_executor(self._pool, tx)

    async def enqueue(
        self, queue: str, items: Sequence[NewItem], new_id: Callable[[], str], max_pending: int
    ) -> int:
        """Add the items not queued yet, up to ``max_pending`` pending; how many were added."""

        def work(conn: Connection) -> int:
            pending = conn.execute(
                sa.select(sa.func.count())
                .select_from(ITEMS)
                .where(ITEMS.c.queue == queue, ITEMS.c.state != "done")
            ).scalar_one()
            room = max(0, max_pending - int(pending))
            wanted = {i.request_id: i for i in items}
            if not wanted or room == 0:
                return 0
            known = set(
                conn.execute(
                    sa.select(ITEMS.c.request_id).where(
                        ITEMS.c.queue == queue, ITEMS.c.request_id.in_(list(wanted))
                    )
                ).scalars()
            )
            now = time.time()
            rows = [
                {
                    "queue": queue,
                    "item_id": new_id(),
                    "request_id": i.request_id,
                    "tenant": i.tenant,
                    "task": i.task,
                    "route": i.route,
                    "reason": i.reason,
                    "payload": json.dumps(i.payload, ensure_ascii=False),
                    "state": "pending",
                    "enqueued_at": now,
                    "lease_token": "",
                    "lease_expires": 0.0,
                    "annotator": "",
                    "completed_at": 0.0,
                    "event_id": "",
                }
                for rid, i in wanted.items()
                if rid not in known
            ][:room]
            if rows:
                conn.execute(ITEMS.insert(), rows)
            return len(rows)

        return await self._run(work)

    async def lease(
        self, queue: str, count: int, lease_s: float, annotator: str, token: str
    ) -> list[ItemRow]:
        def work(conn: Connection) -> list[ItemRow]:
            now = time.time()
            chosen = (
                sa.select(ITEMS.c.item_id)
                .where(ITEMS.c.queue == queue, _pending(now))
                .order_by(ITEMS.c.enqueued_at, ITEMS.c.item_id)
                .limit(count)
                .with_for_update(skip_locked=True)
            )
            where: sa.ColumnElement[bool]
            if self.sqlite:
                ids = list(conn.execute(chosen).scalars())  # one writer: no lock to skip
                where = ITEMS.c.item_id.in_(ids)
            else:
                # a CTE runs once: a subquery with LIMIT in the WHERE may be rescanned by
                # PostgreSQL's plan and lease more than ``count`` items
                where = ITEMS.c.item_id == chosen.cte("chosen").c.item_id
            result = conn.execute(
                ITEMS.update()
                .where(ITEMS.c.queue == queue, where, _pending(now))
                .values(
                    state="leased",
                    lease_token=token,
                    lease_expires=now + lease_s,
                    annotator=annotator,
                )
                .returning(*ITEMS.c)
            )
            return sorted((_row(r) for r in result), key=lambda r: (r.enqueued_at, r.item_id))

        return await self._run(work)

    async def get(self, queue: str, item_id: str) -> ItemRow | None:
        def work(conn: Connection) -> ItemRow | None:
            r = conn.execute(
                sa.select(ITEMS).where(ITEMS.c.queue == queue, ITEMS.c.item_id == item_id)
            ).first()
            return None if r is None else _row(r)

        return await self._run(work)

    async def complete(self, queue: str, item_id: str, token: str, event_id: str) -> bool:
        """Mark a leased item done if ``token`` still holds its lease (even one run out that
        nobody took since); whether it did."""

        def work(conn: Connection) -> bool:
            result = conn.execute(
                ITEMS.update()
                .where(
                    ITEMS.c.queue == queue,
                    ITEMS.c.item_id == item_id,
                    ITEMS.c.state == "leased",
                    ITEMS.c.lease_token == token,
                )
                .values(state="done", completed_at=time.time(), event_id=event_id)
            )
            return result.rowcount == 1

        return await self._run(work)

    async def counts(self) -> dict[str, QueueCounts]:
        def work(conn: Connection) -> dict[str, QueueCounts]:
            done = ITEMS.c.state == "done"
            rows = conn.execute(
                sa.select(
                    ITEMS.c.queue,
                    sa.func.sum(sa.case((done, 0), else_=1)),
                    sa.func.sum(sa.case((done, 1), else_=0)),
                    sa.func.min(sa.case((done, None), else_=ITEMS.c.enqueued_at)),
                ).group_by(ITEMS.c.queue)
            )
            return {
                q: QueueCounts(int(p or 0), int(c or 0), None if o is None else float(o))
                for q, p, c, o in rows
            }

        return await self._run(work)

    async def watermark(self, queue: str, rule: str) -> float | None:
        def work(conn: Connection) -> float | None:
            value = conn.execute(
                sa.select(WATERMARKS.c.scanned_until).where(
                    WATERMARKS.c.queue == queue, WATERMARKS.c.rule == rule
                )
            ).scalar_one_or_none()
            return None if value is None else float(value)

        return await self._run(work)

    async def set_watermark(self, queue: str, rule: str, until: float) -> None:
        def work(conn: Connection) -> None:
            updated = conn.execute(
                WATERMARKS.update()
                .where(WATERMARKS.c.queue == queue, WATERMARKS.c.rule == rule)
                .values(scanned_until=until)
            )
            if updated.rowcount == 0:
                conn.execute(
                    WATERMARKS.insert().values(queue=queue, rule=rule, scanned_until=until)
                )

        await self._run(work)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()
