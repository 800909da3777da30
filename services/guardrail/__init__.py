"""Guardrail service: input and output moderation policies, streaming checks over token chunks.

The plug-in (settings, ports, backends) is in ``plugin.py``; the wiring in ``service.py``.
"""
