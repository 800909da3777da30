"""Embedding service: embedding models, vector collections (FAISS), filtered search."""

from __future__ import annotations

from services.embedding.service import create

__all__ = ["create"]
