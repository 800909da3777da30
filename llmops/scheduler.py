"""Periodic and background tasks of a service, run by the runtime (never a bare loop).

A service declares its tasks in its :class:`~llmops.server.context.ServiceDefinition`:

- :class:`Periodic` — ``run()`` every ``interval_s`` seconds (0 disables it);
- :class:`Background` — ``run()`` once, after the server is SERVING (e.g. seeding demo data);
- :class:`Watch` — ``on_change()`` when any file under ``paths`` changes (mtime, size, added,
  removed), polled every ``interval_s`` seconds (0 disables it).

The :class:`Scheduler` starts them on the service's event loop once it serves, and on stop
cancels *and awaits* every one of them. A failing run is logged and counted
(``llmops_task_runs_total{task,outcome}``) and the task keeps its schedule; a failure with the
same message as the previous one is logged at debug level only, so a broken file does not
flood the log every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmops.errors import LLMOpsError

log = structlog.get_logger("llmops.scheduler")

Job = Callable[[], Awaitable[None]]
YAML_SUFFIXES = (".yaml", ".yml")


FileStamp = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class Periodic:
    """``run()`` every ``interval_s`` seconds, the first time one interval after start."""

    name: str
    interval_s: float
    run: Job


@dataclass(frozen=True, slots=True)
class Background:
    """``run()`` once, after the service serves."""

    name: str
    run: Job


@dataclass(frozen=True, slots=True)
class Watch:
    """``on_change()`` when a file under ``paths`` changes (directories: their files with one
    of ``suffixes``, not recursed)."""

    name: str
    paths: Sequence[Path]
    interval_s: float
    on_change: Job
    suffixes: tuple[str, ...] = YAML_SUFFIXES
    baseline: FileStamp | None = None
    """The files as they were when the service loaded them (taken *before* loading); a
    change after that and before the task starts is then still seen. None: the files as
    they are when the task starts."""


Task = Periodic | Background | Watch


def file_stamp(paths: Iterable[Path], suffixes: tuple[str, ...] = YAML_SUFFIXES) -> FileStamp:
    """(path, mtime_ns, size) of every watched file; a missing path simply has no entry."""
    out: list[tuple[str, int, int]] = []
    for p in paths:
        try:
            files = sorted(f for f in p.iterdir() if f.suffix in suffixes) if p.is_dir() else [p]
        except OSError:
            continue
        for f in files:
            with contextlib.suppress(OSError):
                st = f.stat()
                out.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(out)


class TaskMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "llmops_task_runs_total",
            "Runs of the service's periodic, background and watch tasks, by outcome.",
            ("task", "outcome"),
            registry=registry,
        )
        self.seconds = Histogram(
            "llmops_task_run_seconds",
            "Duration of one task run.",
            ("task",),
            registry=registry,
        )
        self.last_success = Gauge(
            "llmops_task_last_success_unixtime",
            "When each task last ran without error (Unix time).",
            ("task",),
            registry=registry,
        )


class Scheduler:
    """Runs one service's tasks; ``start`` on its loop, ``stop`` cancels and awaits them."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self.service = service
        self.metrics = TaskMetrics(registry)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._last_error: dict[str, str] = {}

    @property
    def running(self) -> list[str]:
        return sorted(n for n, t in self._tasks.items() if not t.done())

    def start(self, tasks: Iterable[Task]) -> None:
        loop = asyncio.get_running_loop()
        for task in tasks:
            if task.name in self._tasks:
                raise ValueError(f"{self.service}: two tasks are named {task.name!r}")
            body = self._body(task)
            if body is not None:
                self._tasks[task.name] = loop.create_task(body, name=f"{self.service}:{task.name}")

    async def stop(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run_once(self, name: str, job: Job) -> bool:
        """Run ``job`` as task ``name`` with logging and metrics; True when it succeeded."""
        started = time.perf_counter()
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.metrics.runs.labels(name, "error").inc()
            message = exc.message if isinstance(exc, LLMOpsError) else repr(exc)
            repeated = self._last_error.get(name) == message
            self._last_error[name] = message
            emit = log.debug if repeated else log.error
            emit("task_failed", service=self.service, task=name, error=message)
            return False
        else:
            self.metrics.runs.labels(name, "ok").inc()
            self.metrics.last_success.labels(name).set(time.time())
            if self._last_error.pop(name, None) is not None:
                log.info("task_recovered", service=self.service, task=name)
            return True
        finally:
            self.metrics.seconds.labels(name).observe(time.perf_counter() - started)

    def _body(self, task: Task) -> Coroutine[Any, Any, None] | None:
        if isinstance(task, Background):
            return self._once(task)
        if task.interval_s <= 0:
            return None
        if isinstance(task, Periodic):
            return self._every(task)
        return self._watch(task)

    async def _once(self, task: Background) -> None:
        await self.run_once(task.name, task.run)

    async def _every(self, task: Periodic) -> None:
        while True:
            await asyncio.sleep(task.interval_s)
            await self.run_once(task.name, task.run)

    async def _watch(self, task: Watch) -> None:
        last = task.baseline
        if last is None:
            last = await asyncio.to_thread(file_stamp, task.paths, task.suffixes)
        while True:
            await asyncio.sleep(task.interval_s)
            now = await asyncio.to_thread(file_stamp, task.paths, task.suffixes)
            if now != last:
                last = now
                await self.run_once(task.name, task.on_change)
