"""The feedback registry: which signals a storefront may send, of which kind, in which range.

Signals are declared in reviewed YAML files (``feedback.signals``, default ``deploy/feedback``,
format in its README) and hot-reloaded like the other services' files. ``Feedback.name``
picks the signal (empty: the signal named like the kind, e.g. ``thumbs``); the signal fixes
the kind the record must carry and the ranges its values must fall in, and says what a
repeated idempotency key with other content does (``on_repeat``: ``ignore`` keeps the first
record, ``overwrite`` lets the newest win — a toggled thumb).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmops.yamlfiles import YamlFileError, load_yaml_files

KINDS = (
    "thumbs", "rating", "label", "correction", "click", "booking", "dwell", "conversion",
    "preference", "interaction",
)  # fmt: skip
"""The kinds of the contract's ``Feedback.kind`` oneof, by field name."""
TEXT_KINDS = frozenset({"label", "correction"})
"""Kinds that carry text people typed (a label's note, a correction): checked for PII."""
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class SignalError(YamlFileError):
    """A feedback registry file does not validate."""


class SignalSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal[
        "thumbs", "rating", "label", "correction", "click", "booking", "dwell", "conversion",
        "preference", "interaction",
    ]  # fmt: skip
    description: str = ""
    on_repeat: Literal["ignore", "overwrite"] = "ignore"
    """A repeated idempotency key with other content: keep the first, or let the newest win."""
    scale_max: int | None = Field(None, ge=2, le=100)
    """rating: the only scale accepted (Rating.scale_max); None: any of 2-100."""
    labels: tuple[str, ...] = ()
    """label: the allowed Label.value values (required for a label signal)."""
    max_text_length: int = Field(2000, ge=1, le=20_000)
    """label note / correction text: most characters."""
    currencies: tuple[str, ...] = ()
    """booking / conversion: ISO 4217 codes accepted; empty: any three-letter code."""
    max_value: float = Field(1_000_000.0, gt=0)
    """booking / conversion: the largest value accepted, in its currency's units."""
    max_dwell_ms: int = Field(86_400_000, ge=1)
    conversion_types: tuple[str, ...] = ()
    """conversion: the Conversion.conversion_type values accepted (required)."""
    actions: tuple[str, ...] = ()
    """interaction: the Interaction.action values accepted; empty: the signal's name."""

    @model_validator(mode="after")
    def _shape(self) -> SignalSpec:
        if not _NAME.match(self.name):
            raise ValueError(f"signal name {self.name!r} is not lower_snake_case")
        if self.kind == "label" and not self.labels:
            raise ValueError("a label signal lists its labels")
        if self.kind == "conversion" and not self.conversion_types:
            raise ValueError("a conversion signal lists its conversion_types")
        for code in self.currencies:
            if not _CURRENCY.match(code):
                raise ValueError(f"currency {code!r} is not an ISO 4217 code")
        for word in (*self.conversion_types, *self.actions):
            if not _NAME.match(word):
                raise ValueError(f"{word!r} is not lower_snake_case")
        return self

    @property
    def allowed_actions(self) -> tuple[str, ...]:
        return self.actions or (self.name,)


class SignalsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signals: list[SignalSpec] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SignalTable:
    signals: dict[str, SignalSpec]
    revision: str
    sources: tuple[str, ...]

    def get(self, name: str) -> SignalSpec | None:
        return self.signals.get(name)


def load_signals(paths: Sequence[Path]) -> SignalTable:
    """Every signal of the registry files under ``paths``; a name declared twice, or a kind
    without a signal of its own name, is an error naming the file."""
    loaded = load_yaml_files(paths, SignalsFile, SignalError)
    signals: dict[str, SignalSpec] = {}
    where: dict[str, str] = {}
    for file in loaded.files:
        for spec in file.spec.signals:
            if spec.name in signals:
                raise SignalError(
                    f"{file.label}: signals[{spec.name}]",
                    f"declared twice (also in {where[spec.name]})",
                )
            signals[spec.name] = spec
            where[spec.name] = file.label
    return SignalTable(signals, loaded.revision, loaded.sources)


def revision_of(table: SignalTable) -> str:
    return table.revision
