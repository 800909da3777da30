"""kill -9 of the embedding service during a stream of upserts through gRPC: every upsert
the service acknowledged is there after a restart on the same state directory (the
write-ahead log is fsync'd before an acknowledgement), and the collection still answers —
also while checkpoints snapshot the collection and cut the log every few milliseconds."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from llmops.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc
from tests.support import free_ports, wait_serving

pytestmark = pytest.mark.timeout(180)
DIM = 32


CHECKPOINTING = {
    "LLMOPS__EMBEDDING__CHECKPOINT_WAL_BYTES": "1",
    "LLMOPS__EMBEDDING__CHECKPOINT_CHECK_INTERVAL_S": "0.05",
    "LLMOPS__EMBEDDING__WAL_SEGMENT_BYTES": "16384",
}


def start(state: Path, port: int, extra: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOPS__")}
    env.update(
        {
            "LLMOPS__STATE_DIR": str(state),
            "LLMOPS__EVENTS__BACKEND": "local",
            "LLMOPS__SERVICES__EMBEDDING__PORT": str(port),
            "LLMOPS__SERVICES__EMBEDDING__ADMIN_PORT": "0",
            "LLMOPS__EMBEDDING__DEMO_DATA": "off",
            "LLMOPS__LOGGING__LEVEL": "warning",
            "LLMOPS__SECURITY__INSECURE": "true",  # the crash, not the credentials, is tested
            "LLMOPS__SERVICES__EMBEDDING__ADMIN_GRPC_PORT": "0",  # admin calls on one channel
            **extra,
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.embedding"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_serving(f"127.0.0.1:{port}", "llmops.v1.EmbeddingService", 60)
    return proc


async def stream_upserts(
    address: str, acked: list[int], stop: asyncio.Event, flowing: asyncio.Event
) -> None:
    rng = np.random.default_rng(3)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        i = 0
        while not stop.is_set():
            items = [
                embedding_pb2.Item(
                    id=f"k{i}-{j}",
                    vector=common_pb2.FloatVector(values=rng.normal(size=DIM).tolist()),
                )
                for j in range(20)
            ]
            try:
                await stub.Upsert(
                    embedding_pb2.UpsertRequest(collection="stream", items=items), timeout=5
                )
            except grpc.aio.AioRpcError:
                return  # the process died mid-call: this batch was not acknowledged
            acked.append(i)
            if len(acked) == 150:
                flowing.set()
            i += 1


@pytest.mark.parametrize("checkpoints", [False, True], ids=["log-only", "checkpointing"])
async def test_acknowledged_upserts_survive_kill_9(tmp_path: Path, checkpoints: bool) -> None:
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    extra = CHECKPOINTING if checkpoints else {}
    proc = start(tmp_path, port, extra)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            await embedding_pb2_grpc.EmbeddingServiceStub(channel).CreateCollection(
                embedding_pb2.CreateCollectionRequest(
                    collection=embedding_pb2.Collection(
                        name="stream",
                        dimension=DIM,
                        metric=embedding_pb2.DISTANCE_METRIC_L2,
                        index_kind=embedding_pb2.INDEX_KIND_FLAT,
                    )
                ),
                timeout=10,
            )
        acked: list[int] = []
        stop, flowing = asyncio.Event(), asyncio.Event()
        writer = asyncio.create_task(stream_upserts(address, acked, stop, flowing))
        await asyncio.wait_for(flowing.wait(), 60)  # a stream of acknowledged upserts
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream, no warning
        proc.wait(10)
        stop.set()
        await asyncio.wait_for(writer, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(acked) >= 150
    segments = sorted((tmp_path / "embedding" / "wal").glob("*.wal"))
    if checkpoints:  # the log was cut (its first segment is gone) and snapshots were written
        assert segments[0].name != f"{1:020d}.wal"
        assert list((tmp_path / "embedding" / "snapshots" / "stream").glob("*.tar"))
    else:
        assert segments[0].name == f"{1:020d}.wal"

    proc = start(tmp_path, port, extra)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            admin = embedding_pb2_grpc.EmbeddingAdminServiceStub(channel)
            got = await admin.GetCollection(
                embedding_pb2.GetCollectionRequest(name="stream"), timeout=10
            )
            # every acknowledged batch, and at most the one in flight when killed
            assert got.collection.item_count in (len(acked) * 20, (len(acked) + 1) * 20)
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            hits = await stub.Search(
                embedding_pb2.SearchRequest(
                    collection="stream",
                    vector=common_pb2.FloatVector(values=[0.0] * DIM),
                    k=5,
                ),
                timeout=10,
            )
            assert len(hits.hits) == 5
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
