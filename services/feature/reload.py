"""Hot reload of the registry: on request (ReloadRegistry) and by polling the files.

A reload validates the new files completely before swapping; on an error the registry in
force stays and the error is returned (RPC: INVALID_ARGUMENT naming file, object and
field; poller: logged once per distinct error).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

import structlog

from services.feature.domain import RegistryHolder
from services.feature.registry import Registry, RegistryError, load_registry, registry_files

log = structlog.get_logger("llmops.feature.registry")


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    registry: Registry
    previous_revision: str
    revision: str
    changed_views: list[str]


def _changed(old: Registry, new: Registry) -> list[str]:
    names = set(old.views) | set(new.views)
    return sorted(
        n
        for n in names
        if (old.views[n].revision if n in old.views else None)
        != (new.views[n].revision if n in new.views else None)
    )


class RegistryReloader:
    def __init__(self, holder: RegistryHolder, paths: list[Path], interval_s: float) -> None:
        self.holder = holder
        self.paths = paths
        self.interval_s = interval_s
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stamp = self._file_stamp()
        self._last_error = ""

    def _file_stamp(self) -> tuple[tuple[str, int, int], ...]:
        try:
            files = registry_files(self.paths)
        except RegistryError:
            return ()
        out = []
        for f in files:
            with contextlib.suppress(OSError):
                st = f.stat()
                out.append((str(f), st.st_mtime_ns, st.st_size))
        return tuple(out)

    async def reload(self, *, dry_run: bool = False) -> ReloadOutcome:
        async with self._lock:
            new = await asyncio.to_thread(load_registry, self.paths)
            old = self.holder.registry
            changed = _changed(old, new)
            if dry_run:
                return ReloadOutcome(new, old.revision, old.revision, changed)
            if new.revision != old.revision:
                self.holder.swap(new)
                log.info(
                    "registry_reloaded",
                    previous=old.revision,
                    revision=new.revision,
                    changed_views=changed,
                )
            return ReloadOutcome(new, old.revision, new.revision, changed)

    def start(self) -> None:
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            stamp = await asyncio.to_thread(self._file_stamp)
            if stamp == self._stamp:
                continue
            self._stamp = stamp
            try:
                await self.reload()
                self._last_error = ""
            except RegistryError as exc:
                if exc.message != self._last_error:
                    self._last_error = exc.message
                    log.error(
                        "registry_reload_failed",
                        error=exc.message,
                        kept=self.holder.registry.revision,
                    )
