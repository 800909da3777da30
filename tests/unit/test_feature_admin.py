"""Admin RPCs of the feature service (servicer level) and registry hot reload."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from llmops.errors import InvalidArgument, NotFound
from llmops.v1 import common_pb2, feature_pb2
from services.feature.domain import FeatureMetrics, FeatureStore, RegistryHolder
from services.feature.online import EmbeddedOnlineStore
from services.feature.registry import RegistryError, load_registry
from services.feature.reload import RegistryReloader
from services.feature.servicer import FeatureAdminServicer

REPO_REGISTRY = Path(__file__).resolve().parents[2] / "deploy" / "features" / "storefront.yaml"


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[tuple[FeatureAdminServicer, Path]]:
    registry_dir = tmp_path / "registry"
    registry_dir.mkdir()
    shutil.copy(REPO_REGISTRY, registry_dir / "storefront.yaml")
    holder = RegistryHolder(load_registry([registry_dir]))
    online = EmbeddedOnlineStore(tmp_path / "online.sqlite3")
    store = FeatureStore(holder, online, FeatureMetrics(CollectorRegistry()), namespace="t")
    reloader = RegistryReloader(holder, [registry_dir], interval_s=0.05)
    yield FeatureAdminServicer(store, reloader), registry_dir / "storefront.yaml"
    await reloader.stop()
    await online.close()


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
    before = servicer.registry.revision
    text = path.read_text()
    path.write_text(text.replace("ttl: 1h", "ttl: 2h"))
    dry = await servicer.ReloadRegistry(feature_pb2.ReloadRegistryRequest(dry_run=True), None)
    assert dry.revision == before and list(dry.changed_feature_views) == ["property_pricing"]
    assert servicer.registry.revision == before
    done = await servicer.ReloadRegistry(feature_pb2.ReloadRegistryRequest(), None)
    assert done.previous_revision == before and done.revision != before
    assert servicer.registry.views["property_pricing"].ttl_s == 7200
    assert done.feature_view_count == 4 and done.entity_count == 2
    path.write_text(text.replace("type: DOUBLE", "type: REAL", 1))
    with pytest.raises(RegistryError, match=r"storefront.yaml: feature_views\[property_stats\]"):
        await servicer.ReloadRegistry(feature_pb2.ReloadRegistryRequest(), None)
    assert servicer.registry.revision == done.revision  # the valid registry stays in force


async def test_the_poller_picks_up_changes_and_survives_errors(
    admin: tuple[FeatureAdminServicer, Path],
) -> None:
    servicer, path = admin
    servicer.reloader.start()
    text = path.read_text()
    path.write_text(text.replace("ttl: 1h", "ttl: 3h"))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if servicer.registry.views["property_pricing"].ttl_s == 3 * 3600:
            break
    assert servicer.registry.views["property_pricing"].ttl_s == 3 * 3600
    good = servicer.registry.revision
    path.write_text("feature_views: [")  # broken: logged, the registry stays
    await asyncio.sleep(0.3)
    assert servicer.registry.revision == good
    plan = servicer.store.holder.plan_for_service("property_ranking_v1")
    assert plan.views[2].ttl_us == 3 * 3600 * 1_000_000  # plans follow the registry
