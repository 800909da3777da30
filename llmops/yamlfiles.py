"""Versioned YAML files: discovery, parsing with precise errors, a revision, hot reload.

Used by every service whose configuration lives in reviewed YAML files (the feature
registry, guardrail policies; inference routes and tasks next). Two pieces:

- :func:`load_yaml_files` reads every ``*.yaml``/``*.yml`` file of the given paths
  (directories are not recursed), validates each against a pydantic model and returns them
  with a content digest (the *revision*: it changes exactly when a file's bytes, name or the
  set of files change). Errors name the file and the field, labelling list items by their
  ``name`` (and ``version``), e.g. ``storefront.yaml: policies[input@2].detectors[1].action:
  unknown action 'DROP'``.
- :class:`HotReload` holds the compiled object in force and swaps in a new one only if it
  compiles; a dry run compiles and reports without swapping. Its :meth:`HotReload.watch`
  is the runtime :class:`~llmops.scheduler.Watch` that reloads on file changes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import structlog
import yaml
from pydantic import BaseModel, ValidationError

from llmops.errors import InvalidArgument, ResourceExhausted
from llmops.events.port import ServiceEvents
from llmops.identity import current_identity, system
from llmops.scheduler import YAML_SUFFIXES, Background, FileStamp, Watch, file_stamp
from llmops.v1 import events_pb2

log = structlog.get_logger("llmops.yamlfiles")

AUDIT_DURABLE_TIMEOUT_S = 30.0
"""How long a reload waits for its audit record to be in the event log before it swaps
anyway (the record was accepted: it is delivered later, at-least-once)."""

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class YamlFileError(InvalidArgument):
    """A file does not validate; ``field`` is ``file: path.to.field``. Subclass it per kind so
    callers can catch one service's errors."""


@dataclass(frozen=True, slots=True)
class YamlFile(Generic[M]):
    path: Path
    spec: M
    data: Any
    """The parsed YAML, for checks that need the raw document."""

    @property
    def label(self) -> str:
        return str(self.path)


@dataclass(frozen=True, slots=True)
class YamlFiles(Generic[M]):
    files: tuple[YamlFile[M], ...]
    revision: str
    """12 hex digits of SHA-256 over every file's name and bytes, in path order."""

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(f.label for f in self.files)


def yaml_files(paths: Iterable[Path], error: type[YamlFileError] = YamlFileError) -> list[Path]:
    """The YAML files of ``paths`` (directories are not recursed), sorted per directory."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix in YAML_SUFFIXES)
        elif p.exists():
            files.append(p)
        else:
            raise error(str(p), "no such file or directory")
    return files


def item_label(item: Mapping[str, Any]) -> str | None:
    """How a list item is named in error paths: ``name``, or ``name@version`` when it has one."""
    name = item.get("name")
    if not isinstance(name, str) or not name:
        return None
    return f"{name}@{item['version']}" if "version" in item else name


def describe_location(
    loc: Sequence[int | str],
    data: Any,
    label: Callable[[Mapping[str, Any]], str | None] = item_label,
) -> str:
    """A pydantic error location as ``section[item].field``, items labelled by ``label``."""
    parts: list[str] = []
    node = data
    for step in loc:
        if isinstance(step, int):
            item = node[step] if isinstance(node, list) and step < len(node) else None
            name = label(item) if isinstance(item, Mapping) else None
            if parts:
                parts[-1] += f"[{name}]" if name else f"[{step}]"
            else:
                parts.append(f"[{name or step}]")
            node = item
        else:
            parts.append(str(step))
            node = node.get(step) if isinstance(node, Mapping) else None
    return ".".join(parts)


def parse_yaml_file(
    path: Path,
    model: type[M],
    error: type[YamlFileError] = YamlFileError,
    label: Callable[[Mapping[str, Any]], str | None] = item_label,
    text: str | None = None,
) -> YamlFile[M]:
    """Read, parse and validate one file; every problem is ``error`` naming file and field."""
    where = str(path)
    try:
        raw = path.read_text(encoding="utf-8") if text is None else text
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as exc:
        raise error(where, f"not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(where, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(data, dict):
        raise error(where, "the top level must be a mapping")
    return YamlFile(path, validate_document(data, model, where, error, label), data)


def validate_document(
    data: Mapping[str, Any],
    model: type[M],
    where: str,
    error: type[YamlFileError] = YamlFileError,
    label: Callable[[Mapping[str, Any]], str | None] = item_label,
) -> M:
    """``data`` (a parsed file, or a document sent inline, e.g. a candidate policy) validated
    against ``model``; the first problem is ``error`` naming ``where`` and the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = describe_location(first["loc"], data, label) or "(top level)"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise error(f"{where}: {field}", message) from None


def load_yaml_files(
    paths: Iterable[Path],
    model: type[M],
    error: type[YamlFileError] = YamlFileError,
    label: Callable[[Mapping[str, Any]], str | None] = item_label,
) -> YamlFiles[M]:
    """Every YAML file of ``paths``, validated against ``model``, with their revision."""
    digest = hashlib.sha256()
    loaded: list[YamlFile[M]] = []
    for path in yaml_files(paths, error):
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise error(str(path), f"cannot read: {exc.strerror}") from None
        digest.update(path.name.encode() + b"\0" + raw + b"\0")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(str(path), f"cannot read: not UTF-8 ({exc.reason})") from None
        loaded.append(parse_yaml_file(path, model, error, label, text))
    return YamlFiles(tuple(loaded), digest.hexdigest()[:12])


