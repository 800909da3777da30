"""The feature service through its real wiring: the plug-in's factory
(``services.feature.service:create``) given the context the runtime builds for it (real
``Backends`` on a tmp state directory), served by the runtime's ``GrpcService`` and called
over gRPC. ReloadRegistry (a dry run reports and swaps nothing), the registry's Watch task
(an edited file is picked up; a broken one is counted and the registry stays in force), the
admin RPCs, a push read back with its freshness, and stop cancelling and awaiting the
service's tasks."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from llmops.backends import Backends
from llmops.clients import MeshClient
from llmops.config import load_config
from llmops.mesh import SERVICES
from llmops.scheduler import Watch
from llmops.server.app import GrpcService, build_context
from llmops.v1 import feature_pb2, feature_pb2_grpc
from tests.feature_support import property_key, push_request, python, refs
from tests.support import mesh_env

STOREFRONT = Path(__file__).resolve().parents[2] / "deploy" / "features" / "storefront.yaml"
WATCH = "feature_registry_reload"
LOAD_AUDIT = "feature_registry_audit_load"  # audits the revision the service started with
"""The name of the registry's Watch task (HotReload kind ``feature_registry``)."""
Reload = feature_pb2.ReloadRegistryRequest


@dataclass
class Running:
    service: GrpcService
    registry_file: Path
    channel: grpc.aio.Channel

    @property
    def features(self) -> feature_pb2_grpc.FeatureServiceStub:
        return feature_pb2_grpc.FeatureServiceStub(self.channel)

    @property
    def admin(self) -> feature_pb2_grpc.FeatureAdminServiceStub:
        return feature_pb2_grpc.FeatureAdminServiceStub(self.channel)

    def rewrite(self, old: str, new: str) -> None:
        """Edit the registry file at once (write, then rename over it), as a deploy does."""
        text = self.registry_file.read_text()
        assert old in text
        staged = self.registry_file.with_suffix(".staged")
        staged.write_text(text.replace(old, new, 1))
        staged.replace(self.registry_file)

    def watch_runs(self, outcome: str) -> float:
        """``llmops_task_runs_total`` of the registry watch, from the service's registry."""
        labels = {"task": WATCH, "outcome": outcome}
        value = self.service.ctx.metrics.get_sample_value("llmops_task_runs_total", labels)
        return value or 0.0

    async def ttl_s(self, view: str) -> int:
        reply = await self.admin.GetFeatureView(
            feature_pb2.GetFeatureViewRequest(name=view), timeout=5
        )
        return reply.feature_view.ttl.seconds

    async def until_ttl(self, view: str, seconds: int) -> None:
        """Wait (up to 10 s) until the registry in force gives ``view`` that TTL."""
        for _ in range(200):
            if await self.ttl_s(view) == seconds:
                return
            await asyncio.sleep(0.05)
        runs = (self.watch_runs("ok"), self.watch_runs("error"))
        raise AssertionError(f"{view} never got ttl {seconds}s (watch runs ok, error: {runs})")


@asynccontextmanager
async def running(tmp_path: Path, reload_interval_s: float = 0.05) -> AsyncIterator[Running]:
    """The feature service of an embedded mesh on ``tmp_path`` (no demo data: it would open
    chdb, which this pytest process may hold), on a registry directory of its own."""
    registry = tmp_path / "registry"
    registry.mkdir()
    shutil.copy(STOREFRONT, registry / "storefront.yaml")
    env, ports, _ = mesh_env(tmp_path, insecure=True)
    env.update(
        {
            "LLMOPS__SINK__EMBEDDED": "false",
            "LLMOPS__FEATURES__REGISTRY": json.dumps([str(registry)]),
            "LLMOPS__FEATURES__RELOAD_INTERVAL_S": str(reload_interval_s),
            "LLMOPS__FEATURES__DEMO_DATA": "off",
            "LLMOPS__SERVICES__FEATURE__ADMIN_PORT": "0",
        }
    )
    config = load_config(environ=env)
    plugin = SERVICES["feature"]
    with Backends(config) as backends:
        clients = MeshClient(config)
        ctx = build_context(plugin, config, backends, clients)
        service = GrpcService(plugin.load_factory()(ctx), ctx)
        await service.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['feature']}") as channel:
                yield Running(service, registry / "storefront.yaml", channel)
        finally:
            await service.stop(1.0)
            await clients.close()


