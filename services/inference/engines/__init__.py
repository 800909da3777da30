"""Serving backends behind :class:`services.inference.engine.Engine`, one module each; each
imports its client library lazily, so a backend that is not configured costs nothing."""
