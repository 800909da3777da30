"""A circuit breaker per engine and a retry budget per route.

**Breaker** (closed → open → half-open): ``failures`` consecutive failures of an engine
(UNAVAILABLE, a timeout) open it for ``cooldown_s``: calls to it fail at once with
UNAVAILABLE, so a route falls back without waiting for a dead backend's timeout. After the
cooldown one trial call goes through (half-open): success closes the breaker, failure opens
it again. Overload (RESOURCE_EXHAUSTED from the target's own queue) is not a failure of the
backend and does not count.

**Retry budget** (as Envoy's and Finagle's): a target that failed with UNAVAILABLE is retried
once, but retries may add at most ``ratio`` of the route's successful calls (plus a small
floor), so retries cannot multiply the load on a backend that is already failing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from llmops.errors import Unavailable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitOpen(Unavailable):
    """The breaker refused the call (not a failure of the backend: it does not count)."""


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        failures: int = 5,
        cooldown_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.state = CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    def before(self) -> None:
        """Raise UNAVAILABLE when the breaker is open (or its one trial call is out)."""
        if self.state == OPEN:
            waited = self._clock() - self._opened_at
            if waited < self.cooldown_s:
                raise CircuitOpen(
                    f"engine {self.name}: circuit open after {self.failures} failures "
                    f"(retrying in {self.cooldown_s - waited:.1f} s)"
                )
            self.state = HALF_OPEN
            self._trial_in_flight = False
        if self.state == HALF_OPEN:
            if self._trial_in_flight:
                raise CircuitOpen(f"engine {self.name}: circuit half-open, trial call in flight")
            self._trial_in_flight = True

    def success(self) -> None:
        self.state, self.failures, self._trial_in_flight = CLOSED, 0, False

    def failure(self) -> None:
        self.failures += 1
        self._trial_in_flight = False
        if self.state == HALF_OPEN or self.failures >= self.threshold:
            self.state = OPEN
            self._opened_at = self._clock()

    def release(self) -> None:
        """The call ended without saying anything about the backend (e.g. the caller left)."""
        self._trial_in_flight = False


@dataclass
class RetryBudget:
    """Retries allowed, as a bucket: it starts with ``tokens`` (a floor for a quiet route),
    each success adds ``ratio``, each retry takes one, it holds at most ``cap``."""

    ratio: float = 0.1
    cap: float = 10.0
    tokens: float = 3.0

    def earn(self) -> None:
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def spend(self) -> bool:
        if self.tokens >= 1.0 - 1e-9:  # ten successes at 0.1 add up to 0.999...
            self.tokens -= 1.0
            return True
        return False
