"""Deterministic synthetic prediction rows with realistic shape, for benchmarks and tests.

Vectorized with numpy and pyarrow (no Python object per value): a 1 M-row chunk takes about
a second on one core. Shape, all deterministic by seed:

- ~400 models over 60 routes (one task per route) and 6 tenants; traffic per model is
  Zipf-skewed (exponent 1.1), so a few models take most requests; 1-4 live versions per
  model; 30% of models run an experiment (control/treatment 50/50).
- event times uniform over the requested span, chunks in time order (as a sink sees them).
- stage latencies lognormal per stage (model stage dominant, ~0.1-3 s), total = stages +
  overhead; tokens lognormal (prompt ~600, completion ~150); cost from per-model prices;
  8% cache hits (fast, free); 1.5% errors (UNAVAILABLE, DEADLINE_EXCEEDED, ...).
- guardrail input+output checks: ALLOW 96%, FLAG 2%, REDACT 1.5%, BLOCK 0.5%.
- ids: request_id UUIDv7 from the request's start time, written to ``request_uuid`` (the
  table keeps no event_id or user/session ids since migration 0003, and stores the request
  id in parts since 0008); feature-vector hashes over ~2 M entities per
  model (60% of requests use features).
- timings in the ``*_in`` columns the table rounds and encodes (migration 0008).
- log positions: topic ``llmops.predictions.v1``, 96 partitions, offsets increasing per
  partition from ``offset_base``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

TOPIC = "llmops.predictions.v1"
PARTITIONS = 96
STAGES = ("experiment", "features", "retrieval", "prompt", "guardrail_input", "model",
          "guardrail_output", "log")  # fmt: skip
STAGE_MEDIAN_US = np.array([150, 900, 4000, 120, 2500, 0, 3000, 80], dtype=np.float64)
VERDICTS = ("ALLOW", "FLAG", "REDACT", "BLOCK")
VERDICT_P = np.array([0.96, 0.02, 0.015, 0.005])
ERROR_CODES = np.array([14, 4, 8, 13])
ERROR_REASONS = ("", "MODEL_UNAVAILABLE", "DEADLINE_EXCEEDED", "QUOTA_EXHAUSTED", "INTERNAL")
FINDINGS = ("pii.email", "pii.phone", "toxicity.insult", "prompt_injection",
            "grounding.unsupported_claim")  # fmt: skip
MARKETS = ("US", "GB", "DE", "FR", "NL", "ES", "IT", "JP", "AU", "CA", "BR", "MX", "IN", "KR",
           "SE", "NO", "DK", "PL", "PT", "IE", "BE", "CH", "AT", "TR", "AE", "SG", "TH", "ID",
           "ZA", "AR")  # fmt: skip
DEVICES = ("DESKTOP", "MOBILE_WEB", "TABLET", "IOS_APP", "ANDROID_APP", "API")
CLIENTS = ("search-backend", "property-page", "checkout", "app-gateway", "partner-api",
           "cs-tools", "email-batch", "seo-batch")  # fmt: skip
FINISH = ("END_OF_SEQUENCE", "LENGTH", "STOP_SEQUENCE")
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


@dataclass(frozen=True)
class Catalog:
    """The fixed world the rows are drawn from (models, routes, prices)."""

    model_names: list[str]
    model_route: np.ndarray
    model_tenant: np.ndarray
    model_weight: np.ndarray
    model_versions: np.ndarray
    model_in_experiment: np.ndarray
    model_speed: np.ndarray
    price_in_nanos: np.ndarray
    price_out_nanos: np.ndarray
    route_names: list[str]
    route_task: list[str]
    route_retrieval: np.ndarray
    tenants: list[str]


def catalog(seed: int = 7, models: int = 400, routes: int = 60) -> Catalog:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, models + 1) ** 1.1
    rng.shuffle(weights)
    tasks = [f"task_{i:02d}" for i in range(routes)]
    return Catalog(
        model_names=[f"model-{i:03d}" for i in range(models)],
        model_route=rng.integers(0, routes, models),
        model_tenant=rng.choice(6, models, p=[0.4, 0.25, 0.15, 0.1, 0.06, 0.04]),
        model_weight=weights / weights.sum(),
        model_versions=rng.integers(1, 5, models),
        model_in_experiment=rng.random(models) < 0.3,
        model_speed=rng.lognormal(0.0, 0.5, models),
        price_in_nanos=rng.integers(50, 3000, models),
        price_out_nanos=rng.integers(200, 15000, models),
        route_names=[f"route-{i:02d}" for i in range(routes)],
        route_task=tasks,
        route_retrieval=rng.random(routes) < 0.5,
        tenants=[f"storefront-{i}" for i in range(6)],
    )


def _strings(names: list[str] | tuple[str, ...], idx: np.ndarray) -> pa.Array:
    return pa.array(list(names), pa.string()).take(pa.array(idx))


def _fixed_strings(chars: np.ndarray) -> pa.Array:
    """An Arrow string array from an (n, width) uint8 matrix of ASCII characters."""
    n, width = chars.shape
    offsets = np.arange(0, width * (n + 1), width, dtype=np.int32)
    data = np.ascontiguousarray(chars).tobytes()
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _hex(raw: np.ndarray) -> np.ndarray:
    """(n, k) uint8 -> (n, 2k) ASCII hex digits."""
    out = np.empty((raw.shape[0], raw.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2] = _HEX[raw >> 4]
    out[:, 1::2] = _HEX[raw & 15]
    return out


def uuid7_strings(ms: np.ndarray, rng: np.random.Generator) -> pa.Array:
    """Canonical UUIDv7 text for each millisecond timestamp (random bits from ``rng``)."""
    n = len(ms)
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    stamp = ms.astype(">u8").view(np.uint8).reshape(n, 8)[:, 2:]
    raw[:, :6] = stamp
    raw[:, 6] = 0x70 | (raw[:, 6] & 0x0F)
    raw[:, 8] = 0x80 | (raw[:, 8] & 0x3F)
    hexed = _hex(raw)
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    for src, dst, width in ((0, 0, 8), (8, 9, 4), (12, 14, 4), (16, 19, 4), (20, 24, 12)):
        out[:, dst : dst + width] = hexed[:, src : src + width]
    return _fixed_strings(out)


def _hashed_ids(prefix: bytes, keys: np.ndarray, nbytes: int) -> pa.Array:
    """``prefix`` + hex of a 64-bit mix of ``keys`` (splitmix64), ``2*nbytes`` hex chars."""
    x = keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
        y = (x ^ np.uint64(0xD6E8FEB86659FD93)) * np.uint64(0x9E3779B97F4A7C15)
    raw = np.concatenate([x.view(np.uint8).reshape(-1, 8), y.view(np.uint8).reshape(-1, 8)], 1)
    hexed = _hex(raw[:, :nbytes])
    head = np.frombuffer(prefix, dtype=np.uint8)
    return _fixed_strings(np.concatenate([np.broadcast_to(head, (len(keys), len(head))), hexed], 1))


def _list_array(lengths: np.ndarray, values: pa.Array) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _stages(
    rng: np.random.Generator, cat: Catalog, model: np.ndarray, cached: np.ndarray
) -> dict[str, Any]:
    """Stage arrays (names, durations) and the derived model timings."""
    n = len(model)
    retrieval = cat.route_retrieval[cat.model_route[model]]
    present = np.ones((n, len(STAGES)), dtype=bool)
    present[:, 2] = retrieval
    present[cached, 5] = False  # a cache hit skips the model
    medians = np.broadcast_to(STAGE_MEDIAN_US, (n, len(STAGES))).copy()
    medians[:, 5] = 300_000 * cat.model_speed[model]
    dur = (medians * rng.lognormal(0.0, 0.45, (n, len(STAGES)))).astype(np.uint32) + 1
    dur[~present] = 0
    lengths = present.sum(axis=1)
    flat = present.ravel()
    name_idx = np.broadcast_to(np.arange(len(STAGES)), (n, len(STAGES))).ravel()[flat]
    model_us = dur[:, 5].astype(np.int64)
    return {
        "stage_names": _list_array(lengths, _strings(STAGES, name_idx)),
        "stage_durations_us": _list_array(lengths, pa.array(dur.ravel()[flat])),
        "total": dur.sum(axis=1, dtype=np.int64) + rng.lognormal(5.5, 0.4, n).astype(np.int64),
        "model_us": model_us,
    }


def _guardrails(rng: np.random.Generator, n: int) -> dict[str, Any]:
    verdicts = rng.choice(4, (n, 2), p=VERDICT_P)
    worst = verdicts.max(axis=1)  # index order is severity order
    has_finding = worst > 0
    finding = rng.integers(0, len(FINDINGS), n)
    pair = np.full(n, 2, dtype=np.int32)
    return {
        "guardrail_verdict": _strings(VERDICTS, worst),
        "guardrail_policies": _list_array(
            pair, _strings(("input-default", "output-default"), np.tile([0, 1], n))
        ),
        "guardrail_verdicts": _list_array(pair, _strings(VERDICTS, verdicts.ravel())),
        "guardrail_finding_types": _list_array(
            has_finding.astype(np.int32), _strings(FINDINGS, finding[has_finding])
        ),
    }


def _log_offsets(partition: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Offsets increasing per partition in row order; advances ``base`` in place."""
    order = np.argsort(partition, kind="stable")
    sorted_p = partition[order]
    counts = np.bincount(partition, minlength=len(base))
    group_start = np.repeat(np.cumsum(counts) - counts, counts)
    rank = np.arange(len(partition)) - group_start
    out = np.empty(len(partition), dtype=np.uint64)
    out[order] = base[sorted_p] + rank.astype(np.uint64)
    base += counts.astype(np.uint64)
    return out


