"""Inference service: model routes, LLM generation (TensorRT-LLM, Triton) and task pipelines.

The plug-in (settings, ports, backends) is in ``plugin.py``; the wiring in ``service.py``.
"""
