"""Redis stopped (SIGSTOP) and then killed under load: no acknowledged event lost, none
counted twice, every call answered in time with a precise status, and recovery without a
restart of the mesh.

The feedback service keeps its idempotency keys in Redis here (``feedback.keys: redis``, the
production default), a Redis of this test's own (``deploy/local/redis.sh`` on a free port
and a data dir under the test's tmp dir: the session's shared Redis is never stopped). Four
callers submit feedback as a storefront does: each key until it is acknowledged, retrying
the same key after an error. While they run, Redis is frozen with SIGSTOP for 3 s, then
later killed with SIGKILL and restarted 2 s after on the same data (AOF). Afterwards every
acknowledged key must be in ClickHouse (``llmops logs feedback``), and the feedback
statistics — which count the newest record per key — must count each key once: a retry
whose first attempt did reach the log while Redis could not record its key is a second raw
row (the idempotency module says why), never a second count.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from llmops.v1 import common_pb2
from tests.fault_support import FeedbackCallers, assert_every_key_landed_once
from tests.infra import REPO_ROOT
from tests.support import free_ports, llmops_up

pytestmark = [pytest.mark.infra, pytest.mark.timeout(600)]

DEADLINE_S = 3.0
CTX = common_pb2.RequestContext(tenant="redis-fault", market="gb")
REDIS_SH = REPO_ROOT / "deploy" / "local" / "redis.sh"
OK_DURING_FAULT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class Redis:
    """A Redis of this test's own, started and stopped by the project's script."""

    def __init__(self, base: Path) -> None:
        (port,) = free_ports(1)
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.env = {**os.environ, "LLMOPS_LOCAL_DIR": str(base), "LLMOPS_REDIS_PORT": str(port)}
        self.pid_file = base / "redis" / "run" / "redis.pid"

    def script(self, action: str) -> None:
        done = subprocess.run(
            ["bash", str(REDIS_SH), action], env=self.env, capture_output=True, text=True,
            timeout=90, check=False,
        )  # fmt: skip
        if done.returncode == 2:
            pytest.skip(f"redis-server is not installed: {done.stdout}{done.stderr}")
        assert done.returncode == 0, f"redis.sh {action}: {done.stdout}{done.stderr}"

    def signal(self, sig: int) -> None:
        os.kill(int(self.pid_file.read_text().strip()), sig)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(tmp_path / "local")
    server.script("start")
    try:
        yield server
    finally:
        with contextlib.suppress(OSError, ValueError):  # not stopped, or already gone
            server.signal(signal.SIGCONT)
        server.script("stop")


def test_redis_stopped_then_killed_loses_nothing_and_counts_each_key_once(
    tmp_path: Path, redis: Redis
) -> None:
    env = {"LLMOPS__FEEDBACK__KEYS": "redis", "LLMOPS__BACKENDS__REDIS__URL": redis.url}
    (tmp_path / "mesh").mkdir()
    with (
        llmops_up(tmp_path / "mesh", extra_env=env) as mesh,
        FeedbackCallers(mesh, CTX, "redis", deadline_s=DEADLINE_S) as callers,
    ):
        callers.wait_for(100, 60)

        redis.signal(signal.SIGSTOP)  # frozen: connections open, nothing answers
        frozen_at = len(callers.acked)
        time.sleep(3)
        redis.signal(signal.SIGCONT)
        during_stop = len(callers.acked) - frozen_at
        callers.wait_for(len(callers.acked) + 100, 60)

        redis.signal(signal.SIGKILL)  # gone: connections reset, new ones refused
        time.sleep(2)
        redis.script("start")  # the same data dir: the AOF brings the keys back
        callers.wait_for(len(callers.acked) + 100, 60)

    acked = dict(callers.acked)
    errors = dict(callers.errors)
    print(f"acknowledged {len(acked)}; {during_stop} while Redis was frozen; errors {errors}; "
          f"slowest failed call {callers.slowest_failure_s:.2f} s")  # fmt: skip
    assert errors, "the faults were not seen: the test did not test anything"
    assert set(errors) <= {c.name for c in OK_DURING_FAULT}, errors
    # Never hung: a failed call ended by its deadline (plus scheduling slack).
    assert callers.slowest_failure_s < DEADLINE_S + 1.0

    with llmops_up(tmp_path / "mesh", extra_env=env) as again:
        assert_every_key_landed_once(again, callers)
