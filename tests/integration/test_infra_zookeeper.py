"""ZooKeeper started by deploy/local/zookeeper.sh, as the coordination service of the local
ClickHouse server's Replicated tables: the script's contract, and a replica that drops a block
identical to one it stored (what makes a resent insert safe on 18.16)."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from clickhouse_driver import Client

from tests.infra import DEPLOY_LOCAL, REPO_ROOT, probe_zookeeper

pytestmark = pytest.mark.infra


def _zookeeper(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEPLOY_LOCAL / "zookeeper.sh"), command],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_script_is_idempotent_and_reports_a_serving_server(zookeeper: str) -> None:
    assert _zookeeper("check").returncode == 0
    again = _zookeeper("start")
    assert again.returncode == 0 and "already running" in again.stderr
    status = _zookeeper("status")
    assert status.returncode == 0 and zookeeper in status.stdout
    assert probe_zookeeper()


def test_a_replica_drops_a_block_it_already_stored(clickhouse_dsn: str, zookeeper: str) -> None:
    client = Client.from_url(clickhouse_dsn)
    db = f"test_zk_{uuid.uuid4().hex[:12]}"
    client.execute(f"CREATE DATABASE {db}")
    try:
        client.execute(
            f"CREATE TABLE {db}.events (n UInt64, route String) ENGINE = ReplicatedMergeTree("
            f"'/clickhouse/tables/{{shard}}/{db}/events', '{{replica}}') ORDER BY n"
        )
        rows = [(n, f"r{n % 3}") for n in range(1000)]
        for _ in range(3):  # a batch resent after an unknown outcome: the same block
            client.execute(f"INSERT INTO {db}.events (n, route) VALUES", rows)
        client.execute(f"INSERT INTO {db}.events (n, route) VALUES", rows[:999])  # another block
        assert client.execute(f"SELECT count() FROM {db}.events") == [(1999,)]
        replicas = client.execute(
            "SELECT is_readonly, zookeeper_path FROM system.replicas "
            "WHERE database = %(db)s AND table = 'events'",
            {"db": db},
        )
        assert replicas == [(0, f"/clickhouse/tables/01/{db}/events")]  # macros from config
    finally:
        client.execute(f"DROP TABLE IF EXISTS {db}.events")
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.disconnect()
