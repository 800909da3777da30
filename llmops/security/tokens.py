"""Bearer tokens: stored as SHA-256 digests, looked up per call, re-read when the file changes.

The tokens file (``security.tokens_file``; embedded: ``state_dir/security/tokens.yaml``)::

    tokens:
      - id: storefront-web          # the principal's name: the audit actor is token:<id>
        roles: [storefront]
        sha256: 3f1c...             # hex digest of the token; the token itself is never stored
        expires: 2027-06-01T00:00:00Z   # optional

A token is 32 random bytes, URL-safe base64, prefixed ``llmops_`` so secret scanners find it
in the wrong places. The digest of a high-entropy token needs no salt or slow hash: nothing
can be guessed from it. Rotation without restart: add the new token, roll the callers, remove
the old one — every server re-reads the file (at most once a second, on the next call after
it changed), and a file that does not parse keeps the previous tokens in force (logged).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml

from llmops.secret_files import create_secret_file

TOKEN_PREFIX = "llmops_"
log = structlog.get_logger("llmops.security")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive,
    possibly empty); None for any other form."""
    scheme, space, token = header.partition(" ")
    return token.strip() if space and scheme.lower() == "bearer" else None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenEntry:
    id: str
    roles: tuple[str, ...]
    sha256: str
    expires: dt.datetime | None = None


def _parse(raw: bytes, path: Path) -> dict[str, TokenEntry]:
    doc = yaml.safe_load(raw) or {}
    if not isinstance(doc, dict) or not isinstance(doc.get("tokens", []), list):
        raise ValueError(f"{path}: expected a mapping with a `tokens` list")
    found: dict[str, TokenEntry] = {}
    for i, item in enumerate(doc.get("tokens") or []):
        where = f"{path}: tokens[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected a mapping")
        ident, roles, digest = item.get("id"), item.get("roles"), item.get("sha256")
        if not isinstance(ident, str) or not ident:
            raise ValueError(f"{where}.id: a non-empty string is required")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ValueError(f"{where}.roles: a list of role names is required")
        if not isinstance(digest, str) or len(digest) != 64:
            raise ValueError(f"{where}.sha256: the 64-character hex digest is required")
        expires = item.get("expires")
        if isinstance(expires, str):
            expires = dt.datetime.fromisoformat(expires)
        if expires is not None and not isinstance(expires, dt.datetime):
            raise ValueError(f"{where}.expires: a timestamp is required")
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=dt.UTC)
        found[digest.lower()] = TokenEntry(ident, tuple(roles), digest.lower(), expires)
    return found


class TokenStore:
    """The accepted tokens of one tokens file, re-read when its mtime or size changes."""

    def __init__(self, path: Path, *, recheck_s: float = 1.0) -> None:
        self.path = path
        self._recheck_s = recheck_s
        self._entries: dict[str, TokenEntry] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.generation = 0
        """Incremented whenever the accepted tokens change (callers' caches key on it)."""
        self._reload(force=True)

    def recheck(self) -> None:
        """Re-read the file if it changed, at most once per ``recheck_s``."""
        now = time.monotonic()
        if now - self._checked >= self._recheck_s:
            self._checked = now
            self._reload()

    def lookup(self, token: str) -> TokenEntry | None:
        """The entry of ``token``, if it is listed and not expired."""
        self.recheck()
        entry = self._entries.get(token_digest(token))
        if entry is None:
            return None
        if entry.expires is not None and entry.expires <= dt.datetime.now(dt.UTC):
            return None
        return entry

    def entries(self) -> list[TokenEntry]:
        self._reload()
        return sorted(self._entries.values(), key=lambda e: e.id)

    def _reload(self, force: bool = False) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._entries or force:
                log.warning("tokens_file_missing", path=str(self.path))
            if self._entries:
                self.generation += 1
            self._entries, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp and not force:
            return
        with self._lock:
            try:
                entries = _parse(self.path.read_bytes(), self.path)
            except (OSError, ValueError, yaml.YAMLError) as exc:
                # Keep what is in force: a half-edited file must not lock everyone out.
                log.error("tokens_file_invalid", path=str(self.path), error=str(exc))
                self._stamp = stamp
                return
            self._entries, self._stamp = entries, stamp
            self.generation += 1
            log.info("tokens_loaded", path=str(self.path), tokens=len(entries))


def _dump(path: Path, entries: list[dict[str, Any]]) -> None:
    data = yaml.safe_dump({"tokens": entries}, sort_keys=False).encode()
    tmp = path.with_name(f".{path.name}.new")
    tmp.unlink(missing_ok=True)
    create_secret_file(tmp, data)
    os.replace(tmp, path)


def _raw_entries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    doc = yaml.safe_load(path.read_bytes()) or {}
    entries = doc.get("tokens") or []
    _parse(path.read_bytes(), path)  # refuse to extend a file that does not validate
    return [dict(e) for e in entries]


def add_token(path: Path, ident: str, roles: list[str], expires: dt.datetime | None = None) -> str:
    """Mint a token for ``ident`` with ``roles``, add its digest to ``path``; return the
    token (shown once: only the digest is kept). An id may hold several tokens at once
    (rotation)."""
    token = new_token()
    entries = _raw_entries(path)
    entry: dict[str, Any] = {"id": ident, "roles": list(roles), "sha256": token_digest(token)}
    if expires is not None:
        entry["expires"] = expires.astimezone(dt.UTC).isoformat()
    entries.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    _dump(path, entries)
    return token


def revoke_tokens(path: Path, ident: str, keep_digest: str | None = None) -> int:
    """Remove the tokens of ``ident`` (all but ``keep_digest``); return how many."""
    entries = _raw_entries(path)
    kept = [e for e in entries if e.get("id") != ident or e.get("sha256") == keep_digest]
    _dump(path, kept)
    return len(entries) - len(kept)