async def test_reload_registry_dry_run_reports_and_a_reload_swaps(tmp_path: Path) -> None:
    async with running(tmp_path, reload_interval_s=0) as svc:  # no watch: reloads by RPC only
        assert WATCH not in svc.service.scheduler.running
        first = await svc.admin.ReloadRegistry(Reload(), timeout=5)
        before = first.revision
        assert first.previous_revision == before and not first.changed_feature_views
        counts = (first.feature_view_count, first.feature_service_count, first.entity_count)
        assert counts == (4, 2, 2)
        svc.rewrite("ttl: 1h", "ttl: 2h")  # property_pricing
        dry = await svc.admin.ReloadRegistry(Reload(dry_run=True), timeout=5)
        assert (dry.previous_revision, dry.revision) == (before, before)
        assert list(dry.changed_feature_views) == ["property_pricing"]
        assert (dry.feature_view_count, dry.feature_service_count, dry.entity_count) == counts
        assert await svc.ttl_s("property_pricing") == 3600  # nothing swapped in
        done = await svc.admin.ReloadRegistry(Reload(), timeout=5)
        assert done.previous_revision == before and done.revision not in ("", before)
        assert list(done.changed_feature_views) == ["property_pricing"]
        assert (done.feature_view_count, done.feature_service_count, done.entity_count) == counts
        assert await svc.ttl_s("property_pricing") == 7200
        svc.rewrite("type: DOUBLE", "type: REAL")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await svc.admin.ReloadRegistry(Reload(dry_run=True), timeout=5)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "storefront.yaml: feature_views[property_stats]" in str(refused.value.details())
        assert "unknown type 'REAL'" in str(refused.value.details())
        with pytest.raises(grpc.aio.AioRpcError):
            await svc.admin.ReloadRegistry(Reload(), timeout=5)
        assert await svc.ttl_s("property_pricing") == 7200  # the valid registry stays
        svc.rewrite("type: REAL", "type: DOUBLE")
        again = await svc.admin.ReloadRegistry(Reload(), timeout=5)
        assert again.previous_revision == again.revision == done.revision


