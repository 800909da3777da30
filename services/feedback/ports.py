"""The feedback service's view of the guardrail service: typed text redacted before storage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from llmops.errors import Unavailable
from llmops.v1 import common_pb2, guardrail_pb2, guardrail_pb2_grpc
from services.feedback.intake import REDACTED_BLOCK


class GuardrailTextGuard:
    """:class:`services.feedback.intake.TextGuard` over ``GuardrailService.CheckBatch``."""

    def __init__(self, stub: Any, policy: str) -> None:
        """``stub``: ``MeshClient.stub``; ``policy``: the guardrail policy for typed text."""
        self._stub = stub
        self._policy = policy

    async def redact(
        self, context: common_pb2.RequestContext, texts: Sequence[str], timeout_s: float
    ) -> list[str]:
        request = guardrail_pb2.CheckBatchRequest(
            context=context, direction=common_pb2.DIRECTION_INPUT, policy=self._policy,
            texts=texts, task="feedback",
        )  # fmt: skip
        try:
            reply = await self._stub(guardrail_pb2_grpc.GuardrailServiceStub).CheckBatch(
                request, timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                f"guardrail: {exc.code().name}: {(exc.details() or '')[:200]}"
            ) from None
        if len(reply.results) != len(texts):
            raise Unavailable(f"guardrail answered {len(reply.results)} of {len(texts)} texts")
        out: list[str] = []
        for text, result in zip(texts, reply.results, strict=True):
            if result.verdict == common_pb2.VERDICT_REDACT:
                out.append(result.redacted_text)
            elif result.verdict == common_pb2.VERDICT_BLOCK:
                out.append(REDACTED_BLOCK)
            else:
                out.append(text)
        return out