@dataclass(frozen=True, slots=True)
class Reloaded(Generic[T]):
    """What one reload did. ``applied`` is False for a dry run or when nothing changed."""

    candidate: T
    previous: T
    """What was in force before the call (compare it with ``candidate``: another reload may
    have swapped in the meantime, so never compare with ``HotReload.current``)."""
    previous_revision: str
    revision: str
    """The revision in force after the call (the previous one for a dry run)."""
    candidate_revision: str
    applied: bool


class HotReload(Generic[T]):
    """The compiled configuration in force, replaced only by one that compiles.

    ``load`` reads and compiles the files (raising a :class:`YamlFileError` subclass);
    ``revision`` tells a compiled object's revision; ``watched`` are the paths ``load``
    reads, stamped before each load so that :meth:`watch` misses no change made while or
    after they were read. The first load happens here, so a bad file stops start-up.

    With ``audit`` (the service's ``ctx.events``) every applied reload is an audit record
    ``<resource_type>.reload`` (before/after revision; the actor is the caller of the
    reload RPC, or ``system:<kind>`` for the file watch), in the event log *before* the new
    configuration is swapped in — a process that dies in between comes back with the same
    files, so the trail never misses a change it serves. A reload whose record cannot be
    published is refused before anything is swapped (RESOURCE_EXHAUSTED). The revision a
    process starts with is audited too (``<resource_type>.load``, by :meth:`load_audit`):
    files changed while no process ran show up as a load of another revision.
    """

    def __init__(
        self,
        kind: str,
        load: Callable[[], T],
        revision: Callable[[T], str],
        watched: Sequence[Path] = (),
        audit: ServiceEvents | None = None,
        resource_type: str = "",
    ) -> None:
        self.kind = kind
        self._audit = audit
        self._resource_type = resource_type or kind
        self._load = load
        self._revision = revision
        self._watched = tuple(watched)
        self._stamp: FileStamp = file_stamp(self._watched)
        self.current: T = load()
        self._started_with = self._revision(self.current)
        self._lock = asyncio.Lock()

    @property
    def revision(self) -> str:
        return self._revision(self.current)

    async def reload(self, *, dry_run: bool = False) -> Reloaded[T]:
        """Load and compile the files (off the event loop); swap them in unless ``dry_run``."""
        async with self._lock:
            stamp = await asyncio.to_thread(file_stamp, self._watched)
            candidate = await asyncio.to_thread(self._load)
            before = self.current
            previous = self._revision(before)
            fresh = self._revision(candidate)
            applied = not dry_run and fresh != previous
            if applied:
                record = self._audit_record(previous, fresh)
                try:
                    if record is not None:
                        await self._publish(record)
                except asyncio.CancelledError:
                    # Cancelled while waiting for the log (the caller's deadline): the record
                    # was accepted before that wait, so the change it records goes ahead.
                    self._swap(candidate, stamp, previous, fresh)
                    raise
                self._swap(candidate, stamp, previous, fresh)
            return Reloaded(
                candidate=candidate,
                previous=before,
                previous_revision=previous,
                revision=self.revision,
                candidate_revision=fresh,
                applied=applied,
            )

    def _swap(self, candidate: T, stamp: FileStamp, previous: str, fresh: str) -> None:
        self.current = candidate
        self._stamp = stamp
        log.info(f"{self.kind}_reloaded", previous=previous, revision=fresh)

    async def _publish(self, record: events_pb2.EventEnvelope) -> None:
        """``record`` into the event log (ResourceExhausted: not accepted, nothing done)."""
        assert self._audit is not None
        try:
            await self._audit.publish_durable([record], AUDIT_DURABLE_TIMEOUT_S)
        except TimeoutError as exc:  # accepted: delivered later; the change goes ahead
            log.warning(f"{self.kind}_audit_not_yet_durable", error=str(exc))

    def load_audit(self) -> list[Background]:
        """The service's task that audits the revision it started with
        (``<resource_type>.load``, actor ``system:<kind>``, once it serves); none without
        ``audit``."""
        if self._audit is None:
            return []
        audit = self._audit

        async def audit_load() -> None:
            record = audit.audit_event(
                f"{self._resource_type}.load",
                self._resource_type,
                self.kind,
                version=self._started_with,
                after={"revision": self._started_with},
                actor=system(self.kind),
            )
            await self._publish(record)

        return [Background(f"{self.kind}_audit_load", audit_load)]

    def _audit_record(self, previous: str, fresh: str) -> events_pb2.EventEnvelope | None:
        if self._audit is None:
            return None
        if not self._audit.has_room(1):
            raise ResourceExhausted(
                f"{self.kind} not reloaded: the event buffer has no room for its audit record; "
                "retry later"
            )
        return self._audit.audit_event(
            f"{self._resource_type}.reload",
            self._resource_type,
            self.kind,
            version=fresh,
            before={"revision": previous},
            after={"revision": fresh},
            actor=current_identity() or system(self.kind),
        )

    def watch(self, paths: Sequence[Path], interval_s: float) -> Watch:
        """The runtime task that reloads when a file under ``paths`` changes; a file that
        does not compile is reported by the scheduler and the revision in force stays."""

        async def on_change() -> None:
            await self.reload()

        paths = list(paths)
        baseline = self._stamp if tuple(paths) == self._watched else None
        return Watch(f"{self.kind}_reload", paths, interval_s, on_change, baseline=baseline)
