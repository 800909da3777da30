"""Input checks of the registry: names, digests, URIs, kind-specific facts, lineage edges.

Every failure is INVALID_ARGUMENT naming the request field (``model_card.evaluations[1].
metric``). :func:`card_gaps` is different: a *well-formed* card may still be incomplete,
which only matters when a model is promoted to a serving alias (the guard asks for it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from llmops.errors import InvalidArgument
from llmops.v1 import common_pb2, governance_pb2
from services.governance import model
from services.governance.model import Details, Edge, Node, Ref

NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
MAX_NAME = 128
ALIAS = NAME
MAX_ALIAS = 64
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
URI = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")
MAX_URI = 512
ROUTE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
METRIC = re.compile(r"^[A-Za-z][A-Za-z0-9_.:/@-]{0,127}$")
BCP47 = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*$")
SPDX = re.compile(r"^[A-Za-z0-9.+-]+(?: (?:AND|OR|WITH) [A-Za-z0-9.+-]+)*$")
CONTACT = re.compile(r"^\S{3,256}$")
MAX_TEXT = 8192

DETAIL_FIELD: dict[int, str] = {
    model.MODEL: "model_card",
    model.PROMPT: "prompt",
    model.DATASET: "dataset",
    model.POLICY: "policy",
}
"""The ``details`` oneof field each kind takes."""

_RISK_TIERS = frozenset(governance_pb2.RiskTier.values())
_VALUE_TYPES = frozenset(common_pb2.ValueType.values())


def kind(value: int, where: str) -> int:
    if value not in model.KINDS:
        raise InvalidArgument(where, "required: MODEL, PROMPT, DATASET or POLICY")
    return value


def name(value: str, where: str) -> str:
    if not value:
        raise InvalidArgument(where, "required")
    if len(value) > MAX_NAME or not NAME.match(value):
        raise InvalidArgument(
            where, f"{value[:MAX_NAME]!r} is not lower-kebab-case (at most {MAX_NAME} chars)"
        )
    return value


def alias(value: str, where: str) -> str:
    if not value:
        raise InvalidArgument(where, "required")
    if value == model.LATEST:
        raise InvalidArgument(where, "'latest' is reserved: it always means the highest version")
    if len(value) > MAX_ALIAS or not ALIAS.match(value):
        raise InvalidArgument(
            where, f"{value[:MAX_ALIAS]!r} is not lower-kebab-case (at most {MAX_ALIAS} chars)"
        )
    return value


def digest(value: str, where: str) -> str:
    if not value:
        raise InvalidArgument(where, "required: sha256:<64 lowercase hex digits>")
    if not DIGEST.match(value):
        raise InvalidArgument(where, f"{value[:80]!r} is not sha256:<64 lowercase hex digits>")
    return value


def uri(value: str, where: str, required: bool = False) -> str:
    if not value and not required:
        return value
    if len(value) > MAX_URI or not URI.match(value):
        raise InvalidArgument(
            where, f"{value[:80]!r} is not a URI with a scheme (e.g. s3://models/summary/7/)"
        )
    return value


def text(value: str, where: str, limit: int = MAX_TEXT) -> str:
    if len(value) > limit:
        raise InvalidArgument(where, f"longer than {limit} characters")
    return value


def ref(value: Ref) -> Ref:
    """A well-formed ref (version and alias not both set; an alias may be ``latest``)."""
    kind(value.kind, f"{value.where}.kind")
    name(value.name, f"{value.where}.name")
    if value.version < 0:
        raise InvalidArgument(f"{value.where}.version", "must be >= 1 (0 = unset)")
    if value.version and value.alias:
        raise InvalidArgument(value.where, "set at most one of version and alias")
    if value.alias and value.alias != model.LATEST:
        alias(value.alias, f"{value.where}.alias")
    return value


def metadata(values: dict[str, common_pb2.Value], where: str) -> None:
    for key in values:
        if not key or len(key) > MAX_NAME:
            raise InvalidArgument(f"{where}[{key!r}]", f"keys must be 1..{MAX_NAME} characters")


# -- kind-specific facts --------------------------------------------------------------------


def details(kind_value: int, value: Details | None, field: str | None) -> None:
    """``field`` is the oneof field the request set (None: none)."""
    expected = DETAIL_FIELD[kind_value]
    if field is not None and field != expected:
        raise InvalidArgument(
            field, f"does not match kind {model.kind_name(kind_value)} (which takes {expected})"
        )
    if isinstance(value, governance_pb2.ModelCard):
        model_card(value, "model_card")
    elif isinstance(value, governance_pb2.PromptTemplate):
        prompt(value, "prompt")
    elif isinstance(value, governance_pb2.DatasetInfo):
        dataset(value, "dataset")
    elif isinstance(value, governance_pb2.PolicyInfo):
        policy(value, "policy")


def _items(values: Sequence[str], where: str, pattern: re.Pattern[str] | None = None) -> None:
    for i, item in enumerate(values):
        if not item.strip():
            raise InvalidArgument(f"{where}[{i}]", "must not be empty")
        if pattern is not None and not pattern.match(item):
            raise InvalidArgument(f"{where}[{i}]", f"{item[:40]!r} is malformed")
        text(item, f"{where}[{i}]")


def model_card(card: governance_pb2.ModelCard, where: str) -> None:
    """A well-formed card (close to Model Card Toolkit / CycloneDX modelCard)."""
    text(card.intended_use, f"{where}.intended_use")
    text(card.risk_tier_rationale, f"{where}.risk_tier_rationale")
    if card.risk_tier not in _RISK_TIERS:
        raise InvalidArgument(f"{where}.risk_tier", f"unknown risk tier {card.risk_tier}")
    contact = card.human_oversight_contact
    if card.risk_tier == model.HIGH_RISK and not contact:
        raise InvalidArgument(
            f"{where}.human_oversight_contact",
            "required for RISK_TIER_HIGH (EU AI Act Art. 14: a role mailbox or on-call alias)",
        )
    if contact and not CONTACT.match(contact):
        raise InvalidArgument(
            f"{where}.human_oversight_contact",
            "must be a role mailbox or on-call alias (3..256 characters, no spaces)",
        )
    _items(card.out_of_scope_uses, f"{where}.out_of_scope_uses")
    _items(card.limitations, f"{where}.limitations")
    _items(card.languages, f"{where}.languages", BCP47)
    if card.license and not SPDX.match(card.license):
        raise InvalidArgument(f"{where}.license", f"{card.license[:40]!r} is not an SPDX id")
    text(card.framework, f"{where}.framework", 128)
    for i, result in enumerate(card.evaluations):
        at = f"{where}.evaluations[{i}]"
        if not METRIC.match(result.metric):
            raise InvalidArgument(f"{at}.metric", "required: a metric name such as rougeL")
        if not math.isfinite(result.value):
            raise InvalidArgument(f"{at}.value", "must be a finite number")
        if result.HasField("dataset"):
            data = result.dataset
            ref(Ref(data.kind, data.name, data.version, data.alias, f"{at}.dataset"))
            if data.kind != model.DATASET:
                raise InvalidArgument(f"{at}.dataset.kind", "must be ARTIFACT_KIND_DATASET")
        text(result.slice, f"{at}.slice", 256)


def card_gaps(card: governance_pb2.ModelCard | None, trained_on: int) -> list[str]:
    """What a model card lacks to be complete (empty: complete). ``trained_on`` counts the
    version's TRAINED_ON lineage edges: the contract's card has no training-data field, so
    the training data summary is the lineage to registered datasets (whose DatasetInfo
    says rows, schema, window and how they were produced)."""
    if card is None:
        return ["model_card"]
    gaps = [
        field
        for field, present in (
            ("intended_use", bool(card.intended_use.strip())),
            ("limitations", bool(card.limitations)),
            ("risk_tier", card.risk_tier != governance_pb2.RISK_TIER_UNSPECIFIED),
            ("risk_tier_rationale", bool(card.risk_tier_rationale.strip())),
            ("evaluations", bool(card.evaluations)),
            ("human_oversight_contact", bool(card.human_oversight_contact)),
        )
        if not present
    ]
    if trained_on == 0:
        gaps.append("training data (a TRAINED_ON lineage edge from a dataset)")
    return [f"model_card.{g}" if not g.startswith("training") else g for g in gaps]


def prompt(template: governance_pb2.PromptTemplate, where: str) -> None:
    if not template.template.strip():
        raise InvalidArgument(f"{where}.template", "required")
    text(template.template, f"{where}.template", 65_536)
    for variable, value_type in template.variables.items():
        if not variable or value_type not in _VALUE_TYPES or value_type == 0:
            raise InvalidArgument(f"{where}.variables[{variable!r}]", "needs a value type")
    _items(template.model_names, f"{where}.model_names", NAME)


def dataset(info: governance_pb2.DatasetInfo, where: str) -> None:
    if info.row_count < 0:
        raise InvalidArgument(f"{where}.row_count", "must not be negative")
    for column, value_type in info.schema.items():
        if not column or value_type not in _VALUE_TYPES or value_type == 0:
            raise InvalidArgument(f"{where}.schema[{column!r}]", "needs a value type")
    window = info.window
    if (
        window.HasField("start_time")
        and window.HasField("end_time")
        and window.end_time.ToMicroseconds() < window.start_time.ToMicroseconds()
    ):
        raise InvalidArgument(f"{where}.window", "end_time is before start_time")
    text(info.produced_by, f"{where}.produced_by", 1024)


def policy(info: governance_pb2.PolicyInfo, where: str) -> None:
    if not info.language:
        raise InvalidArgument(f"{where}.language", "required, e.g. rego or guardrail_yaml")
    text(info.package_name, f"{where}.package_name", 256)


# -- lineage --------------------------------------------------------------------------------


def node(value: Node | None, where: str) -> Node:
    if value is None or (value.artifact is None and not value.route and not value.uri):
        raise InvalidArgument(where, "required: an artifact, a route or a uri")
    if value.artifact is not None:
        ref(value.artifact)
    elif value.route:
        route(value.route, f"{where}.route")
    else:
        uri(value.uri, f"{where}.uri", required=True)
    return value


def route(value: str, where: str) -> str:
    if not value:
        raise InvalidArgument(where, "required")
    if not ROUTE.match(value):
        raise InvalidArgument(where, f"{value[:40]!r} is not a route name")
    return value


def _node_kind(value: Node) -> str:
    if value.artifact is not None:
        return model.kind_name(value.artifact.kind)
    return "ROUTE" if value.route else "URI"


_ENDS: dict[int, tuple[frozenset[str], frozenset[str]]] = {
    # relation -> (upstream node kinds, downstream node kinds)
    model.TRAINED_ON: (frozenset({"DATASET", "URI"}), frozenset({"MODEL"})),
    model.EVALUATED_ON: (frozenset({"DATASET", "URI"}), frozenset({"MODEL"})),
    model.SERVED_BY: (frozenset({"MODEL", "PROMPT"}), frozenset({"ROUTE"})),
    model.GOVERNS: (frozenset({"POLICY"}), frozenset({"MODEL", "ROUTE"})),
}


def edge(value: Edge, where: str) -> Edge:
    """A well-formed edge whose ends fit its relation (DERIVED_FROM joins any two nodes)."""
    if value.relation not in model.RELATIONS:
        raise InvalidArgument(f"{where}.relation", "required: a LineageRelation")
    node(value.upstream, f"{where}.upstream")
    node(value.downstream, f"{where}.downstream")
    if value.upstream == value.downstream:
        raise InvalidArgument(where, "an edge must join two different nodes")
    ends = _ENDS.get(value.relation)
    if ends is not None:
        for side, allowed, end in (
            ("upstream", ends[0], value.upstream),
            ("downstream", ends[1], value.downstream),
        ):
            if _node_kind(end) not in allowed:
                raise InvalidArgument(
                    f"{where}.{side}",
                    f"{model.relation_name(value.relation)} needs a {side} "
                    f"{' or '.join(sorted(allowed))}, not a {_node_kind(end)}",
                )
    return value
