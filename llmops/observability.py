"""The observability side of a process: migrations, sinks and the logs/metrics endpoint.

In embedded mode (``llmops up``) the mesh runs its own sinks, in-process, from the local event
log into the shared chdb session, so calls show up in ClickHouse queries within seconds. As
chdb allows one process per data directory, other processes (``llmops logs``) read through
this process's HTTP endpoint::

    GET /metrics                                   sink and publisher metrics (Prometheus)
    GET /v1/logs/<kind>?last_s=300&limit=20   newest predictions (exposures, guardrail,
                                              audit, feedback), JSON

``llmops sink`` (production) runs the same sinks against Kafka and a ClickHouse server and
serves the same endpoint on ``sink.admin_port``.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import structlog
from prometheus_client import CollectorRegistry

from llmops.backends import Backends
from llmops.clickhouse import queries
from llmops.clickhouse.base import ClickHouseStore
from llmops.config import MeshConfig
from llmops.events.base import EventLog
from llmops.security import provision, security_dir
from llmops.security.tokens import TokenStore
from llmops.server.metrics_http import TokenGuardedHandler, needs_token
from llmops.sink.runner import SinkThreads, build_sinks

log = structlog.get_logger("llmops.observability")

LOGS_PREFIX = "/v1/logs/"
LOG_KINDS = ("predictions", *queries.RECENT_EVENTS)
MAX_LIMIT = queries.MAX_RECENT_ROWS


def recent_rows(
    store: ClickHouseStore, kind: str, last_s: float, limit: int
) -> list[dict[str, Any]]:
    """Newest events of ``kind`` (one of :data:`LOG_KINDS`) of the last ``last_s`` seconds,
    as JSON-ready dicts."""
    if not 0 < limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1..{MAX_LIMIT} (got {limit})")
    since = datetime.now(UTC) - timedelta(seconds=last_s)
    if kind == "predictions":
        rows = queries.recent_predictions(store, since, limit)
    else:
        rows = queries.recent_events(store, kind, since, limit)
    return [{k: _jsonable(v) for k, v in row.items()} for row in rows]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


class ObservabilityServer:
    """``/metrics`` and ``/v1/logs/<kind>`` on a loopback HTTP port, in a thread."""

    def __init__(
        self,
        store: ClickHouseStore,
        registry: CollectorRegistry,
        host: str,
        port: int,
        tokens: TokenStore | None = None,
        *,
        protect_metrics: bool = False,
    ) -> None:
        """``tokens``: when set, ``/v1/logs`` answers only a bearer token of the operator or
        auditor role (the rows can hold what shoppers wrote); None: the mesh runs insecure.
        ``protect_metrics``: ``/metrics`` too asks for a token (of the monitoring, operator or
        auditor role: :mod:`llmops.server.metrics_http`)."""
        handler = _handler(store, registry, tokens, protect_metrics)
        self._http = ThreadingHTTPServer((host, port), handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="llmops-observability", daemon=True
        )
        self.address = f"{host}:{self._http.server_address[1]}"

    def start(self) -> ObservabilityServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()


LOG_READER_ROLES = frozenset({"operator", "auditor"})


def _handler(
    store: ClickHouseStore,
    registry: CollectorRegistry,
    tokens: TokenStore | None,
    protect_metrics: bool,
) -> type[BaseHTTPRequestHandler]:
    class Handler(TokenGuardedHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/metrics":
                self._metrics(registry, protect_metrics, tokens)
            elif url.path.startswith(LOGS_PREFIX) and url.path[len(LOGS_PREFIX) :] in LOG_KINDS:
                if tokens is not None and not self._admitted(tokens, LOG_READER_ROLES):
                    return
                self._logs(url.path[len(LOGS_PREFIX) :], parse_qs(url.query))
            else:
                self._reply(404, b'{"error": "not found"}', "application/json")

        def _logs(self, kind: str, query: dict[str, list[str]]) -> None:
            try:
                last_s = float(query.get("last_s", ["300"])[0])
                limit = int(query.get("limit", ["20"])[0])
                if last_s <= 0 or not 0 < limit <= MAX_LIMIT:
                    raise ValueError(f"last_s must be positive and limit 1..{MAX_LIMIT}")
            except ValueError as exc:
                self._reply(400, json.dumps({"error": str(exc)}).encode(), "application/json")
                return
            rows = recent_rows(store, kind, last_s, limit)
            self._reply(200, json.dumps({"rows": rows}).encode(), "application/json")

    return Handler


class Observability:
    """Sinks plus the HTTP endpoint, started and stopped together."""

    def __init__(
        self,
        event_log: EventLog,
        store: ClickHouseStore,
        *,
        host: str,
        port: int,
        batch_rows: int,
        flush_interval_s: float,
        registry: CollectorRegistry | None = None,
        topics: list[str] | None = None,
        tokens: TokenStore | None = None,
        protect_metrics: bool = False,
        rows_from: str = "protobuf",
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.sinks = SinkThreads(
            build_sinks(
                event_log,
                store,
                topics=topics,
                batch_rows=batch_rows,
                flush_interval_s=flush_interval_s,
                registry=self.registry,
                rows_from=rows_from,
            )
        )
        self.server = (
            ObservabilityServer(
                store, self.registry, host, port, tokens, protect_metrics=protect_metrics
            )
            if port
            else None
        )

    @classmethod
    def from_config(
        cls,
        config: MeshConfig,
        backends: Backends,
        topics: list[str] | None = None,
        tokens: TokenStore | None = None,
    ) -> Observability:
        """Sinks over the process's event log and store, the endpoint on sink.admin_port
        (its logs behind the mesh's bearer tokens unless ``security.insecure``). ``tokens``:
        the store the process's servers already hold (else one is opened here)."""
        if tokens is None and not config.security.insecure:
            # No tokens file configured (production without one): nobody reads the logs.
            path = provision(config).tokens or security_dir(config) / "tokens.yaml"
            tokens = TokenStore(path)
        host = config.sink.host or config.services[next(iter(config.services))].host
        return cls(
            backends.event_log(),
            backends.clickhouse(),
            host=host,
            port=config.sink.admin_port,
            batch_rows=config.sink.batch_rows,
            flush_interval_s=config.sink.flush_interval_s,
            rows_from=config.sink.rows_from,
            topics=topics,
            tokens=tokens,
            protect_metrics=needs_token(
                config.security.metrics_auth, host, secure=not config.security.insecure
            ),
        )

    def start(self) -> Observability:
        self.sinks.start()
        if self.server is not None:
            self.server.start()
            log.info("observability_started", address=self.server.address,
                     sinks=[s.settings.group for s in self.sinks.sinks])  # fmt: skip
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.sinks.stop()
