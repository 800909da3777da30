"""GrowthBook side of `llmops bench experiment`, run ONLY by the GrowthBook venv's python.

Started by `benchmarks.growthbook_baseline` with a JSON config on stdin:
  {"spec_path": "<bench spec.json>", "calls": <int>}
It must not import llmops: only the stdlib and what `growthbook` installs. The SDK is imported
through importlib (typed Any) so that this file type-checks (mypy strict) in the project venv,
where growthbook is absent.

Mapping of our experiments onto GrowthBook's model (GrowthBook `Experiment` arguments):
  layer                  -> one GrowthBook namespace per layer, named after the layer. GrowthBook
                            hashes (unit id, namespace) to [0, 1) once per namespace, so the
                            experiments of a layer are mutually exclusive, like our layers;
  ranges [[start, end)]  -> namespace=(layer, start/bucket_count, end/bucket_count), which
                            GrowthBook reads as [start, end). Only the FIRST range is used (a
                            GrowthBook namespace is a single interval); experiments with more
                            than one range are counted in the extra `multi_range_experiments`.
                            GrowthBook's namespace hash has 1/1000 resolution (fnv1a32 % 1000),
                            coarser than our 10,000 buckets: fractions finer than 0.001 round;
  (all of the range)     -> coverage=1: the whole namespace slice is in the experiment;
  variants[].weight      -> weights = weight / sum(weights) (GrowthBook wants fractions summing
                            to 1), variations = meta keys = the variant keys;
  unit id                -> hashAttribute="id", attributes["id"] = unit id;
  salt                   -> seed=salt (the experiment hash is fnv1a32 of seed + unit id);
  hashing                -> hashVersion=2, what the GrowthBook app writes for new experiments
                            (namespaces always hash with v1, as in every GrowthBook SDK);
  targeting              -> condition, GrowthBook's MongoDB-style targeting on the attributes:
                            {"<f>_in": [..]} -> {"<f>": {"$in": [..]}}, {"<f>_eq": v} -> {"<f>": v}
                            (also _nin -> $nin, _ne -> $ne); any other key is an error, so a
                            targeting rule is never silently dropped;
  request context        -> the other attributes (market, device, locale).

Hot path: the inline experiment API, one long-lived GrowthBook(attributes=...) per process
(no api_host/client_key: nothing is fetched; no tracking callback, no sticky bucketing), and
per call `set_attributes({"id": unit, **context})` then `run(experiment)` for all 20 prebuilt
Experiment objects. That is the same work as our in-process `assign` (config in memory, all 20
experiments evaluated for one unit, exposures not logged), and the cheapest way the SDK offers.
A GrowthBook-managed deployment would instead receive the experiments as feature rules in its
SDK payload and call `eval_feature(key)` per feature; that path is measured too (same rules,
one feature per experiment) and reported as the `feature_rules_*` extras of the case, because
it is what an application whose experiments live in the GrowthBook app actually pays.

Before measuring, a check pass (the warm-up) verifies the mapping: never two experiments of one
layer for a unit, and, with a context that fails every targeting rule, no targeted experiment.
The measured loops only count assignments (`assigned_per_call`, to compare with
`expected_assigned_per_call` = what the ranges and targeting imply for the bench context).
Progress goes to stderr; the last stdout line is the JSON list of BENCH case dicts.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CASE = "assign_inprocess_20exp"
SYSTEM = "growthbook"
HASH_VERSION = 2

growthbook: Any = importlib.import_module("growthbook")


def log(msg: str) -> None:
    print(f"growthbook: {msg}", file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, the same formula as benchmarks.report.percentile."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# ----------------------------------------------------------------------------- mapping


def condition_of(exp_id: str, targeting: dict[str, Any] | None) -> dict[str, Any] | None:
    """Our targeting dict as a GrowthBook (MongoDB-style) condition; None when untargeted."""
    if not targeting:
        return None
    operators = {"_in": "$in", "_nin": "$nin", "_ne": "$ne"}
    condition: dict[str, Any] = {}
    for key, value in targeting.items():
        field, _, op = key.rpartition("_")
        if not field:
            raise RuntimeError(f"{exp_id}: cannot map targeting key {key!r}")
        if op == "eq":
            condition[field] = value
        elif f"_{op}" in operators:
            condition[field] = {operators[f"_{op}"]: value}
        else:
            raise RuntimeError(f"{exp_id}: no GrowthBook operator for targeting key {key!r}")
    return condition


def experiment_args(exp: dict[str, Any], layers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """GrowthBook Experiment / experiment-rule fields of one of our experiments (JSON-able)."""
    layer = layers.get(exp["layer"])
    if layer is None:
        raise RuntimeError(f"{exp['id']}: unknown layer {exp['layer']!r}")
    if not exp["ranges"]:
        raise RuntimeError(f"{exp['id']}: no bucket range")
    start, end = exp["ranges"][0]
    buckets = int(layer["bucket_count"])
    weights = [float(v["weight"]) for v in exp["variants"]]
    total = sum(weights)
    if len(weights) < 2 or total <= 0:
        raise RuntimeError(f"{exp['id']}: needs >= 2 variants with positive total weight")
    keys = [str(v["key"]) for v in exp["variants"]]
    args: dict[str, Any] = {
        "key": exp["id"],
        "variations": keys,
        "weights": [w / total for w in weights],
        "coverage": 1,
        "namespace": [layer["name"], start / buckets, end / buckets],
        "hashAttribute": "id",
        "hashVersion": HASH_VERSION,
        "seed": exp.get("salt") or exp["id"],
        "meta": [{"key": k} for k in keys],
    }
    condition = condition_of(exp["id"], exp.get("targeting"))
    if condition is not None:
        args["condition"] = condition
    return args


def expected_per_call(
    experiments: list[dict[str, Any]], layers: dict[str, dict[str, Any]], context: dict[str, Any]
) -> float:
    """Experiments per unit that the (first) ranges and the targeting imply for `context`."""
    total = 0.0
    for exp in experiments:
        if not targeting_matches(exp.get("targeting"), context):
            continue
        start, end = exp["ranges"][0]
        total += (end - start) / int(layers[exp["layer"]]["bucket_count"])
    return total


def targeting_matches(targeting: dict[str, Any] | None, context: dict[str, Any]) -> bool:
    for key, value in (targeting or {}).items():
        field, _, op = key.rpartition("_")
        got = context.get(field)
        if op == "eq":
            ok = got == value
        elif op == "ne":
            ok = got != value
        elif op in ("in", "nin"):
            ok = (got in value) == (op == "in")
        else:
            raise RuntimeError(f"no GrowthBook operator for targeting key {key!r}")
        if not ok:
            return False
    return True


def failing_context(experiments: list[dict[str, Any]], context: dict[str, Any]) -> dict[str, Any]:
    """A copy of `context` whose values fail every targeting rule of the spec (best effort)."""
    bad = dict(context)
    for exp in experiments:
        for key, value in (exp.get("targeting") or {}).items():
            field, _, op = key.rpartition("_")
            if op in ("eq", "in"):
                bad[field] = "__llmops_no_match__"
            elif op == "ne":
                bad[field] = value
            elif op == "nin" and value:
                bad[field] = value[0]
    return bad


# ----------------------------------------------------------------------------- measuring


def timed(
    call: Callable[[dict[str, Any]], int], attrs: list[dict[str, Any]]
) -> tuple[list[float], float, int]:
    """call(attributes) for each prebuilt attribute dict; latencies, wall time, assignments."""
    latencies = [0.0] * len(attrs)
    assigned = 0
    perf = time.perf_counter
    started = perf()
    for i, a in enumerate(attrs):
        t0 = perf()
        assigned += call(a)
        latencies[i] = perf() - t0
    return latencies, perf() - started, assigned


def check_mapping(
    results: Callable[[dict[str, Any]], list[tuple[str, bool]]],
    attrs: list[dict[str, Any]],
    layer_of: dict[str, str],
    targeted: set[str],
    bad_context: dict[str, Any],
    what: str,
) -> None:
    """Warm-up with checks: one experiment per layer at most; targeting honoured."""
    for a in attrs:
        layers = [layer_of[key] for key, inside in results(a) if inside]
        if len(layers) != len(set(layers)):
            raise RuntimeError(f"{what}: unit {a['id']} in two experiments of one layer: {layers}")
    for a in attrs[:200]:
        leaked = [k for k, inside in results({**bad_context, "id": a["id"]}) if inside]
        if set(leaked) & targeted:
            raise RuntimeError(
                f"{what}: unit {a['id']} got targeted experiments {sorted(set(leaked) & targeted)}"
                f" with the non-matching context {bad_context}"
            )


def run(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    spec = json.loads(Path(cfg["spec_path"]).read_text())
    calls = max(1, int(cfg["calls"]))
    layers = {layer["name"]: layer for layer in spec["layers"]}
    experiments: list[dict[str, Any]] = spec["experiments"]
    units: list[str] = spec["units"]
    context: dict[str, Any] = spec["context"]
    if not units or not experiments:
        raise RuntimeError("the spec has no units or no experiments")
    version = str(growthbook.__version__)
    log(
        f"growthbook {version}: {len(experiments)} experiments, {len(layers)} layers, {calls} calls"
    )

    args = [experiment_args(exp, layers) for exp in experiments]
    multi_range = [exp["id"] for exp in experiments if len(exp["ranges"]) > 1]
    if multi_range:
        log(f"only the first range is used for {multi_range}")
    layer_of = {exp["id"]: exp["layer"] for exp in experiments}
    targeted = {exp["id"] for exp in experiments if exp.get("targeting")}
    bad_context = failing_context(experiments, context)

    # Built once: the inline Experiment objects (namespace as the tuple the SDK types it as).
    exp_objects = [growthbook.Experiment(**{**a, "namespace": tuple(a["namespace"])}) for a in args]
    gb = growthbook.GrowthBook(attributes={})

    def run_all(attributes: dict[str, Any]) -> int:
        gb.set_attributes(attributes)
        n = 0
        for e in exp_objects:
            if gb.run(e).inExperiment:
                n += 1
        return n

    def run_results(attributes: dict[str, Any]) -> list[tuple[str, bool]]:
        gb.set_attributes(attributes)
        return [(e.key, bool(gb.run(e).inExperiment)) for e in exp_objects]

    # The same experiments as GrowthBook's SDK payload delivers them: one feature per
    # experiment, whose only rule is the experiment rule (JSON shapes: lists, not tuples).
    features = {a["key"]: {"defaultValue": None, "rules": [a]} for a in args}
    gbf = growthbook.GrowthBook(attributes={}, features=features)
    feature_keys = list(features)

    def eval_all(attributes: dict[str, Any]) -> int:
        gbf.set_attributes(attributes)
        n = 0
        for key in feature_keys:
            if gbf.eval_feature(key).source == "experiment":
                n += 1
        return n

    def eval_results(attributes: dict[str, Any]) -> list[tuple[str, bool]]:
        gbf.set_attributes(attributes)
        return [(k, gbf.eval_feature(k).source == "experiment") for k in feature_keys]

    # Prebuilt per-call attributes (our in-process case prebuilds its requests likewise).
    warmup = [{"id": units[i % len(units)], **context} for i in range(max(1, calls // 10))]
    attrs = [{"id": units[i % len(units)], **context} for i in range(calls)]

    started = time.perf_counter()
    check_mapping(run_results, warmup, layer_of, targeted, bad_context, "run")
    log(f"run: warm-up with checks, {len(warmup)} calls in {time.perf_counter() - started:.2f} s")
    lat, wall, assigned = timed(run_all, attrs)
    log(f"run: {calls} calls in {wall:.2f} s")

    started = time.perf_counter()
    check_mapping(eval_results, warmup, layer_of, targeted, bad_context, "eval_feature")
    log(f"eval_feature: warm-up with checks in {time.perf_counter() - started:.2f} s")
    f_lat, f_wall, f_assigned = timed(eval_all, attrs)
    log(f"eval_feature: {calls} calls in {f_wall:.2f} s")
    if f_assigned != assigned:
        raise RuntimeError(f"run and eval_feature disagree: {assigned} vs {f_assigned} assignments")

    expected = expected_per_call(experiments, layers, context)
    per_call = assigned / calls
    distinct = min(calls, len(units))
    # Per layer the indicator "in some experiment" has variance <= 1/4: 5 standard errors.
    tolerance = max(0.02, 5 * math.sqrt(len(layers) / 4 / distinct))
    if abs(per_call - expected) > tolerance:
        log(
            f"WARNING: {per_call:.3f} assignments per call, the ranges and targeting imply "
            f"{expected:.3f} (tolerance {tolerance:.3f})"
        )
    lat.sort()
    f_lat.sort()
    n_exp = len(experiments)
    case: dict[str, Any] = {
        "case": CASE,
        "system": SYSTEM,
        "p50_ms": round(percentile(lat, 50) * 1000, 4),
        "p99_ms": round(percentile(lat, 99) * 1000, 4),
        "rps": round(calls / wall, 1),
        "n": calls,
        "concurrency": 1,
        "assignments_per_s": round(calls * n_exp / wall),
        "growthbook_version": version,
        "assigned_per_call": round(per_call, 3),
        "expected_assigned_per_call": round(expected, 3),
        "experiments": n_exp,
        "api": "GrowthBook.run(Experiment) x experiments, set_attributes per call",
        "hash_version": HASH_VERSION,
        "feature_rules_p50_ms": round(percentile(f_lat, 50) * 1000, 4),
        "feature_rules_p99_ms": round(percentile(f_lat, 99) * 1000, 4),
        "feature_rules_rps": round(calls / f_wall, 1),
    }
    if multi_range:
        case["multi_range_experiments"] = len(multi_range)
    return [case]


def main() -> int:
    cfg = json.loads(sys.stdin.read())
    out = sys.stdout
    # Anything the SDK prints must not land after our JSON line.
    with contextlib.redirect_stdout(sys.stderr):
        cases = run(cfg)
    print(json.dumps(cases), file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
