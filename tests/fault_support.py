"""Load and checks shared by the fault tests: storefront callers that submit feedback and
retry a key until it is acknowledged, and the check that afterwards every acknowledged key
is in ClickHouse and counted once."""

from __future__ import annotations

import threading
import time
from collections import Counter

import grpc

from llmops.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc
from tests.support import RunningMesh


class FeedbackCallers:
    """``count`` callers submitting feedback under ``prefix-<caller>-<i>`` keys, as a
    storefront does: a key until it is acknowledged, the same key again after an error
    (50 ms later). Use as a context manager; leaving it lets each caller finish its key."""

    def __init__(
        self, mesh: RunningMesh, ctx: common_pb2.RequestContext, prefix: str, *,
        count: int = 4, deadline_s: float = 3.0,
    ) -> None:  # fmt: skip
        self.mesh = mesh
        self.ctx = ctx
        self.prefix = prefix
        self.deadline_s = deadline_s
        self.acked: dict[str, str] = {}  # key -> the event id the caller was given
        self.errors: Counter[str] = Counter()  # status code name -> failed calls
        self.messages: list[str] = []  # the first failures' details
        self.slowest_failure_s = 0.0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(c,), daemon=True) for c in range(count)
        ]

    def _run(self, caller: int) -> None:
        with self.mesh.channel("feedback") as channel:
            stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
            i = 0
            while not self.stop.is_set():
                key = f"{self.prefix}-{caller}-{i}"
                while True:  # a key is not given up: the caller retries it until acknowledged
                    feedback = feedback_pb2.Feedback(
                        idempotency_key=key, request_id=f"req-{key}", task="property_summary",
                        thumbs=feedback_pb2.Thumbs(thumb=1),  # type: ignore[arg-type]
                    )  # fmt: skip
                    started = time.monotonic()
                    try:
                        reply = stub.Submit(
                            feedback_pb2.SubmitRequest(context=self.ctx, feedback=feedback),
                            timeout=self.deadline_s,
                        )
                    except grpc.RpcError as exc:
                        took = time.monotonic() - started
                        with self.lock:
                            self.errors[exc.code().name] += 1
                            if len(self.messages) < 20:
                                self.messages.append(exc.details() or "")
                            self.slowest_failure_s = max(self.slowest_failure_s, took)
                        time.sleep(0.05)
                        continue
                    with self.lock:
                        self.acked[key] = str(reply.event_id)
                    break
                i += 1

    def __enter__(self) -> FeedbackCallers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)

    def wait_for(self, count: int, within_s: float) -> None:
        """Until ``count`` keys are acknowledged in all."""
        deadline = time.monotonic() + within_s
        while len(self.acked) < count:
            assert time.monotonic() < deadline, (
                f"only {len(self.acked)} of {count} acknowledged in {within_s:.0f} s; "
                f"errors {dict(self.errors)}:\n{self.mesh.log()[-3000:]}"
            )
            assert all(t.is_alive() for t in self.threads), self.mesh.log()[-3000:]
            time.sleep(0.02)


def feedback_rows(mesh: RunningMesh, callers: FeedbackCallers) -> list[dict[str, object]]:
    """Every feedback row in the stopped mesh's ClickHouse whose key is one of ``callers``'."""
    tenant, prefix = callers.ctx.tenant, callers.prefix
    assert tenant.isidentifier() or tenant.replace("-", "").isalnum(), tenant
    return mesh.stored_rows(
        "SELECT idempotency_key, toString(event_id) AS event_id FROM feedback "
        f"WHERE tenant = '{tenant}' AND startsWith(idempotency_key, '{prefix}-')"
    )


def assert_every_key_landed_once(
    mesh: RunningMesh, callers: FeedbackCallers, within_s: float = 120
) -> None:
    """Every acknowledged key (and the event id its caller got) is in ClickHouse, and the
    feedback statistics — the newest record per key — count each key once, however many
    raw rows retries left (a retry whose first attempt reached the log but not its caller
    is a second row: services/feedback/idempotency.py). Waits for the mesh's sink to catch
    up, reads its statistics, stops it, then reads the raw rows straight from its store."""
    acked = dict(callers.acked)
    mesh.wait_sink_caught_up("llmops.feedback.v1", within_s)
    with mesh.channel("feedback") as channel:
        admin = feedback_pb2_grpc.FeedbackAdminServiceStub(channel)  # embedded: one port
        deadline = time.monotonic() + 30
        while True:
            stats = admin.GetFeedbackStats(
                feedback_pb2.GetFeedbackStatsRequest(tenant=callers.ctx.tenant), timeout=10
            )
            counted = stats.received_count - stats.duplicate_count
            if counted >= len(acked) or time.monotonic() > deadline:
                break
            time.sleep(1)  # the statistics refresh every second (the tests' setting)
    mesh.stop()
    rows = feedback_rows(mesh, callers)
    found = {str(r["idempotency_key"]) for r in rows}
    lost = sorted(set(acked) - found)
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged keys lost: {lost[:5]}"
    assert set(acked.values()) <= {str(r["event_id"]) for r in rows}
    raw = Counter(str(r["idempotency_key"]) for r in rows)
    # every key submitted was acknowledged in the end (a caller retries until it is)
    assert set(raw) == set(acked)
    print(f"{len(rows)} raw rows for {len(raw)} keys "
          f"({sum(n > 1 for n in raw.values())} keys twice); counted {stats.received_count} "
          f"received, {stats.duplicate_count} superseded")  # fmt: skip
    assert stats.received_count == len(rows)
    assert stats.received_count - stats.duplicate_count == len(acked)
