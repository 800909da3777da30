"""Prometheus metrics of the feedback service (served on its admin port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class FeedbackMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "llmops_feedback_records_total",
            "Feedback records by signal and result (accepted, duplicate, replaced, refused).",
            ["signal", "result"],
            registry=registry,
        )
