"""Where the registry lives: the store Protocol and the rows it speaks.

The domain (:mod:`services.governance.registry`) runs each RPC as **one transaction**: it
hands the store a function of a :class:`RegistryTx` (the verbs below); the store runs it
on a worker thread inside a transaction and commits only if it returns. A write that
collides with a concurrent one on a unique key (two first versions of one artifact, the
same edge twice) is retried from the start in a fresh transaction; compare-and-set verbs
(:meth:`RegistryTx.move_alias`, :meth:`RegistryTx.set_state`) report a lost race as
``False`` and leave the decision to the domain. Rows are plain values: kinds, states and
relations by their contract names (``MODEL``, ``APPROVED``, ``TRAINED_ON``), times in UTC
microseconds, JSON documents as text. Nothing is ever deleted: renames, deletions, alias
moves and state changes are rows of their own (only the audit outbox is emptied, once the
event log holds what it staged).

One implementation, :class:`~services.governance.store_sql.SqlRegistryStore`, serves
SQLite (embedded) and PostgreSQL (production) through SQLAlchemy Core.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

T = TypeVar("T")


class RetryTransaction(Exception):
    """Raised inside a write transaction when a compare-and-set lost a race that the caller
    did not guard itself: the store rolls back and runs the work again."""


Side = Literal["upstream", "downstream"]


@dataclass(frozen=True, slots=True)
class ArtifactRow:
    id: int
    kind: str
    name: str
    description: str
    owner: str
    tags_json: str
    created_by: str
    create_time_us: int
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class VersionRow:
    artifact_id: int
    version: int
    uri: str
    content_digest: str
    state: str
    metadata_json: str
    details_json: str
    """``{"<oneof field>": {...}}`` or ``{}``."""
    created_by: str
    create_time_us: int


@dataclass(frozen=True, slots=True)
class AliasEventRow:
    artifact_id: int
    alias: str
    previous_version: int
    version: int
    actor: str
    reason: str
    time_us: int


@dataclass(frozen=True, slots=True)
class StateChangeRow:
    artifact_id: int
    version: int
    previous_state: str
    state: str
    actor: str
    reason: str
    time_us: int


@dataclass(frozen=True, slots=True)
class NameChangeRow:
    artifact_id: int
    old_name: str
    new_name: str
    """Empty for a deletion."""
    actor: str
    reason: str
    time_us: int


@dataclass(frozen=True, slots=True)
class EdgeRow:
    upstream: str
    """Node key: ``artifact:<artifact id>@<version>``, ``route:<name>`` or ``uri:<uri>``."""
    downstream: str
    relation: str
    created_by: str
    create_time_us: int


class RegistryTx(Protocol):
    """The verbs of one registry transaction (synchronous: it runs on a worker thread)."""

    # artifacts
    def artifact(self, kind: str, name: str) -> ArtifactRow | None:
        """By kind and name, deleted ones included (their names stay taken)."""
        ...

    def artifacts_by_id(self, ids: Collection[int]) -> dict[int, ArtifactRow]: ...

    def insert_artifact(
        self,
        kind: str,
        name: str,
        description: str,
        owner: str,
        tags_json: str,
        created_by: str,
        time_us: int,
    ) -> int: ...

    def list_artifacts(
        self, kind: str | None, name_prefix: str, offset: int, limit: int
    ) -> list[ArtifactRow]:
        """Live (not deleted) artifacts ordered by kind then name."""
        ...

    def rename_artifact(self, artifact_id: int, new_name: str) -> None: ...

    def mark_deleted(self, artifact_id: int) -> None: ...

    def insert_name_change(self, row: NameChangeRow) -> None: ...

    def name_changes(self, artifact_id: int) -> list[NameChangeRow]: ...

    # versions
    def version(self, artifact_id: int, version: int, lock: bool = False) -> VersionRow | None:
        """``lock``: hold the row until commit (``SELECT ... FOR UPDATE`` where supported)."""
        ...

    def version_by_digest(self, artifact_id: int, digest: str) -> VersionRow | None: ...

    def latest_versions(self, artifact_ids: Collection[int]) -> dict[int, int]:
        """Highest version number per artifact (absent: none yet)."""
        ...

    def versions(
        self, artifact_id: int, states: Collection[str], offset: int, limit: int
    ) -> list[VersionRow]:
        """Newest first; every state when ``states`` is empty."""
        ...

    def insert_version(self, row: VersionRow) -> None: ...

    def set_state(self, artifact_id: int, version: int, expected: str, state: str) -> bool:
        """Compare-and-set of a version's state; False when it is no longer ``expected``."""
        ...

    def insert_state_change(self, row: StateChangeRow) -> None: ...

    def state_changes(self, artifact_id: int, version: int) -> list[StateChangeRow]:
        """Oldest first."""
        ...

    # aliases
    def aliases(self, artifact_ids: Collection[int]) -> dict[int, dict[str, int]]:
        """Current alias -> version per artifact."""
        ...

    def move_alias(
        self, artifact_id: int, alias: str, expected: int, version: int, time_us: int
    ) -> bool:
        """Compare-and-set: point ``alias`` (now at ``expected``, 0 = absent) at ``version``
        (0 = remove it); False when it no longer points at ``expected``."""
        ...

    def insert_alias_event(self, row: AliasEventRow) -> None: ...

    def alias_events(
        self, artifact_id: int, alias: str | None, until_us: int | None
    ) -> list[AliasEventRow]:
        """Moves of one alias (every alias when None) up to ``until_us`` inclusive (all when
        None), oldest first."""
        ...

    # lineage
    def insert_edge(self, row: EdgeRow) -> bool:
        """Record an edge; False when it exists (same nodes and relation)."""
        ...

    def edges(self, side: Side, keys: Iterable[str]) -> list[EdgeRow]:
        """Edges whose ``side`` node is one of ``keys``, oldest first."""
        ...

    # the audit outbox
    def insert_outbox(self, event_id: str, envelope: bytes, created_at_us: int) -> None:
        """Stage the audit record of the change being written (same transaction)."""
        ...

    def delete_outbox(self, event_ids: Collection[str]) -> None:
        """Forget records the event log holds."""
        ...

    def outbox_before(self, created_before_us: int, limit: int) -> list[tuple[str, bytes]]:
        """(event id, envelope bytes) of staged records older than ``created_before_us``,
        oldest first."""
        ...


class RegistryStore(Protocol):
    """A registry database: transactions run off the event loop."""

    @property
    def description(self) -> str:
        """Where it is, without secrets (for logs), e.g. ``sqlite:///.../registry.sqlite3``."""
        ...

    async def open(self) -> None:
        """Connect and bring the schema to the current migration."""
        ...

    async def read(self, work: Callable[[RegistryTx], T]) -> T:
        """Run ``work`` in a read transaction."""
        ...

    async def write(self, work: Callable[[RegistryTx], T]) -> T:
        """Run ``work`` in a write transaction: commit if it returns, roll back if it
        raises; rerun it (fresh transaction) when a unique key collided with a concurrent
        write or it raised :class:`RetryTransaction`."""
        ...

    async def close(self) -> None: ...
