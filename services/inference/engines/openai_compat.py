"""An OpenAI-compatible HTTP server as an :class:`~services.inference.engine.Engine`.

Any server that speaks the OpenAI API (vLLM, TGI, llama.cpp server, SGLang, hosted APIs)
serves the routes that point at it: chat turns go to ``/chat/completions``, raw prompts to
``/completions``, streamed with SSE. Calls that answer at once (a non-streamed generation,
``/tokenize``, ``/models``) go through the engine's own pooled HTTP/1.1 client
(:mod:`services.inference.engines.http1`: a quarter of aiohttp's CPU per call); streams
through one aiohttp session. Both keep connections alive and open on first use, inside the
running event loop.

Sampling fields the OpenAI API lacks (``top_k``, ``repetition_penalty``, ``min_tokens``) go
as extra body fields, the way vLLM reads them, and only when they change something: a hosted
API that rejects unknown fields still serves a route that leaves them at their defaults.

The API key goes in the ``Authorization`` header only; error messages quote the server's own
message with the key cut out, and name the endpoint without any credentials in its URL.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import orjson
import structlog

from llmops.errors import (
    FailedPrecondition,
    InvalidArgument,
    LLMOpsError,
    ResourceExhausted,
    Unavailable,
)
from services.inference.engine import (
    Completion,
    Delta,
    EngineHealth,
    EngineModel,
    EngineRequest,
    Finish,
)
from services.inference.engines.http1 import ConnectTimeout, Http1Pool

log = structlog.get_logger("llmops.inference")

_MESSAGE_LIMIT = 200
"""Characters of a server's error message quoted in ours."""
_CHARS_PER_TOKEN = 4
"""The estimate when a server cannot tokenize: about four characters a token for English
text under the usual BPE vocabularies (OpenAI's rule of thumb)."""
_CONTEXT_OVERFLOW = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|max_model_len|maximum model length"
    r"|prompt is too long|input is too long|too many (input )?tokens|max_new_tokens` must be <=",
    re.IGNORECASE,
)
"""How servers word a prompt over the context window: vLLM ("maximum context length"),
OpenAI (``context_length_exceeded``), llama.cpp (``exceed_context_size_error``), TGI
("`inputs` tokens + `max_new_tokens` must be <= N")."""