async def test_the_watch_task_follows_the_file_and_survives_a_broken_one(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as svc:
        assert WATCH in svc.service.scheduler.running
        # The watch takes its first look at the files once started: an edit before that
        # would be its baseline, not a change.
        await asyncio.sleep(0.5)
        svc.rewrite("ttl: 1h", "ttl: 3h")
        await svc.until_ttl("property_pricing", 3 * 3600)
        assert svc.watch_runs("ok") >= 1
        request = feature_pb2.GetFreshnessRequest(feature_views=["property_pricing"])
        (fresh,) = (await svc.admin.GetFreshness(request, timeout=5)).views
        assert fresh.ttl.seconds == 3 * 3600  # the domain reads the registry now in force
        svc.rewrite("features:", "features: [")  # not YAML any more
        for _ in range(200):
            if svc.watch_runs("error"):
                break
            await asyncio.sleep(0.05)
        assert svc.watch_runs("error") >= 1
        assert await svc.ttl_s("property_pricing") == 3 * 3600  # still in force
        assert WATCH in svc.service.scheduler.running  # a failed run keeps the schedule
        svc.rewrite("features: [", "features:")  # repaired: picked up again
        svc.rewrite("ttl: 3h", "ttl: 4h")
        await svc.until_ttl("property_pricing", 4 * 3600)


async def test_admin_rpcs_and_a_push_read_back(tmp_path: Path) -> None:
    async with running(tmp_path, reload_interval_s=0) as svc:
        views = await svc.admin.ListFeatureViews(
            feature_pb2.ListFeatureViewsRequest(page_size=3), timeout=5
        )
        assert [v.name for v in views.feature_views] == [
            "property_content",
            "property_pricing",
            "property_stats",
        ]
        rest = await svc.admin.ListFeatureViews(
            feature_pb2.ListFeatureViewsRequest(page_token=views.next_page_token), timeout=5
        )
        assert [v.name for v in rest.feature_views] == ["user_profile"]
        got = await svc.admin.GetFeatureView(
            feature_pb2.GetFeatureViewRequest(name="user_profile"), timeout=5
        )
        assert got.entities[0].name == "user" and got.feature_view.revision
        services = await svc.admin.ListFeatureServices(
            feature_pb2.ListFeatureServicesRequest(), timeout=5
        )
        assert "property_ranking_v1" in [s.name for s in services.feature_services]
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await svc.admin.GetFeatureView(feature_pb2.GetFeatureViewRequest(name="x"), timeout=5)
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND

        now_us = time.time_ns() // 1000
        pushed = await svc.features.PushFeatures(
            push_request("property_stats", [(property_key(42), now_us, {"stars": 4})]),
            timeout=5,
        )
        assert (pushed.online_rows, pushed.offline_rows, pushed.stale_rows) == (1, 0, 0)
        read = refs("property_stats:stars", "property_stats:views_7d")
        read.entity_keys.append(property_key(42))
        row = (await svc.features.GetOnlineFeatures(read, timeout=5)).rows[0]
        assert row.entity_key == property_key(42)
        assert [v.status for v in row.values] == [
            feature_pb2.FEATURE_STATUS_PRESENT,
            feature_pb2.FEATURE_STATUS_NOT_FOUND,
        ]
        assert python(row.values[0].value) == 4
        fresh = await svc.admin.GetFreshness(feature_pb2.GetFreshnessRequest(), timeout=5)
        by_view = {f.feature_view: f for f in fresh.views}
        assert set(by_view) == {"property_stats", "property_content", "property_pricing",
                                "user_profile"}  # fmt: skip
        stats = by_view["property_stats"]
        assert stats.newest_event_time.ToMicroseconds() == now_us and not stats.stale
        assert stats.ttl.seconds == 2 * 86400 and stats.HasField("last_push_time")
        assert not by_view["user_profile"].HasField("newest_event_time")


async def test_stop_cancels_and_awaits_the_tasks(tmp_path: Path) -> None:
    async with running(tmp_path) as svc:
        scheduler = svc.service.scheduler
        tasks = [t for t in asyncio.all_tasks() if t.get_name() == f"feature:{WATCH}"]
        assert len(tasks) == 1 and WATCH in scheduler.running
    assert tasks[0].done() and tasks[0].cancelled()  # stopped, awaited
    assert scheduler.running == []
    svc.rewrite("ttl: 1h", "ttl: 5h")  # nobody watches any more
    await asyncio.sleep(0.2)
    assert svc.watch_runs("ok") == 0


@pytest.mark.parametrize(
    ("mode", "demo", "tasks"),
    [
        ("embedded", "auto", [WATCH, LOAD_AUDIT, "demo_data"]),
        ("embedded", "off", [WATCH, LOAD_AUDIT]),
        ("production", "auto", [WATCH, LOAD_AUDIT]),
        ("production", "on", [WATCH, LOAD_AUDIT, "demo_data"]),
    ],
)
def test_create_declares_its_tasks(tmp_path: Path, mode: str, demo: str, tasks: list[str]) -> None:
    env, _, _ = mesh_env(tmp_path, insecure=True)
    env.update({"LLMOPS__MODE": mode, "LLMOPS__FEATURES__DEMO_DATA": demo,
                "LLMOPS__FEATURES__ONLINE_STORE": "embedded"})  # fmt: skip
    config = load_config(environ=env)
    plugin = SERVICES["feature"]
    with Backends(config) as backends:
        definition = plugin.load_factory()(
            build_context(plugin, config, backends, MeshClient(config))
        )
        assert [t.name for t in definition.tasks] == tasks
        watch = definition.tasks[0]
        assert isinstance(watch, Watch) and watch.interval_s == 5.0  # the default interval
        assert list(watch.paths) == [STOREFRONT.parent]
        for close in definition.on_stop:
            asyncio.run(close())
