"""Secret files: owner-only from creation, created once, never half-written."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llmops.secret_files import create_secret_file
from services.guardrail.service import hmac_key


def test_created_owner_only_and_kept(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        path = tmp_path / "state" / "key"
        assert create_secret_file(path, b"first") == b"first"
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert create_secret_file(path, b"second") == b"first"  # an existing secret is kept
    assert [p.name for p in path.parent.iterdir()] == ["key"]  # no temporary file left


def test_concurrent_creators_agree_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "key"
    with ThreadPoolExecutor(8) as pool:
        got = set(pool.map(lambda i: create_secret_file(path, f"s{i}".encode()), range(32)))
    assert len(got) == 1 and got == {path.read_bytes()}


def test_the_guardrail_hmac_key_is_made_once_owner_only(tmp_path: Path) -> None:
    key = hmac_key("", tmp_path)
    assert len(key) == 64 and hmac_key("", tmp_path) == key
    assert stat.S_IMODE((tmp_path / "guardrail.key").stat().st_mode) == 0o600
    assert hmac_key("configured", tmp_path) == b"configured"
