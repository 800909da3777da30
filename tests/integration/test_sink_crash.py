"""A sink process killed with SIGKILL between an insert and its commit, then restarted:
the counts users read (raw rows and rollups) are exact."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmops.events.local_log import LocalLog
from llmops.events.publisher import EventPublisher
from llmops.events.synthetic import prediction_envelope

TOPIC = "test.crash.predictions"
TOTAL = 20_000

pytestmark = pytest.mark.timeout(240)


def _sink(tmp: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.sink_proc", str(tmp / "events"), str(tmp / "chdb"),
         TOPIC, *args],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def test_sigkill_between_insert_and_commit_then_restart_counts_exact(tmp_path: Path) -> None:
    event_log = LocalLog(tmp_path / "events", partitions={TOPIC: 3}, fsync=False)
    event_log.create_topic(TOPIC, 3)
    rng = random.Random(9)
    with EventPublisher(event_log, topics={"prediction": TOPIC}, max_batch=5000).start() as pub:
        for i in range(TOTAL):
            pub.publish(prediction_envelope(rng, event_time_ns=time.time_ns() - i * 1000))
        assert pub.flush(60)
    event_log.close()

    victim = _sink(tmp_path, "run", "--hang-after-insert", "3")
    assert victim.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while sum(line.startswith("inserted") for line in lines) < 3:
        assert time.monotonic() < deadline, lines
        line = victim.stdout.readline()
        assert line, f"sink exited early: {lines}"
        lines.append(line.strip())
    os.killpg(victim.pid, signal.SIGKILL)  # the 3rd batch is in ClickHouse, not committed
    victim.wait(10)
    assert lines.count("committed") == 2

    survivor = _sink(tmp_path, "catch-up")
    out, _ = survivor.communicate(timeout=180)
    assert survivor.returncode == 0, out
    counts = json.loads(out.strip().splitlines()[-1])
    assert counts == {"raw": TOTAL, "distinct": TOTAL, "rollup": TOTAL}
