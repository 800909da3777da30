"""Experiments and layers: validation of the admin inputs, and their compiled runtime form.

Experiments and layers are stored as their protobuf messages (the config store keeps
serialized ``Experiment``/``Layer``). Validation errors are INVALID_ARGUMENT naming the
field (``experiment.variants[1].key``). The compiled form is what ``Assign`` reads: every
lookup precomputed (bucket ranges sorted for bisection, variant boundaries in basis
points, targeting compiled to a closure, response templates built), so an assignment is a
few hashes and comparisons.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmops.errors import FailedPrecondition, InvalidArgument
from llmops.v1 import experiment_pb2
from services.experiment import hashing
from services.experiment.metrics import BINARY
from services.experiment.targeting import Predicate, compile_filter

_EXPERIMENT_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_SNAKE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DEFAULT_BUCKETS = 10_000
MAX_BUCKETS = 1_000_000

AB = experiment_pb2.EXPERIMENT_TYPE_AB
BANDIT = experiment_pb2.EXPERIMENT_TYPE_MULTI_ARMED_BANDIT
DRAFT = experiment_pb2.EXPERIMENT_STATUS_DRAFT
RUNNING = experiment_pb2.EXPERIMENT_STATUS_RUNNING
STOPPED = experiment_pb2.EXPERIMENT_STATUS_STOPPED
ARCHIVED = experiment_pb2.EXPERIMENT_STATUS_ARCHIVED


def status_name(status: int) -> str:
    return experiment_pb2.ExperimentStatus.Name(status).removeprefix("EXPERIMENT_STATUS_")  # type: ignore[arg-type]


# -- validation ---------------------------------------------------------------------------


def validate_layer(layer: experiment_pb2.Layer) -> experiment_pb2.Layer:
    """A clean copy of a new layer (output-only fields dropped, defaults filled)."""
    if not _SNAKE.match(layer.name):
        raise InvalidArgument("layer.name", f"{layer.name!r} is not lower_snake_case")
    if not layer.unit_type:
        raise InvalidArgument("layer.unit_type", "required (e.g. user, session)")
    count = layer.bucket_count or DEFAULT_BUCKETS
    if not 1 <= count <= MAX_BUCKETS:
        raise InvalidArgument("layer.bucket_count", f"must be in 1..{MAX_BUCKETS}")
    return experiment_pb2.Layer(
        name=layer.name,
        description=layer.description,
        unit_type=layer.unit_type,
        bucket_count=count,
        salt=layer.salt or layer.name,
        free_buckets=count,
    )


def validate_experiment(
    exp: experiment_pb2.Experiment, layers: Mapping[str, experiment_pb2.Layer]
) -> None:
    """Check an experiment's configuration fields (output-only fields are not looked at)."""
    if not _EXPERIMENT_ID.match(exp.id):
        raise InvalidArgument("experiment.id", f"{exp.id!r} is not lower-kebab-case")
    if exp.type not in (experiment_pb2.EXPERIMENT_TYPE_UNSPECIFIED, AB, BANDIT):
        raise InvalidArgument("experiment.type", f"unknown type {exp.type}")
    if not exp.unit_type:
        raise InvalidArgument("experiment.unit_type", "required (e.g. user, session)")
    layer = layers.get(exp.layer)
    if layer is None:
        known = ", ".join(sorted(layers)) or "none yet: CreateLayer first"
        raise InvalidArgument("experiment.layer", f"unknown layer {exp.layer!r} (known: {known})")
    if layer.unit_type != exp.unit_type:
        raise InvalidArgument(
            "experiment.unit_type",
            f"is {exp.unit_type!r} but layer {layer.name} randomizes {layer.unit_type!r}",
        )
    if not 1 <= exp.traffic_bps <= 10_000:
        raise InvalidArgument("experiment.traffic_bps", "must be in 1..10000 (basis points)")
    _validate_variants(exp.variants)
    keys = {v.key for v in exp.variants}
    for unit, key in exp.overrides.items():
        if key not in keys:
            raise InvalidArgument(f'experiment.overrides["{unit}"]', f"unknown variant {key!r}")
    compile_filter(exp.targeting, "experiment.targeting")
    for i, metric in enumerate(exp.metrics):
        if not _SNAKE.match(metric):
            raise InvalidArgument(f"experiment.metrics[{i}]", f"{metric!r} is not lower_snake_case")
    if not 0 <= exp.alpha < 0.5:
        raise InvalidArgument("experiment.alpha", "must be in [0, 0.5)")
    if exp.type == BANDIT:
        b = exp.bandit
        if not b.reward_metric:
            raise InvalidArgument("experiment.bandit.reward_metric", "required for a bandit")
        if b.reward_metric not in BINARY:
            raise InvalidArgument(
                "experiment.bandit.reward_metric",
                f"must be a binary metric ({', '.join(sorted(BINARY))})",
            )
        if b.min_weight_bps * len(exp.variants) > 10_000:
            raise InvalidArgument(
                "experiment.bandit.min_weight_bps", "times the number of variants exceeds 10000"
            )
        if not 0 <= b.epsilon <= 1:
            raise InvalidArgument("experiment.bandit.epsilon", "must be in [0, 1]")


