"""The backends a process shares between its services.

In embedded mode (``llmops up``) all seven services run in one process and share one
:class:`Backends`: one chdb session (chdb allows one per data directory and process), one
local state directory. In production mode each service process builds its own, pointed at the
network servers of the config. Resources open lazily on first use, once, and close on exit.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from llmops.config import MeshConfig, Mode
from llmops.errors import FailedPrecondition


class StateDirLocked(FailedPrecondition):
    """Another embedded mesh already owns this state directory."""


class Backends:
    """Lazily opened shared resources; use as a context manager to guarantee closing."""

    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir.resolve()
        self._lock_file: IO[str] | None = None
        self._chdb: Any = None
        self._guard = threading.Lock()

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

    def close(self) -> None:
        with self._guard:
            if self._chdb is not None:
                self._chdb.close()
                self._chdb = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
