"""gRPC servicers of the feature service: protobuf -> domain arguments, domain results ->
protobuf, and nothing else (decisions are the domain's, :mod:`services.feature.domain`).

No try/except here: domain errors map to status codes in the shared runtime interceptor.
GetOnlineFeatures' response is written in wire format by :mod:`services.feature.wire`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from llmops.errors import InvalidArgument
from llmops.server import paginate
from llmops.v1 import common_pb2, feature_pb2, feature_pb2_grpc
from services.feature import wire
from services.feature.domain import FeatureStore
from services.feature.model import (
    Cell,
    EntityRow,
    EntitySource,
    Freshness,
    HistoricalRow,
    PushTarget,
    RowInput,
)
from services.feature.registry import EntityDef, ServiceDef, ViewDef

STREAM_BATCH = 1000
"""Rows per GetHistoricalFeatures message."""

_TARGETS: dict[int, PushTarget] = {
    feature_pb2.PUSH_TARGET_UNSPECIFIED: PushTarget.ONLINE_AND_OFFLINE,  # as the contract says
    feature_pb2.PUSH_TARGET_ONLINE: PushTarget.ONLINE,
    feature_pb2.PUSH_TARGET_OFFLINE: PushTarget.OFFLINE,
    feature_pb2.PUSH_TARGET_ONLINE_AND_OFFLINE: PushTarget.ONLINE_AND_OFFLINE,
}


def _target(number: int) -> PushTarget:
    target = _TARGETS.get(number)
    if target is None:
        raise InvalidArgument("target", f"unknown push target {number}")
    return target


def _us(message: Any, field: str) -> int | None:
    """A Timestamp field in µs, None when unset."""
    return getattr(message, field).ToMicroseconds() if message.HasField(field) else None


def _refs(features: feature_pb2.FeatureRefList) -> tuple[tuple[str, str], ...]:
    return tuple((r.feature_view, r.name) for r in features.refs)


def _selection(request: Any) -> tuple[str | None, tuple[tuple[str, str], ...] | None]:
    """The ``features`` oneof: (feature service, None) or (None, refs); (None, None) unset."""
    which = request.WhichOneof("features")
    return (
        request.feature_service if which == "feature_service" else None,
        _refs(request.feature_refs) if which == "feature_refs" else None,
    )


def _entities(request: feature_pb2.GetHistoricalFeaturesRequest) -> EntitySource | None:
    which = request.WhichOneof("entities")
    if which == "entity_table":
        return request.entity_table
    if which == "entity_rows":
        return [EntityRow(r.entity_key, _us(r, "event_time")) for r in request.entity_rows.rows]
    return None


class FeatureServicer(feature_pb2_grpc.FeatureServiceServicer):
    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    async def GetOnlineFeatures(
        self, request: feature_pb2.GetOnlineFeaturesRequest, context: Any
    ) -> feature_pb2.GetOnlineFeaturesResponse:
        service, refs = _selection(request)
        rows = await self.store.read_online(service, refs, request.entity_keys)
        return wire.online_response(rows, request.entity_keys)

    async def PushFeatures(
        self, request: feature_pb2.PushFeaturesRequest, context: Any
    ) -> feature_pb2.PushFeaturesResponse:
        rows = [RowInput(r.entity_key, _us(r, "event_time"), r.values) for r in request.rows]
        result = await self.store.push(request.feature_view, rows, _target(request.target))
        return feature_pb2.PushFeaturesResponse(
            online_rows=result.online_rows,
            offline_rows=result.offline_rows,
            stale_rows=result.stale_rows,
        )

    async def Materialize(
        self, request: feature_pb2.MaterializeRequest, context: Any
    ) -> feature_pb2.MaterializeResponse:
        window = request.window
        done = await self.store.materialize(
            list(request.feature_views), _us(window, "start_time"), _us(window, "end_time")
        )
        response = feature_pb2.MaterializeResponse()
        for m in done:
            result = response.results.add(feature_view=m.view, rows_written=m.rows_written)
            result.watermark.FromMicroseconds(m.watermark_us)
            result.duration.FromNanoseconds(int(m.duration_s * 1e9))
        return response

    async def GetHistoricalFeatures(
        self, request: feature_pb2.GetHistoricalFeaturesRequest, context: Any
    ) -> AsyncIterator[feature_pb2.GetHistoricalFeaturesResponse]:
        service, refs = _selection(request)
        found = await self.store.historical(service, refs, _entities(request))
        rows = found.rows
        for start in range(0, max(len(rows), 1), STREAM_BATCH):
            message = feature_pb2.GetHistoricalFeaturesResponse(
                rows=[_historical_row(r) for r in rows[start : start + STREAM_BATCH]]
            )
            if start == 0:  # the column order, in the first message only
                message.features.extend(_ref_protos(found.refs))
            yield message


def _ref_protos(refs: tuple[tuple[str, str], ...]) -> list[common_pb2.FeatureRef]:
    return [common_pb2.FeatureRef(feature_view=v, name=f) for v, f in refs]


def _historical_row(row: HistoricalRow) -> feature_pb2.HistoricalRow:
    out = feature_pb2.HistoricalRow(entity_key=row.key)
    out.event_time.FromMicroseconds(row.event_time_us)
    for cell in row.cells:
        _feature_value(out.values.add(), cell)
    return out


def _feature_value(out: feature_pb2.FeatureValue, cell: Cell) -> None:
    out.status = wire.STATUS[cell.status]
    if cell.event_time_us is not None:
        out.event_time.FromMicroseconds(cell.event_time_us)
    if cell.value is not None:
        out.value.CopyFrom(cell.value)


# -- admin ------------------------------------------------------------------------------------


def _value_type(name: str) -> Any:
    return common_pb2.ValueType.Value(f"VALUE_TYPE_{name}")


def view_proto(view: ViewDef) -> feature_pb2.FeatureView:
    msg = feature_pb2.FeatureView(
        name=view.name,
        entities=[view.entity],
        online=view.online,
        source=view.source,
        description=view.description,
        owner=view.owner,
        tags=dict(view.tags),
        revision=view.revision,
    )
    msg.ttl.FromSeconds(view.ttl_s)
    for f in view.features:
        msg.features.add(
            name=f.name, type=_value_type(f.type), description=f.description, tags=dict(f.tags)
        )
    return msg


def entity_proto(entity: EntityDef) -> feature_pb2.Entity:
    msg = feature_pb2.Entity(name=entity.name, description=entity.description)
    for k in entity.join_keys:
        msg.join_keys.add(name=k.name, type=_value_type(k.type), description=k.description)
    return msg


def service_proto(service: ServiceDef) -> feature_pb2.FeatureServiceSpec:
    return feature_pb2.FeatureServiceSpec(
        name=service.name,
        features=_ref_protos(service.refs),
        description=service.description,
        owner=service.owner,
        tags=dict(service.tags),
    )


def freshness_proto(fresh: Freshness) -> feature_pb2.ViewFreshness:
    msg = feature_pb2.ViewFreshness(feature_view=fresh.view, stale=fresh.stale)
    msg.ttl.FromSeconds(fresh.ttl_s)
    if fresh.materialized_until_us is not None:
        msg.materialized_until.FromMicroseconds(fresh.materialized_until_us)
    if fresh.last_push_us is not None:
        msg.last_push_time.FromMicroseconds(fresh.last_push_us)
    if fresh.newest_event_us is not None:
        msg.newest_event_time.FromMicroseconds(fresh.newest_event_us)
    if fresh.lag_us is not None:
        msg.lag.FromMicroseconds(fresh.lag_us)
    return msg


class FeatureAdminServicer(feature_pb2_grpc.FeatureAdminServiceServicer):
    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    async def ListFeatureViews(
        self, request: feature_pb2.ListFeatureViewsRequest, context: Any
    ) -> feature_pb2.ListFeatureViewsResponse:
        views = self.store.views(request.entity)
        page, token = paginate(views, request.page_size, request.page_token, "request")
        return feature_pb2.ListFeatureViewsResponse(
            feature_views=[view_proto(v) for v in page], next_page_token=token
        )

    async def GetFeatureView(
        self, request: feature_pb2.GetFeatureViewRequest, context: Any
    ) -> feature_pb2.GetFeatureViewResponse:
        view, entity = self.store.view(request.name)
        return feature_pb2.GetFeatureViewResponse(
            feature_view=view_proto(view), entities=[entity_proto(entity)]
        )

    async def ListFeatureServices(
        self, request: feature_pb2.ListFeatureServicesRequest, context: Any
    ) -> feature_pb2.ListFeatureServicesResponse:
        services = self.store.services()
        page, token = paginate(services, request.page_size, request.page_token, "request")
        return feature_pb2.ListFeatureServicesResponse(
            feature_services=[service_proto(s) for s in page], next_page_token=token
        )

    async def GetFreshness(
        self, request: feature_pb2.GetFreshnessRequest, context: Any
    ) -> feature_pb2.GetFreshnessResponse:
        views = await self.store.freshness(list(request.feature_views))
        return feature_pb2.GetFreshnessResponse(views=[freshness_proto(f) for f in views])

    async def ReloadRegistry(
        self, request: feature_pb2.ReloadRegistryRequest, context: Any
    ) -> feature_pb2.ReloadRegistryResponse:
        done = await self.store.reload_registry(dry_run=request.dry_run)
        return feature_pb2.ReloadRegistryResponse(
            previous_revision=done.previous_revision,
            revision=done.revision,
            feature_view_count=done.feature_views,
            feature_service_count=done.feature_services,
            entity_count=done.entities,
            changed_feature_views=done.changed_views,
        )
