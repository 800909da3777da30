"""The per-RPC access log: one JSON line per call, written off the request path.

The lines look like every other structlog line (``event``, ``level``, ``timestamp`` in ISO
UTC, then ``method``, ``code``, ``latency_ms``, ``request_id``, ``peer``), but the request
path only appends a tuple to a buffer; a writer thread renders them with orjson and writes
each batch with one call. Done through structlog on the event loop, the line cost ~7 µs of
processors, rendering and a write per RPC — the largest part of the runtime's overhead over a
bare gRPC server (``llmops bench noop``). Bounded: beyond ``capacity`` buffered lines new ones
are dropped and counted (``dropped``), never blocking a call.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

Line = tuple[float, str, str, float, str | None, str]


def _json(line: Line) -> bytes:
    at, method, code, latency_s, request_id, peer = line
    return orjson.dumps(
        {
            "method": method,
            "code": code,
            "latency_ms": round(latency_s * 1000, 3),
            "request_id": request_id,
            "peer": peer,
            "event": "rpc",
            "level": "info",
            "timestamp": datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z"),
        }
    )


def _console(line: Line) -> bytes:
    at, method, code, latency_s, request_id, peer = line
    stamp = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
    return (
        f"{stamp} [info     ] rpc method={method} code={code} "
        f"latency_ms={round(latency_s * 1000, 3)} request_id={request_id} peer={peer}"
    ).encode()


def _stderr(data: bytes) -> None:
    sys.stderr.buffer.write(data)
    sys.stderr.buffer.flush()


class AccessLog:
    """Buffered access-log lines, rendered and written by a daemon thread every
    ``interval_s`` seconds; :meth:`close` writes what is left."""

    def __init__(
        self,
        fmt: str = "json",
        write: Callable[[bytes], None] = _stderr,
        *,
        interval_s: float = 0.05,
        capacity: int = 100_000,
    ) -> None:
        self._render = _json if fmt == "json" else _console
        self._write = write
        self._interval_s = interval_s
        self._capacity = capacity
        self._lines: deque[Line] = deque()
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmops-access-log", daemon=True)
        self._thread.start()

    def record(
        self, method: str, code: str, latency_s: float, request_id: str | None, peer: str
    ) -> None:
        """One RPC's line (deque.append is atomic: no lock on the request path)."""
        if len(self._lines) >= self._capacity:
            self.dropped += 1
            return
        self._lines.append((time.time(), method, code, latency_s, request_id, peer))

    def flush(self) -> None:
        lines = self._lines
        batch = [lines.popleft() for _ in range(len(lines))]
        if batch:
            with contextlib.suppress(OSError, ValueError):  # stderr closed at exit
                self._write(b"".join(self._render(line) + b"\n" for line in batch))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.flush()
