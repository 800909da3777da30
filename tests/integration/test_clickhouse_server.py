"""ServerStore against the real Debian ClickHouse 18.16 server (deploy/local/clickhouse.sh):
inserts, queries, and riding out a server restart with retries."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from llmops.clickhouse import ClickHouseUnavailable
from llmops.clickhouse.server_store import ServerStore, with_database
from tests.infra import REPO_ROOT

pytestmark = pytest.mark.infra

DB = "it_clickhouse_server"


@pytest.fixture()
def store(clickhouse_dsn: str) -> Iterator[ServerStore]:
    s = ServerStore(
        with_database(clickhouse_dsn, DB), backoff_s=0.2, max_backoff_s=1.0, attempts=30
    )
    s.execute("DROP TABLE IF EXISTS t")
    s.execute(
        "CREATE TABLE t (at DateTime, route LowCardinality(String), n UInt64, "
        "stages Array(String)) ENGINE = MergeTree ORDER BY (route, at)"
    )
    yield s
    s.execute(f"DROP DATABASE IF EXISTS {DB}")
    s.close()


def _cols(n: int, start: int = 0) -> dict[str, object]:
    return {
        "at": (1_790_000_000 + np.arange(start, start + n)).astype("datetime64[s]"),
        "route": ["r1", "r2"] * (n // 2),
        "n": np.arange(start, start + n, dtype=np.uint64),
        "stages": [["model", "log"]] * n,
    }


def test_version_and_dedup_capability(store: ServerStore) -> None:
    assert store.server_version() == (18, 16)
    assert store.dedup_tokens is False  # 18.16 predates insert_deduplication_token


def test_bulk_numpy_insert_and_aggregate(store: ServerStore) -> None:
    assert store.insert("t", _cols(200_000), dedup_token="ignored-on-18.16") == 200_000
    rows = store.query(
        "SELECT route, count() AS c, sum(n) AS s FROM t GROUP BY route ORDER BY route"
    )
    assert rows == [
        {"route": "r1", "c": 100_000, "s": sum(range(0, 200_000, 2))},
        {"route": "r2", "c": 100_000, "s": sum(range(1, 200_000, 2))},
    ]


def test_dead_port_raises_unavailable_after_backoff() -> None:
    sleeps: list[float] = []
    dead = ServerStore(
        "clickhouse://default@127.0.0.1:1/x",
        attempts=4,
        backoff_s=0.05,
        sleep=sleeps.append,
        connect_timeout_s=0.5,
    )
    with pytest.raises(ClickHouseUnavailable):
        dead.query("SELECT 1")
    assert len(sleeps) == 3 and sleeps[2] > sleeps[0]


def _script(command: str) -> None:
    subprocess.run(
        ["bash", str(REPO_ROOT / "deploy/local/clickhouse.sh"), command],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_server_restart_mid_way_is_ridden_out(store: ServerStore) -> None:
    """Stop the server between two inserts; the second waits (retrying connects) until the
    server is back, and every row is there exactly once."""
    assert store.insert("t", _cols(1000)) == 1000
    _script("stop")
    restarter = threading.Thread(target=lambda: (time.sleep(2.0), _script("start")))
    restarter.start()
    try:
        t0 = time.monotonic()
        assert store.insert("t", _cols(1000, start=1000)) == 1000
        waited = time.monotonic() - t0
    finally:
        restarter.join()
    assert waited > 1.5  # it really waited for the restart
    assert store.query("SELECT count() AS c, uniqExact(n) AS u FROM t") == [{"c": 2000, "u": 2000}]


def _kill_server() -> None:
    """SIGKILL the server, as an OOM kill or a node loss would: no clean shutdown."""
    import os
    import signal
    from pathlib import Path

    from tests.infra import probe_clickhouse

    local = Path(os.environ.get("LLMOPS_LOCAL_DIR") or REPO_ROOT / ".llmops" / "local")
    pid = int((local / "clickhouse" / "run" / "clickhouse-server.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while probe_clickhouse():
        assert time.monotonic() < deadline, "the server survived SIGKILL"
        time.sleep(0.1)


def test_server_killed_under_concurrent_inserts_loses_no_acknowledged_batch(
    store: ServerStore,
) -> None:
    """kill -9 of the server while four threads insert through one store (it is shared by the
    sinks), restarted 2 s later. Each batch of 1,000 rows is stored whole or not at all; an
    acknowledged batch is there exactly once; a batch whose send failed is retried by its
    caller (as a sink retries), and only a batch whose outcome was unknown (sent, then the
    connection died) can end up twice — on this 18.16 server, which has no insert
    deduplication token; a modern server drops that copy by the token the sinks send."""
    batches, threads = 40, 4
    acked: list[int] = []
    acked_at: list[float] = []
    unknown: list[int] = []
    failed: list[int] = []
    lock = threading.Lock()

    def insert(batch: int) -> None:
        try:
            store.insert("t", _cols(1000, start=batch * 1000))
        except ClickHouseUnavailable as exc:
            with lock:
                (unknown if "outcome unknown" in str(exc) else failed).append(batch)
            return
        with lock:
            acked.append(batch)
            acked_at.append(time.monotonic())

    def worker(first: int) -> None:
        for batch in range(first, batches * threads, threads):
            insert(batch)
            time.sleep(0.02)  # a steady stream: the kill lands between and inside inserts

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    _kill_server()
    killed_at = time.monotonic()
    time.sleep(2.0)
    _script("start")
    for w in workers:
        w.join(120)
    rode_out = sum(at > killed_at + 2.0 for at in acked_at)
    assert rode_out >= threads  # every thread was mid-stream: it waited for the restart
    assert not any(w.is_alive() for w in workers)
    for batch in unknown + failed:  # the caller retries what was not acknowledged
        insert(batch)

    rows = store.query(
        "SELECT intDiv(n, 1000) AS batch, count() AS c, uniqExact(n) AS u FROM t GROUP BY batch"
    )
    copies = {int(r["batch"]): int(r["c"]) // 1000 for r in rows}
    assert all(int(r["u"]) == 1000 and int(r["c"]) % 1000 == 0 for r in rows), rows  # whole
    assert set(copies) == set(range(batches * threads))  # nothing lost
    assert all(copies[b] == 1 for b in acked)  # acknowledged: exactly once
    twice = sorted(b for b, n in copies.items() if n > 1)
    assert set(twice) <= set(unknown), (twice, unknown)
    print(f"\nkill -9: {len(acked)} batches acknowledged ({rode_out} after the restart), "
          f"{len(failed)} refused before sending, "
          f"{len(unknown)} outcome unknown (retried; {len(twice)} stored twice)")  # fmt: skip
