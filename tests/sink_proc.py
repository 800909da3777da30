"""A sink in a process of its own, for the crash tests (``python -m tests.sink_proc``).

    python -m tests.sink_proc EVENTS_DIR CHDB_DIR TOPIC run [--hang-after-insert N]
    python -m tests.sink_proc EVENTS_DIR CHDB_DIR TOPIC catch-up

``run`` consumes until killed, printing ``inserted <n>`` after each insert and ``committed``
after each commit; with ``--hang-after-insert N`` it stops dead after the N-th insert, before
its commit (so a SIGKILL then lands between insert and commit). ``catch-up`` consumes until
the group has no lag, then prints the counts as JSON and exits.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from chdb import session as chdb_session

from llmops.clickhouse.chdb_store import ChdbStore
from llmops.clickhouse.migrations import apply_migrations
from llmops.events.local_log import LocalLog
from llmops.sink.runner import build_sinks


class Announcing:
    def __init__(self, inner: ChdbStore, hang_after: int | None) -> None:
        self.inner = inner
        self.hang_after = hang_after
        self.inserts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def insert(self, table: str, columns: Any, *, dedup_token: str | None = None) -> int:
        return self._announce(self.inner.insert(table, columns, dedup_token=dedup_token))

    def insert_protobuf(self, table: str, block: Any, *, dedup_token: str | None = None) -> int:
        return self._announce(self.inner.insert_protobuf(table, block, dedup_token=dedup_token))

    def _announce(self, rows: int) -> int:
        self.inserts += 1
        print(f"inserted {rows}", flush=True)
        if self.hang_after is not None and self.inserts >= self.hang_after:
            time.sleep(3600)  # wait here for the SIGKILL
        return rows


def main(argv: list[str]) -> int:
    events_dir, chdb_dir, topic, mode = argv[:4]
    hang_after = int(argv[5]) if len(argv) > 5 and argv[4] == "--hang-after-insert" else None
    store = ChdbStore(chdb_session.Session(chdb_dir))
    apply_migrations(store)
    event_log = LocalLog(events_dir)
    announcing = Announcing(store, hang_after)
    (sink,) = build_sinks(
        event_log, announcing, topic_kinds={topic: "prediction"}, batch_rows=2000,
        flush_interval_s=0.2,
    )  # fmt: skip
    stop = threading.Event()
    consumer = event_log.consumer(sink.settings.group, [topic])
    sink._consumer = consumer
    tps = [(topic, p) for p in range(event_log.existing_partitions(topic))]
    while not stop.is_set():
        before = sink.committed_batches
        sink.step()
        if sink.committed_batches > before:
            print("committed", flush=True)
        if mode == "catch-up":
            ends = consumer.end_offsets(tps)
            if all((consumer.committed(tp) or 0) >= ends[tp] for tp in tps):
                break
    row = store.query("SELECT count() AS n, uniqExact(request_id) AS u FROM predictions")[0]
    rollup = store.query("SELECT sum(requests) AS r FROM predictions_1m")[0]
    print(json.dumps({"raw": int(row["n"]), "distinct": int(row["u"]),
                      "rollup": int(rollup["r"] or 0)}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
