"""Plain data of the feature service, shared by the domain, its backends and the servicer.

No gRPC messages here. Values and entity keys are the shared ``llmops.v1`` value types of
``common.proto`` (``Value``, ``EntityKey``): the online store keeps a value as its
serialized ``Value`` bytes, so any other form would cost a conversion per value on the read
path. Request and response messages of the feature service never enter the domain.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llmops.v1 import common_pb2


class Status(enum.IntEnum):
    """Status of one served feature value (as Feast's FieldStatus)."""

    PRESENT = 1
    """A value within the view's TTL (the value itself may be an explicit null)."""
    NOT_FOUND = 2
    OUTSIDE_MAX_AGE = 3
    """A value is stored but older than the view's TTL: it is not served."""


class PushTarget(enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"
    ONLINE_AND_OFFLINE = "online_and_offline"

    @property
    def online(self) -> bool:
        return self is not PushTarget.OFFLINE

    @property
    def offline(self) -> bool:
        return self is not PushTarget.ONLINE


# -- writes -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RowInput:
    """One row of a push as the caller sent it (validated by the domain)."""

    key: common_pb2.EntityKey
    event_time_us: int | None
    """None when the caller left it out (refused)."""
    values: Mapping[str, common_pb2.Value]


@dataclass(frozen=True, slots=True)
class PushRow:
    """A validated row: key text (online record), event time µs, typed values, key."""

    key_text: str
    event_time_us: int
    values: Mapping[str, common_pb2.Value]
    key: common_pb2.EntityKey


@dataclass(frozen=True, slots=True)
class PushResult:
    offline_rows: int
    online_rows: int
    stale_rows: int
    """Rows not written online because a newer value was stored."""


# -- online reads -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ViewRead:
    """One view's part of a read plan: which stored fields hold it, where its values go."""

    view: str
    ttl_us: int
    ts_index: int
    """Position of the view's event-time field in the plan's field list; the view's
    features are the ``len(slots)`` fields just before it."""
    slots: tuple[tuple[int, int], ...]
    """(response column, field-list position) per requested feature of the view."""


@dataclass(frozen=True, slots=True, eq=False)
class ReadPlan:
    """How to serve one feature service or ref list under one registry (cached)."""

    entity: str
    refs: tuple[tuple[str, str], ...]
    """(view, feature) per response column."""
    fields: tuple[bytes, ...]
    """The online-store fields to fetch per record."""
    views: tuple[ViewRead, ...]


ViewState = tuple[Status, int]
"""One view of one entity key: its status and the stored event time (µs; 0 = none)."""


@dataclass(frozen=True, slots=True)
class OnlineRows:
    """The result of an online read, one entry per requested key, in request order.

    ``stored[k]`` holds the raw stored fields of key ``k`` in ``plan.fields`` order (a
    feature's serialized ``Value``, or None); ``states[k]`` one :data:`ViewState` per
    ``plan.views``. A feature's status is its view's state, NOT_FOUND where its field is
    None; an OUTSIDE_MAX_AGE value is not to be served. (Rows stay in the stored form: the
    servicer writes them into the response's wire format without an intermediate object
    per value.)
    """

    plan: ReadPlan
    stored: Sequence[Sequence[bytes | None]]
    states: Sequence[Sequence[ViewState]]


# -- admin ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Freshness:
    view: str
    ttl_s: int
    materialized_until_us: int | None
    last_push_us: int | None
    newest_event_us: int | None
    lag_us: int | None
    """Now minus the newest event time (None without one)."""
    stale: bool
    """The newest value is older than the view's TTL."""


@dataclass(frozen=True, slots=True)
class RegistryReload:
    """What ReloadRegistry did: revisions, the counts of the loaded (candidate) registry and
    the views it changes. A dry run reports the same and swaps nothing in."""

    previous_revision: str
    revision: str
    """In force after the call (the previous one for a dry run)."""
    candidate_revision: str
    feature_views: int
    feature_services: int
    entities: int
    changed_views: list[str]
    applied: bool


# -- offline ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Materialized:
    view: str
    rows_written: int
    watermark_us: int
    duration_s: float


@dataclass(frozen=True, slots=True)
class EntityRow:
    """One row of a point-in-time retrieval: an entity key at a time."""

    key: common_pb2.EntityKey
    event_time_us: int | None
    """None when the caller left it out (refused)."""


@dataclass(frozen=True, slots=True)
class AsOf:
    """One view's newest offline row at or before an entity row's time (None: no row)."""

    event_time_us: int | None
    values: Sequence[common_pb2.Value]
    """The requested features of the view, in the order asked."""


@dataclass(frozen=True, slots=True)
class PointInTimeRow:
    """What the offline store found for one entity row, per view asked."""

    key: common_pb2.EntityKey
    event_time_us: int
    views: Sequence[AsOf]


@dataclass(frozen=True, slots=True)
class Cell:
    status: Status
    value: common_pb2.Value | None
    event_time_us: int | None


@dataclass(frozen=True, slots=True)
class HistoricalRow:
    key: common_pb2.EntityKey
    event_time_us: int
    cells: Sequence[Cell]
    """One per requested feature, in request order."""


@dataclass(frozen=True, slots=True)
class Historical:
    refs: tuple[tuple[str, str], ...]
    rows: Sequence[HistoricalRow]


EntitySource = str | Sequence[EntityRow]
"""Entity rows inline, or the name of a ClickHouse table holding them."""
