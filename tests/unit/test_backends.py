"""Shared embedded backends: one owner per state directory, one lazy chdb session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmops.backends import Backends, StateDirLocked
from llmops.config import load_config


def _config(tmp_path: Path, mode: str = "embedded"):  # type: ignore[no-untyped-def]
    return load_config(environ={"LLMOPS__STATE_DIR": str(tmp_path), "LLMOPS__MODE": mode})


def test_state_dir_has_one_owner(tmp_path: Path) -> None:
    with (
        Backends(_config(tmp_path)),
        pytest.raises(StateDirLocked, match="in use by another llmops process"),
    ):
        Backends(_config(tmp_path)).open()
    with Backends(_config(tmp_path)):  # released on exit
        pass


def test_production_mode_claims_no_state_dir(tmp_path: Path) -> None:
    with Backends(_config(tmp_path, "production")), Backends(_config(tmp_path, "production")):
        assert not (tmp_path / "mesh.lock").exists()


CHDB_SCRIPT = """
import sys
from llmops.backends import Backends
from llmops.config import load_config

config = load_config(environ={"LLMOPS__STATE_DIR": sys.argv[1]})
with Backends(config) as backends:
    session = backends.chdb_session()
    assert backends.chdb_session() is session
    if sys.argv[2] == "write":
        session.query("CREATE TABLE t (id UInt64, s String) ENGINE = MergeTree ORDER BY id")
        session.query("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    print(str(session.query("SELECT sum(id) FROM t", "CSV")).strip())
"""


def test_chdb_session_is_shared_and_persistent(tmp_path: Path) -> None:
    # chdb allows one data path per process, so each use runs in a process of its own,
    # as each `llmops up` does; the second process sees what the first one wrote.
    for step in ("write", "read"):
        proc = subprocess.run(
            [sys.executable, "-c", CHDB_SCRIPT, str(tmp_path), step],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "3"
    assert (tmp_path / "chdb").is_dir()


def test_logs_without_an_embedded_mesh_say_where_they_looked(tmp_path: Path) -> None:
    from datetime import timedelta

    from llmops.errors import Unavailable
    from llmops.logs import fetch_recent

    config = load_config(environ={"LLMOPS__STATE_DIR": str(tmp_path / "state")})
    with pytest.raises(Unavailable, match=r"no embedded mesh data under .*state: run `llmops up`"):
        fetch_recent(config, "audit", timedelta(minutes=5), 10)
    assert not (tmp_path / "state").exists()  # nothing created on the way
