"""`kill -9` of `llmops up` under load loses no acknowledged event and duplicates none.

Feedback is a durable kind by default (``events.durable``): Submit answers only once the
event is fsynced in the local event log. Guardrail decisions are not (they answer from the
buffer, and a kill -9 loses what the buffer held: the issue measured 16 of 2,811); the second
case makes them durable with ``LLMOPS__EVENTS__DURABLE`` and shows that the setting is what
guarantees it. Four callers call as fast as they can; after 150 acknowledgements the whole
mesh process is killed with SIGKILL, mid-flight. A new `llmops up` on the same state
directory must then show every acknowledged event in ClickHouse exactly once (the sinks
resume from their committed offsets and skip what they had inserted). What was in flight
and not acknowledged may or may not be there: its caller saw an error.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmops.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc, guardrail_pb2, guardrail_pb2_grpc
from tests.support import RunningMesh, llmops_up

pytestmark = [pytest.mark.timeout(600)]

CALLERS = 4
KILL_AFTER = 150
CTX = common_pb2.RequestContext(tenant="kill9", market="gb")


def _feedback(channel: grpc.Channel, caller: int, i: int) -> str:
    stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
    feedback = feedback_pb2.Feedback(
        idempotency_key=f"kill9-{caller}-{i}", request_id=f"kill9-req-{caller}-{i}",
        task="property_summary", thumbs=feedback_pb2.Thumbs(thumb=1),  # type: ignore[arg-type]
    )  # fmt: skip
    reply = stub.Submit(feedback_pb2.SubmitRequest(context=CTX, feedback=feedback), timeout=5)
    return str(reply.event_id)


def _guardrail(channel: grpc.Channel, caller: int, i: int) -> str:
    stub = guardrail_pb2_grpc.GuardrailServiceStub(channel)
    request = guardrail_pb2.CheckRequest(
        direction=common_pb2.DIRECTION_INPUT, context=CTX,
        text=f"caller {caller} message {i}: write to shopper{i}@example.com",
    )  # fmt: skip
    reply = stub.Check(request, timeout=5)
    assert reply.decision_id  # a redaction is recorded (a clean ALLOW would not be)
    return str(reply.decision_id)


CASES: dict[str, tuple[str, Callable[[grpc.Channel, int, int], str], dict[str, str]]] = {
    "feedback": ("feedback", _feedback, {}),
    "guardrail_durable": (
        "guardrail",
        _guardrail,
        {"LLMOPS__EVENTS__DURABLE": "[audit, feedback, guardrail_decision]"},
    ),
}


def _call_until(
    mesh: RunningMesh, service: str, call: Any, caller: int, acked: list[str],
    stop: threading.Event,
) -> None:  # fmt: skip
    with mesh.channel(service) as channel:
        i = 0
        while not stop.is_set():
            try:
                acked.append(call(channel, caller, i))
            except grpc.RpcError:
                return  # the mesh is gone: what was not acknowledged is not counted
            i += 1


TABLES = {"feedback": ("feedback", "llmops.feedback.v1"),
          "guardrail": ("guardrail_decisions", "llmops.guardrail-decisions.v1")}  # fmt: skip


def _stored_event_ids(mesh: RunningMesh, service: str, within_s: float = 120) -> list[str]:
    """The event ids of every row the mesh's sink stored for ``service``'s events, read
    straight from ClickHouse once the sink caught up and the mesh stopped."""
    table, topic = TABLES[service]
    mesh.wait_sink_caught_up(topic, within_s)
    mesh.stop()
    rows = mesh.stored_rows(f"SELECT toString(event_id) AS event_id FROM {table}")
    return [str(r["event_id"]) for r in rows]


@pytest.mark.parametrize("case", list(CASES))
def test_kill_9_under_load_loses_no_acknowledged_event(tmp_path: Path, case: str) -> None:
    service, call, env = CASES[case]
    acked: list[str] = []
    stop = threading.Event()
    with llmops_up(tmp_path, extra_env=env) as mesh:
        callers = [
            threading.Thread(
                target=_call_until, args=(mesh, service, call, c, acked, stop), daemon=True
            )
            for c in range(CALLERS)
        ]
        for t in callers:
            t.start()
        deadline = time.monotonic() + 120
        while len(acked) < KILL_AFTER:
            assert time.monotonic() < deadline, f"only {len(acked)} acknowledged in 120 s"
            assert all(t.is_alive() for t in callers), mesh.log()[-2000:]
            time.sleep(0.01)
        os.killpg(mesh.proc.pid, signal.SIGKILL)  # mid-flight: the callers are still sending
        mesh.proc.wait(10)
        stop.set()
        for t in callers:
            t.join(10)
    acknowledged = set(acked)
    assert len(acknowledged) == len(acked) >= KILL_AFTER

    with llmops_up(tmp_path, extra_env=env) as again:
        stored = [e for e in _stored_event_ids(again, service) if e in acknowledged]
    lost = acknowledged - set(stored)
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged events lost"
    copies = Counter(stored)
    assert max(copies.values()) == 1, [e for e, n in copies.items() if n > 1][:5]
    print(f"{case}: kill -9 after {len(acknowledged)} acknowledged, all in ClickHouse once")
