"""Guardrail detectors: each a small module with the same interface (see base.py)."""
