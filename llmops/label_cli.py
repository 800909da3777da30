"""`llmops label ...`: an annotator's client of the running feedback service's label queues.

``queues`` lists them with their backlog; ``next`` leases items and prints what to label
(with the lease token); ``submit`` answers one with a label of the queue's signal. Refusals
are the service's gRPC status, printed as one line ``llmops: <STATUS>: <details>``.
"""

from __future__ import annotations

import json
from datetime import UTC

from google.protobuf import json_format

from llmops.clients import MeshClient
from llmops.config import MeshConfig
from llmops.v1 import feedback_pb2, feedback_pb2_grpc


def _stub(mesh: MeshClient) -> feedback_pb2_grpc.FeedbackAdminServiceAsyncStub:
    return mesh.stub(feedback_pb2_grpc.FeedbackAdminServiceStub)


async def list_queues(config: MeshConfig, json_out: bool) -> str:
    async with MeshClient(config) as mesh:
        reply = await _stub(mesh).ListLabelQueues(feedback_pb2.ListLabelQueuesRequest())
    if json_out:
        return json_format.MessageToJson(reply, indent=None)
    if not reply.queues:
        return "no label queues (declare them under `queues:` in deploy/feedback)"
    lines = [f"{'QUEUE':<16} {'TASK':<18} {'PENDING':>7} {'DONE':>6}  OLDEST PENDING (UTC)  LABELS"]
    for q in reply.queues:
        oldest = (
            q.oldest_pending_time.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")
            if q.HasField("oldest_pending_time")
            else "-"
        )
        lines.append(
            f"{q.name:<16} {q.task:<18} {q.pending_count:>7} {q.completed_count:>6}  "
            f"{oldest:<20}  {', '.join(q.labels)}"
        )
    return "\n".join(lines)


async def next_items(
    config: MeshConfig, queue: str, count: int, lease_s: int, annotator: str, json_out: bool
) -> str:
    request = feedback_pb2.LeaseLabelItemsRequest(
        queue=queue, count=count, lease_seconds=lease_s, annotator_id=annotator
    )
    async with MeshClient(config) as mesh:
        reply = await _stub(mesh).LeaseLabelItems(request)
    if json_out:
        return json_format.MessageToJson(reply, indent=None)
    if not reply.items:
        return f"queue {queue}: nothing pending"
    blocks = []
    for item in reply.items:
        until = item.lease_expire_time.ToDatetime(tzinfo=UTC).strftime("%H:%M:%S")
        lines = [
            f"item {item.item_id}  ({item.reason}; task {item.task}, route {item.route or '-'})",
            f"  prediction  {item.request_id}",
        ]
        for name, value in sorted(item.inputs.items()):
            lines.append(f"  input {name:<10} {json.loads(value) if value else ''}")
        lines.append(
            f"  output      {item.output or '(not logged: the task does not log payloads)'}"
        )
        lines.append(f"  lease until {until} UTC, token {item.lease_token}")
        lines.append(
            f"  answer: llmops label submit {queue} {item.item_id} {item.lease_token} <label>"
        )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


async def submit(
    config: MeshConfig, queue: str, item_id: str, token: str, label: str, note: str,
    confidence: float, annotator: str,
) -> str:  # fmt: skip
    request = feedback_pb2.CompleteLabelItemRequest(
        queue=queue, item_id=item_id, lease_token=token, annotator_id=annotator,
        label=feedback_pb2.Label(value=label, note=note, confidence=confidence),
    )  # fmt: skip
    async with MeshClient(config) as mesh:
        reply = await _stub(mesh).CompleteLabelItem(request)
    return f"labelled {item_id} as {label} (feedback event {reply.event_id})"
