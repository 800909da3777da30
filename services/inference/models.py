"""Which immutable registry version a route target serves.

A target pins a version or names an alias (``champion``); aliases are resolved through the
governance service's registry (``GetArtifact``) and kept for ``alias_cache_s``, so a move of
``champion`` reaches the routes within that time without a reload. When governance cannot
be reached, the last resolution is reused; a target never resolved reports version 0 (and
a warning) rather than failing the call: serving does not depend on the registry being up.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import grpc
import structlog

from llmops.v1 import common_pb2, governance_pb2

log = structlog.get_logger("llmops.inference")

Resolve = Callable[
    [governance_pb2.GetArtifactRequest], Awaitable[governance_pb2.GetArtifactResponse]
]
MODEL = governance_pb2.ARTIFACT_KIND_MODEL


class ModelVersions:
    """Alias -> version, cached (see the module docstring)."""

    def __init__(
        self, resolve: Resolve | None, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._resolve = resolve
        self.ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[int, float]] = {}

    async def ref(self, name: str, version: int | None, alias: str) -> common_pb2.ModelRef:
        """The model reference a response and a prediction carry."""
        if version is not None:
            return common_pb2.ModelRef(name=name, version=version, alias=alias)
        alias = alias or "champion"
        return common_pb2.ModelRef(name=name, version=await self._version(name, alias), alias=alias)

    async def _version(self, name: str, alias: str) -> int:
        key = (name, alias)
        cached = self._cache.get(key)
        now = self._clock()
        if cached is not None and now - cached[1] < self.ttl_s:
            return cached[0]
        if self._resolve is None:
            return cached[0] if cached else 0
        try:
            got = await self._resolve(
                governance_pb2.GetArtifactRequest(
                    ref=governance_pb2.ArtifactRef(kind=MODEL, name=name, alias=alias)
                )
            )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "model_alias_unresolved",
                model=name,
                alias=alias,
                code=exc.code().name,
                reused=cached[0] if cached else None,
            )
            # Keep serving the last known version (0: never resolved) and ask again after a
            # TTL, so that an unknown alias or a registry outage costs one call per TTL.
            version = cached[0] if cached is not None else 0
            self._cache[key] = (version, now)
            return version
        version = int(got.version.version)
        self._cache[key] = (version, now)
        return version
