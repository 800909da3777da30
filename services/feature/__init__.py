"""Feature service: feature views, online store (Redis / in-process), offline store (ClickHouse)."""

from __future__ import annotations

from services.feature.service import create

__all__ = ["create"]