def predictions_chunk(
    rng: np.random.Generator,
    cat: Catalog,
    n: int,
    start_ms: int,
    end_ms: int,
    offset_base: np.ndarray,
) -> dict[str, Any]:
    """``n`` rows of the ``predictions`` table with event times in [start_ms, end_ms)."""
    ms = np.sort(rng.integers(start_ms, end_ms, n))
    model = rng.choice(len(cat.model_names), n, p=cat.model_weight)
    route = cat.model_route[model]
    cached = rng.random(n) < 0.08
    failed = rng.random(n) < 0.015
    err = rng.integers(0, len(ERROR_CODES), n)
    stages = _stages(rng, cat, model, cached)
    total = np.where(cached, stages["total"] // 20, stages["total"])
    prompt = rng.lognormal(6.4, 0.6, n).astype(np.uint32)
    completion = np.where(failed, 0, rng.lognormal(5.0, 0.7, n)).astype(np.uint32)
    cost = np.where(
        cached, 0, prompt * cat.price_in_nanos[model] + completion * cat.price_out_nanos[model]
    )
    ttft = (stages["model_us"] * rng.uniform(0.2, 0.5, n)).astype(np.int64)
    variant = np.where(cat.model_in_experiment[model], rng.integers(0, 2, n), 2)
    market = np.minimum(rng.zipf(1.5, n) - 1, len(MARKETS) - 1)
    partition = rng.integers(0, PARTITIONS, n)
    features = rng.random(n) < 0.6
    entity = rng.zipf(1.3, n) % 2_000_000 + model.astype(np.int64) * 2_000_000
    fvh = _hashed_ids(b"", entity, 16)
    cols: dict[str, Any] = {
        "event_time": ms.astype("datetime64[ms]"),
        "request_uuid": uuid7_strings(ms - total // 1000, rng),
        "tenant": _strings(cat.tenants, cat.model_tenant[model]),
        "market": _strings(MARKETS, market),
        "route": _strings(cat.route_names, route),
        "task": _strings(cat.route_task, route),
        "model_name": _strings(cat.model_names, model),
        "model_version": (rng.integers(0, 4, n) % cat.model_versions[model] + 1).astype(np.uint32),
        "experiment_id": _strings(
            ["", *[f"exp-{r}" for r in cat.route_names]],
            np.where(variant < 2, route + 1, 0),
        ),
        "variant": _strings(("control", "treatment", ""), variant),
        "total_latency_us_in": total.astype(np.uint32),
        "cache_hit": cached,
        "status_code": np.where(failed, ERROR_CODES[err], 0).astype(np.uint8),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_prompt_tokens": (prompt * (rng.random(n) < 0.3) * 0.5).astype(np.uint32),
        "ttft_us_in": ttft.astype(np.uint32),
        "tpot_us_in": ((stages["model_us"] - ttft) // np.maximum(completion, 1)).astype(np.uint32),
        "queue_us_in": rng.lognormal(6.0, 1.0, n).astype(np.uint32),
        "model_time_us_in": stages["model_us"].astype(np.uint32),
        "cost_nanos": cost.astype(np.int64),
        "cost_currency": _strings(("USD",), np.zeros(n, dtype=np.int64)),
        "stage_names": stages["stage_names"],
        "stage_durations_us_in": stages["stage_durations_us"],
        **_guardrails(rng, n),
        "feature_vector_hash": pa.array(np.where(features, fvh.to_numpy(False), "")),
        "prompt_name": _strings([f"{t}-prompt" for t in cat.route_task], route),
        "prompt_version": rng.integers(1, 4, n).astype(np.uint32),
        "route_target_index": (rng.random(n) < 0.03).astype(np.uint8),
        "locale": _strings([f"en-{m}" for m in MARKETS], market),
        "device": _strings(DEVICES, rng.choice(6, n, p=[0.3, 0.3, 0.05, 0.15, 0.15, 0.05])),
        "client_name": _strings(CLIENTS, rng.integers(0, len(CLIENTS), n)),
        "finish_reason": _strings(
            (*FINISH, "TIMEOUT", "UNSPECIFIED"),
            np.where(failed, np.where(err == 1, 3, 4), rng.choice(3, n, p=[0.8, 0.12, 0.08])),
        ),
        "error_reason": _strings(ERROR_REASONS, np.where(failed, err + 1, 0)),
        "has_payload": rng.random(n) < 0.02,
        "log_topic": _strings((TOPIC,), np.zeros(n, dtype=np.int64)),
        "log_partition": partition.astype(np.uint32),
        "log_offset": _log_offsets(partition, offset_base),
    }
    return cols


def prediction_chunks(
    total: int, chunk: int, *, seed: int, start_ms: int, end_ms: int
) -> Iterator[dict[str, Any]]:
    """``total`` rows in chunks of ``chunk``, chunk k covering the k-th slice of the span."""
    cat = catalog(seed)
    rng = np.random.default_rng(seed + 1)
    base = np.zeros(PARTITIONS, dtype=np.uint64)
    chunks = max(1, -(-total // chunk))
    span = (end_ms - start_ms) / chunks
    for k in range(chunks):
        n = min(chunk, total - k * chunk)
        lo = start_ms + int(k * span)
        hi = start_ms + int((k + 1) * span)
        yield predictions_chunk(rng, cat, n, lo, max(hi, lo + 1), base)
