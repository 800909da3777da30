"""Governance service: registry of models/prompts/datasets, policy decisions, hash-chained audit.

The plug-in (settings, ports, backends) is in ``plugin.py``; the wiring in ``service.py``.
"""
