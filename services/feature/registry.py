"""The feature registry: entities, feature views and feature services declared in YAML files.

A registry is every ``*.yaml`` file of the configured paths (directories or files), loaded
and validated together. Errors name the file, the object and the field, e.g.
``deploy/features/storefront.yaml: feature_views[property_stats].features[stars].type:
unknown type 'INT' (one of INT64, DOUBLE, ...)``. The files are read by the runtime's
versioned-YAML loader (:mod:`llmops.yamlfiles`). A loaded :class:`Registry` is immutable;
reloading builds a new one and swaps it in only if it validates (:func:`hot_registry`).

File format (see deploy/features/README.md for the whole reference)::

    entities:
      - name: property
        join_keys: [{name: property_id, type: INT64}]
    feature_views:
      - name: property_stats
        entity: property
        ttl: 1d                      # max age of a value; 0 = no limit
        source: feat_property_stats  # ClickHouse table of the offline store
        owner: search-ml
        features:
          - {name: review_score, type: DOUBLE}
          - {name: embedding, type: FLOAT_VECTOR, dimension: 64}
    feature_services:
      - name: property_ranking_v1
        features: ["property_stats:*", "property_content:city"]
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from llmops.errors import InvalidArgument, NotFound
from llmops.events.port import ServiceEvents
from llmops.v1 import common_pb2
from llmops.yamlfiles import HotReload, YamlFileError, load_yaml_files

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d|w)?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}

VALUE_TYPES: dict[str, int] = {
    name.removeprefix("VALUE_TYPE_"): number
    for name, number in common_pb2.ValueType.items()
    if number != common_pb2.VALUE_TYPE_UNSPECIFIED
}
"""Registry type names (``INT64``, ``FLOAT_VECTOR``, ...) -> ValueType numbers."""

KEY_TYPES = frozenset({"INT64", "STRING", "BYTES", "BOOL"})
"""Types a join key may have (scalar, with an exact text form)."""


class RegistryError(YamlFileError):
    """The registry files do not validate; ``field`` is ``file: path.to.field``."""


def parse_duration(text: str | int | float) -> int:
    """Seconds of ``90``, ``"90s"``, ``"15m"``, ``"6h"``, ``"30d"``, ``"2w"``."""
    if isinstance(text, bool):
        raise ValueError("a duration, e.g. 90s, 15m, 6h, 30d")
    if isinstance(text, int | float):
        if text < 0 or int(text) != text:
            raise ValueError("a whole, non-negative number of seconds")
        return int(text)
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 15m, 6h, 30d, 2w)")
    return int(match.group(1)) * _UNITS[match.group(2)]


# -- file schema (pydantic) ------------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{value!r} is not lower_snake_case (a-z, 0-9, _; at most 63 chars)")
    return value


def _check_type(value: str) -> str:
    if value not in VALUE_TYPES:
        raise ValueError(f"unknown type {value!r} (one of {', '.join(VALUE_TYPES)})")
    return value


def _check_key_type(value: str) -> str:
    if value not in KEY_TYPES:
        raise ValueError(f"join keys are one of {', '.join(sorted(KEY_TYPES))}, not {value!r}")
    return value


_Name = Annotated[str, AfterValidator(_check_name)]
_Seconds = Annotated[str | int, AfterValidator(parse_duration)]


class _KeySpec(_Spec):
    name: _Name
    type: Annotated[str, AfterValidator(_check_key_type)] = "STRING"
    description: str = ""


class _EntitySpec(_Spec):
    name: _Name
    join_keys: list[_KeySpec] = Field(min_length=1)
    description: str = ""
    online_ttl: _Seconds | None = None


class _FeatureSpec(_Spec):
    name: _Name
    type: Annotated[str, AfterValidator(_check_type)]
    dimension: int | None = Field(None, ge=1, le=65536)
    description: str = ""
    tags: dict[str, str] = {}


class _ViewSpec(_Spec):
    name: _Name
    entity: str
    features: list[_FeatureSpec] = Field(min_length=1)
    ttl: _Seconds = 0
    online: bool = True
    source: str = ""
    description: str = ""
    owner: str = ""
    tags: dict[str, str] = {}


class _ServiceSpec(_Spec):
    name: _Name
    features: list[str] = Field(min_length=1)
    description: str = ""
    owner: str = ""
    tags: dict[str, str] = {}


class _FileSpec(_Spec):
    entities: list[_EntitySpec] = []
    feature_views: list[_ViewSpec] = []
    feature_services: list[_ServiceSpec] = []


# -- the loaded registry ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinKey:
    name: str
    type: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class EntityDef:
    name: str
    join_keys: tuple[JoinKey, ...]
    description: str
    online_ttl_s: int | None
    """Expiry of the entity's online record; None = the longest TTL of its online views."""
    file: str


