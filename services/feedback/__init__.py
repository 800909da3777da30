"""Feedback service: explicit and implicit feedback, label queues, dataset export.

The plug-in (settings, ports, backends) is in ``plugin.py``; the wiring in ``service.py``.
"""
