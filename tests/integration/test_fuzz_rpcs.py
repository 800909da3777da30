"""Every RPC of every service of `llmops up`, fed garbage by hypothesis: never INTERNAL or
UNKNOWN (a failure the caller cannot act on, or a crash), and every service SERVING
afterwards.

For each method (found from the contracts' descriptors, so a new RPC is fuzzed without
touching this file), hypothesis draws bodies from two strategies: raw bytes (mostly not a
message at all), and messages made by walking the request type with a random generator
hypothesis drives (each field set or not; strings empty, huge, non-Latin, path- and
SQL-like; numbers at their limits, NaN and infinities; enum numbers the contract does not
name; nested messages, lists and maps), plus the empty message and a truncated varint every
time. Derandomized (the examples follow from the test's name, so a failure reproduces) and
shrunk by hypothesis to the smallest body that still fails. ``AdminService.Drain`` is left
out: it is meant to take a service out of serving.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llmops.clients import contract_methods
from llmops.mesh import SERVICES
from tests.support import RunningMesh, llmops_up, mesh_credentials

pytestmark = [pytest.mark.infra, pytest.mark.timeout(600)]

EXAMPLES = 30
"""Bodies per method (about a third raw bytes); two more are always tried."""
SKIPPED = {"/llmops.v1.AdminService/Drain"}
METHODS = [
    (f"/{service.full_name}/{method.name}", service, method)
    for service, method in contract_methods()
    if f"/{service.full_name}/{method.name}" not in SKIPPED
]
TEXTS = (
    "", "a", "x" * 300, "y" * 5000, "\u00e9\u4e2d\U0001f600", " ", "../../etc/passwd",
    "http://169.254.169.254/latest", "'; DROP TABLE x;--", "\x00", "-1", "1e309", "{}", "[",
    "thumbs", "default", "property_summary", "nope",
)  # fmt: skip
T = FieldDescriptor


def _scalar(field: FieldDescriptor, rng: random.Random) -> Any:
    kind = field.type
    if kind == T.TYPE_STRING:
        return rng.choice(TEXTS)
    if kind == T.TYPE_BYTES:
        return rng.randbytes(rng.choice((0, 3, 50)))
    if kind == T.TYPE_BOOL:
        return rng.random() < 0.5
    if kind in (T.TYPE_DOUBLE, T.TYPE_FLOAT):
        return rng.choice((0.0, -1.0, 0.5, 1e300, float("nan"), float("inf"), -float("inf")))
    if kind == T.TYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values] + [999])
    if kind in (T.TYPE_UINT32, T.TYPE_FIXED32):
        return rng.choice((0, 1, 2**32 - 1))
    if kind in (T.TYPE_UINT64, T.TYPE_FIXED64):
        return rng.choice((0, 1, 2**64 - 1))
    if kind in (T.TYPE_INT32, T.TYPE_SINT32, T.TYPE_SFIXED32):
        return rng.choice((0, -1, 1, 2**31 - 1, -(2**31)))
    return rng.choice((0, -1, 1, 2**63 - 1, -(2**63)))


def fill(message: Any, rng: random.Random, depth: int = 0) -> None:
    """Set a random half of ``message``'s fields to awkward values (nested up to depth 3)."""
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.5:
            continue
        sub = field.message_type
        try:
            if sub is not None and sub.GetOptions().map_entry:
                container = getattr(message, field.name)
                key_field, value_field = sub.fields_by_name["key"], sub.fields_by_name["value"]
                for _ in range(rng.choice((1, 2))):
                    key = _scalar(key_field, rng)
                    if value_field.message_type is not None:
                        if depth < 3:
                            fill(container[key], rng, depth + 1)
                    else:
                        container[key] = _scalar(value_field, rng)
            elif field.is_repeated:
                container = getattr(message, field.name)
                for _ in range(rng.choice((1, 2, 3))):
                    if sub is not None:
                        if depth < 3:
                            fill(container.add(), rng, depth + 1)
                    else:
                        container.append(_scalar(field, rng))
            elif sub is not None:
                if depth < 3:
                    child = getattr(message, field.name)
                    fill(child, rng, depth + 1)
                    child.SetInParent()
            else:
                setattr(message, field.name, _scalar(field, rng))
        except (TypeError, ValueError):  # a value protobuf itself refuses to hold
            continue


