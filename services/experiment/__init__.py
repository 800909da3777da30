"""Experiment service: experiments, layers, deterministic allocation, bandits and results."""

from __future__ import annotations

from services.experiment.service import create

__all__ = ["create"]
