"""Governance service: registry of models/prompts/datasets, policy decisions, hash-chained audit."""

from __future__ import annotations

from services.governance.service import create

__all__ = ["create"]
