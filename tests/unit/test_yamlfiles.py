"""The versioned-YAML loader shared by the feature registry and guardrail policies."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from llmops.errors import ResourceExhausted
from llmops.yamlfiles import HotReload, YamlFileError, load_yaml_files


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: int = 1
    size: int


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[Item] = []


class ThingError(YamlFileError):
    pass


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_loads_every_yaml_file_of_a_directory_in_order(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", "items: [{name: b, size: 2}]\n")
    write(tmp_path / "a.yml", "items: [{name: a, size: 1}]\n")
    write(tmp_path / "readme.md", "not yaml")
    loaded = load_yaml_files([tmp_path], Doc)
    assert [f.path.name for f in loaded.files] == ["a.yml", "b.yaml"]
    assert [f.spec.items[0].name for f in loaded.files] == ["a", "b"]
    assert loaded.sources == (str(tmp_path / "a.yml"), str(tmp_path / "b.yaml"))
    assert len(loaded.revision) == 12


def test_revision_changes_exactly_when_content_or_file_set_changes(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "items: []\n")
    first = load_yaml_files([tmp_path], Doc).revision
    assert load_yaml_files([tmp_path], Doc).revision == first
    write(path, "items: []  # a comment changes the bytes\n")
    second = load_yaml_files([tmp_path], Doc).revision
    assert second != first
    write(tmp_path / "b.yaml", "")
    assert load_yaml_files([tmp_path], Doc).revision not in (first, second)


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("items: [{name: a, size: x}]", "items[a].size", "valid integer"),
        ("items: [{name: a, version: 3, size: 1, colour: red}]", "items[a@3].colour", "Extra"),
        ("items: [{size: 1}]", "items[0].name", "Field required"),
        ("items: [a: [b\n", "", "not valid YAML"),
        ("- just\n- a list\n", "", "the top level must be a mapping"),
    ],
)
def test_errors_name_the_file_item_and_field(
    tmp_path: Path, text: str, field: str, problem: str
) -> None:
    path = write(tmp_path / "things.yaml", text)
    with pytest.raises(ThingError) as err:
        load_yaml_files([path], Doc, ThingError)
    expected = f"{path}: {field}" if field else str(path)
    assert err.value.message.startswith(expected + ":"), err.value.message
    assert problem in err.value.message


def test_a_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ThingError, match="no such file or directory"):
        load_yaml_files([tmp_path / "absent"], Doc, ThingError)


def _sizes(tmp_path: Path) -> Callable[[], tuple[int, str]]:
    """Loads the things under ``tmp_path``: (their total size, the files' revision)."""

    def load() -> tuple[int, str]:
        loaded = load_yaml_files([tmp_path], Doc, ThingError)
        return sum(i.size for f in loaded.files for i in f.spec.items), loaded.revision

    return load


def _reloader(tmp_path: Path) -> HotReload[tuple[int, str]]:
    return HotReload("things", _sizes(tmp_path), lambda compiled: compiled[1])


async def test_hot_reload_dry_run_reports_without_swapping(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "items: [{name: a, size: 1}]\n")
    holder = _reloader(tmp_path)
    before = holder.revision
    write(path, "items: [{name: a, size: 5}]\n")
    dry = await holder.reload(dry_run=True)
    assert not dry.applied
    assert dry.candidate[0] == 5 and dry.candidate_revision != before
    assert dry.revision == dry.previous_revision == before
    assert holder.current[0] == 1  # still the old one
    real = await holder.reload()
    assert real.applied and real.revision == real.candidate_revision != before
    assert holder.current[0] == 5
    again = await holder.reload()
    assert not again.applied  # nothing changed


async def test_hot_reload_keeps_what_is_in_force_when_the_files_break(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "items: [{name: a, size: 1}]\n")
    holder = _reloader(tmp_path)
    write(path, "items: [{name: a, size: many}]\n")
    with pytest.raises(ThingError, match=r"items\[a\]\.size"):
        await holder.reload()
    assert holder.current[0] == 1
    watch = holder.watch([tmp_path], 1.5)
    assert watch.name == "things_reload" and watch.interval_s == 1.5
    with pytest.raises(ThingError):
        await watch.on_change()


def test_a_bad_file_at_start_up_raises(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "items: 3\n")
    with pytest.raises(ThingError, match="items"):
        _reloader(tmp_path)


async def test_watch_sees_a_change_made_after_loading_and_before_the_task_starts(
    tmp_path: Path,
) -> None:
    import os

    from prometheus_client import CollectorRegistry

    from llmops.scheduler import Scheduler

    path = write(tmp_path / "a.yaml", "items: [{name: a, size: 1}]\n")

    load = _sizes(tmp_path)
    holder = HotReload("things", load, lambda c: c[1], watched=[tmp_path])
    watch = holder.watch([tmp_path], 0.02)
    write(path, "items: [{name: a, size: 7}]\n")  # the service is not serving yet
    os.utime(path, ns=(1, 1))
    scheduler = Scheduler("svc", CollectorRegistry())
    scheduler.start([watch])
    try:
        async with asyncio.timeout(5):
            while holder.current[0] != 7:  # noqa: ASYNC110  (nothing to wait on)
                await asyncio.sleep(0.01)
    finally:
        await scheduler.stop()
    outcome = await holder.reload(dry_run=True)
    assert outcome.previous is holder.current


class FakeEvents:
    """Records what a reload publishes; ``room`` events fit in its buffer."""

    def __init__(self, room: int) -> None:
        from llmops.events.port import ServiceEvents

        self.room = room
        self.published: list[Any] = []
        self.port = ServiceEvents("test.v1.Things", lambda: self)  # type: ignore[arg-type,return-value]

    def has_room(self, count: int) -> bool:
        return count <= self.room

    def publish(self, envelope: Any) -> None:
        self.published.append(envelope)

    async def publish_durable(self, envelopes: list[Any], timeout_s: float) -> None:
        from llmops.errors import ResourceExhausted

        if len(envelopes) > self.room:
            raise ResourceExhausted("full")
        self.published.extend(envelopes)


async def test_an_applied_reload_is_audited_and_refused_when_it_cannot_be(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "a.yaml", "items: [{name: a, size: 1}]\n")
    events = FakeEvents(room=1)

    load = _sizes(tmp_path)
    holder = HotReload("things", load, lambda c: c[1], audit=events.port, resource_type="thing")
    first = holder.revision
    write(path, "items: [{name: a, size: 2}]\n")
    await holder.reload(dry_run=True)
    assert events.published == []  # a dry run changes nothing, audits nothing
    outcome = await holder.reload()
    (record,) = [e.audit for e in events.published]
    assert (record.action, record.resource.type, record.resource.name) == (
        "thing.reload",
        "thing",
        "things",
    )
    assert record.actor.id == "system:things"  # outside an RPC: the file watch
    assert record.before["revision"] == first and record.after["revision"] == outcome.revision
    events.room = 0
    write(path, "items: [{name: a, size: 3}]\n")
    with pytest.raises(ResourceExhausted, match="audit record"):
        await holder.reload()
    assert holder.current[0] == 2  # not swapped: its record could not be published


async def test_the_record_is_in_the_log_before_the_swap_and_the_start_is_audited(
    tmp_path: Path,
) -> None:
    """The reload's record is published (durably) before the new configuration serves, and
    the revision the process started with is audited once it serves."""
    path = write(tmp_path / "a.yaml", "items: [{name: a, size: 1}]\n")
    events = FakeEvents(room=10)

    load = _sizes(tmp_path)
    holder = HotReload("things", load, lambda c: c[1], audit=events.port, resource_type="thing")
    started = holder.revision
    seen_at_publish: list[int] = []
    publish = events.publish_durable

    async def spy(envelopes: list[Any], timeout_s: float) -> None:
        seen_at_publish.append(holder.current[0])
        await publish(envelopes, timeout_s)

    events.publish_durable = spy  # type: ignore[method-assign]
    write(path, "items: [{name: a, size: 2}]\n")
    await holder.reload()
    assert seen_at_publish == [1]  # published while the old configuration still served
    assert holder.current[0] == 2
    (load_task,) = holder.load_audit()
    await load_task.run()
    record = events.published[-1].audit
    assert (record.action, record.actor.id) == ("thing.load", "system:things")
    assert record.after["revision"] == started  # the revision it started with
    no_audit = HotReload("things", load, lambda c: c[1])
    assert no_audit.load_audit() == []


async def test_a_reload_cancelled_while_its_record_waits_for_the_log_still_swaps(
    tmp_path: Path,
) -> None:
    """The record is accepted before the wait for the log: a caller whose deadline ends
    during that wait must not leave a trail that records a change never made."""
    path = write(tmp_path / "a.yaml", "items: [{name: a, size: 1}]\n")
    events = FakeEvents(room=10)
    waiting = asyncio.Event()

    async def slow_log(envelopes: list[Any], timeout_s: float) -> None:
        events.published.extend(envelopes)  # accepted
        waiting.set()
        await asyncio.sleep(60)  # the log is slow to make it durable

    events.publish_durable = slow_log  # type: ignore[method-assign]

    load = _sizes(tmp_path)
    holder = HotReload("things", load, lambda c: c[1], audit=events.port, resource_type="thing")
    write(path, "items: [{name: a, size: 5}]\n")
    reload = asyncio.create_task(holder.reload())
    await asyncio.wait_for(waiting.wait(), 5)
    reload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reload
    assert holder.current[0] == 5  # swapped, as its accepted record says
    assert [e.audit.action for e in events.published] == ["thing.reload"]
