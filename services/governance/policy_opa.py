"""Production policy engine: an OPA server, through opa-python-client.

Decisions go through :class:`opa_client.AsyncOpaClient` (one aiohttp session with a pooled
keep-alive connector, its retries on connection errors and 500/502/504): ``POST
/v1/data/<path>?provenance=true`` returns the result and the revision of every bundle OPA
has loaded, so each decision records the revision that actually decided, even after OPA
pulled a newer bundle by itself.

Describing the bundle (its modules, its decision paths) is a reload-time call made off the
event loop, and uses the REST API directly (``GET /v1/policies``, stdlib ``urllib``):
the client's ``get_policy(id)`` cannot fetch the ids OPA gives modules of a ``--bundle``
directory (they start with ``/``, which the client strips), and ``get_policies_info()``
drops the source text and the annotations. The decision paths are the rules annotated
``entrypoint: true``, read from the ASTs OPA returns: the same rules the Wasm build compiles.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlparse

import aiohttp
from opa_client import AsyncOpaClient

from llmops.errors import InvalidArgument, Unavailable
from llmops.policy.engine import (
    Evaluation,
    JsonValue,
    PolicyBundle,
    PolicyBundleError,
    PolicyEvaluationError,
    PolicyModule,
    UnknownDecisionPath,
)


class OpaConnection:
    """The HTTP client to one OPA server, shared by the engines successive reloads build.

    The aiohttp session is opened on first use, inside the event loop that evaluates.
    """

    def __init__(self, url: str, *, timeout_s: float = 2.0, retries: int = 2) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InvalidArgument("opa_url", f"{url!r} is not an http(s) URL")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._client = AsyncOpaClient(
            host=parsed.hostname,
            port=parsed.port or (443 if parsed.scheme == "https" else 80),
            ssl=parsed.scheme == "https",
            timeout=timeout_s,
            retries=retries,
        )
        self._opened = False
        self._lock = asyncio.Lock()

    async def client(self) -> AsyncOpaClient:
        if not self._opened:
            async with self._lock:
                if not self._opened:
                    await self._client.__aenter__()  # opens the pooled session
                    self._opened = True
        return self._client

    async def close(self) -> None:
        if self._opened:
            await self._client.close_connection()
            self._opened = False

    def get_json(self, path: str, body: JsonValue = None) -> Any:
        """A blocking REST call (GET, or POST with ``body``), for describing the bundle."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise Unavailable(f"OPA at {self.url} did not answer {path}: {exc}") from exc


def opa_engine_loader(connection: OpaConnection) -> Callable[[], OpaServerEngine]:
    """What :class:`~services.governance.policy_decisions.PolicyDecisions` reloads with."""
    return lambda: OpaServerEngine(connection)


class OpaServerEngine:
    """The bundle an OPA server has loaded, as described when this engine was built."""

    def __init__(self, connection: OpaConnection) -> None:
        self._conn = connection
        self._bundle = describe(connection)
        self._paths = frozenset(self._bundle.decision_paths)

    @property
    def bundle(self) -> PolicyBundle:
        return self._bundle

    async def evaluate(self, path: str, input: Mapping[str, JsonValue]) -> Evaluation:
        if path not in self._paths:
            raise UnknownDecisionPath(path, self._bundle.decision_paths)
        client = await self._conn.client()
        try:
            body = await client.query_rule(dict(input), path, query_params={"provenance": "true"})
        except aiohttp.ClientResponseError as exc:
            if exc.status == 400:
                raise InvalidArgument("input", f"OPA refused the input: {exc.message}") from exc
            raise PolicyEvaluationError(
                f"OPA at {self._conn.url} failed to evaluate {path}: {exc.status} {exc.message}"
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"OPA at {self._conn.url} is unavailable: {exc!r}") from exc
        return Evaluation(result=body.get("result"), revision=provenance_revision(body))

    async def health(self) -> bool:
        client = await self._conn.client()
        try:
            return bool(await client.check_health())
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def close(self) -> None:
        await self._conn.close()


def describe(connection: OpaConnection) -> PolicyBundle:
    """The server's modules, entrypoints and revision (blocking; run it off the loop)."""
    policies = connection.get_json("/v1/policies").get("result") or []
    paths: set[str] = set()
    raw_modules: list[tuple[str, str, str]] = []
    for policy in policies:
        ast = policy.get("ast") or {}
        package = [p.get("value", "") for p in (ast.get("package") or {}).get("path", [])[1:]]
        raw_modules.append((str(policy.get("id", "")), ".".join(package), policy.get("raw", "")))
        paths.update(_entrypoints(package, ast))
    if not paths:
        raise PolicyBundleError(
            f"OPA at {connection.url} serves no rule annotated `entrypoint: true`"
        )
    probe = connection.get_json(f"/v1/data/{min(paths)}?provenance=true", {"input": {}})
    names = sorted((probe.get("provenance") or {}).get("bundles") or {})
    modules = tuple(
        sorted(
            (
                PolicyModule(
                    path=_module_path(module_id, names),
                    package_name=package,
                    sha256=hashlib.sha256(raw.encode()).hexdigest(),
                    source=raw,
                )
                for module_id, package, raw in raw_modules
            ),
            key=lambda m: m.path,
        )
    )
    revision = provenance_revision(probe)
    digest = hashlib.sha256(
        "\n".join([revision, *(f"{m.path} {m.sha256}" for m in modules)]).encode()
    ).hexdigest()
    return PolicyBundle(
        revision=revision,
        source=connection.url,
        load_time=time.time(),
        modules=modules,
        decision_paths=tuple(sorted(paths)),
        digest=digest,
    )


def _entrypoints(package: list[str], ast: Mapping[str, Any]) -> set[str]:
    found = set()
    for rule in ast.get("rules") or []:
        if any(a.get("entrypoint") for a in rule.get("annotations") or []):
            head = rule.get("head") or {}
            ref = [part.get("value", "") for part in head.get("ref") or []]
            found.add("/".join([*package, *(ref or [head.get("name", "")])]))
    return found


def _module_path(module_id: str, bundle_names: list[str]) -> str:
    """``/<bundle dir>/<bundle dir>/llmops/x.rego`` (a ``--bundle`` directory) or
    ``<bundle name>/llmops/x.rego`` (a downloaded bundle) -> ``llmops/x.rego``."""
    path = module_id.lstrip("/")
    for name in sorted((n.strip("/") for n in bundle_names), key=len, reverse=True):
        while name and path.startswith(name + "/"):
            path = path[len(name) + 1 :]
    return path


def provenance_revision(body: Mapping[str, Any]) -> str:
    """The bundle revision OPA reports (``name=revision`` pairs when it has several)."""
    bundles = (body.get("provenance") or {}).get("bundles") or {}
    revisions = {name: str((info or {}).get("revision", "")) for name, info in bundles.items()}
    if len(revisions) == 1:
        return next(iter(revisions.values()))
    return ",".join(f"{name}={rev}" for name, rev in sorted(revisions.items()))