def _validate_variants(variants: Sequence[experiment_pb2.Variant]) -> None:
    if len(variants) < 2:
        raise InvalidArgument("experiment.variants", "at least two (a control and a treatment)")
    seen: set[str] = set()
    for i, v in enumerate(variants):
        if not _SNAKE.match(v.key):
            raise InvalidArgument(
                f"experiment.variants[{i}].key", f"{v.key!r} is not lower_snake_case"
            )
        if v.key in seen:
            raise InvalidArgument(f"experiment.variants[{i}].key", f"{v.key!r} repeats")
        seen.add(v.key)
    controls = [i for i, v in enumerate(variants) if v.is_control]
    if len(controls) != 1:
        raise InvalidArgument(
            "experiment.variants", f"exactly one variant is_control, got {len(controls)}"
        )
    if sum(v.weight for v in variants) == 0:
        raise InvalidArgument("experiment.variants", "weights sum to 0: no variant gets traffic")


# -- bucket allocation ----------------------------------------------------------------------


def free_ranges(layer: experiment_pb2.Layer) -> list[tuple[int, int]]:
    """Bucket ranges of ``layer`` held by no experiment, ascending."""
    held = sorted((r.start, r.end) for rl in layer.allocations.values() for r in rl.ranges)
    out: list[tuple[int, int]] = []
    cursor = 0
    for start, end in held:
        if start > cursor:
            out.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < layer.bucket_count:
        out.append((cursor, layer.bucket_count))
    return out


