"""What the runtime knows about the RPC being served, as context variables.

Set by the server interceptor (:mod:`llmops.server.interceptor`) for the duration of each
call and read anywhere below it: the request id (logs and events join up), the deadline
(typed clients propagate what is left of it), and the call itself (who is calling:
:mod:`llmops.identity`). A module of its own so that clients and domains can read them
without importing the server.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from llmops.errors import DeadlineExceeded

T = TypeVar("T")

REQUEST_ID_KEY = "x-request-id"

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "llmops_request_id", default=None
)
deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "llmops_deadline", default=None
)
"""Absolute deadline of the RPC being served, on the ``time.monotonic()`` clock."""
call_var: contextvars.ContextVar[tuple[str, Any] | None] = contextvars.ContextVar(
    "llmops_call", default=None
)
"""(full method, servicer context) of the RPC being served: who is calling (llmops.identity)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of the RPC being served (:mod:`llmops.server.auth`)."""

    id: str
    """``token:<id>`` for a bearer token, the certificate's CN (``service:mesh``) for mTLS."""
    roles: tuple[str, ...]
    via: str
    """How it was proven: ``token`` or ``mtls``."""


principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "llmops_principal", default=None
)
"""The authenticated caller; None outside an RPC or when the mesh runs insecure."""


durable_var: contextvars.ContextVar[dict[Any, tuple[int, float]] | None] = contextvars.ContextVar(
    "llmops_durable", default=None
)
"""Events of durable kinds the RPC being served published: publisher -> (last sequence
number, timeout). The runtime waits for them before it answers (llmops.events.port)."""


def remaining_time() -> float | None:
    """Seconds left before the current RPC's deadline, or None outside an RPC / without one."""
    deadline = deadline_var.get()
    return None if deadline is None else deadline - time.monotonic()


def current_request_id() -> str | None:
    return request_id_var.get()


def for_worker(work: Callable[[], T]) -> Callable[[], T]:
    """``work`` made ready for a worker thread (``loop.run_in_executor``, which, unlike
    ``asyncio.to_thread``, does not carry context variables over).

    It runs in a copy of the RPC's context, so what it calls sees the deadline (a
    ClickHouse query's ``max_execution_time``, the guardrail detectors' budget), the
    request id and the caller. And it does not start at all when the deadline passed while
    it waited for a free worker (:class:`~llmops.errors.DeadlineExceeded`): a thread cannot
    be stopped once it runs, but work nobody waits for any more need not begin, and a write
    its caller was told timed out must not be applied later.
    """
    context = contextvars.copy_context()
    deadline = context.get(deadline_var)

    def run() -> T:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("the deadline passed while the work waited for a worker")
        return context.run(work)

    return run
