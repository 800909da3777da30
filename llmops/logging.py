"""Structured logging, configured once by the runtime (structlog, JSON lines on stderr)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog

from llmops.redact import scrub_event

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route structlog and the stdlib ``logging`` (grpc, kafka, …) to one JSON stream."""
    # structlog's own events (the access log among them) render with orjson straight to bytes:
    # ~4 µs a line less than the stdlib json module, on every RPC.
    if fmt == "json":
        renderer: Any = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        stdlib_renderer: Any = structlog.processors.JSONRenderer()
        factory: Any = structlog.BytesLoggerFactory(file=sys.stderr.buffer)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        stdlib_renderer = renderer
        factory = structlog.WriteLoggerFactory(file=sys.stderr)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, scrub_event, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                scrub_event,
                stdlib_renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
