"""Inference service: model routes, LLM generation (TensorRT-LLM, Triton) and task pipelines."""

from __future__ import annotations

from services.inference.service import create

__all__ = ["create"]
