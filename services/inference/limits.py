"""Concurrency of one route target: a bounded number of calls in flight, a bounded queue
behind them, and RESOURCE_EXHAUSTED (shedding) beyond it — a slow model then costs callers a
fast, clear refusal instead of a pile of requests that all time out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from llmops.errors import ResourceExhausted


class TargetLimiter:
    def __init__(self, name: str, max_concurrency: int, max_queue: int) -> None:
        self.name = name
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._slots = asyncio.Semaphore(max_concurrency)
        self.waiting = 0
        self.in_flight = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold a slot for the body; yields the seconds spent queued for it."""
        start = time.perf_counter()
        if self._slots.locked():
            if self.waiting >= self.max_queue:
                raise ResourceExhausted(
                    f"{self.name}: {self.in_flight} calls in flight and {self.waiting} queued "
                    f"(max_concurrency {self.max_concurrency}, max_queue {self.max_queue})"
                )
            self.waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        self.in_flight += 1
        try:
            yield time.perf_counter() - start
        finally:
            self.in_flight -= 1
            self._slots.release()
