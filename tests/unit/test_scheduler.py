"""The runtime's scheduler: periodic, background and file-watch tasks of a service."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from llmops import scheduler as scheduler_module
from llmops.errors import InvalidArgument
from llmops.scheduler import Background, Periodic, Scheduler, Watch, file_stamp


def runs(registry: CollectorRegistry, task: str, outcome: str) -> float:
    value = registry.get_sample_value("llmops_task_runs_total", {"task": task, "outcome": outcome})
    return value or 0.0


async def wait_for(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    """Poll ``predicate`` (the scheduler's effects have no event to wait on)."""
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_periodic_task_runs_on_schedule_and_stop_awaits_it() -> None:
    registry = CollectorRegistry()
    scheduler = Scheduler("svc", registry)
    calls: list[int] = []
    cancelled = asyncio.Event()

    async def tick() -> None:
        calls.append(1)
        try:
            await asyncio.sleep(0)  # a run in progress when stop() comes
        except asyncio.CancelledError:
            cancelled.set()
            raise

    scheduler.start([Periodic("tick", 0.02, tick)])
    assert scheduler.running == ["tick"]
    await wait_for(lambda: len(calls) >= 3)
    await scheduler.stop()
    assert scheduler.running == []
    settled = len(calls)
    await asyncio.sleep(0.08)
    assert len(calls) == settled  # nothing runs after stop() returned
    # a run that stop() cancelled midway is not counted as a success
    assert settled - 1 <= runs(registry, "tick", "ok") <= settled


class RecordingLog:
    """Stands in for the scheduler's logger (structlog's capture depends on the global
    configuration other tests set)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def emit(event: str, **fields: Any) -> None:
            self.events.append({"event": event, "log_level": level, **fields})

        return emit


async def test_failures_are_counted_logged_once_and_the_schedule_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logs = RecordingLog()
    monkeypatch.setattr(scheduler_module, "log", logs)
    registry = CollectorRegistry()
    scheduler = Scheduler("svc", registry)
    attempts: list[int] = []

    async def flaky() -> None:
        attempts.append(1)
        if len(attempts) <= 3:
            raise InvalidArgument("file.yaml: x", "broken")

    scheduler.start([Periodic("flaky", 0.01, flaky)])
    await wait_for(lambda: runs(registry, "flaky", "ok") >= 1)
    await scheduler.stop()
    assert runs(registry, "flaky", "error") == 3
    failed = [e for e in logs.events if e["event"] == "task_failed"]
    assert [e["log_level"] for e in failed] == ["error", "debug", "debug"]  # same message once
    assert failed[0]["error"] == "file.yaml: x: broken"
    assert any(e["event"] == "task_recovered" for e in logs.events)
    assert registry.get_sample_value("llmops_task_last_success_unixtime", {"task": "flaky"})


async def test_background_task_runs_once_and_an_interval_of_zero_disables() -> None:
    registry = CollectorRegistry()
    scheduler = Scheduler("svc", registry)
    once: list[int] = []
    never: list[int] = []

    async def seed() -> None:
        once.append(1)

    async def disabled() -> None:
        never.append(1)

    scheduler.start(
        [
            Background("seed", seed),
            Periodic("off", 0, disabled),
            Watch("off_watch", [Path("/nonexistent")], 0, disabled),
        ]
    )
    await wait_for(lambda: once == [1])
    assert scheduler.running == []
    await scheduler.stop()
    assert never == []


async def test_duplicate_task_names_are_refused() -> None:
    scheduler = Scheduler("svc", CollectorRegistry())

    async def job() -> None:
        return None

    with pytest.raises(ValueError, match="two tasks are named 'a'"):
        scheduler.start([Periodic("a", 1, job), Background("a", job)])
    await scheduler.stop()


async def test_watch_reacts_to_changed_added_and_removed_files(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    scheduler = Scheduler("svc", registry)
    (tmp_path / "a.yaml").write_text("a: 1\n")
    (tmp_path / "notes.txt").write_text("ignored\n")
    changes: list[int] = []

    async def on_change() -> None:
        changes.append(1)

    scheduler.start([Watch("files", [tmp_path], 0.02, on_change)])
    await asyncio.sleep(0.1)
    assert changes == []  # the first stamp is the baseline, not a change
    (tmp_path / "notes.txt").write_text("still ignored\n")
    await asyncio.sleep(0.1)
    assert changes == []
    path = tmp_path / "a.yaml"
    path.write_text("a: 2\n")
    os.utime(path, ns=(1, 1))  # a new mtime even on a coarse clock
    await wait_for(lambda: len(changes) == 1)
    (tmp_path / "b.yml").write_text("b: 1\n")
    await wait_for(lambda: len(changes) == 2)
    (tmp_path / "b.yml").unlink()
    await wait_for(lambda: len(changes) == 3)
    await scheduler.stop()
    assert runs(registry, "files", "ok") == 3


def test_file_stamp_lists_files_of_directories_and_skips_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("x")
    single = tmp_path / "single.conf"
    single.write_text("y")
    stamp = file_stamp([tmp_path, single, tmp_path / "gone"])
    assert [Path(p).name for p, _, _ in stamp] == ["x.yaml", "single.conf"]
