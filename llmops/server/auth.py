"""Authentication and per-method authorisation of every RPC (DESIGN.md, security model).

:class:`CallGuard` answers, for one call, *who* is calling and *whether they may*:

1. **who** — a bearer token (``authorization: Bearer llmops_...``), looked up by its SHA-256
   in the tokens file (:mod:`llmops.security.tokens`), names the caller ``token:<id>`` with
   the roles listed there; else the client certificate the TLS handshake verified against
   the mesh's CA names it by its subject CN, with its OUs as roles. Neither →
   UNAUTHENTICATED (a token that is unknown, revoked or expired too; the message never
   repeats it).
2. **whether** — the Rego decision ``security.authz_decision`` (default
   ``llmops/rpc/decision``, ``deploy/opa/policies/llmops/rpc``) evaluated in-process by the
   governance policy engine's Wasm build, with input ``{subject: {id, roles, via}, method}``.
   Decisions are cached per (caller, roles, method): after the first call, authorising is a
   dict lookup. A rebuilt bundle file is picked up within seconds (loaded off the event
   loop) and empties the cache. Refused → PERMISSION_DENIED with the policy's reasons.

The standard health check is the one method open to everyone: load balancers and
orchestrators probe it without credentials, and it says nothing but SERVING.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, Counter

from llmops.callcontext import Principal
from llmops.errors import PermissionDenied, Unauthenticated
from llmops.policy.wasm import WasmPolicyEngine
from llmops.security import ServerSecurity
from llmops.security.tokens import bearer_token

PUBLIC_METHODS = ("/grpc.health.v1.Health/",)
"""Methods served without credentials (prefixes of full method names)."""

_MAX_CACHE = 10_000
log = structlog.get_logger("llmops.security")


class AuthzPolicy:
    """The authorisation bundle in force, reloaded when its file changes. ``on_reload``
    (previous revision, new revision) is told of each reload put in force (the runtime
    audits it as ``authz.reload``), from the reloading thread."""

    def __init__(
        self,
        path: Path,
        decision: str,
        *,
        recheck_s: float = 2.0,
        on_reload: Callable[[str, str], None] | None = None,
    ) -> None:
        self.path = path
        self.decision = decision
        self.on_reload = on_reload
        self._recheck_s = recheck_s
        self._engine = WasmPolicyEngine(path)
        if decision not in self._engine.bundle.decision_paths:
            raise ValueError(
                f"security.authz_decision: {decision!r} is not a decision path of {path} "
                f"(it has {', '.join(self._engine.bundle.decision_paths)})"
            )
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()
        self._loading = False
        self._cache: dict[tuple[str, tuple[str, ...], str], str] = {}

    @property
    def revision(self) -> str:
        return self._engine.bundle.revision

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def refusal(self, principal: Principal, method: str) -> str:
        """Why ``principal`` may not call ``method``; empty when it may."""
        now = time.monotonic()
        if now - self._checked >= self._recheck_s:
            self._checked = now
            self._maybe_reload()
        key = (principal.id, principal.roles, method)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        result = self._engine.evaluate_now(
            self.decision,
            {
                "subject": {
                    "id": principal.id,
                    "roles": list(principal.roles),
                    "via": principal.via,
                },
                "method": method.lstrip("/"),
            },
        ).result
        if isinstance(result, dict) and result.get("allow") is True:
            why = ""
        else:
            reasons = result.get("reasons") if isinstance(result, dict) else None
            why = "; ".join(str(r) for r in reasons or ()) or (
                f"{method.lstrip('/')} is not granted to {principal.id}"
            )
        if len(self._cache) >= _MAX_CACHE:
            self._cache.clear()
        self._cache[key] = why
        return why

    def _maybe_reload(self) -> None:
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp or self._loading:
            return
        self._loading = True

        def load() -> None:
            try:
                engine = WasmPolicyEngine(self.path)
                if self.decision not in engine.bundle.decision_paths:
                    raise ValueError(f"no decision path {self.decision!r}")
            except Exception as exc:  # keep the bundle in force
                log.error("authz_bundle_reload_failed", path=str(self.path), error=str(exc))
            else:
                # A wasmtime store belongs to one thread at a time: the old engine is only
                # used by the loop, and the swap is one reference assignment.
                previous = self._engine.bundle.revision
                self._engine = engine
                self._cache = {}
                log.info("authz_bundle_reloaded", revision=engine.bundle.revision)
                if self.on_reload is not None:
                    try:
                        self.on_reload(previous, engine.bundle.revision)
                    except Exception as exc:  # the rules are in force; say what went wrong
                        log.error("authz_reload_audit_failed", error=str(exc))
            finally:
                self._stamp = stamp
                self._loading = False

        threading.Thread(target=load, name="authz-reload", daemon=True).start()


class AuthMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = Counter(
            "llmops_rpc_auth_refused_total",
            "Calls refused before the servicer: UNAUTHENTICATED (no or unknown credentials) "
            "or PERMISSION_DENIED (the policy refused the method).",
            ("grpc_method", "grpc_code"),
            registry=registry,
        )


class CallGuard:
    """Who is calling, and may they (see the module docstring). One per server."""

    def __init__(
        self,
        security: ServerSecurity,
        registry: CollectorRegistry,
        policy: AuthzPolicy | None = None,
    ) -> None:
        self._tokens = security.tokens
        self.policy = policy or AuthzPolicy(security.authz_bundle, security.authz_decision)
        self._certs: dict[bytes, Principal] = {}
        # authorization header -> (tokens generation, principal, expiry or None): a known
        # token costs a dict lookup, not a digest and an allocation per call
        self._tokens_seen: dict[str, tuple[int, Principal, float | None]] = {}
        self._metrics = AuthMetrics(registry)

    def admit(self, method: str, context: Any) -> Principal:
        """The authenticated caller of ``method``. Raises Unauthenticated or
        PermissionDenied."""
        try:
            principal = self._authenticate(context)
        except Unauthenticated:
            self._metrics.refused.labels(method, "UNAUTHENTICATED").inc()
            raise
        why = self.policy.refusal(principal, method)
        if why:
            self._metrics.refused.labels(method, "PERMISSION_DENIED").inc()
            raise PermissionDenied(why)
        return principal

    def _authenticate(self, context: Any) -> Principal:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                text = value if isinstance(value, str) else value.decode("latin-1")
                return self._from_token(text)
        auth = context.auth_context() or {}
        pem = auth.get("x509_pem_cert")
        if pem:
            return self._from_certificate(pem[0])
        raise Unauthenticated(
            "no credentials: send `authorization: Bearer <token>` or a client certificate "
            "signed by the mesh's CA"
        )

    def _from_token(self, header: str) -> Principal:
        tokens = self._tokens
        if tokens is None:  # no tokens file: no token is valid
            raise Unauthenticated("the bearer token is not valid (unknown, revoked or expired)")
        tokens.recheck()
        seen = self._tokens_seen.get(header)
        if (
            seen is not None
            and seen[0] == tokens.generation
            and (seen[2] is None or seen[2] > time.time())
        ):
            return seen[1]
        token = bearer_token(header)
        if token is None:
            raise Unauthenticated("the authorization header must be `Bearer <token>`")
        entry = tokens.lookup(token)
        if entry is None:
            raise Unauthenticated("the bearer token is not valid (unknown, revoked or expired)")
        principal = Principal(f"token:{entry.id}", entry.roles, "token")
        if len(self._tokens_seen) >= _MAX_CACHE:
            self._tokens_seen.clear()
        expires = entry.expires.timestamp() if entry.expires is not None else None
        self._tokens_seen[header] = (tokens.generation, principal, expires)
        return principal

    def _from_certificate(self, pem: bytes) -> Principal:
        principal = self._certs.get(pem)
        if principal is None:
            cert = x509.load_pem_x509_certificate(pem)
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            if not names:
                raise Unauthenticated("the client certificate has no subject common name")
            roles = tuple(
                str(a.value)
                for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
            )
            principal = Principal(str(names[0].value), roles, "mtls")
            if len(self._certs) >= _MAX_CACHE:
                self._certs.clear()
            self._certs[pem] = principal
        return principal
