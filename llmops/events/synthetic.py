"""Realistic synthetic events for benchmarks and tests (not used on any serving path).

Shapes follow the storefront traffic the schema is sized for: a few tenants and markets,
hundreds of models with skewed (Zipf-like) traffic, each serving one route of one tenant with
1-3 live versions, 30% of them in an experiment (as :mod:`llmops.clickhouse.synthetic`: a
rollup group collects many requests, as it does in production, instead of one each), seven
pipeline stages, two guardrail checks, token counts and costs in plausible ranges, ~1%
errors. No payload (inputs/output) is set, as for tasks whose logging policy forbids payload
logging.
"""

from __future__ import annotations

import itertools
import random

from llmops.events.ids import uuid7
from llmops.v1 import common_pb2, events_pb2, inference_pb2

_TENANTS = ("acme-travel", "globex-retail", "initech-stays", "umbrella-shop")
_MARKETS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "JP", "BR", "IN")
_ROUTES = ("summary", "highlights", "translate", "intent", "search-rerank", "qa")
_STAGES = (
    "experiment", "features", "retrieval", "prompt", "guardrail_in", "model", "guardrail_out",
)  # fmt: skip
_MODELS = tuple(f"model-{i:03d}" for i in range(400))
_MODEL_INDEXES = tuple(range(len(_MODELS)))
_ZIPF_CUMULATIVE = tuple(itertools.accumulate(1.0 / (rank + 1) for rank in _MODEL_INDEXES))


def prediction_event(rng: random.Random, *, event_time_ns: int) -> events_pb2.PredictionEvent:
    """One PredictionEvent with fresh ids, drawn from ``rng`` (seed it for repeatability)."""
    index = rng.choices(_MODEL_INDEXES, cum_weights=_ZIPF_CUMULATIVE)[0]
    model = _MODELS[index]
    route, tenant = _ROUTES[index % len(_ROUTES)], _TENANTS[index // len(_ROUTES) % len(_TENANTS)]
    in_experiment = index % 10 < 3
    prompt_tokens, completion_tokens = rng.randint(50, 2000), rng.randint(5, 400)
    stages = [
        common_pb2.StageLatency(
            stage=s, duration_us=rng.randint(50, 20_000), start_offset_us=i * 1000
        )
        for i, s in enumerate(_STAGES)
    ]
    total_us = sum(s.duration_us for s in stages)
    failed = rng.random() < 0.01
    ev = events_pb2.PredictionEvent(
        event_id=uuid7(event_time_ns // 1_000_000),
        request_id=uuid7(event_time_ns // 1_000_000),
        tenant=tenant,
        market=rng.choice(_MARKETS),
        route=route,
        task=route,
        model_name=model,
        model_version=rng.randint(1, 1 + index % 3),
        experiment_id="exp-ranking-07" if in_experiment else "",
        variant=rng.choice(("control", "treatment")) if in_experiment else "",
        total_latency_us=total_us,
        cache_hit=rng.random() < 0.15,
        status_code=14 if failed else 0,
        error_reason="MODEL_UNAVAILABLE" if failed else "",
        usage=common_pb2.Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            time_to_first_token_ms=rng.uniform(20, 300),
            time_per_output_token_ms=rng.uniform(5, 40),
            total_time_ms=total_us / 1000,
            cost=common_pb2.Money(currency_code="USD", nanos=rng.randint(1_000, 5_000_000)),
        ),
        stages=stages,
        guardrails=[
            common_pb2.GuardrailSummary(
                direction=d,
                policy="storefront-default",
                policy_version=3,
                verdict=common_pb2.VERDICT_ALLOW,
                latency_us=rng.randint(100, 3000),
            )
            for d in (common_pb2.DIRECTION_INPUT, common_pb2.DIRECTION_OUTPUT)
        ],
        feature_vector_hash=f"{rng.getrandbits(128):032x}",
        prompt_name=f"{route}-prompt",
        prompt_version=rng.randint(1, 5),
        locale="en-US",
        device=rng.choice((common_pb2.DEVICE_DESKTOP, common_pb2.DEVICE_MOBILE_WEB)),
        user_id=f"u:{rng.getrandbits(64):016x}",
        session_id=f"s:{rng.getrandbits(64):016x}",
        finish_reason=inference_pb2.FINISH_REASON_END_OF_SEQUENCE,
        client_name="storefront-search",
    )
    ev.event_time.FromNanoseconds(event_time_ns)
    return ev


def prediction_envelope(rng: random.Random, *, event_time_ns: int) -> events_pb2.EventEnvelope:
    """An EventEnvelope carrying :func:`prediction_event` (key and publish_time left empty)."""
    return events_pb2.EventEnvelope(
        producer="llmops.v1.InferenceService/bench",
        prediction=prediction_event(rng, event_time_ns=event_time_ns),
    )
