"""Read plans: a feature service or ref list resolved once per registry, not per request.

A plan names the online-store fields to fetch per record (every requested feature, then
each view's event-time field) and where each value goes in the response. Plans are cached
per registry object: a reload swaps the registry and so empties the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmops.errors import InvalidArgument, NotFound
from services.feature import codec
from services.feature.model import ReadPlan, ViewRead
from services.feature.registry import Registry

MAX_CACHED_REF_LISTS = 10_000
"""Callers with ever-new ref lists get plans built per call past this many."""


class PlanCache:
    """The plans of the registry last seen; emptied when another registry is passed."""

    def __init__(self) -> None:
        self._registry: Registry | None = None
        self._plans: dict[Any, ReadPlan] = {}

    def _of(self, registry: Registry) -> dict[Any, ReadPlan]:
        if registry is not self._registry:
            self._registry, self._plans = registry, {}
        return self._plans

    def for_service(self, registry: Registry, name: str) -> ReadPlan:
        plans = self._of(registry)
        plan = plans.get(name)
        if plan is None:
            refs = registry.service(name).refs
            plan = plans[name] = build_plan(registry, refs, "feature_service")
        return plan

    def for_refs(self, registry: Registry, refs: tuple[tuple[str, str], ...]) -> ReadPlan:
        plans = self._of(registry)
        plan = plans.get(refs)
        if plan is None:
            if not refs:
                raise InvalidArgument("feature_refs", "name at least one feature")
            plan = build_plan(registry, refs, "feature_refs")
            if len(plans) < MAX_CACHED_REF_LISTS:
                plans[refs] = plan
        return plan


def build_plan(registry: Registry, refs: Sequence[tuple[str, str]], where: str) -> ReadPlan:
    """Check ``refs`` (known, online, one entity) and lay out their fields."""
    by_view: dict[str, list[tuple[int, str]]] = {}
    for i, (view_name, feature) in enumerate(refs):
        try:
            view = registry.view(view_name)
            view.feature(feature)
        except NotFound as exc:
            raise NotFound(f"{where}[{i}]: {exc.message}") from None
        if not view.online:
            raise InvalidArgument(f"{where}[{i}]", f"feature view {view_name} is offline only")
        by_view.setdefault(view_name, []).append((i, feature))
    entities = {registry.views[v].entity for v in by_view}
    if len(entities) != 1:
        raise InvalidArgument(
            where, f"views of several entities ({', '.join(sorted(entities))}) in one read"
        )
    fields: list[bytes] = []
    views: list[ViewRead] = []
    names: list[tuple[str, bytes]] = []
    for view_name, wanted in by_view.items():
        slots = []
        for column, feature in wanted:
            slots.append((column, len(fields)))
            fields.append(codec.field_id(view_name, feature))
            names.append((f"{view_name}:{feature}", fields[-1]))
        ts_index = len(fields)
        fields.append(codec.ts_field(view_name))
        names.append((f"_ts:{view_name}", fields[-1]))
        ttl_us = registry.views[view_name].ttl_s * 1_000_000
        views.append(ViewRead(view_name, ttl_us, ts_index, tuple(slots)))
    entity = next(iter(entities))
    codec.check_unique_fields(entity, names)
    return ReadPlan(entity=entity, refs=tuple(refs), fields=tuple(fields), views=tuple(views))