def allocate(
    layer: experiment_pb2.Layer, experiment_id: str, traffic_bps: int
) -> list[tuple[int, int]]:
    """Take ``traffic_bps`` of the layer's buckets for an experiment, lowest free first.

    Raises FAILED_PRECONDITION when the layer has too few free buckets (experiments of one
    layer never overlap: that is what makes them mutually exclusive).
    """
    need = -(-traffic_bps * layer.bucket_count // 10_000)  # ceil
    free = free_ranges(layer)
    available = sum(e - s for s, e in free)
    if need > available:
        raise FailedPrecondition(
            f"experiment.traffic_bps: layer {layer.name} has {available} free buckets of "
            f"{layer.bucket_count}, {experiment_id} needs {need}"
        )
    taken: list[tuple[int, int]] = []
    for start, end in free:
        if need == 0:
            break
        take = min(need, end - start)
        taken.append((start, start + take))
        need -= take
    return taken


def hold(
    layer: experiment_pb2.Layer, experiment_id: str, ranges: Iterable[tuple[int, int]]
) -> None:
    entry = layer.allocations[experiment_id]
    del entry.ranges[:]
    for start, end in ranges:
        entry.ranges.add(start=start, end=end)
    layer.free_buckets = sum(e - s for s, e in free_ranges(layer))


def release(layer: experiment_pb2.Layer, experiment_id: str) -> None:
    if experiment_id in layer.allocations:
        del layer.allocations[experiment_id]
    layer.free_buckets = sum(e - s for s, e in free_ranges(layer))


# -- compiled runtime form --------------------------------------------------------------------


def weights_bps(exp: experiment_pb2.Experiment) -> list[int]:
    """The weights in force: a bandit's current weights when set, else the configured ones."""
    if exp.type == BANDIT and exp.current_weights_bps:
        return [int(exp.current_weights_bps.get(v.key, 0)) for v in exp.variants]
    return [int(v.weight) for v in exp.variants]


@dataclass(slots=True)
class CompiledExperiment:
    id: str
    version: int
    layer: str
    unit_type: str
    salt: str
    bandit: bool
    predicate: Predicate
    boundaries: list[int]
    """Cumulative upper bounds in [0, 10000] per variant; point p -> first bound > p."""
    overrides: dict[str, int]
    templates: list[experiment_pb2.Assignment]
    """Per variant, the response entry with everything but bucket/reason/exposure set."""
    keys: list[str] = field(default_factory=list)
    key_index: dict[str, int] = field(default_factory=dict)

    def variant_for(self, unit_id: str) -> int:
        return bisect.bisect_right(self.boundaries, hashing.point(self.salt, unit_id))


def compile_experiment(exp: experiment_pb2.Experiment) -> CompiledExperiment:
    weights = weights_bps(exp)
    total = sum(weights) or 1
    boundaries = []
    running = 0
    for w in weights:
        running += w
        boundaries.append(round(running * hashing.VARIANT_POINTS / total))
    keys = [v.key for v in exp.variants]
    templates = [
        experiment_pb2.Assignment(
            experiment_id=exp.id,
            experiment_version=exp.version,
            layer=exp.layer,
            variant=v.key,
            payload=v.payload,
            is_control=v.is_control,
        )
        for v in exp.variants
    ]
    return CompiledExperiment(
        id=exp.id,
        version=exp.version,
        layer=exp.layer,
        unit_type=exp.unit_type,
        salt=exp.salt or exp.id,
        bandit=exp.type == BANDIT,
        predicate=compile_filter(exp.targeting, "experiment.targeting"),
        boundaries=boundaries,
        overrides={unit: keys.index(key) for unit, key in exp.overrides.items()},
        templates=templates,
        keys=keys,
        key_index={k: i for i, k in enumerate(keys)},
    )


@dataclass(slots=True)
class CompiledLayer:
    name: str
    unit_type: str
    bucket_count: int
    salt: str
    starts: list[int]
    entries: list[tuple[int, int, CompiledExperiment]]
    overrides: dict[str, list[tuple[CompiledExperiment, int]]]
    """unit_id -> (experiment, variant index) for the layer's running experiments."""

    def experiment_at(self, b: int) -> CompiledExperiment | None:
        i = bisect.bisect_right(self.starts, b) - 1
        if i >= 0:
            _start, end, exp = self.entries[i]
            if b < end:
                return exp
        return None


def compile_layer(
    layer: experiment_pb2.Layer, running: Mapping[str, CompiledExperiment]
) -> CompiledLayer:
    entries: list[tuple[int, int, CompiledExperiment]] = []
    overrides: dict[str, list[tuple[CompiledExperiment, int]]] = {}
    for exp_id, ranges in layer.allocations.items():
        exp = running.get(exp_id)
        if exp is None:  # STOPPED experiments keep their buckets but assign nobody
            continue
        entries += [(r.start, r.end, exp) for r in ranges.ranges]
        for unit, index in exp.overrides.items():
            overrides.setdefault(unit, []).append((exp, index))
    entries.sort(key=lambda e: e[0])
    return CompiledLayer(
        name=layer.name,
        unit_type=layer.unit_type,
        bucket_count=layer.bucket_count,
        salt=layer.salt or layer.name,
        starts=[e[0] for e in entries],
        entries=entries,
        overrides=overrides,
    )


@dataclass(slots=True)
class Snapshot:
    """Everything Assign reads, rebuilt whenever the configuration changes."""

    revision: int
    layers: dict[str, experiment_pb2.Layer]
    experiments: dict[str, experiment_pb2.Experiment]
    compiled_layers: dict[str, CompiledLayer]
    by_unit_type: dict[str, list[CompiledLayer]]
    running: dict[str, CompiledExperiment]


def build_snapshot(
    revision: int,
    layers: Mapping[str, experiment_pb2.Layer],
    experiments: Mapping[str, experiment_pb2.Experiment],
) -> Snapshot:
    running = {
        exp_id: compile_experiment(exp)
        for exp_id, exp in experiments.items()
        if exp.status == RUNNING
    }
    compiled = {name: compile_layer(layer, running) for name, layer in layers.items()}
    by_unit: dict[str, list[CompiledLayer]] = {}
    for name in sorted(compiled):
        by_unit.setdefault(compiled[name].unit_type, []).append(compiled[name])
    return Snapshot(revision, dict(layers), dict(experiments), compiled, by_unit, running)


def as_dict(message: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out
