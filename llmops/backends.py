"""The backends a process shares between its services.

In embedded mode (``llmops up``) all seven services run in one process and share one
:class:`Backends`: one chdb session (chdb allows one per data directory and process), one
local event log and one event publisher, under one state directory. In production mode each
service process builds its own, pointed at the servers of the config (Kafka, a ClickHouse
server). Resources open lazily on first use, once, and close on exit (the publisher is
flushed first, so accepted events reach the log).
"""

from __future__ import annotations

import fcntl
import importlib
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import structlog

from llmops.config import MeshConfig, Mode
from llmops.errors import FailedPrecondition, LLMOpsError

if TYPE_CHECKING:
    from llmops.clickhouse.base import ClickHouseStore
    from llmops.events.base import EventLog
    from llmops.events.publisher import EventPublisher
    from llmops.events.spill import SpillLog

log = structlog.get_logger("llmops.backends")


class StateDirLocked(FailedPrecondition):
    """Another embedded mesh already owns this state directory."""


class Backends:
    """Lazily opened shared resources; use as a context manager to guarantee closing."""

    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir.resolve()
        self._lock_file: IO[str] | None = None
        self._chdb: Any = None
        self._event_log: EventLog | None = None
        self._store: ClickHouseStore | None = None
        self._publisher: EventPublisher | None = None
        self._guard = threading.RLock()

    @property
    def mode(self) -> Mode:
        return self.config.mode

    def __enter__(self) -> Backends:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Claim the state directory (embedded mode): one mesh per directory, as chdb needs."""
        if self.mode is not Mode.EMBEDDED:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock = (self.state_dir / "mesh.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise StateDirLocked(
                f"state_dir {self.state_dir} is in use by another llmops process "
                "(stop it, or set LLMOPS__STATE_DIR to another directory)"
            ) from None
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock_file = lock

    def chdb_session(self) -> Any:
        """The process's chdb session on ``<state_dir>/chdb``, opened on first use."""
        with self._guard:
            if self._chdb is None:
                # Deferred: loading the engine costs ~0.5 s. chdb ships no type hints.
                session: Any = importlib.import_module("chdb.session")

                path = Path(self.state_dir, "chdb")
                path.mkdir(parents=True, exist_ok=True)
                self._chdb = session.Session(str(path))
            return self._chdb

    def event_log(self) -> EventLog:
        """The process's event log: the local log under ``<state_dir>/events`` or Kafka."""
        with self._guard:
            if self._event_log is None:
                if self.config.events_backend == "local":
                    from llmops.events.local_log import LocalLog

                    self._event_log = LocalLog(self.state_dir / "events")
                else:
                    from llmops.events.kafka_log import KafkaLog

                    # Connects lazily, on the first send: never blocks start-up.
                    kafka = self.config.backends.kafka
                    self._event_log = KafkaLog(
                        kafka.bootstrap_servers,
                        consumer_client=kafka.client,
                        producer_client=kafka.client,
                    )
            return self._event_log

    def clickhouse(self) -> ClickHouseStore:
        """The process's ClickHouse store: the shared chdb session, or the server's DSN."""
        with self._guard:
            if self._store is None:
                from llmops.clickhouse import open_store

                backend = self.config.clickhouse_backend
                self._store = open_store(
                    backend,
                    dsn=self.config.backends.clickhouse.dsn,
                    chdb_session=self.chdb_session() if backend == "chdb" else None,
                )
            return self._store

    def publisher(self) -> EventPublisher:
        """The process's one event publisher (a sender thread; flushed on close)."""
        with self._guard:
            if self._publisher is None:
                from llmops.events.publisher import EventPublisher

                settings = self.config.events
                self._publisher = EventPublisher(
                    self.event_log(),
                    capacity=settings.buffer_capacity,
                    max_batch=settings.max_batch,
                    linger_s=settings.linger_ms / 1000,
                    send_timeout_s=settings.send_timeout_s,
                    producer=f"llmops/{os.getpid()}",
                    # where events go while Kafka refuses them, and what an earlier process
                    # spilled: the publisher replays it into the log
                    overflow=self._spill(),
                    spill_on_overload=settings.spill_on_overload,
                    spill_at=settings.spill_at,
                    spill_after_s=settings.spill_after_s,
                ).start()
            return self._publisher

    def _spill(self) -> SpillLog | None:
        """Where events go that the log refuses under load or at shutdown:
        ``state_dir/spill`` when the event log is Kafka (the local log already is on this
        disk)."""
        if self.config.events_backend == "local":
            return None
        from llmops.events.spill import SpillLog

        return SpillLog(self.state_dir / "spill")

    def flush_events(self) -> None:
        """Deliver the publisher's buffered events to the log (bounded by the config)."""
        with self._guard:
            publisher = self._publisher
        if publisher is not None:
            publisher.flush(self.config.events.flush_timeout_s)

    def close(self) -> None:
        with self._guard:
            if self._publisher is not None:
                publisher, self._publisher = self._publisher, None
                try:
                    publisher.close(self.config.events.flush_timeout_s, spill=self._spill())
                except LLMOpsError as exc:  # undelivered events: say so loudly, keep closing
                    log.error("events_undelivered_at_shutdown", error=exc.message)
            if self._event_log is not None:
                self._event_log.close()
                self._event_log = None
            if self._store is not None:
                self._store.close()
                self._store = None
            if self._chdb is not None:
                self._chdb.close()
                self._chdb = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
