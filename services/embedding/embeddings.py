"""The Embed path: validate a request, resolve the model, embed through the batcher.

Pure of gRPC: the servicer turns requests into :class:`EmbedCall` and results into
responses. The service serves one model (``embedding.model_name`` / ``model_version``); a
request naming another is NOT_FOUND, so a caller never gets vectors of a model it did not
ask for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from llmops.errors import InvalidArgument, NotFound
from services.embedding.batcher import Embedded, MicroBatcher

MAX_TEXT_CHARS = 100_000
"""A text longer than this is refused before tokenising (the token limit cuts far earlier)."""


@dataclass(frozen=True, slots=True)
class EmbedCall:
    texts: Sequence[str]
    model_name: str = ""
    model_version: int = 0
    model_alias: str = ""
    normalize: bool = False
    dimensions: int = 0


@dataclass(frozen=True, slots=True)
class EmbedResult:
    vectors: np.ndarray
    model_name: str
    model_version: int
    dimension: int
    prompt_tokens: int
    truncated: list[int]
    queue_ms: float
    total_ms: float


class Embeddings:
    """Validates and serves embed calls of one model (see the module docstring)."""

    def __init__(
        self,
        batcher: MicroBatcher,
        *,
        max_texts: int = 256,
        over_token_limit: Literal["truncate", "reject"] = "truncate",
    ) -> None:
        self.batcher = batcher
        self.info = batcher.encoder.info
        self.max_texts = max_texts
        self.over_token_limit = over_token_limit

    def check_model(self, name: str, version: int, alias: str, where: str = "model") -> None:
        """NOT_FOUND unless (name, version, alias) names the served model (all empty: it)."""
        served = f"{self.info.name!r} v{self.info.version}"
        if name and name != self.info.name:
            raise NotFound(f"{where}.name: no embedding model {name!r} here (serving {served})")
        if version and version != self.info.version:
            raise NotFound(f"{where}.version: v{version} is not served (serving {served})")
        if alias and alias != "latest":
            raise NotFound(
                f"{where}.alias: no alias {alias!r} here (serving {served}; the registry "
                "resolves aliases)"
            )

    def check_texts(self, texts: Sequence[str], where: str = "texts") -> None:
        if not texts:
            raise InvalidArgument(where, "at least one text is required")
        if len(texts) > self.max_texts:
            raise InvalidArgument(where, f"{len(texts)} texts; at most {self.max_texts} per call")
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidArgument(f"{where}[{i}]", "must not be empty")
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidArgument(
                    f"{where}[{i}]", f"{len(text)} characters; at most {MAX_TEXT_CHARS}"
                )

    async def embed(self, call: EmbedCall, where: str = "texts") -> EmbedResult:
        self.check_model(call.model_name, call.model_version, call.model_alias)
        if call.dimensions and call.dimensions != self.info.dimension:
            raise InvalidArgument(
                "dimensions",
                f"{self.info.name} is not a Matryoshka model: only its full dimension "
                f"({self.info.dimension}) or 0",
            )
        self.check_texts(call.texts, where)
        out: Embedded = await self.batcher.embed(call.texts, normalize=call.normalize)
        truncated = [i for i, cut in enumerate(out.truncated) if cut]
        if truncated and self.over_token_limit == "reject":
            i = truncated[0]
            raise InvalidArgument(
                f"{where}[{i}]",
                f"longer than {self.info.name}'s limit of {self.info.max_tokens} tokens "
                f"({len(truncated)} text(s) over it)",
            )
        return EmbedResult(
            vectors=out.vectors,
            model_name=self.info.name,
            model_version=self.info.version,
            dimension=self.info.dimension,
            prompt_tokens=sum(out.tokens),
            truncated=truncated,
            queue_ms=out.queue_ms,
            total_ms=out.total_ms,
        )
