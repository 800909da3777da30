"""The OpenAI engine's HTTP/1.1 client (services/inference/engines/http1.py) against a raw
asyncio server that writes exactly the bytes each case needs."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from services.inference.engines.http1 import ConnectTimeout, Http1Pool, HttpConnectionError

pytestmark = pytest.mark.asyncio

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]
"""Answer one request (the connection's ``n``-th); False closes the connection."""


class Server:
    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.requests.append(head + await reader.readexactly(length))
                if not await self.reply(reader, writer, n):
                    return
                n += 1
        finally:
            writer.close()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)


def ok(body: bytes = b'{"ok":true}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
) -> bool:  # a kept-alive 200
    writer.write(ok(b'{"n":%d}' % n))
    await writer.drain()
    return True


@pytest.fixture
async def pool_for() -> AsyncIterator[Callable[..., Http1Pool]]:
    pools: list[Http1Pool] = []

    def make(port: int, **kw: object) -> Http1Pool:
        pool = Http1Pool("127.0.0.1", port, **kw)  # type: ignore[arg-type]
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


async def test_requests_reuse_one_kept_alive_connection(pool_for: Callable[..., Http1Pool]) -> None:
    async with Server(answer) as server:
        pool = pool_for(server.port, headers={"Authorization": "Bearer k"})
        for i in range(5):
            status, body = await pool.request(
                "POST", "/v1/chat/completions", b'{"x":1}', {"X-Request-Id": f"r{i}"}, 5
            )
            assert (status, body) == (200, b'{"n":%d}' % i)
        assert server.connections == 1
        first = server.requests[0]
        assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert b"\r\nHost: 127.0.0.1:%d\r\n" % server.port in first
        assert b"\r\nAuthorization: Bearer k\r\n" in first
        assert b"\r\nX-Request-Id: r0\r\n" in first
        assert first.endswith(b'\r\nContent-Length: 7\r\n\r\n{"x":1}')


async def test_a_connection_closed_while_idle_is_replaced_and_the_request_sent_once(
    pool_for: Callable[..., Http1Pool],
) -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(ok())  # says nothing of closing, then closes: a keep-alive timeout
        await writer.drain()
        return False

    async with Server(once) as server:
        pool = pool_for(server.port)
        assert (await pool.request("GET", "/v1/models", timeout_s=5))[0] == 200
        await asyncio.sleep(0.05)  # the close reaches the client
        assert (await pool.request("GET", "/v1/models", timeout_s=5))[0] == 200
        assert server.connections == 2
        assert len(server.requests) == 2  # each request reached the server exactly once


async def test_a_stale_connection_found_on_send_is_retried_on_a_fresh_one(
    pool_for: Callable[..., Http1Pool],
) -> None:
    """The server closes the idle connection the moment the next request arrives (before
    any reply byte): the pool sends it again on a new connection."""

    async def close_second(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        if server.connections == 1 and n == 1:
            return False
        writer.write(ok())
        await writer.drain()
        return True

    async with Server(close_second) as server:
        pool = pool_for(server.port)
        await pool.request("GET", "/a", timeout_s=5)
        assert (await pool.request("GET", "/b", timeout_s=5))[0] == 200
        assert server.connections == 2


async def test_chunked_reply_and_connection_close(pool_for: Callable[..., Http1Pool]) -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await writer.drain()
        return True  # the client is the one to close (it was told to)

    async with Server(chunked) as server:
        pool = pool_for(server.port)
        assert await pool.request("GET", "/x", timeout_s=5) == (503, b"hello world")
        assert await pool.request("GET", "/x", timeout_s=5) == (503, b"hello world")
        assert server.connections == 2  # "Connection: close" is honoured


async def test_a_reply_cut_mid_body_fails_and_is_not_retried(
    pool_for: Callable[..., Http1Pool],
) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        return False

    async with Server(cut) as server:
        pool = pool_for(server.port)
        with pytest.raises(HttpConnectionError, match="mid-reply"):
            await pool.request("POST", "/x", b"{}", timeout_s=5)
        assert len(server.requests) == 1


async def test_malformed_and_oversized_replies(pool_for: Callable[..., Http1Pool]) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        first = server.connections == 1  # the malformed reply closes its connection
        writer.write(b"NOT HTTP AT ALL\r\n\r\n" if first else ok(b"x" * 2000))
        await writer.drain()
        return True

    async with Server(garbage) as server:
        pool = pool_for(server.port, max_reply_bytes=1000)
        with pytest.raises(HttpConnectionError, match="malformed"):
            await pool.request("GET", "/x", timeout_s=5)
        with pytest.raises(HttpConnectionError, match="over 1000 bytes"):
            await pool.request("GET", "/x", timeout_s=5)


async def test_a_timeout_closes_the_connection_and_the_next_call_works(
    pool_for: Callable[..., Http1Pool],
) -> None:
    async def slow_first(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        if server.connections == 1:
            await asyncio.sleep(1.0)
        writer.write(ok())
        await writer.drain()
        return True

    async with Server(slow_first) as server:
        pool = pool_for(server.port)
        with pytest.raises(TimeoutError):
            await pool.request("GET", "/x", timeout_s=0.1)
        assert (await pool.request("GET", "/x", timeout_s=5))[0] == 200
        assert server.connections == 2  # the timed-out connection was not reused


async def test_max_connections_bounds_calls_in_flight(pool_for: Callable[..., Http1Pool]) -> None:
    in_flight = peak = 0

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        writer.write(ok())
        await writer.drain()
        return True

    async with Server(held) as server:
        pool = pool_for(server.port, max_connections=2)
        replies = await asyncio.gather(*(pool.request("GET", "/x", timeout_s=5) for _ in range(8)))
        assert all(status == 200 for status, _ in replies)
        assert peak == 2 and server.connections == 2


async def test_refused_connection_and_connect_timeout(pool_for: Callable[..., Http1Pool]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError):
        await pool_for(port).request("GET", "/x", timeout_s=5)
    # 192.0.2.0/24 is TEST-NET-1: never routed, so the SYN goes unanswered (or is refused
    # at once where there is no route at all: either way no connection)
    unroutable = Http1Pool("192.0.2.1", 9, connect_timeout_s=0.05)
    try:
        with pytest.raises((ConnectTimeout, OSError)):
            await unroutable.request("GET", "/x", timeout_s=5)
    finally:
        await unroutable.close()


async def test_header_and_target_injection_is_refused(pool_for: Callable[..., Http1Pool]) -> None:
    with pytest.raises(ValueError, match="single-line"):
        Http1Pool("127.0.0.1", 1, headers={"X-Evil": "a\r\nHost: other"})
    pool = pool_for(1)
    with pytest.raises(ValueError, match="single-line"):
        await pool.request("GET", "/x", headers={"X-Request-Id": "r\nX: y"}, timeout_s=1)
    with pytest.raises(ValueError, match="target"):
        await pool.request("GET", "/x HTTP/1.1\r\nX: y", timeout_s=1)
