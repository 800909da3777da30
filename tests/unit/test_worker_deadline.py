"""Work handed to a worker thread carries the RPC's context and does not start once the
RPC's deadline has passed (llmops.callcontext.for_worker): the guardrail pool and the
registry's database threads."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from llmops.callcontext import deadline_var, for_worker, remaining_time, request_id_var
from llmops.errors import DeadlineExceeded
from services.governance.store_sql import SqlRegistryStore


async def test_work_sees_the_calls_context_and_is_skipped_past_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    request_id_var.set("req-1")
    deadline_var.set(time.monotonic() + 5)
    seen = await loop.run_in_executor(
        None, for_worker(lambda: (request_id_var.get(), remaining_time()))
    )
    assert seen[0] == "req-1" and seen[1] is not None and 0 < seen[1] <= 5
    ran: list[int] = []
    deadline_var.set(time.monotonic() - 0.001)
    with pytest.raises(DeadlineExceeded):
        await loop.run_in_executor(None, for_worker(lambda: ran.append(1)))
    assert not ran
    deadline_var.set(None)  # no deadline: always runs
    await loop.run_in_executor(None, for_worker(lambda: ran.append(1)))
    assert ran == [1]


async def test_a_registry_write_queued_past_its_deadline_is_never_applied(tmp_path: Path) -> None:
    store = SqlRegistryStore.sqlite(tmp_path / "registry.db")  # one writer thread
    await store.open()
    release = threading.Event()
    applied: list[str] = []
    try:
        busy = asyncio.create_task(store.write(lambda tx: release.wait(5)))
        await asyncio.sleep(0.05)  # the writer thread is taken
        deadline_var.set(time.monotonic() + 0.1)
        late = asyncio.create_task(store.write(lambda tx: applied.append("late")))
        await asyncio.sleep(0.3)  # its deadline passes while it waits for the writer
        release.set()
        await busy
        with pytest.raises(DeadlineExceeded):
            await late
        assert applied == []
        deadline_var.set(time.monotonic() + 5)
        await store.write(lambda tx: applied.append("in time"))
        assert applied == ["in time"]
    finally:
        release.set()
        deadline_var.set(None)
        await store.close()
