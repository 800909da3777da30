"""Server reflection finds a method's file too (tools such as ghz ask for the method)."""

from __future__ import annotations

from grpc_reflection.v1alpha import reflection_pb2

import llmops.v1.experiment_pb2  # noqa: F401  (its descriptors in the default pool)
from llmops.server.app import MethodAwareReflection

SERVICE = "llmops.v1.ExperimentService"


def _ask(symbol: str) -> reflection_pb2.ServerReflectionResponse:
    servicer = MethodAwareReflection([SERVICE])
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    response: reflection_pb2.ServerReflectionResponse = servicer._file_containing_symbol(
        request, symbol
    )
    return response


def test_a_method_symbol_resolves_to_its_service_file() -> None:
    by_service, by_method = _ask(SERVICE), _ask(f"{SERVICE}.Assign")
    assert by_service.HasField("file_descriptor_response")
    assert by_method.file_descriptor_response == by_service.file_descriptor_response


def test_symbols_outside_the_listed_services_stay_not_found() -> None:
    assert _ask("llmops.v1.Nope.Assign").error_response.error_code == 5
    assert _ask("llmops.v1.GuardrailService.Check").error_response.error_code == 5
