"""Feedback service: explicit and implicit feedback, label queues, dataset export."""

from __future__ import annotations

from services.feedback.service import create

__all__ = ["create"]
