"""A pooled HTTP/1.1 client for the request/response calls of the OpenAI engine.

Why not aiohttp here: a non-streamed ``/chat/completions`` through ``aiohttp.ClientSession``
costs ~230 us of CPU on this 2-core box, against ~60 us for the same exchange over a kept-alive
asyncio transport with httptools' parser (llhttp, the parser of Node.js and uvicorn) —
measured with one fast upstream, 3,000 calls in a row. ``Generate`` through the service has a
2 ms overhead budget at p99, so the engine's own client is most of the margin. Streams (SSE,
read as they come) stay on aiohttp.

What it does: keep-alive connections to one origin (at most ``max_connections`` in use; a
caller over that waits), ``Content-Length`` bodies out, ``Content-Length`` or chunked replies
in (llhttp decodes chunks), TLS through the event loop's ``ssl`` support, one deadline for
connect + exchange, a reply size cap. A connection that the server closed while it sat idle
(servers close idle keep-alive connections: uvicorn after 5 s) is dropped when it is noticed;
a request that finds it closed before any byte of the reply came back is sent once more on a
fresh connection — the server cannot have seen it. A timeout, a cancellation or a malformed
reply closes the connection it happened on: it is never reused in an unknown state.

Errors: :class:`HttpConnectionError` (an ``OSError``: refused, reset, closed mid-reply,
malformed reply, reply over the cap) and ``TimeoutError``; the engine maps both to UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping

import httptools

MAX_REPLY_BYTES = 64 * 1024 * 1024
"""A reply over this is refused (a model reply is kilobytes; a runaway server is not)."""


class HttpConnectionError(ConnectionError):
    """The exchange failed on the connection (not an HTTP status: those are answers)."""


class ConnectTimeout(TimeoutError):
    """Connecting alone took longer than ``connect_timeout_s``."""


class _Stale(HttpConnectionError):
    """A reused connection was closed before any byte of the reply: safe to send again."""


def _check_header(name: str, value: str) -> None:
    if any(c in name or c in value for c in "\r\n\0") or ":" in name or not name:
        raise ValueError(f"header {name!r}: a name and a single-line value are required")


class _Connection(asyncio.Protocol):
    """One kept-alive connection: at most one exchange at a time."""

    def __init__(self, max_reply_bytes: int) -> None:
        self._max = max_reply_bytes
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._status = 0
        self._got_bytes = False
        self.closed = False
        self.keep_alive = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for (a 408 before an idle close): unusable
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpConnectionError(f"malformed HTTP reply: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._transport = None
        if self._waiter is not None and not self._waiter.done():
            if not self._got_bytes:
                self._waiter.set_exception(_Stale("the server closed the connection"))
            else:
                self._waiter.set_exception(
                    HttpConnectionError("the server closed the connection mid-reply")
                )

    # -- httptools callbacks

    def on_headers_complete(self) -> None:
        self._status = int(self._parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max:
            self._fail(HttpConnectionError(f"the reply is over {self._max} bytes"))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = bool(self._parser.should_keep_alive())
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((self._status, b"".join(self._body)))

    # -- use

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send ``request`` (a whole HTTP/1.1 request); the reply's status and body."""
        if self.closed or self._transport is None or self._transport.is_closing():
            raise _Stale("the connection is closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self._body, self._size, self._status, self._got_bytes = [], 0, 0, False
        self._transport.write(request)
        try:
            return await self._waiter
        finally:
            self._waiter = None
            self._body = []

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()
            self._transport = None


class Http1Pool:
    """Kept-alive HTTP/1.1 connections to one ``host``:``port`` (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool = False,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 100,
        connect_timeout_s: float = 5.0,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        """``headers`` go on every request (after ``Host``)."""
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.host, self.port = host, port
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None
        default_port = 443 if tls else 80
        authority = host if port == default_port else f"{host}:{port}"
        if ":" in host and not host.startswith("["):  # an IPv6 literal
            authority = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        lines = [f"Host: {authority}"]
        for name, value in (headers or {}).items():
            _check_header(name, value)
            lines.append(f"{name}: {value}")
        self._head = "\r\n".join(lines)
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: deque[_Connection] = deque()
        self._connect_timeout_s = connect_timeout_s
        self._max_reply = max_reply_bytes
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[int, bytes]:
        """One exchange: (status, body). ``target`` is the path (and query) on the origin;
        ``timeout_s`` bounds waiting for a connection, connecting and the whole reply."""
        if self._closed:
            raise HttpConnectionError("the client is closed")
        extra = ""
        for name, value in (headers or {}).items():
            _check_header(name, value)
            extra += f"\r\n{name}: {value}"
        if any(c in target for c in " \r\n\0") or not target.startswith("/"):
            raise ValueError(f"bad request target {target!r}")
        request = (
            f"{method} {target} HTTP/1.1\r\n{self._head}{extra}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        async with asyncio.timeout(timeout_s):
            async with self._slots:
                return await self._exchange(request)

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        for _ in range(2):
            conn = self._reuse()
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            try:
                status, body = await conn.exchange(request)
            except _Stale:
                conn.close()
                if reused:
                    continue  # closed while idle: the server never read this request
                raise
            except BaseException:  # a timeout, a cancellation, a broken reply: not reused
                conn.close()
                raise
            if conn.keep_alive and not conn.closed and not self._closed:
                self._idle.append(conn)
            else:
                conn.close()
            return status, body
        raise HttpConnectionError("the server keeps closing connections")  # pragma: no cover

    def _reuse(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to be stale
            if not conn.closed:
                return conn
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._max_reply),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError as exc:
            raise ConnectTimeout(f"connecting took over {self._connect_timeout_s:g}s") from exc
        return conn

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
