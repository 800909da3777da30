"""Prometheus metrics of the inference service (served on its admin port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32)


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "llmops_inference_requests_total",
            "Generate / GenerateStream calls by route and gRPC status.",
            ["route", "status"],
            registry=registry,
        )
        self.ttft = Histogram(
            "llmops_inference_time_to_first_token_seconds",
            "Time from the backend call to the first output token.",
            ["route", "model"],
            buckets=_LATENCY,
            registry=registry,
        )
        self.tpot = Histogram(
            "llmops_inference_time_per_output_token_seconds",
            "Mean time between output tokens after the first.",
            ["route", "model"],
            buckets=_PER_TOKEN,
            registry=registry,
        )
        self.queue = Histogram(
            "llmops_inference_queue_seconds",
            "Time waiting for a slot of the route target (its concurrency limit).",
            ["route", "model"],
            buckets=_LATENCY,
            registry=registry,
        )
        self.tokens = Counter(
            "llmops_inference_tokens_total",
            "Tokens by route and kind (prompt, completion).",
            ["route", "kind"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "llmops_inference_fallbacks_total",
            "Route targets that failed over to the next (by route and failed target index).",
            ["route", "target"],
            registry=registry,
        )
        self.retries = Counter(
            "llmops_inference_retries_total",
            "Target calls retried after UNAVAILABLE (within the route's retry budget).",
            ["route"],
            registry=registry,
        )
        self.breaker = Gauge(
            "llmops_inference_breaker_state",
            "Circuit breaker of each engine: 0 closed, 1 half-open, 2 open.",
            ["engine"],
            registry=registry,
        )
        self.cache = Counter(
            "llmops_inference_cache_total",
            "Response cache lookups by route and outcome (hit, miss, skip).",
            ["route", "outcome"],
            registry=registry,
        )
        self.runs = Counter(
            "llmops_inference_runs_total",
            "Task runs by task and outcome (a gRPC status, or CONTENT_FILTER when blocked).",
            ["task", "outcome"],
            registry=registry,
        )
        self.stage = Histogram(
            "llmops_inference_stage_seconds",
            "Time in each step of a task run.",
            ["task", "stage"],
            buckets=_LATENCY,
            registry=registry,
        )
        self.unlogged = Counter(
            "llmops_inference_predictions_unlogged_total",
            "Predictions served whose event could not be buffered (should stay 0).",
            registry=registry,
        )
