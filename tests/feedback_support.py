"""Shared helpers of the feedback tests: in-memory durable events, a fake text guard, the
repository's signal registry."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from llmops.errors import Unavailable
from llmops.v1 import common_pb2, events_pb2
from llmops.yamlfiles import HotReload
from services.feedback.intake import REDACTED_BLOCK
from services.feedback.signals import SignalTable, load_signals, revision_of

REPO_SIGNALS = Path(__file__).resolve().parents[1] / "deploy" / "feedback"


class Events:
    """DurableEvents in memory: records what was published; can fail or stall."""

    def __init__(self) -> None:
        self.published: list[events_pb2.EventEnvelope] = []
        self.fail: Exception | None = None
        self.stall = False

    async def publish_durable(
        self, envelopes: Sequence[events_pb2.EventEnvelope], timeout_s: float
    ) -> None:
        if self.fail is not None:
            raise self.fail
        if self.stall:
            await asyncio.sleep(timeout_s)
            raise TimeoutError
        self.published.extend(envelopes)


class Guard:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.down = False

    async def redact(
        self, context: common_pb2.RequestContext, texts: Sequence[str], timeout_s: float
    ) -> list[str]:
        self.calls.append(list(texts))
        if self.down:
            raise Unavailable("guardrail: UNAVAILABLE")
        return [
            REDACTED_BLOCK if "kill" in t else t.replace("jane@example.com", "[PII.EMAIL]")
            for t in texts
        ]


def table() -> HotReload[SignalTable]:
    return HotReload("feedback_signals", lambda: load_signals([REPO_SIGNALS]), revision_of)
