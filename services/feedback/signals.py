"""The feedback registry: which signals a storefront may send, of which kind, in which range;
and the label queues that route predictions to human annotators.

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
from dataclasses import dataclass, field
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


class NegativeFeedbackRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    signals: tuple[str, ...] = Field(min_length=1)
    """Signals that count against the prediction: a thumbs signal when down, a rating one at
    or below ``max_rating_share`` of its scale, any other signal whenever it arrives."""
    max_rating_share: float = Field(0.4, ge=0, le=1)


class QueueRule(BaseModel):
    """What puts a prediction of the queue's task in the queue (exactly one key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample: float | None = Field(None, gt=0, le=1)
    """This share of the task's predictions (by a hash of the request id: reproducible)."""
    guardrail: tuple[Literal["FLAG", "REDACT", "BLOCK"], ...] | None = None
    """Predictions whose most severe guardrail verdict is one of these."""
    negative_feedback: NegativeFeedbackRule | None = None
    low_confidence: bool | None = None
    """Predictions whose output step fell back (the model's answer did not fit the task's
    format: PredictionEvent.skipped_steps holds ``postprocess``)."""

    @model_validator(mode="after")
    def _one(self) -> QueueRule:
        set_ = [k for k in ("sample", "guardrail", "negative_feedback", "low_confidence")
                if getattr(self, k) is not None]  # fmt: skip
        if len(set_) != 1:
            raise ValueError(
                "a rule has exactly one of sample, guardrail, negative_feedback, low_confidence"
            )
        if self.guardrail == ():
            raise ValueError("guardrail lists at least one verdict")
        return self

    @property
    def reason(self) -> str:
        for key in ("sample", "guardrail", "negative_feedback", "low_confidence"):
            if getattr(self, key) is not None:
                return key
        raise AssertionError("validated: one key")


class QueueSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    task: str
    signal: str
    """The label signal annotators answer with (its labels are the queue's)."""
    description: str = ""
    rules: tuple[QueueRule, ...] = Field(min_length=1)
    max_pending: int = Field(10_000, ge=1, le=10_000_000)
    """The queue stops filling at this many pending items."""

    @model_validator(mode="after")
    def _shape(self) -> QueueSpec:
        if not re.match(r"^[a-z][a-z0-9_-]{0,62}$", self.name):
            raise ValueError(f"queue name {self.name!r}: lowercase letters, digits, - and _")
        return self


class SignalsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signals: list[SignalSpec] = Field(default_factory=list)
    queues: list[QueueSpec] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SignalTable:
    signals: dict[str, SignalSpec]
    revision: str
    sources: tuple[str, ...]
    queues: dict[str, QueueSpec] = field(default_factory=dict)

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
    queues: dict[str, QueueSpec] = {}
    for file in loaded.files:
        for queue in file.spec.queues:
            at = f"{file.label}: queues[{queue.name}]"
            if queue.name in queues:
                raise SignalError(at, "declared twice")
            signal = signals.get(queue.signal)
            if signal is None or signal.kind != "label":
                raise SignalError(f"{at}.signal", f"{queue.signal!r} is not a label signal")
            for i, rule in enumerate(queue.rules):
                for name in rule.negative_feedback.signals if rule.negative_feedback else ():
                    if name not in signals:
                        raise SignalError(
                            f"{at}.rules[{i}].negative_feedback.signals", f"no signal {name!r}"
                        )
            queues[queue.name] = queue
    return SignalTable(signals, loaded.revision, loaded.sources, queues)


def revision_of(table: SignalTable) -> str:
    return table.revision
