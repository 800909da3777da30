"""Admin RPCs of the feature service (servicer level) and registry reload.

tests/integration/test_feature_service.py runs the same through the service's real
wiring (its create(), the runtime's watch task).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from llmops.errors import InvalidArgument, NotFound
from llmops.v1 import common_pb2, feature_pb2
from services.feature.domain import FeatureMetrics, FeatureStore
from services.feature.online import EmbeddedOnlineStore
from services.feature.registry import RegistryError, hot_registry
from services.feature.servicer import FeatureAdminServicer
from tests.feature_support import NoOffline

REPO_REGISTRY = Path(__file__).resolve().parents[2] / "deploy" / "features" / "storefront.yaml"


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[tuple[FeatureAdminServicer, Path]]:
    registry_dir = tmp_path / "registry"
    registry_dir.mkdir()
    shutil.copy(REPO_REGISTRY, registry_dir / "storefront.yaml")
    online = EmbeddedOnlineStore(tmp_path / "online.sqlite3")
    store = FeatureStore(
        hot_registry([registry_dir]),
        online,
        NoOffline(),
        FeatureMetrics(CollectorRegistry()),
        namespace="t",
    )
    yield FeatureAdminServicer(store), registry_dir / "storefront.yaml"
    await online.close()


def in_force(servicer: FeatureAdminServicer) -> str:
    return servicer.store.registry.current.revision


async def test_list_and_get_views_and_services(
    admin: tuple[FeatureAdminServicer, Path],
) -> None:
    servicer, _ = admin
    page = await servicer.ListFeatureViews(feature_pb2.ListFeatureViewsRequest(page_size=2), None)
    assert [v.name for v in page.feature_views] == ["property_content", "property_pricing"]
    rest = await servicer.ListFeatureViews(
        feature_pb2.ListFeatureViewsRequest(page_size=2, page_token=page.next_page_token), None
    )
    assert [v.name for v in rest.feature_views] == ["property_stats", "user_profile"]
    assert rest.next_page_token == ""
    users = await servicer.ListFeatureViews(
        feature_pb2.ListFeatureViewsRequest(entity="user"), None
    )
    assert [v.name for v in users.feature_views] == ["user_profile"]
    got = await servicer.GetFeatureView(
        feature_pb2.GetFeatureViewRequest(name="user_profile"), None
    )
    view = got.feature_view
    assert view.ttl.ToSeconds() == 7 * 86400 and view.entities == ["user"]
    types = {f.name: f.type for f in view.features}
    assert types["taste_embedding"] == common_pb2.VALUE_TYPE_FLOAT_VECTOR
    assert got.entities[0].join_keys[0].type == common_pb2.VALUE_TYPE_STRING
    services = await servicer.ListFeatureServices(feature_pb2.ListFeatureServicesRequest(), None)
    ranking = next(s for s in services.feature_services if s.name == "property_ranking_v1")
    assert len(ranking.features) == 20


async def test_admin_bad_input(admin: tuple[FeatureAdminServicer, Path]) -> None:
    servicer, _ = admin
    with pytest.raises(NotFound, match="feature view 'nope'"):
        await servicer.GetFeatureView(feature_pb2.GetFeatureViewRequest(name="nope"), None)
    with pytest.raises(InvalidArgument, match="name"):
        await servicer.GetFeatureView(feature_pb2.GetFeatureViewRequest(), None)
    with pytest.raises(NotFound, match="entity 'hotel'"):
        await servicer.ListFeatureViews(feature_pb2.ListFeatureViewsRequest(entity="hotel"), None)
    with pytest.raises(InvalidArgument, match="page_token"):
        await servicer.ListFeatureViews(
            feature_pb2.ListFeatureViewsRequest(page_token="banana"), None
        )
    with pytest.raises(NotFound, match="feature view 'nope'"):
        await servicer.GetFreshness(feature_pb2.GetFreshnessRequest(feature_views=["nope"]), None)


async def test_reload_swaps_only_a_valid_registry(
    admin: tuple[FeatureAdminServicer, Path],
) -> None:
    servicer, path = admin
    before = in_force(servicer)
    text = path.read_text()
    path.write_text(text.replace("ttl: 1h", "ttl: 2h"))
    dry = await servicer.ReloadRegistry(feature_pb2.ReloadRegistryRequest(dry_run=True), None)
    assert dry.previous_revision == before and dry.revision == before  # reported, not swapped
    assert list(dry.changed_feature_views) == ["property_pricing"]
    assert (dry.feature_view_count, dry.feature_service_count, dry.entity_count) == (4, 2, 2)
    assert in_force(servicer) == before
    assert servicer.store.registry.current.views["property_pricing"].ttl_s == 3600
    done = await servicer.ReloadRegistry(feature_pb2.ReloadRegistryRequest(), None)
    assert done.previous_revision == before and done.revision != before
    assert list(done.changed_feature_views) == ["property_pricing"]
    assert (done.feature_view_count, done.feature_service_count, done.entity_count) == (4, 2, 2)
    assert in_force(servicer) == done.revision
    assert servicer.store.registry.current.views["property_pricing"].ttl_s == 7200
    again = await servicer.ReloadRegistry(feature_pb2.ReloadRegistryRequest(), None)
    assert again.previous_revision == again.revision == done.revision
    assert list(again.changed_feature_views) == []
    path.write_text(text.replace("type: DOUBLE", "type: REAL", 1))
    with pytest.raises(RegistryError, match=r"storefront.yaml: feature_views\[property_stats\]"):
        await servicer.ReloadRegistry(feature_pb2.ReloadRegistryRequest(dry_run=True), None)
    with pytest.raises(RegistryError, match=r"storefront.yaml: feature_views\[property_stats\]"):
        await servicer.ReloadRegistry(feature_pb2.ReloadRegistryRequest(), None)
    assert in_force(servicer) == done.revision  # the valid registry stays in force


async def test_plans_follow_the_registry(admin: tuple[FeatureAdminServicer, Path]) -> None:
    servicer, path = admin
    store = servicer.store
    plan = store.plans.for_service(store.registry.current, "property_ranking_v1")
    assert plan.views[2].ttl_us == 3600 * 1_000_000
    path.write_text(path.read_text().replace("ttl: 1h", "ttl: 3h"))
    await servicer.ReloadRegistry(feature_pb2.ReloadRegistryRequest(), None)
    plan = store.plans.for_service(store.registry.current, "property_ranking_v1")
    assert plan.views[2].ttl_us == 3 * 3600 * 1_000_000
