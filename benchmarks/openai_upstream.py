"""A fast OpenAI-compatible upstream for load tests and the inference engine's tests: not a model.

The inference benchmark puts it behind both the inference service and the LiteLLM proxy, so
what either adds on top of it is platform overhead. It answers the OpenAI routes
(``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``) and vLLM's
``POST /tokenize`` at once, with a deterministic reply: ``reply_tokens`` words cycled from the
prompt (fewer when ``max_tokens`` cuts it: finish ``length``), cut before the first ``stop``
string (finish ``stop`` with vLLM's ``stop_reason``), streamed as SSE one word a chunk with
``token_delay_s`` between chunks (the whole reply's delay before a non-streamed answer). A prompt
seen before reports its tokens as cached (``prompt_tokens_details.cached_tokens``), like a
prefix cache.

Tests inject failures with the request header ``x-upstream-fail: <status>`` (``503``,
``429``, ``401``... or ``400-context`` for a prompt over the context window), answered with an
OpenAI-style error body; ``x-upstream-fail-message`` replaces the error's message. The object
:func:`start_upstream` returns counts requests and client disconnects and keeps the last
request's body and headers.

Run it in its own process with ``python -m benchmarks.openai_upstream --port P``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

MAX_MODEL_LEN = 4096
CONTEXT_MESSAGE = (
    f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested "
    f"{MAX_MODEL_LEN + 1000} tokens in the messages. Please reduce the length of the messages."
)
_SEEN_LIMIT = 4096
_SSE_DONE = b"data: [DONE]\n\n"


class Upstream:
    """A running upstream: its URL, what it saw, and ``close()``."""

    def __init__(self, *, token_delay_s: float, reply_tokens: int, model: str) -> None:
        self.token_delay_s = token_delay_s
        self.reply_tokens = reply_tokens
        self.model = model
        self.base_url = ""
        self.requests = 0
        self.disconnects = 0
        """Streams the client left before the end (seen on the next write)."""
        self.chunks_sent = 0
        self.last_body: dict[str, Any] | None = None
        self.last_headers: CIMultiDict[str] = CIMultiDict()
        self._seen: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._ids = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/tokenize", self._tokenize)
        return app

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound}/v1"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _seen_request(self, request: web.Request) -> dict[str, Any]:
        self.requests += 1
        self.last_headers = CIMultiDict(request.headers)
        body = orjson.loads(await request.read()) if request.can_read_body else {}
        self.last_body = body
        return body if isinstance(body, dict) else {}

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._seen_request(request)
        if failure := _injected_failure(request):
            return failure
        card = {
            "id": self.model,
            "object": "model",
            "created": 0,
            "owned_by": "openai-upstream",
            "max_model_len": MAX_MODEL_LEN,
        }
        return _json({"object": "list", "data": [card]})

    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self._seen_request(request)
        if failure := _injected_failure(request):
            return failure
        text = body.get("prompt", body.get("content", ""))
        return _json({"tokens": list(range(len(str(text).split())))})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._seen_request(request)
        if failure := _injected_failure(request):
            return failure
        parts = [_content_text(m.get("content")) for m in body.get("messages") or []]
        return await self._generate(request, body, " ".join(parts), chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._seen_request(request)
        if failure := _injected_failure(request):
            return failure
        return await self._generate(request, body, str(body.get("prompt", "")), chat=False)

    async def _generate(
        self, request: web.Request, body: dict[str, Any], prompt: str, *, chat: bool
    ) -> web.StreamResponse:
        prompt_words = prompt.split()
        words = prompt_words or ["ok"]
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        n = self.reply_tokens if limit is None else min(self.reply_tokens, int(limit))
        finish = "length" if n < self.reply_tokens else "stop"
        pieces = [
            words[i % len(words)] if i == 0 else " " + words[i % len(words)] for i in range(n)
        ]
        pieces, matched = _cut_at_stop(pieces, body.get("stop"))
        if matched is not None:
            finish = "stop"
        usage = self._usage(prompt, len(prompt_words), len(pieces))
        self._ids += 1
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{self._ids}"
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(
                request,
                rid,
                str(body.get("model", self.model)),
                pieces,
                finish,
                matched,
                usage if include_usage else None,
                chat=chat,
            )
        if self.token_delay_s > 0:
            await asyncio.sleep(self.token_delay_s * len(pieces))
        text = "".join(pieces)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "stop_reason": matched}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return _json(
            {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": body.get("model", self.model),
                "choices": [choice],
                "usage": usage,
            }
        )

    async def _stream(
        self,
        request: web.Request,
        rid: str,
        model: str,
        pieces: list[str],
        finish: str,
        matched: str | None,
        usage: dict[str, Any] | None,
        *,
        chat: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        kind = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            event = {"id": rid, "object": kind, "created": created, "model": model}
            event.update(choices=choices, **extra)
            return b"data: " + orjson.dumps(event) + b"\n\n"

        try:
            for i, piece in enumerate(pieces):
                if self.token_delay_s > 0:
                    await asyncio.sleep(self.token_delay_s)
                if chat:
                    delta = (
                        {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                    )
                    await response.write(
                        chunk([{"index": 0, "delta": delta, "finish_reason": None}])
                    )
                else:
                    await response.write(
                        chunk([{"index": 0, "text": piece, "finish_reason": None}])
                    )
                self.chunks_sent += 1
            last: dict[str, Any] = {"index": 0, "finish_reason": finish, "stop_reason": matched}
            if chat:
                last["delta"] = {}
            else:
                last["text"] = ""
            await response.write(chunk([last]))
            if usage is not None:
                await response.write(chunk([], usage=usage))
            await response.write(_SSE_DONE)
            await response.write_eof()
        except ConnectionResetError:
            self.disconnects += 1  # returned, not raised: aiohttp would log it as a 500
        except asyncio.CancelledError:
            self.disconnects += 1
            raise
        return response

    def _usage(self, prompt: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        cached = prompt_tokens if prompt in self._seen else 0
        if len(self._seen) >= _SEEN_LIMIT:
            self._seen.clear()
        self._seen.add(prompt)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        }


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a content list."""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _cut_at_stop(pieces: list[str], stop: Any) -> tuple[list[str], str | None]:
    """The pieces cut before the first occurrence of any stop string, and that string."""
    stops = [stop] if isinstance(stop, str) else [s for s in stop or [] if s]
    text = "".join(pieces)
    found = [(text.find(s), s) for s in stops if s in text]
    if not found:
        return pieces, None
    at, matched = min(found)
    kept: list[str] = []
    length = 0
    for piece in pieces:
        if length + len(piece) >= at:
            if at > length:
                kept.append(piece[: at - length])
            break
        kept.append(piece)
        length += len(piece)
    return kept, matched


