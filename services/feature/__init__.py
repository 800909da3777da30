"""Feature service: feature views, online store (Redis / in-process), offline store (ClickHouse).

The plug-in (settings, ports, backends) is in ``plugin.py``; the wiring in ``service.py``.
"""
