"""gRPC servicers of the feature service: protobuf in, domain call, protobuf out.

No try/except here: domain errors map to status codes in the shared runtime interceptor.
"""

from __future__ import annotations

from typing import Any

from llmops.errors import InvalidArgument
from llmops.server import paginate
from llmops.v1 import common_pb2, feature_pb2, feature_pb2_grpc
from services.feature.domain import FeatureStore
from services.feature.offline import OfflineStore
from services.feature.registry import Registry, ViewDef
from services.feature.reload import RegistryReloader

_ONLINE = {feature_pb2.PUSH_TARGET_ONLINE, feature_pb2.PUSH_TARGET_ONLINE_AND_OFFLINE}
_OFFLINE = {feature_pb2.PUSH_TARGET_OFFLINE, feature_pb2.PUSH_TARGET_ONLINE_AND_OFFLINE}


class FeatureServicer(feature_pb2_grpc.FeatureServiceServicer):
    def __init__(self, store: FeatureStore, offline: OfflineStore) -> None:
        self.store = store
        self.offline = offline

    async def GetOnlineFeatures(
        self, request: feature_pb2.GetOnlineFeaturesRequest, context: Any
    ) -> feature_pb2.GetOnlineFeaturesResponse:
        return await self.store.get_online(request)

    async def PushFeatures(
        self, request: feature_pb2.PushFeaturesRequest, context: Any
    ) -> feature_pb2.PushFeaturesResponse:
        target = request.target or feature_pb2.PUSH_TARGET_ONLINE_AND_OFFLINE
        if target not in _ONLINE | _OFFLINE:
            raise InvalidArgument("target", f"unknown push target {target}")
        view, rows = self.store.validate_push(request)
        response = feature_pb2.PushFeaturesResponse()
        # Offline first: it is the record of truth the online store can be rebuilt from.
        if target in _ONLINE and not view.online:
            raise InvalidArgument("target", f"feature view {view.name} is offline only")
        if target in _OFFLINE:
            entity = self.store.holder.registry.entities[view.entity]
            response.offline_rows = await self.offline.write(view, entity, rows)
        if target in _ONLINE:
            online = [(r.key_text, r.event_time_us, r.values) for r in rows]
            response.online_rows, response.stale_rows = await self.store.write_online(view, online)
        return response

    async def Materialize(
        self, request: feature_pb2.MaterializeRequest, context: Any
    ) -> feature_pb2.MaterializeResponse:
        results = await self.offline.materialize(self.store, request)
        return feature_pb2.MaterializeResponse(results=results)

    async def GetHistoricalFeatures(
        self, request: feature_pb2.GetHistoricalFeaturesRequest, context: Any
    ) -> Any:
        async for message in self.offline.historical(self.store.holder, request):
            yield message


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
        msg.features.append(
            feature_pb2.FieldSpec(
                name=f.name,
                type=_value_type(f.type),
                description=f.description,
                tags=dict(f.tags),
            )
        )
    return msg


class FeatureAdminServicer(feature_pb2_grpc.FeatureAdminServiceServicer):
    def __init__(self, store: FeatureStore, reloader: RegistryReloader) -> None:
        self.store = store
        self.reloader = reloader

    @property
    def registry(self) -> Registry:
        return self.store.holder.registry

    async def ListFeatureViews(
        self, request: feature_pb2.ListFeatureViewsRequest, context: Any
    ) -> feature_pb2.ListFeatureViewsResponse:
        reg = self.registry
        if request.entity:
            reg.entity(request.entity)  # NOT_FOUND for an unknown entity
        views = [
            reg.views[n]
            for n in sorted(reg.views)
            if not request.entity or reg.views[n].entity == request.entity
        ]
        page, token = paginate(views, request.page_size, request.page_token, "request")
        return feature_pb2.ListFeatureViewsResponse(
            feature_views=[view_proto(v) for v in page], next_page_token=token
        )

    async def GetFeatureView(
        self, request: feature_pb2.GetFeatureViewRequest, context: Any
    ) -> feature_pb2.GetFeatureViewResponse:
        if not request.name:
            raise InvalidArgument("name", "required")
        view = self.registry.view(request.name)
        entity = self.registry.entities[view.entity]
        return feature_pb2.GetFeatureViewResponse(
            feature_view=view_proto(view),
            entities=[
                feature_pb2.Entity(
                    name=entity.name,
                    description=entity.description,
                    join_keys=[
                        feature_pb2.FieldSpec(
                            name=k.name,
                            type=_value_type(k.type),
                            description=k.description,
                        )
                        for k in entity.join_keys
                    ],
                )
            ],
        )

    async def ListFeatureServices(
        self, request: feature_pb2.ListFeatureServicesRequest, context: Any
    ) -> feature_pb2.ListFeatureServicesResponse:
        reg = self.registry
        services = [reg.services[n] for n in sorted(reg.services)]
        page, token = paginate(services, request.page_size, request.page_token, "request")
        return feature_pb2.ListFeatureServicesResponse(
            feature_services=[
                feature_pb2.FeatureServiceSpec(
                    name=s.name,
                    features=[common_pb2.FeatureRef(feature_view=v, name=f) for v, f in s.refs],
                    description=s.description,
                    owner=s.owner,
                    tags=dict(s.tags),
                )
                for s in page
            ],
            next_page_token=token,
        )

    async def GetFreshness(
        self, request: feature_pb2.GetFreshnessRequest, context: Any
    ) -> feature_pb2.GetFreshnessResponse:
        views = await self.store.freshness(list(request.feature_views))
        return feature_pb2.GetFreshnessResponse(views=views)

    async def ReloadRegistry(
        self, request: feature_pb2.ReloadRegistryRequest, context: Any
    ) -> feature_pb2.ReloadRegistryResponse:
        outcome = await self.reloader.reload(dry_run=request.dry_run)
        reg = outcome.registry
        return feature_pb2.ReloadRegistryResponse(
            previous_revision=outcome.previous_revision,
            revision=outcome.revision,
            feature_view_count=len(reg.views),
            feature_service_count=len(reg.services),
            entity_count=len(reg.entities),
            changed_feature_views=outcome.changed_views,
        )


def _value_type(name: str) -> Any:
    return common_pb2.ValueType.Value(f"VALUE_TYPE_{name}")
