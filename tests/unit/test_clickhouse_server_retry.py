"""ServerStore's retry policy, with the driver's client replaced by a scripted fake."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from clickhouse_driver import errors

from llmops.clickhouse import ClickHouseQueryError, ClickHouseUnavailable
from llmops.clickhouse.server_store import ServerStore


class _Info:
    version_major, version_minor, timezone = 24, 8, "UTC"


class _Connection:
    def __init__(self, refuse: int) -> None:
        self.refuse = refuse
        self.connected = False
        self.server_info = _Info()

    def ping(self) -> bool:
        return True

    def connect(self) -> None:
        if self.refuse:
            self.refuse -= 1
            raise errors.NetworkError("Connection refused")
        self.connected = True


class FakeClient:
    def __init__(self, outcomes: list[Any], refuse: int = 0) -> None:
        self.connection = _Connection(refuse)
        self.outcomes = outcomes
        self.calls: list[dict[str, Any]] = []

    def execute(self, sql: str, *args: Any, **kw: Any) -> Any:
        self.calls.append({"sql": sql, **kw})
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def disconnect(self) -> None:
        self.connection.connected = False


def _store(client: FakeClient, attempts: int = 4) -> tuple[ServerStore, list[float]]:
    sleeps: list[float] = []
    store = ServerStore(
        "clickhouse://default@127.0.0.1:1/db",
        attempts=attempts,
        backoff_s=0.1,
        max_backoff_s=0.3,
        sleep=sleeps.append,
    )
    store._local.clients = (client, client)
    store._database_ready = True
    return store, sleeps


def test_connect_failures_are_retried_with_exponential_backoff() -> None:
    client = FakeClient([([(1,)], [("x", "UInt8")])], refuse=3)
    store, sleeps = _store(client)
    assert store.query("SELECT 1 AS x") == [{"x": 1}]
    assert len(sleeps) == 3
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2 and 0.15 <= sleeps[2] <= 0.3


def test_exhausted_attempts_raise_unavailable() -> None:
    store, sleeps = _store(FakeClient([], refuse=10), attempts=3)
    with pytest.raises(ClickHouseUnavailable, match="after 3 attempts"):
        store.query("SELECT 1")
    assert len(sleeps) == 2


def test_transient_server_errors_are_retried_but_not_permanent_ones() -> None:
    too_many_parts = errors.ServerException("Too many parts", code=252)
    client = FakeClient([too_many_parts, ([(2,)], [("x", "UInt8")])])
    store, _ = _store(client)
    assert store.query("SELECT 2 AS x") == [{"x": 2}]
    client = FakeClient([errors.ServerException("Unknown identifier", code=47)])
    store, sleeps = _store(client)
    with pytest.raises(ClickHouseQueryError) as err:
        store.query("SELECT nope")
    assert err.value.ch_code == 47 and sleeps == []


def _engine(name: str) -> tuple[list[tuple[str]], list[tuple[str, str]]]:
    """The answer to the store's system.tables question about the table's engine."""
    return [(name,)], [("engine", "String")]


def test_insert_with_unknown_outcome_is_retried_only_with_a_token() -> None:
    cols = {"a": np.arange(3, dtype=np.uint8)}
    broken = errors.NetworkError("connection reset mid-insert")
    client = FakeClient([broken, 3])
    store, _ = _store(client)
    assert store.insert("t", cols, dedup_token="batch-7") == 3
    expected = {
        "insert_deduplication_token": "batch-7",
        "deduplicate_blocks_in_dependent_materialized_views": 1,
    }
    assert [c["settings"] for c in client.calls] == [expected] * 2
    client = FakeClient([_engine("MergeTree"), broken, 3])
    store, _ = _store(client)
    with pytest.raises(ClickHouseUnavailable, match="outcome unknown"):
        store.insert("t", cols)
    assert len(client.calls) == 2  # the engine question, then the one insert


def test_an_insert_into_a_replicated_table_is_retried_without_a_token() -> None:
    """Replicas drop a block identical to one they stored (any server version): resending
    the very same block is safe. The engine is asked once per table."""
    cols = {"a": np.arange(3, dtype=np.uint8)}
    broken = errors.NetworkError("connection reset mid-insert")
    client = FakeClient([_engine("ReplicatedMergeTree"), broken, 3, 3])
    client.connection.server_info.version_major = 18
    store, _ = _store(client)
    assert store.insert("t", cols) == 3
    assert store.insert("t", cols) == 3
    assert [c["sql"].split()[0] for c in client.calls] == ["SELECT", "INSERT", "INSERT", "INSERT"]
    assert all(c["settings"] == {} for c in client.calls[1:])  # 18.16: no token


def test_old_servers_get_no_token() -> None:
    client = FakeClient([_engine("MergeTree"), broken := errors.NetworkError("reset"), 3])
    client.connection.server_info.version_major = 18
    store, _ = _store(client)
    assert not store.dedup_tokens
    with pytest.raises(ClickHouseUnavailable):
        store.insert("t", {"a": np.arange(3, dtype=np.uint8)}, dedup_token="x")
    assert client.calls[1]["settings"] == {} and broken is not None


def test_a_query_inside_an_rpc_carries_the_callers_deadline() -> None:
    import time

    from llmops.callcontext import deadline_var

    client = FakeClient([([(1,)], [("x", "UInt8")]), ([(1,)], [("x", "UInt8")])])
    store, _ = _store(client)
    store.query("SELECT 1 AS x")
    assert client.calls[-1]["settings"] == {}  # outside an RPC: no bound
    token = deadline_var.set(time.monotonic() + 2.4)
    try:
        store.query("SELECT 1 AS x")
    finally:
        deadline_var.reset(token)
    assert client.calls[-1]["settings"] == {"max_execution_time": 3}


def test_each_thread_gets_clients_of_its_own() -> None:
    import threading

    store = ServerStore("clickhouse://default@127.0.0.1:1/db")
    mine = store._clients()
    theirs: list[Any] = []
    worker = threading.Thread(target=lambda: theirs.append(store._clients()))
    worker.start()
    worker.join()
    assert store._clients() is mine  # the same thread keeps its clients
    assert theirs[0][0] is not mine[0] and theirs[0][1] is not mine[1]
    store.close()  # disconnects every thread's clients
    assert store._all_clients == []


def test_an_unknown_insert_status_is_left_to_the_caller_even_for_a_replicated_table() -> None:
    """UNKNOWN_STATUS_OF_INSERT: the replica lost ZooKeeper mid-commit; 18.16 can keep the
    part without its block id, so a resend is not safe even into a Replicated table."""
    unknown = errors.ServerException("Unknown status, client must retry", code=319)
    client = FakeClient([_engine("ReplicatedMergeTree"), unknown, 3])
    store, sleeps = _store(client)
    with pytest.raises(ClickHouseUnavailable, match="outcome unknown"):
        store.insert("t", {"a": np.arange(3, dtype=np.uint8)})
    assert len(client.calls) == 2 and sleeps == []  # the engine question, the one insert
