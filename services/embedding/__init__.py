"""Embedding service: embedding models, vector collections (FAISS), filtered search.

The plug-in (settings, ports, backends) is in ``plugin.py``; the wiring in ``service.py``.
"""
