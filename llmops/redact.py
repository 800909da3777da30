"""Credentials out of what the mesh says: URLs and DSNs as they may appear in an error
message, a log line or ``llmops status`` (issue #15: a Redis URL with its password was
echoed in UNAVAILABLE messages)."""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SECRET_PARAMS = frozenset(
    {"password", "passwd", "pwd", "pass", "token", "secret", "api_key", "apikey", "access_key",
     "secret_key", "sslpassword"}
)  # fmt: skip
"""Query parameters whose values are credentials (lower case)."""
MASK = "***"


def redact_url(url: str) -> str:
    """``url`` with its password and any credential query parameter replaced by ``***``
    (``redis://:***@cache:6379/0``); the user, host, port, path and other parameters stay, so
    the message still says where the mesh tried to go. Text that does not parse as a URL with
    a scheme and a host is returned masked whole if it holds an ``@``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return MASK if "@" in url else url
    if not parts.scheme or host is None:
        return MASK if "@" in url else url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}{':' + MASK if colon else ''}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in SECRET_PARAMS for k, _ in pairs):
            query = urlencode(
                [(k, MASK if k.lower() in SECRET_PARAMS else v) for k, v in pairs], safe="*"
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s'\"<>]+")


def redact_text(text: str) -> str:
    """``text`` (an exception's message, say) with every URL in it through
    :func:`redact_url`."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")
_SECRET_PAIR = re.compile(
    r"(?i)\b(" + "|".join(sorted(SECRET_PARAMS, key=len, reverse=True)) + r")(\s*[=:]\s*)"
    r"(?!\*\*\*)[^\s&,;'\"<>]+"
)


def scrub(text: str) -> str:
    """``text`` with what looks like a credential masked: URLs through :func:`redact_url`,
    ``Bearer <token>``, and ``password=...`` / ``token: ...`` pairs of the
    :data:`SECRET_PARAMS` names. Cheap for text without them (three substring tests)."""
    if "://" in text:
        text = redact_text(text)
    if "earer" in text:
        text = _BEARER.sub(rf"\1 {MASK}", text)
    if "=" in text or ":" in text:
        text = _SECRET_PAIR.sub(rf"\1\2{MASK}", text)
    return text


def scrub_event(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """A structlog processor: every text value of a log line through :func:`scrub` (the
    exception text included: it runs after ``format_exc_info``). A library's message that
    quotes a DSN, a header or a password never reaches the log stream as it was."""
    for key, value in event.items():
        if isinstance(value, str):
            clean = scrub(value)
            if clean is not value:
                event[key] = clean
    return event
