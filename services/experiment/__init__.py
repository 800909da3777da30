"""Experiment service: experiments, layers, deterministic allocation, bandits and results.

The plug-in (settings, ports, backends) is in ``plugin.py``; the wiring in ``service.py``.
"""
