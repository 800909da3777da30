"""Guardrail service: input and output moderation policies, streaming checks over token chunks."""

from __future__ import annotations

from services.guardrail.service import create

__all__ = ["create"]