def _injected_failure(request: web.Request) -> web.Response | None:
    """The error response the ``x-upstream-fail`` header asks for, if any."""
    spec = request.headers.get("x-upstream-fail")
    if not spec:
        return None
    if spec == "400-context":
        status, message, kind = 400, CONTEXT_MESSAGE, "BadRequestError"
    else:
        status, message = int(spec), f"injected failure {spec}"
        kind = {429: "RateLimitError"}.get(
            status, "BadRequestError" if status < 500 else "ServerError"
        )
    message = request.headers.get("x-upstream-fail-message", message)
    error = {"message": message, "type": kind, "param": None, "code": status}
    return _json({"error": error, "object": "error"}, status=status)


async def start_upstream(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    token_delay_s: float = 0.0,
    reply_tokens: int = 16,
    model: str = "upstream",
) -> Upstream:
    """Start an upstream in this event loop (``port=0``: any free port)."""
    upstream = Upstream(token_delay_s=token_delay_s, reply_tokens=reply_tokens, model=model)
    await upstream.start(host, port)
    return upstream


async def _serve(args: argparse.Namespace) -> None:
    upstream = await start_upstream(
        args.host,
        args.port,
        token_delay_s=args.token_delay_s,
        reply_tokens=args.reply_tokens,
        model=args.model,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"openai upstream listening on {upstream.base_url}", flush=True)
    try:
        await stop.wait()
    finally:
        await upstream.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token-delay-s", type=float, default=0.0)
    parser.add_argument("--reply-tokens", type=int, default=16)
    parser.add_argument("--model", default="upstream")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
