"""The mesh's credentials: what servers present and accept, what clients send.

:func:`server_security` and :func:`client_security` read ``security:`` of the config. In
embedded mode every file left unset comes from ``state_dir/security`` (made on first use by
:func:`provision`: a local CA, certificates, an operator token); in production mode the
files must be configured, or the mesh refuses to start unless ``security.insecure`` is true.
Authentication and authorisation of each call happen in :mod:`llmops.server.auth`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from llmops.config import ConfigError, MeshConfig, Mode
from llmops.policy.wasm import DEFAULT_WASM_BUNDLE
from llmops.secret_files import create_secret_file
from llmops.security.pki import ensure_local_pki
from llmops.security.tokens import TokenStore, add_token

TOKEN_ENV = "LLMOPS_TOKEN"
INSECURE = "INSECURE"
"""What GetInfo.security says of a server run with ``security.insecure``."""
OPERATOR_ID = "operator"
SERVICE_ID = "mesh"
log = structlog.get_logger("llmops.security")


@dataclass(frozen=True, slots=True)
class ServerSecurity:
    cert_chain: bytes
    private_key: bytes
    client_ca: bytes
    tokens: TokenStore | None
    authz_bundle: Path
    authz_decision: str


@dataclass(frozen=True, slots=True)
class ClientSecurity:
    ca: bytes
    cert_chain: bytes | None
    private_key: bytes | None
    token: str | None
    server_name: str


@dataclass(frozen=True, slots=True)
class SecurityFiles:
    """Where each credential is, after embedded defaults were applied."""

    ca: Path | None
    cert: Path | None
    key: Path | None
    client_cert: Path | None
    client_key: Path | None
    tokens: Path | None
    token: Path | None
    """The token the CLI sends."""
    service_token: Path | None
    """The token the mesh's own clients send when servers take no client certificates."""


def security_dir(config: MeshConfig) -> Path:
    return config.state_dir / "security"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One provisioner at a time (``llmops up`` and a CLI command started together)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def provision(config: MeshConfig) -> SecurityFiles:
    """The credential files, made under ``state_dir/security`` where embedded mode leaves
    them unset; production mode takes them as configured (the callers check what they need)."""
    sec = config.security
    if config.mode is Mode.PRODUCTION:
        return SecurityFiles(
            sec.ca_file, sec.cert_file, sec.key_file, sec.client_cert_file,
            sec.client_key_file, sec.tokens_file, sec.token_file, sec.token_file,
        )  # fmt: skip
    directory = security_dir(config)
    with _locked(directory):
        hosts = [s.host for s in config.services.values()]
        pki = ensure_local_pki(directory, hosts)
        tokens = sec.tokens_file or directory / "tokens.yaml"
        operator_token = directory / "operator.token"
        service_token = directory / "service.token"
        if sec.tokens_file is None:
            for path, ident, role in (
                (operator_token, OPERATOR_ID, "operator"),
                (service_token, SERVICE_ID, "service"),
            ):
                if not path.exists():  # quietly: CLI commands provision too, stdout is theirs
                    create_secret_file(path, add_token(tokens, ident, [role]).encode())
    return SecurityFiles(
        ca=sec.ca_file or pki.ca,
        cert=sec.cert_file or pki.server_cert,
        key=sec.key_file or pki.server_key,
        client_cert=sec.client_cert_file or pki.client_cert,
        client_key=sec.client_key_file or pki.client_key,
        tokens=tokens,
        token=sec.token_file or (operator_token if operator_token.exists() else None),
        service_token=sec.token_file or (service_token if service_token.exists() else None),
    )


def _required(config: MeshConfig, files: SecurityFiles, names: tuple[str, ...]) -> None:
    missing = [f"security.{n}_file" for n in names if getattr(files, n) is None]
    if missing:
        raise ConfigError(
            f"{config.mode.value} mode needs TLS and authentication: set {', '.join(missing)} "
            "(and security.tokens_file for bearer tokens), or security.insecure: true to run "
            "without them (never on a network others can reach)"
        )


def _read(path: Path | None, what: str) -> bytes:
    assert path is not None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"security: cannot read the {what} {path}: {exc.strerror}") from None


def server_security(config: MeshConfig) -> ServerSecurity | None:
    """What a server presents and checks; None when ``security.insecure``."""
    if config.security.insecure:
        return None
    files = provision(config)
    _required(config, files, ("ca", "cert", "key"))
    return ServerSecurity(
        cert_chain=_read(files.cert, "server certificate"),
        private_key=_read(files.key, "server key"),
        client_ca=_read(files.ca, "CA bundle"),
        tokens=TokenStore(files.tokens) if files.tokens is not None else None,
        authz_bundle=config.security.authz_bundle or DEFAULT_WASM_BUNDLE,
        authz_decision=config.security.authz_decision,
    )


def client_security(config: MeshConfig, *, as_operator: bool) -> ClientSecurity | None:
    """What the mesh's clients send: the mesh's client certificate (service to service; with
    ``client_certificates: none`` its service token instead), and with ``as_operator`` the
    bearer token of the CLI (``LLMOPS_TOKEN``, else ``security.token_file``, else embedded
    mode's operator token), which then names the caller. None when insecure."""
    if config.security.insecure:
        return None
    files = provision(config)
    _required(config, files, ("ca",))
    token = None
    if as_operator:
        token = os.environ.get(TOKEN_ENV) or None
        if token is None and files.token is not None:
            token = _read(files.token, "token file").decode().strip()
    elif config.security.client_certificates == "none" and files.service_token is not None:
        token = _read(files.service_token, "token file").decode().strip()
    cert = key = None
    if files.client_cert is not None and files.client_key is not None:
        cert = _read(files.client_cert, "client certificate")
        key = _read(files.client_key, "client key")
    return ClientSecurity(
        ca=_read(files.ca, "CA bundle"),
        cert_chain=cert,
        private_key=key,
        token=token,
        server_name=config.security.tls_server_name,
    )