class OpenAIEngine:
    """A model server reached over the OpenAI HTTP API (see the module docstring)."""

    kind = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 120.0,
        health_timeout_s: float = 5.0,
        max_connections: int = 100,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """``base_url`` ends where the OpenAI routes begin (``http://host:8000/v1``);
        ``read_timeout_s`` bounds each wait for data (the first byte of a reply, the next
        chunk of a stream); ``headers`` are sent on every request."""
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument("base_url", "must be an http(s) URL with a host")
        if api_key is not None and ("\r" in api_key or "\n" in api_key):
            raise InvalidArgument("api_key", "must be a single line")
        self.base_url = base_url.rstrip("/")
        netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        self.endpoint = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        """The base URL without any user:password in it: what logs and errors name."""
        self._api_key = api_key or ""
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        elif parts.username is not None:  # user:password in the URL: basic auth, as aiohttp
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        for name, value in self._headers.items():
            if any(c in f"{name}{value}" for c in "\r\n\0"):
                raise InvalidArgument("headers", f"{name}: must be a single line")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._path = parts.path.rstrip("/")
        """The path prefix of every route (``/v1``)."""
        self._tokenize_path = self._path.removesuffix("/v1") + "/tokenize"
        """vLLM and llama.cpp serve it at the root, beside ``/v1``."""
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._health_timeout_s = health_timeout_s
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._pool: Http1Pool | None = None
        self._tokenize_field: str | None = "prompt"
        """What the server's /tokenize reads: vLLM ``prompt``, llama.cpp ``content``; None
        once the server turned out to have no /tokenize."""

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                headers=self._headers,
                trust_env=False,
            )
        return self._session

    def _http(self) -> Http1Pool:
        if self._pool is None:
            self._pool = Http1Pool(
                self._host, self._port, tls=self._tls, headers=self._headers,
                max_connections=self._max_connections, connect_timeout_s=self._connect_timeout_s,
            )  # fmt: skip
        return self._pool

    async def _call(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str] | None,
        total_s: float | None,
    ) -> tuple[int, bytes]:  # fmt: skip
        """One request/response exchange within ``total_s`` (None: the read timeout), its
        failures mapped to UNAVAILABLE."""
        bound = self._read_timeout_s if total_s is None else min(total_s, self._read_timeout_s)
        try:
            return await self._http().request(method, path, body, headers, bound)
        except TimeoutError as exc:
            if isinstance(exc, ConnectTimeout):
                raise self._timed_out(exc, total_s) from exc
            read_bound = total_s is None or self._read_timeout_s < total_s
            raise self._timed_out(exc, None if read_bound else total_s) from exc
        except OSError as exc:
            raise self._unreachable(exc) from exc

    def _timeout(self, total_s: float | None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=total_s, connect=self._connect_timeout_s, sock_read=self._read_timeout_s
        )

    async def generate(self, request: EngineRequest) -> Completion:
        path, body = self._body(request, stream=False)
        started = time.perf_counter()
        status, raw = await self._call(
            "POST", self._path + path, orjson.dumps(body, default=_plain),
            _request_headers(request), request.timeout_s,
        )  # fmt: skip
        if status != 200:
            raise self._status_error(status, raw)
        total = time.perf_counter() - started
        choice, usage = self._parse_reply(raw)
        if request.messages is not None:
            text = (choice.get("message") or {}).get("content")
        else:
            text = choice.get("text")
        details = usage.get("prompt_tokens_details") or {}
        return Completion(
            text=text or "",
            finish=_finish(choice.get("finish_reason"), choice, request.sampling.stop),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            time_to_first_token_s=total,
            total_s=total,
            cached_prompt_tokens=int(details.get("cached_tokens") or 0),
        )

    async def stream(self, request: EngineRequest) -> AsyncGenerator[Delta, None]:
        """Deltas as SSE chunks arrive; the last one has the finish and the token counts.

        ``request.timeout_s`` bounds the whole stream: spent before the server answers, it
        fails (``Unavailable``); spent while streaming, the stream ends with finish
        ``timeout``. Closing the generator closes the HTTP response, which vLLM and
        llama.cpp take as the signal to stop generating."""
        path, body = self._body(request, stream=True)
        chat = request.messages is not None
        loop = asyncio.get_running_loop()
        deadline = None if request.timeout_s is None else loop.time() + request.timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client().post(
                    self.base_url + path,
                    data=orjson.dumps(body, default=_plain),
                    headers=_request_headers(request),
                    timeout=self._timeout(None),
                )
                if response.status != 200:
                    try:
                        raw = await response.read()
                    finally:
                        response.release()
                    raise self._status_error(response.status, raw)
        except TimeoutError as exc:
            raise self._timed_out(exc, request.timeout_s) from exc
        except aiohttp.ClientError as exc:
            raise self._unreachable(exc) from exc

        finish_reason: str | None = None
        last_choice: dict[str, Any] = {}
        usage: dict[str, Any] | None = None
        pieces = 0
        done = timed_out = False
        buffer = b""
        try:
            while not done:
                timer = asyncio.timeout_at(deadline)
                try:
                    async with timer:
                        data = await response.content.readany()
                except TimeoutError as exc:
                    if timer.expired():
                        timed_out = True
                        break
                    raise self._timed_out(exc, request.timeout_s) from exc
                if not data:
                    if not buffer.strip():
                        break
                    data = b"\n"  # a last line the server left unterminated
                # SSE, one event a ``data:`` line: OpenAI-compatible servers never split an
                # event's JSON over several lines, and some omit the blank line between events.
                *lines, buffer = (buffer + data).split(b"\n")
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue  # blank lines, ": keep-alive" comments, "event:" fields
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        break
                    event = self._parse_event(payload)
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices") or ():
                        if chat:
                            text = (choice.get("delta") or {}).get("content")
                        else:
                            text = choice.get("text")
                        if text:
                            pieces += 1
                            yield Delta(text)
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
                            last_choice = choice
        except aiohttp.ClientError as exc:
            raise Unavailable(f"{self.endpoint} dropped the stream: {self._clean(exc)}") from exc
        finally:
            # Closing, not releasing, an unfinished response drops the connection: the
            # server sees the client go and stops generating.
            if done or response.content.at_eof():
                response.release()
            else:
                response.close()

        if finish_reason is not None or done:
            finish: Finish = _finish(finish_reason, last_choice, request.sampling.stop)
        elif timed_out:
            finish = "timeout"
        else:
            raise Unavailable(f"{self.endpoint} ended the stream before the model finished")
        if usage is not None:
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
        else:
            # No usage (an older server, or the budget ran out before the usage chunk): one
            # token a content chunk (servers send one chunk a decoded token, near enough),
            # and the prompt's tokens unknown: 0.
            prompt_tokens, completion_tokens = 0, pieces
        yield Delta(
            "", finish=finish, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )

    async def count_tokens(self, model: str, text: str) -> int:
        """The server's count (``POST /tokenize``), or an estimate where it has none."""
        while self._tokenize_field is not None:
            field = self._tokenize_field
            body: dict[str, Any] = {"model": model, field: text}
            status, raw = await self._call(
                "POST", self._tokenize_path, orjson.dumps(body), None, self._read_timeout_s
            )
            if status in (404, 405, 501):
                self._tokenize_field = None
                log.warning(
                    "tokenize_unsupported",
                    endpoint=self.endpoint,
                    status=status,
                    estimate=f"ceil(characters / {_CHARS_PER_TOKEN})",
                )
                break
            if status != 200:
                raise self._status_error(status, raw)
            reply = self._parse_json(raw)
            if "count" in reply:
                return int(reply["count"])
            tokens = reply.get("tokens") or []
            if not tokens and text.strip() and field == "prompt":
                self._tokenize_field = "content"  # llama.cpp ignores ``prompt``: ask again
                continue
            return len(tokens)
        return math.ceil(len(text) / _CHARS_PER_TOKEN)

    async def health(self) -> EngineHealth:
        """Ready when ``GET /models`` lists at least one model."""
        try:
            status, raw = await self._http().request(
                "GET", self._path + "/models", timeout_s=self._health_timeout_s
            )
        except TimeoutError:
            detail = f"{self.endpoint} did not answer within {self._health_timeout_s:g}s"
            return EngineHealth(ready=False, detail=detail)
        except OSError as exc:
            return EngineHealth(ready=False, detail=self._unreachable(exc).message)
        if status != 200:
            message = self._clean(_error_message(raw)[0])
            return EngineHealth(ready=False, detail=f"{self.endpoint} answered {status}: {message}")
        try:
            cards = orjson.loads(raw).get("data") or []
        except (orjson.JSONDecodeError, AttributeError):
            return EngineHealth(ready=False, detail=f"{self.endpoint}/models is not JSON")
        models = tuple(
            EngineModel(
                name=str(card["id"]),
                ready=True,
                max_context_tokens=int(card.get("max_model_len") or 0),
            )
            for card in cards
            if isinstance(card, dict) and card.get("id")
        )
        if not models:
            return EngineHealth(ready=False, detail=f"{self.endpoint} serves no model")
        return EngineHealth(ready=True, models=models)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- requests and replies ------------------------------------------------------------

    def _body(self, request: EngineRequest, *, stream: bool) -> tuple[str, dict[str, Any]]:
        """The route's path and the JSON body for ``request``."""
        if (request.messages is None) == (request.prompt is None):
            raise InvalidArgument("messages", "exactly one of messages and prompt must be set")
        s = request.sampling
        body: dict[str, Any] = {"model": request.model}
        if request.messages is not None:
            path = "/chat/completions"
            body["messages"] = [{"role": t.role, "content": t.content} for t in request.messages]
        else:
            path = "/completions"
            body["prompt"] = request.prompt
        body["max_tokens"] = s.max_tokens
        body["temperature"] = s.temperature
        body["top_p"] = s.top_p
        if s.stop:
            body["stop"] = list(s.stop)
        # 0 is the OpenAI default for both penalties: omitted, strict servers stay happy.
        if s.presence_penalty:
            body["presence_penalty"] = s.presence_penalty
        if s.frequency_penalty:
            body["frequency_penalty"] = s.frequency_penalty
        if s.seed is not None:
            body["seed"] = s.seed
        if s.top_k > 0:
            body["top_k"] = s.top_k
        if s.repetition_penalty != 1.0:
            body["repetition_penalty"] = s.repetition_penalty
        if s.min_tokens > 0:
            body["min_tokens"] = s.min_tokens
        if request.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": request.json_schema},
            }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return path, body

    def _parse_json(self, raw: bytes) -> dict[str, Any]:
        try:
            reply = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Unavailable(f"{self.endpoint} answered with malformed JSON") from exc
        if not isinstance(reply, dict):
            raise Unavailable(f"{self.endpoint} answered with a JSON {type(reply).__name__}")
        return reply

    def _parse_reply(self, raw: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
        """The first choice and the usage of a non-streamed reply."""
        reply = self._parse_json(raw)
        choices = reply.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            raise Unavailable(f"{self.endpoint} answered with no choice")
        return choices[0], reply.get("usage") or {}

    def _parse_event(self, payload: bytes) -> dict[str, Any]:
        event = self._parse_json(payload)
        if "error" in event:  # vLLM reports a failure mid-stream as an error event
            error = event["error"]
            code = error.get("code") if isinstance(error, dict) else None
            raise self._status_error(code if isinstance(code, int) else 500, payload)
        return event

    # -- errors --------------------------------------------------------------------------

    def _clean(self, text: object) -> str:
        """``text`` without the API key, trimmed to what an error message quotes."""
        message = str(text)
        if self._api_key:
            message = message.replace(self._api_key, "***")
        return message[:_MESSAGE_LIMIT]

    def _status_error(self, status: int, raw: bytes) -> LLMOpsError:
        message, code = _error_message(raw)
        quoted = self._clean(message)
        if status == 429:
            return ResourceExhausted(f"{self.endpoint} is rate limiting (429): {quoted}")
        if status >= 500 or status == 408:
            return Unavailable(f"{self.endpoint} answered {status}: {quoted}")
        if status in (400, 413, 422) and _CONTEXT_OVERFLOW.search(f"{message} {code}"):
            return InvalidArgument("prompt", f"over the model's context window: {quoted}")
        return FailedPrecondition(f"{self.endpoint} refused the request ({status}): {quoted}")

    def _unreachable(self, exc: aiohttp.ClientError | OSError) -> Unavailable:
        return Unavailable(f"{self.endpoint} is unreachable: {self._clean(exc)}")

    def _timed_out(self, exc: TimeoutError, total_s: float | None) -> Unavailable:
        if isinstance(exc, aiohttp.ConnectionTimeoutError | ConnectTimeout):
            what, after = "connecting to", self._connect_timeout_s
        elif isinstance(exc, aiohttp.SocketTimeoutError) or total_s is None:
            what, after = "waiting for data from", self._read_timeout_s
        else:
            what, after = "the call to", total_s
        return Unavailable(f"{what} {self.endpoint} timed out after {after:g}s")


def _request_headers(request: EngineRequest) -> dict[str, str] | None:
    """vLLM and most gateways take ``X-Request-Id`` as the request's id in their logs."""
    return {"X-Request-Id": request.request_id} if request.request_id else None


def _plain(value: object) -> object:
    """JSON for what orjson does not serialise itself (a read-only JSON Schema mapping)."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _finish(reason: str | None, choice: Mapping[str, Any], stop: tuple[str, ...]) -> Finish:
    """The contract's finish for an OpenAI ``finish_reason``.

    OpenAI servers say ``stop`` for both the end of sequence and a stop string; vLLM
    (``stop_reason``) and SGLang (``matched_stop``) name the string that matched, and
    llama.cpp's native field is ``stopping_word``."""
    if reason == "length":
        return "length"
    if reason == "abort":
        return "cancelled"
    if stop:
        for key in ("stop_reason", "matched_stop", "stopping_word"):
            matched = choice.get(key)
            if isinstance(matched, str) and matched in stop:
                return "stop_sequence"
    return "end_of_sequence"


def _error_message(raw: bytes) -> tuple[str, str]:
    """The server's error message and code/type, from the usual error bodies: OpenAI and
    vLLM ``{"error": {"message", "type", "code"}}``, TGI ``{"error": "...", "error_type"}``,
    older vLLM ``{"message", "type"}``; else the raw text."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace").strip(), ""
    if not isinstance(body, dict):
        return str(body), ""
    error = body.get("error")
    if isinstance(error, dict):
        code = f"{error.get('code') or ''} {error.get('type') or ''}".strip()
        return str(error.get("message") or error), code
    if isinstance(error, str):
        return error, str(body.get("error_type") or "")
    return str(body.get("message") or body.get("detail") or body), str(body.get("type") or "")
