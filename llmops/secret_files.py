"""Secret files the mesh creates for itself (the guardrail's HMAC key, and the credentials
embedded mode makes): owner-only from their first byte, and whole or absent."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def create_secret_file(path: Path, data: bytes) -> bytes:
    """The content of ``path``, creating it with ``data`` if it does not exist.

    The file is made 0600 at creation (``os.open`` mode, not a ``chmod`` afterwards: no
    moment when another user could open it), written and fsynced under a temporary name,
    then linked into place, so no reader ever sees it half-written. If another process
    creates it first, its content wins and is returned (both then use the same secret).
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # created meanwhile: that one is it
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()
