"""``/metrics`` of one service (its admin port), behind a bearer token where it is exposed.

Prometheus' own ``start_http_server`` answers anyone who can reach the port; with
``host: 0.0.0.0`` that is the whole network (issue #15). This server answers a scrape only
with a bearer token of the ``monitoring``, ``operator`` or ``auditor`` role
(``llmops token create prometheus --role monitoring``; Prometheus sends it with
``authorization: {credentials_file: ...}`` in its scrape config) when
``security.metrics_auth`` says so: ``auto`` (the default) asks for one whenever the port is
bound beyond loopback, ``always`` on loopback too, ``never`` not at all. A mesh run with
``security.insecure`` has no tokens and asks for none.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from llmops.security.tokens import TokenStore, bearer_token

METRICS_READER_ROLES = frozenset({"monitoring", "operator", "auditor"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def needs_token(mode: str, host: str, secure: bool) -> bool:
    """Whether a scrape of a port bound to ``host`` must carry a token
    (``security.metrics_auth`` = ``mode``); never when the mesh runs insecure."""
    if not secure or mode == "never":
        return False
    return mode == "always" or not is_loopback(host)


def token_refusal(tokens: TokenStore | None, header: str, roles: frozenset[str]) -> tuple[int, str]:
    """(0, "") when the ``Authorization`` header carries a valid token of one of ``roles``;
    else the HTTP status (401, 403) and why. Never repeats the token. ``tokens`` None (no
    tokens file configured): nobody is let in."""
    if tokens is None:
        return 401, "no bearer token can be checked: security.tokens_file is not set"
    token = bearer_token(header)
    entry = tokens.lookup(token) if token is not None else None
    if entry is None:
        return 401, "a valid bearer token is required"
    if not roles & set(entry.roles):
        return 403, f"token:{entry.id} has none of the roles {', '.join(sorted(roles))}"
    return 0, ""


class MetricsServer:
    """``/metrics`` of ``registry`` on ``host:port`` in a thread; with ``protect`` only for
    a token of :data:`METRICS_READER_ROLES` found in ``tokens``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        protect: bool,
        tokens: TokenStore | None,
    ) -> None:
        self._http = ThreadingHTTPServer((host, port), _handler(registry, protect, tokens))
        self._http.daemon_threads = True
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="llmops-metrics", daemon=True
        )
        self.port = int(self._http.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def shutdown(self) -> None:
        self._http.shutdown()

    def server_close(self) -> None:
        self._http.server_close()


class TokenGuardedHandler(BaseHTTPRequestHandler):
    """The base of the mesh's small HTTP endpoints (this one, the embedded logs endpoint):
    JSON replies, a bearer-token check, ``/metrics``, and no log line per request."""

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(body)

    def _admitted(self, tokens: TokenStore | None, roles: frozenset[str]) -> bool:
        """Whether the request's token has one of ``roles``; else the refusal is sent."""
        status, why = token_refusal(tokens, self.headers.get("Authorization", ""), roles)
        if status:
            self._reply(status, json.dumps({"error": why}).encode(), "application/json")
            return False
        return True

    def _metrics(
        self, registry: CollectorRegistry, protect: bool, tokens: TokenStore | None
    ) -> None:
        if protect and not self._admitted(tokens, METRICS_READER_ROLES):
            return
        self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # not worth a line per scrape


def _handler(
    registry: CollectorRegistry, protect: bool, tokens: TokenStore | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(TokenGuardedHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self._reply(404, b'{"error": "not found"}', "application/json")
                return
            self._metrics(registry, protect, tokens)

    return Handler
