"""Back-pressure at the RPC edge: a service whose event buffer is full answers
RESOURCE_EXHAUSTED (the documented error) and keeps what it had accepted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from llmops.config import load_config
from llmops.server import Binding, ServiceContext, ServiceDefinition, serve
from llmops.v1 import events_pb2, feedback_pb2, feedback_pb2_grpc
from tests.support import free_ports, mesh_env


class PublishingFeedback(feedback_pb2_grpc.FeedbackServiceServicer):
    """Stands in for the feedback service: each Submit publishes one event."""

    def __init__(self, ctx: ServiceContext[Any]) -> None:
        self.events = ctx.events
        self.publisher = ctx.backends.event_publisher()

    async def Submit(self, request: Any, context: Any) -> Any:
        envelope = events_pb2.EventEnvelope()
        envelope.feedback.event_id = request.feedback.idempotency_key or str(time.time_ns())
        envelope.feedback.event_time.GetCurrentTime()
        envelope.feedback.request_id = "r-1"
        self.events.publish(envelope)  # raises ResourceExhausted when the buffer is full
        return feedback_pb2.SubmitResponse()


@asynccontextmanager
async def feedback_with_a_dead_broker(
    tmp_path: Path, **extra_env: str
) -> AsyncIterator[tuple[PublishingFeedback, feedback_pb2_grpc.FeedbackServiceStub, Path]]:
    """The stand-in feedback service in Kafka mode with a five-event buffer and nothing
    listening at the broker's address (the sender can deliver nothing), served until the
    block ends: the service, a stub, the state directory."""
    env, ports, _ = mesh_env(tmp_path, insecure=True)
    (dead_broker,) = free_ports(1)
    env.update({
        "LLMOPS__EVENTS__BACKEND": "kafka",
        "LLMOPS__BACKENDS__KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{dead_broker}",
        "LLMOPS__EVENTS__BUFFER_CAPACITY": "5",
        "LLMOPS__EVENTS__FLUSH_TIMEOUT_S": "1",
        "LLMOPS__SINK__EMBEDDED": "false",
        # answered from the buffer: with events.durable on, each call would wait for the
        # dead broker (tests/unit/test_events_publisher.py covers that path)
        "LLMOPS__EVENTS__DURABLE": "[]",
        **extra_env,
    })  # fmt: skip
    config = load_config(environ=env)
    holder: dict[str, PublishingFeedback] = {}

    def factory(ctx: ServiceContext[Any]) -> ServiceDefinition:
        holder["svc"] = PublishingFeedback(ctx)
        descriptor = feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"]
        add = feedback_pb2_grpc.add_FeedbackServiceServicer_to_server
        return ServiceDefinition([Binding(descriptor, add, holder["svc"])])

    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        serve(config, ["feedback"], ready=ready, stop=stop, factories={"feedback": factory})
    )
    await asyncio.wait_for(ready.wait(), 10)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['feedback']}") as channel:
            yield holder["svc"], feedback_pb2_grpc.FeedbackServiceStub(channel), config.state_dir
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_full_event_buffer_is_resource_exhausted_at_the_edge(tmp_path: Path) -> None:
    # refused, not spilled to state_dir/spill (the default: see the test below)
    async with feedback_with_a_dead_broker(tmp_path, LLMOPS__EVENTS__SPILL_ON_OVERLOAD="false") as (
        service,
        stub,
        _,
    ):
        for i in range(5):
            request = feedback_pb2.SubmitRequest()
            request.feedback.idempotency_key = f"fb-{i}"
            await stub.Submit(request, timeout=5)
        request = feedback_pb2.SubmitRequest()
        request.feedback.idempotency_key = "fb-overflow"
        try:
            await stub.Submit(request, timeout=5)
            raise AssertionError("the 6th event should not fit")
        except grpc.aio.AioRpcError as err:
            assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "buffer" in (err.details() or "")
        publisher = service.publisher
        assert publisher.pending == 5  # everything accepted is still held, none dropped
        rejected = publisher.metrics.rejected.labels("llmops.feedback.v1")._value.get()
        assert rejected == 1


async def test_with_the_spill_a_dead_broker_never_fills_the_buffer(tmp_path: Path) -> None:
    """The default (``events.spill_on_overload``): the same five-event buffer takes 50
    Submits while nothing listens, the waiting events go to ``state_dir/spill``, and after
    the stop every one of them is there, fsynced, for the next start to replay."""
    from llmops.events.local_log import LocalLog

    async with feedback_with_a_dead_broker(tmp_path) as (_, stub, state_dir):
        for i in range(50):
            request = feedback_pb2.SubmitRequest()
            request.feedback.idempotency_key = f"fb-{i}"
            for _ in range(100):  # the spiller makes room within milliseconds
                try:
                    await stub.Submit(request, timeout=5)
                    break
                except grpc.aio.AioRpcError as err:
                    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                    await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"event {i}: the buffer stayed full")
    spill = LocalLog(state_dir / "spill", partitions={})
    consumer = spill.consumer("check", ["llmops.feedback.v1"])
    ids: list[str] = []
    while got := consumer.poll(100, 0.2):
        ids += [events_pb2.EventEnvelope.FromString(r.value).feedback.event_id for r in got]
    consumer.close()
    spill.close()
    assert sorted(set(ids)) == sorted(f"fb-{i}" for i in range(50))
