"""``llmops logs``: where to read recent predictions from, and the window syntax."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any

from llmops.backends import Backends, StateDirLocked
from llmops.config import MeshConfig, Mode
from llmops.errors import PermissionDenied, Unavailable
from llmops.security import client_security

_WINDOW = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(text: str) -> timedelta:
    """``30s``, ``5m``, ``2h``, ``1d`` → a timedelta."""
    match = _WINDOW.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a window like 30s, 5m, 2h or 1d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def fetch_recent(
    config: MeshConfig, kind: str, window: timedelta, limit: int
) -> list[dict[str, Any]]:
    """Newest events of ``kind`` (predictions, exposures, guardrail, audit, feedback): from
    the running embedded mesh's endpoint when it holds the chdb directory, else straight
    from the configured store. In production mode the sinks' endpoint (``llmops sink``,
    sink.admin_port) answers first where one runs on the configured host: it reads the store
    the sinks write, which on one machine is the sink process's own chdb
    (deploy/local/production.yaml)."""
    from llmops.observability import recent_rows

    if config.mode is Mode.PRODUCTION and _listening(
        _endpoint_host(config), config.sink.admin_port
    ):
        return _from_running_mesh(config, kind, window, limit)
    if config.mode is Mode.EMBEDDED and not (config.state_dir / "chdb").is_dir():
        # nothing to read, and opening the store would create an empty one here
        raise Unavailable(
            f"no embedded mesh data under {config.state_dir.resolve()}: run `llmops up` from "
            "this directory first, or point LLMOPS__STATE_DIR (or --config) at the state_dir "
            "of the running mesh"
        )
    try:
        with Backends(config) as backends:
            return recent_rows(backends.clickhouse(), kind, window.total_seconds(), limit)
    except StateDirLocked:
        if config.mode is not Mode.EMBEDDED:
            raise
    return _from_running_mesh(config, kind, window, limit)


def _endpoint_host(config: MeshConfig) -> str:
    host = config.sink.host
    if host in ("", "0.0.0.0", "::"):
        host = config.services[next(iter(config.services))].host
    return host


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _from_running_mesh(
    config: MeshConfig, kind: str, window: timedelta, limit: int
) -> list[dict[str, Any]]:
    host = _endpoint_host(config)
    url = (
        f"http://{host}:{config.sink.admin_port}/v1/logs/{kind}"
        f"?last_s={window.total_seconds()}&limit={limit}"
    )
    request = urllib.request.Request(url)
    security = client_security(config, as_operator=True)
    if security is not None and security.token:
        request.add_header("Authorization", f"Bearer {security.token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            rows: list[dict[str, Any]] = json.loads(reply.read())["rows"]
            return rows
    except urllib.error.HTTPError as exc:
        raise PermissionDenied(
            f"the logs endpoint {url} refused this caller ({exc.code}): the logs need the "
            "token of an operator or auditor (LLMOPS_TOKEN or security.token_file)"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise Unavailable(
            f"the running mesh holds {config.state_dir} but its logs endpoint {url} did not "
            f"answer ({exc}); is sink.embedded off?"
        ) from None