@dataclass(frozen=True, slots=True)
class FeatureDef:
    name: str
    type: str
    dimension: int | None
    description: str
    tags: Mapping[str, str]

    @property
    def value_type(self) -> int:
        return VALUE_TYPES[self.type]


@dataclass(frozen=True, slots=True)
class ViewDef:
    name: str
    entity: str
    features: tuple[FeatureDef, ...]
    ttl_s: int
    online: bool
    source: str
    description: str
    owner: str
    tags: Mapping[str, str]
    file: str
    revision: str
    """Hash of this view's definition: changes exactly when the view does."""
    by_name: Mapping[str, FeatureDef] = field(default_factory=dict, compare=False)

    def feature(self, name: str) -> FeatureDef:
        found = self.by_name.get(name)
        if found is None:
            raise NotFound(f"feature {self.name}:{name} does not exist")
        return found


@dataclass(frozen=True, slots=True)
class ServiceDef:
    name: str
    refs: tuple[tuple[str, str], ...]
    """(view, feature) in response order, wildcards expanded."""
    description: str
    owner: str
    tags: Mapping[str, str]
    file: str


@dataclass(frozen=True, slots=True)
class Registry:
    entities: Mapping[str, EntityDef]
    views: Mapping[str, ViewDef]
    services: Mapping[str, ServiceDef]
    revision: str
    sources: tuple[str, ...]

    def view(self, name: str) -> ViewDef:
        found = self.views.get(name)
        if found is None:
            raise NotFound(f"feature view {name!r} does not exist")
        return found

    def entity(self, name: str) -> EntityDef:
        found = self.entities.get(name)
        if found is None:
            raise NotFound(f"entity {name!r} does not exist")
        return found

    def service(self, name: str) -> ServiceDef:
        found = self.services.get(name)
        if found is None:
            raise NotFound(f"feature service {name!r} does not exist")
        return found

    def changed_views(self, other: Registry) -> list[str]:
        """Names of the views added, removed or redefined in ``other``, sorted."""
        names = set(self.views) | set(other.views)
        return sorted(n for n in names if _view_revision(self, n) != _view_revision(other, n))

    def resolve_ref(self, text: str) -> list[tuple[str, str]]:
        """``view:feature`` -> [(view, feature)]; ``view:*`` -> every feature of the view."""
        view_name, sep, feature = text.partition(":")
        if not sep or not view_name or not feature:
            raise InvalidArgument("feature_ref", f"{text!r} is not 'view:feature' or 'view:*'")
        view = self.view(view_name)
        if feature == "*":
            return [(view.name, f.name) for f in view.features]
        return [(view.name, view.feature(feature).name)]


def _view_revision(registry: Registry, name: str) -> str | None:
    view = registry.views.get(name)
    return None if view is None else view.revision


def _item_label(item: Mapping[str, Any]) -> str | None:
    """List items are named by their ``name`` in error paths (``features[stars].type``)."""
    name = item.get("name")
    return name if isinstance(name, str) and name else None


