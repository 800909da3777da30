"""Where experiments and layers live: a JSON file (embedded) or Redis (production).

Both keep the serialized ``Experiment`` / ``Layer`` messages plus a revision number that
every write raises. The service holds the whole configuration in memory (a compiled
snapshot) and reloads it when the revision moves: at once after its own writes, and by
polling the revision (one cheap read) for writes made by other replicas.

Writes are optimistic: a mutation names the version it read, and the store refuses it
(ABORTED) if the stored version differs, so two operators cannot silently overwrite each
other. Each write is one atomic step (a file rename; a Lua script in Redis), and it stages
the change's audit record in the store's audit outbox in that same step
(:mod:`llmops.events.outbox`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from google.protobuf import json_format

from llmops.errors import Aborted, Unavailable
from llmops.events.outbox import StagedAudit
from llmops.redact import redact_url
from llmops.v1 import experiment_pb2


class StoredConfig:
    def __init__(
        self,
        revision: int,
        layers: dict[str, experiment_pb2.Layer],
        experiments: dict[str, experiment_pb2.Experiment],
    ) -> None:
        self.revision = revision
        self.layers = layers
        self.experiments = experiments


class ConfigStore(Protocol):
    async def load(self) -> StoredConfig: ...

    async def revision(self) -> int: ...

    async def write(
        self,
        experiments: list[tuple[experiment_pb2.Experiment, int]],
        layers: list[tuple[experiment_pb2.Layer, int]],
        audit: StagedAudit | None = None,
    ) -> int:
        """Store experiments and layers together, each with the version/revision guard it
        was read at (0 = must not exist yet), and stage ``audit`` in the outbox in the same
        atomic step; return the new revision."""
        ...

    async def outbox_before(self, cutoff_us: int, limit: int) -> list[tuple[str, bytes]]:
        """Staged audit records (event id, envelope) staged before ``cutoff_us``, oldest
        first."""
        ...

    async def delete_outbox(self, event_ids: Sequence[str]) -> None: ...

    async def close(self) -> None: ...


def _dump(message: Any) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None)


def _layer_version(layer: experiment_pb2.Layer) -> int:
    """Layers carry no version field: their guard is a digest of the stored message (a
    layer changes exactly when its allocations change)."""
    digest = hashlib.sha256(layer.SerializeToString(deterministic=True)).digest()
    return int.from_bytes(digest[:4], "big") | 1  # never 0, which means "absent"


class FileConfigStore:
    """One JSON document, replaced atomically (write temp, fsync, rename) on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"revision": 0, "layers": {}, "experiments": {}}
        data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        return data

    def _parse(self, data: dict[str, Any]) -> StoredConfig:
        layers = {
            k: json_format.ParseDict(v, experiment_pb2.Layer()) for k, v in data["layers"].items()
        }
        exps = {
            k: json_format.ParseDict(v, experiment_pb2.Experiment())
            for k, v in data["experiments"].items()
        }
        return StoredConfig(int(data["revision"]), layers, exps)

    async def load(self) -> StoredConfig:
        return self._parse(await asyncio.to_thread(self._read))

    async def revision(self) -> int:
        # The JSON only, read and decoded off the loop: the schedule asks every tick, and
        # parsing every experiment into messages there stalled the loop for ~2 ms.
        return int((await asyncio.to_thread(self._read))["revision"])

    async def write(
        self,
        experiments: list[tuple[experiment_pb2.Experiment, int]],
        layers: list[tuple[experiment_pb2.Layer, int]],
        audit: StagedAudit | None = None,
    ) -> int:
        async with self._lock:
            return await asyncio.to_thread(self._write, experiments, layers, audit)

    async def outbox_before(self, cutoff_us: int, limit: int) -> list[tuple[str, bytes]]:
        staged = (await asyncio.to_thread(self._read)).get("audit_outbox", {})
        old = sorted((v["at_us"], k) for k, v in staged.items() if v["at_us"] < cutoff_us)
        return [(k, base64.b64decode(staged[k]["envelope"])) for _, k in old[:limit]]

    async def delete_outbox(self, event_ids: Sequence[str]) -> None:
        async with self._lock:
            await asyncio.to_thread(self._delete_outbox, event_ids)

    def _delete_outbox(self, event_ids: Sequence[str]) -> None:
        data = self._read()
        staged = data.get("audit_outbox", {})
        removed = [e for e in event_ids if staged.pop(e, None) is not None]
        if removed:
            self._replace(data)

    def _write(
        self,
        experiments: list[tuple[experiment_pb2.Experiment, int]],
        layers: list[tuple[experiment_pb2.Layer, int]],
        audit: StagedAudit | None,
    ) -> int:
        data = self._read()
        stored = self._parse(data)
        for exp, expected in experiments:
            current = stored.experiments.get(exp.id)
            if (current.version if current else 0) != expected:
                raise Aborted(f"experiment {exp.id} changed meanwhile (re-read it and retry)")
        for layer, expected in layers:
            current_layer = stored.layers.get(layer.name)
            if (_layer_version(current_layer) if current_layer else 0) != expected:
                raise Aborted(f"layer {layer.name} changed meanwhile (retry)")
        for exp, _ in experiments:
            data["experiments"][exp.id] = json_format.MessageToDict(
                exp, preserving_proto_field_name=True
            )
        for layer, _ in layers:
            data["layers"][layer.name] = json_format.MessageToDict(
                layer, preserving_proto_field_name=True
            )
        if audit is not None:
            data.setdefault("audit_outbox", {})[audit.event_id] = {
                "at_us": audit.at_us,
                "envelope": base64.b64encode(audit.envelope).decode("ascii"),
            }
        data["revision"] = int(data["revision"]) + 1
        self._replace(data)
        return int(data["revision"])

    def _replace(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    async def close(self) -> None:
        return None


# KEYS[1] = config hash. ARGV: n_exp, n_layer, then per item: field, guard, json; then, when
# a change is audited, the audit record's outbox field and its value (``<µs> <envelope>``).
# Guards: experiments compare the stored JSON's version; layers compare a hash the caller
# computed over the stored JSON (Lua cannot parse protobuf JSON cheaply, so the caller
# sends the stored text's SHA-1 for layers and the expected version for experiments).
_WRITE = """
local n_exp = tonumber(ARGV[1])
local n_layer = tonumber(ARGV[2])
local i = 3
for k = 1, n_exp + n_layer do
  local field, guard = ARGV[i], ARGV[i + 1]
  local current = redis.call('HGET', KEYS[1], field)
  if k <= n_exp then
    local version = '0'
    if current then version = cjson.decode(current)['version'] or '0' end
    if tostring(version) ~= guard then return {err = 'ABORTED ' .. field} end
  else
    local digest = '0'
    if current then digest = redis.sha1hex(current) end
    if digest ~= guard then return {err = 'ABORTED ' .. field} end
  end
  i = i + 3
end
i = 3
for k = 1, n_exp + n_layer do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
  i = i + 3
end
if ARGV[i] then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return redis.call('HINCRBY', KEYS[1], '_revision', 1)
"""


_OUTBOX = "outbox:"


class RedisConfigStore:
    """All configuration in one Redis hash ``<namespace>:config``: ``exp:<id>`` and
    ``layer:<name>`` fields hold the JSON messages, ``_revision`` the revision, and
    ``outbox:<event id>`` the audit outbox (``<µs> <envelope>``): one key, so a change and
    its audit record are one script's writes even on a Redis Cluster."""

    def __init__(self, url: str, namespace: str) -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(url, socket_timeout=5.0)
        self._key = f"{namespace}:config"
        self._url = redact_url(url)  # for messages: never the password
        self._script = self._redis.register_script(_WRITE)

    async def _call(self, coro: Any) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            return await coro
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise Unavailable(f"experiment config store (Redis at {self._url}): {exc}") from None

    async def load(self) -> StoredConfig:
        raw: dict[bytes, bytes] = await self._call(self._redis.hgetall(self._key))
        layers: dict[str, experiment_pb2.Layer] = {}
        exps: dict[str, experiment_pb2.Experiment] = {}
        for field, value in raw.items():
            name = field.decode()
            if name.startswith("layer:"):
                layers[name[6:]] = json_format.Parse(value, experiment_pb2.Layer())
            elif name.startswith("exp:"):
                exps[name[4:]] = json_format.Parse(value, experiment_pb2.Experiment())
        return StoredConfig(int(raw.get(b"_revision", 0)), layers, exps)

    async def revision(self) -> int:
        raw = await self._call(self._redis.hget(self._key, "_revision"))
        return int(raw or 0)

    async def outbox_before(self, cutoff_us: int, limit: int) -> list[tuple[str, bytes]]:
        async def scan() -> list[tuple[bytes, bytes]]:
            return [item async for item in self._redis.hscan_iter(self._key, f"{_OUTBOX}*")]

        staged = []
        for field, value in await self._call(scan()):
            at_us, _, envelope = value.partition(b" ")
            if int(at_us) < cutoff_us:
                staged.append((int(at_us), field.decode()[len(_OUTBOX) :], envelope))
        staged.sort()
        return [(event_id, envelope) for _, event_id, envelope in staged[:limit]]

    async def delete_outbox(self, event_ids: Sequence[str]) -> None:
        if event_ids:
            fields = [f"{_OUTBOX}{e}" for e in event_ids]
            await self._call(self._redis.hdel(self._key, *fields))

    async def write(
        self,
        experiments: list[tuple[experiment_pb2.Experiment, int]],
        layers: list[tuple[experiment_pb2.Layer, int]],
        audit: StagedAudit | None = None,
    ) -> int:
        from redis.exceptions import ResponseError

        current = await self.load()
        args: list[Any] = [len(experiments), len(layers)]
        for exp, expected in experiments:
            args += (f"exp:{exp.id}", str(expected), _dump(exp))
        for layer, expected in layers:
            stored = current.layers.get(layer.name)
            if (_layer_version(stored) if stored else 0) != expected:
                raise Aborted(f"layer {layer.name} changed meanwhile (retry)")
            raw = await self._call(self._redis.hget(self._key, f"layer:{layer.name}"))
            guard = hashlib.sha1(raw).hexdigest() if raw else "0"
            args += (f"layer:{layer.name}", guard, _dump(layer))
        if audit is not None:
            args += (f"{_OUTBOX}{audit.event_id}", b"%d " % audit.at_us + audit.envelope)
        try:
            return int(await self._call(self._script(keys=[self._key], args=args)))
        except ResponseError as exc:
            if "ABORTED" in str(exc):
                raise Aborted(
                    f"{str(exc).split()[-1]} changed meanwhile (re-read and retry)"
                ) from None
            raise

    async def close(self) -> None:
        await self._redis.aclose()


def layer_guard(layer: experiment_pb2.Layer | None) -> int:
    return _layer_version(layer) if layer is not None else 0