def _port_of(service: ServiceDescriptor, mesh: RunningMesh) -> int:
    if service.name == "AdminService":  # served on every port: one is enough
        return mesh.ports[next(iter(SERVICES))]
    for name, plugin in SERVICES.items():
        main = plugin.proto_service
        if service.name in (main, main.replace("Service", "AdminService")):
            return mesh.ports[name]
    raise AssertionError(f"no service of the mesh serves {service.full_name}")


def _messages(method: MethodDescriptor) -> st.SearchStrategy[bytes]:
    request_type = message_factory.GetMessageClass(method.input_type)

    def build(rng: random.Random) -> bytes:
        message = request_type()
        fill(message, rng)
        return message.SerializeToString()

    return st.randoms(use_true_random=False).map(build)


def _call(channel: grpc.Channel, path: str, method: MethodDescriptor, body: bytes) -> None:
    if method.client_streaming:
        if method.server_streaming:
            for _ in channel.stream_stream(path)(iter([body]), timeout=10):
                pass
        else:
            channel.stream_unary(path)(iter([body]), timeout=10)
    elif method.server_streaming:
        for _ in channel.unary_stream(path)(body, timeout=10):
            pass
    else:
        channel.unary_unary(path)(body, timeout=10)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with llmops_up(tmp_path_factory.mktemp("fuzz")) as running:
        yield running


@pytest.fixture(scope="module")
def channels(mesh: RunningMesh) -> Iterator[dict[int, grpc.Channel]]:
    opened: dict[int, grpc.Channel] = {}
    yield opened
    for channel in opened.values():
        channel.close()


def test_every_method_is_fuzzed() -> None:
    assert len(METHODS) > 60  # every service's methods are reached
    assert {service.name for _, service, _ in METHODS} >= {
        "FeatureService", "EmbeddingService", "InferenceService", "GuardrailService",
        "ExperimentService", "FeedbackService", "GovernanceService", "AdminService",
    }  # fmt: skip


@pytest.mark.parametrize(("path", "service", "method"), METHODS, ids=[m[0] for m in METHODS])
def test_no_rpc_answers_internal_or_unknown_to_garbage(
    mesh: RunningMesh,
    channels: dict[int, grpc.Channel],
    path: str,
    service: ServiceDescriptor,
    method: MethodDescriptor,
) -> None:
    port = _port_of(service, mesh)
    channel = channels.get(port) or channels.setdefault(
        port, grpc.secure_channel(f"127.0.0.1:{port}", mesh_credentials(mesh.state_dir))
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(body=st.one_of(st.binary(max_size=512), _messages(method)))
    @example(body=b"")
    @example(body=b"\xff\xff\xff\x01")
    def answers_precisely(body: bytes) -> None:
        try:
            _call(channel, path, method, body)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
                f"{path}: {code.name} {exc.details()!r} for {body[:120]!r}"  # type: ignore[attr-defined]
            )

    answers_precisely()
    assert mesh.proc.poll() is None, mesh.log()[-3000:]  # the mesh did not crash


def test_every_service_is_serving_after_the_fuzz(
    mesh: RunningMesh, channels: dict[int, grpc.Channel]
) -> None:
    for name, plugin in SERVICES.items():
        with grpc.secure_channel(
            f"127.0.0.1:{mesh.ports[name]}", mesh_credentials(mesh.state_dir)
        ) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=plugin.grpc_service), timeout=5
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING, name
    assert mesh.proc.poll() is None, mesh.log()[-3000:]