def _digest(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def load_registry(paths: Sequence[Path]) -> Registry:
    """Load and validate every registry file under ``paths``; raises :class:`RegistryError`."""
    loaded = load_yaml_files(paths, _FileSpec, RegistryError, label=_item_label)
    entities: dict[str, EntityDef] = {}
    views: dict[str, ViewDef] = {}
    service_specs: list[tuple[str, _ServiceSpec]] = []
    for file in loaded.files:
        label, spec = file.label, file.spec
        for e in spec.entities:
            _unique(entities, e.name, label, "entities", "entity")
            keys = tuple(JoinKey(k.name, k.type, k.description) for k in e.join_keys)
            if len({k.name for k in keys}) != len(keys):
                raise RegistryError(f"{label}: entities[{e.name}].join_keys", "names repeat")
            ttl = e.online_ttl if isinstance(e.online_ttl, int) else None
            entities[e.name] = EntityDef(e.name, keys, e.description, ttl, label)
        for v in spec.feature_views:
            _unique(views, v.name, label, "feature_views", "feature view")
            views[v.name] = _view(v, label)
        service_specs += [(label, s) for s in spec.feature_services]
    for view in views.values():
        where = f"{view.file}: feature_views[{view.name}].entity"
        if view.entity not in entities:
            raise RegistryError(where, f"unknown entity {view.entity!r}")
        key_names = {k.name for k in entities[view.entity].join_keys}
        clash = key_names & set(view.by_name)
        if clash:
            raise RegistryError(
                f"{view.file}: feature_views[{view.name}].features[{sorted(clash)[0]}]",
                "has the name of a join key of its entity",
            )
    draft = Registry(entities, views, {}, "", loaded.sources)
    services: dict[str, ServiceDef] = {}
    for label, s in service_specs:
        _unique(services, s.name, label, "feature_services", "feature service")
        refs: list[tuple[str, str]] = []
        for i, text in enumerate(s.features):
            try:
                refs += draft.resolve_ref(text)
            except (InvalidArgument, NotFound) as exc:
                raise RegistryError(
                    f"{label}: feature_services[{s.name}].features[{i}]", exc.message
                ) from None
        if len(set(refs)) != len(refs):
            raise RegistryError(f"{label}: feature_services[{s.name}].features", "refs repeat")
        services[s.name] = ServiceDef(
            s.name, tuple(refs), s.description, s.owner, dict(s.tags), label
        )
    return Registry(entities, views, services, loaded.revision, loaded.sources)


def hot_registry(paths: Sequence[Path], audit: ServiceEvents | None = None) -> HotReload[Registry]:
    """The registry in force, loaded now (a bad registry raises), reloaded on request or by
    its :meth:`~llmops.yamlfiles.HotReload.watch` task; a registry that does not validate is
    never swapped in."""
    files = list(paths)
    return HotReload(
        "feature_registry", lambda: load_registry(files), _revision, watched=files, audit=audit
    )


def fixed_registry(registry: Registry) -> HotReload[Registry]:
    """A registry that reloads to itself (tests, tools working on one loaded registry)."""
    return HotReload("feature_registry", lambda: registry, _revision)


def _revision(registry: Registry) -> str:
    return registry.revision


def _unique(seen: Mapping[str, Any], name: str, label: str, section: str, what: str) -> None:
    if name in seen:
        first = getattr(seen[name], "file", "?")
        raise RegistryError(f"{label}: {section}[{name}]", f"{what} already defined in {first}")


def _view(v: _ViewSpec, label: str) -> ViewDef:
    features = []
    for f in v.features:
        if f.dimension is not None and f.type != "FLOAT_VECTOR":
            raise RegistryError(
                f"{label}: feature_views[{v.name}].features[{f.name}].dimension",
                "only FLOAT_VECTOR features have a dimension",
            )
        features.append(FeatureDef(f.name, f.type, f.dimension, f.description, dict(f.tags)))
    by_name = {f.name: f for f in features}
    if len(by_name) != len(features):
        raise RegistryError(f"{label}: feature_views[{v.name}].features", "names repeat")
    ttl = v.ttl if isinstance(v.ttl, int) else parse_duration(v.ttl)
    source = v.source or f"feat_{v.name}"
    revision = _digest(v.model_dump_json(), source)
    return ViewDef(
        name=v.name,
        entity=v.entity,
        features=tuple(features),
        ttl_s=ttl,
        online=v.online,
        source=source,
        description=v.description,
        owner=v.owner,
        tags=dict(v.tags),
        file=label,
        revision=revision,
        by_name=by_name,
    )
