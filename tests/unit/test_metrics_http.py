"""A service's /metrics asks for a bearer token where the port is exposed (issue #15: with
``host: 0.0.0.0`` anyone on the network read them), and stays open on loopback by default."""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from llmops.security.tokens import TokenStore, add_token
from llmops.server.metrics_http import MetricsServer, is_loopback, needs_token


def _scrape(port: int, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@contextlib.contextmanager
def exposed(tokens: TokenStore) -> Iterator[int]:
    registry = CollectorRegistry()
    Counter("llmops_probe_total", "A probe.", registry=registry).inc()
    server = MetricsServer(registry, "0.0.0.0", 0, protect=True, tokens=tokens).start()
    try:
        yield server.port
    finally:
        server.shutdown()
        server.server_close()


def test_an_exposed_metrics_port_answers_monitoring_operator_and_auditor_tokens(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens.yaml"
    prometheus = add_token(path, "prometheus", ["monitoring"])
    auditor = add_token(path, "kim", ["auditor"])
    shop = add_token(path, "shop", ["storefront"])
    with exposed(TokenStore(path)) as port:
        _check_scrapes(port, prometheus, auditor, shop)


def _check_scrapes(exposed: int, prometheus: str, auditor: str, shop: str) -> None:
    status, body = _scrape(exposed)
    assert status == 401 and "bearer token" in body
    assert _scrape(exposed, "llmops_forged")[0] == 401
    status, body = _scrape(exposed, shop)
    assert status == 403 and shop not in body
    for token in (prometheus, auditor):
        status, body = _scrape(exposed, token)
        assert status == 200 and "llmops_probe_total 1.0" in body


def test_no_tokens_file_lets_nobody_scrape_an_exposed_port() -> None:
    server = MetricsServer(CollectorRegistry(), "0.0.0.0", 0, protect=True, tokens=None).start()
    try:
        status, body = _scrape(server.port, "anything")
        assert status == 401 and "tokens_file" in body
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("mode", "host", "secure", "expected"),
    [
        ("auto", "127.0.0.1", True, False),
        ("auto", "::1", True, False),
        ("auto", "localhost", True, False),
        ("auto", "0.0.0.0", True, True),
        ("auto", "10.1.2.3", True, True),
        ("auto", "metrics.internal", True, True),  # a name may resolve anywhere
        ("always", "127.0.0.1", True, True),
        ("never", "0.0.0.0", True, False),
        ("auto", "0.0.0.0", False, False),  # security.insecure: no tokens to check
    ],
)
def test_when_a_token_is_needed(mode: str, host: str, secure: bool, expected: bool) -> None:
    assert needs_token(mode, host, secure) is expected
    assert is_loopback("127.0.0.2") and not is_loopback("0.0.0.0")
