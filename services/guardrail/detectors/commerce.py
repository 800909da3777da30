"""Storefront-specific detectors: competitors, ungrounded claims, off-topic requests, JSON shape.

- :class:`CompetitorDetector` (``commerce.competitor``): mentions of competitor brands in
  generated copy (names from the policy; word-boundary, case-insensitive).
- :class:`GroundingDetector` (``grounding.unsupported_claim``): in model output, claims a
  shopper relies on — a price, a star rating, "free cancellation", a review score — that
  contradict or are absent from the facts passed with the request. Facts are ``key: value``
  lines (``price_tonight: 120 EUR``, ``stars: 4``, ``has_free_cancellation: false``,
  ``review_score: 8.7``) or free text containing those claims.
- :class:`TopicDetector` (``topic.off_topic``): input that asks for something a travel
  storefront assistant does not do (code, homework, medical or legal advice, politics),
  with no travel vocabulary in sight. Whole-text finding.
- :class:`JsonSchemaDetector` (``json_schema.invalid``): output that is not JSON or does not
  match the task's schema (``jsonschema``, draft 2020-12). Whole-text finding. A schema's
  regular expressions (``pattern``, ``patternProperties``) run on RE2, linear in the text: a
  schema may come from a caller (a TestPolicy candidate), and jsonschema's own keywords run
  them on Python's backtracking ``re`` (``(a+)+$`` on 30 "a"s and a "!" takes minutes).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import re2
from jsonschema import ValidationError, validators
from referencing import Registry

from services.guardrail.detectors.base import CheckContext, Fact, Finding

_PRICE = re.compile(
    r"(?:(?P<cur1>[€$£])\s?(?P<amt1>\d{1,6}(?:[.,]\d{3})*(?:[.,]\d{1,2})?)"
    # an amount before its currency starts where a number starts, not inside one: tried at
    # every digit of a long run of "1,111,111..." it took quadratic time (2.8 s on 10 KB)
    r"|(?<![\d])(?<!\d[.,])"
    r"(?P<amt2>\d{1,6}(?:[.,]\d{3})*(?:[.,]\d{1,2})?)\s?(?P<cur2>€|EUR|USD|GBP|euros?|dollars?))",
    re.IGNORECASE,
)
_STARS = re.compile(
    r"\b(?P<n>[1-5])[- ]?(?:star|stars|étoiles?|sterne|estrellas)\b|(?P<glyphs>★{1,5})", re.I
)
_FREE_CANCEL = re.compile(
    r"free cancell?ation|annulation gratuite|kostenlose stornierung|cancelación gratuita", re.I
)
_NO_FREE_CANCEL = re.compile(r"non[- ]refundable|no free cancell?ation|not refundable", re.I)
_SCORE = re.compile(
    r"\b(?:rated|review score|scored?|note)\s*(?:of\s*)?(?P<s>\d{1,2}(?:[.,]\d)?)\s*(?:/\s*10)?",
    re.I,
)
_FACT_KEY = re.compile(r"[a-z_ ]+", re.I)


def fact_lines(text: str) -> list[tuple[str, str]]:
    """The ``key: value`` (or ``key = value``) lines of a fact's text, as (key, value), both
    stripped; a key is letters, underscores and spaces, and a value left empty is taken from
    the next non-blank line. Parsed line by line in linear time: the regex this replaces
    backtracked cubically on long runs of spaces (15 s on a fact of 2,000 spaces)."""
    pairs: list[tuple[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        cuts = [c for c in (line.find(":"), line.find("=")) if c >= 0]
        if not cuts:
            continue
        cut = min(cuts)
        key, value = line[:cut].strip(), line[cut + 1 :].strip()
        if not key or not _FACT_KEY.fullmatch(key):
            continue
        while not value and i < len(lines):
            value = lines[i].strip()
            i += 1
        if value:
            pairs.append((key, value))
    return pairs


def _number(text: str) -> float:
    """'1.234,56' / '1,234.56' / '120' -> float."""
    t = text.replace(" ", "")
    if "," in t and "." in t:
        t = (
            t.replace(",", "")
            if t.rfind(".") > t.rfind(",")
            else t.replace(".", "").replace(",", ".")
        )
    elif "," in t:
        head, _, tail = t.rpartition(",")
        t = f"{head.replace(',', '')}.{tail}" if len(tail) <= 2 else t.replace(",", "")
    return float(t)


class CompetitorDetector:
    name = "competitor"

    def __init__(self, names: Sequence[str] = ()) -> None:
        self.names = [n for n in names if n.strip()]
        self._pattern = (
            re.compile(
                r"(?<![\w.])("
                + "|".join(re.escape(n) for n in sorted(self.names, key=len, reverse=True))
                + r")(?![\w])",
                re.IGNORECASE,
            )
            if self.names
            else None
        )

    def detect(self, text: str, ctx: CheckContext) -> list[Finding]:
        if self._pattern is None:
            return []
        return [
            Finding("commerce.competitor", m.start(), m.end(), 0.95, self.name)
            for m in self._pattern.finditer(text)
        ]


class _Facts:
    """What the facts of a request establish (None = the facts say nothing about it)."""

    def __init__(self, facts: Sequence[Fact]) -> None:
        self.prices: list[float] = []
        self.stars: int | None = None
        self.free_cancellation: bool | None = None
        self.review_score: float | None = None
        for fact in facts:
            self._read(fact.text)

    def _read(self, text: str) -> None:
        pairs = fact_lines(text)
        for raw_key, value in pairs:
            key = raw_key.lower().replace(" ", "_")
            if "price" in key:
                self.prices += [_number(p) for p in re.findall(r"\d[\d.,]*", value)]
            elif key in ("stars", "star_rating"):
                digits = re.findall(r"\d", value)
                self.stars = int(digits[0]) if digits else self.stars
            elif "free_cancellation" in key:
                self.free_cancellation = value.strip().lower() in ("true", "yes", "1")
            elif "review_score" in key or key == "rating":
                nums = re.findall(r"\d+(?:[.,]\d)?", value)
                self.review_score = _number(nums[0]) if nums else self.review_score
        if not pairs:  # free text: the prices it names
            for m in _PRICE.finditer(text):
                self.prices.append(_number(m.group("amt1") or m.group("amt2")))
        if self.free_cancellation is None:
            if _NO_FREE_CANCEL.search(text):
                self.free_cancellation = False
            elif _FREE_CANCEL.search(text):
                self.free_cancellation = True


class GroundingDetector:
    """Claims in model output that the request's facts do not support.

    Only output with facts is checked (no facts = nothing to ground against). A claim is
    unsupported when the facts speak about the same thing and disagree (score 0.9), or do
    not mention it at all (score 0.6: a policy threshold of 0.7 acts on contradictions only).
    Prices match within 1% (rounding in copy)."""

    name = "grounding"

    def detect(self, text: str, ctx: CheckContext) -> list[Finding]:
        if ctx.direction != "OUTPUT" or not ctx.facts:
            return []
        facts = _Facts(ctx.facts)
        out: list[Finding] = []
        for m in _PRICE.finditer(text):
            amount = _number(m.group("amt1") or m.group("amt2"))
            if not facts.prices:
                out.append(self._finding(m, 0.6))
            elif not any(abs(amount - p) <= max(0.01 * p, 0.5) for p in facts.prices):
                out.append(self._finding(m, 0.9))
        for m in _STARS.finditer(text):
            stars = int(m.group("n")) if m.group("n") else len(m.group("glyphs"))
            if facts.stars is None:
                out.append(self._finding(m, 0.6))
            elif stars != facts.stars:
                out.append(self._finding(m, 0.9))
        for m in _FREE_CANCEL.finditer(text):
            if _NO_FREE_CANCEL.search(text[max(0, m.start() - 4) : m.end()]):
                continue  # "no free cancellation" is not a claim of free cancellation
            if facts.free_cancellation is None:
                out.append(self._finding(m, 0.6))
            elif not facts.free_cancellation:
                out.append(self._finding(m, 0.9))
        for m in _SCORE.finditer(text):
            score = _number(m.group("s"))
            if facts.review_score is not None and abs(score - facts.review_score) > 0.05:
                out.append(self._finding(m, 0.9))
        return out

    def _finding(self, m: re.Match[str], score: float) -> Finding:
        return Finding("grounding.unsupported_claim", m.start(), m.end(), score, self.name)


_TRAVEL = re.compile(
    r"\b(hotel|room|rooms|booking|book|stay|night|nights|check[- ]?in|check[- ]?out|breakfast|"
    r"pool|beach|flight|trip|travel|city|apartment|cancel|reservation|guest|guests|price|"
    r"parking|wifi|spa|view|property|chambre|réservation|séjour|zimmer|buchung|"
    r"übernachtung|habitación|reserva|hotelzimmer|urlaub|vacances|vacaciones)\b",
    re.I,
)
_OFF_TOPIC = {
    "code": r"\b(write|debug|fix)\b.{0,40}\b(code|python|javascript|function|script|sql|regex)\b",
    "homework": r"\b(homework|essay|solve (this|the) (equation|math)|exam answers?)\b",
    "medical": r"\b(diagnos\w*|prescri\w*|dosage|symptoms? of|should i take)\b",
    "legal": r"\b(sue|lawsuit|legal advice|lawyer for)\b",
    "politics": r"\b(election|vote for|political party|president (is|was))\b",
    "finance": r"\b(stock tips?|crypto(currency)?|invest in|trading strategy)\b",
}


class TopicDetector:
    """Requests outside a travel storefront's tasks (INPUT only)."""

    name = "topic"

    def __init__(self, allowed_topics: Sequence[str] = ()) -> None:
        self.allowed = set(allowed_topics)
        self._patterns = [
            (topic, re.compile(p, re.I))
            for topic, p in _OFF_TOPIC.items()
            if topic not in self.allowed
        ]

    def detect(self, text: str, ctx: CheckContext) -> list[Finding]:
        if ctx.direction != "INPUT":
            return []
        hits = [topic for topic, p in self._patterns if p.search(text)]
        if not hits:
            return []
        score = 0.55 if _TRAVEL.search(text) else 0.85  # travel words make it borderline
        return [Finding("topic.off_topic", 0, 0, score, self.name)]


def _local_references_only(node: Any, at: str) -> None:
    """Every ``$ref`` / ``$dynamicRef`` of the schema points inside it (``#...``)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("$ref", "$dynamicRef") and not (
                isinstance(value, str) and value.startswith("#")
            ):
                raise ValueError(
                    f"{at}.{key}: {str(value)[:80]!r} points outside the schema; only local "
                    "references (#/$defs/...) are allowed, remote schemas are never fetched"
                )
            _local_references_only(value, f"{at}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _local_references_only(item, f"{at}[{i}]")


def _quiet() -> Any:
    options = re2.Options()
    options.log_errors = False  # a caller's bad expression is its error, not a server log line
    return options


_RE2_OPTIONS = _quiet()


@functools.lru_cache(maxsize=512)
def _re2(pattern: str) -> Any:
    return re2.compile(pattern, _RE2_OPTIONS)


def _schema_expressions(node: Any, at: str) -> None:
    """Every ``pattern`` and ``patternProperties`` key compiles on RE2 (no lookaround or
    backreference: ValueError naming the place), and ``unevaluatedProperties`` never meets
    ``patternProperties`` (jsonschema would match those with Python's ``re``)."""
    if isinstance(node, dict):
        expressions = []
        if isinstance(node.get("pattern"), str):
            expressions.append((f"{at}.pattern", node["pattern"]))
        patterned = node.get("patternProperties")
        if isinstance(patterned, dict):
            expressions += [(f"{at}.patternProperties", key) for key in patterned]
        for where, expression in expressions:
            try:
                _re2(expression)
            except re2.error as exc:
                why = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
                raise ValueError(
                    f"{where}: {expression[:80]!r} is not an RE2 expression ({why}); "
                    "lookarounds and backreferences are not supported"
                ) from None
        for key, value in node.items():
            _schema_expressions(value, f"{at}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _schema_expressions(item, f"{at}[{i}]")


def _mentions(node: Any, key: str) -> bool:
    if isinstance(node, dict):
        return key in node or any(_mentions(v, key) for v in node.values())
    if isinstance(node, list):
        return any(_mentions(v, key) for v in node)
    return False


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _re2(pattern).search(instance):
        yield ValidationError(f"does not match {pattern[:80]!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _re2(pattern).search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = [_re2(p) for p in schema.get("patternProperties", {})]
    extras = [
        key
        for key in instance
        if key not in properties and not any(p.search(key) for p in patterns)
    ]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        yield ValidationError(f"properties not allowed: {sorted(extras)[:10]!r}")


class JsonSchemaDetector:
    """Model output must be JSON matching ``schema`` (OUTPUT only)."""

    name = "json_schema"

    def __init__(self, schema: dict[str, Any] | str | None = None) -> None:
        if isinstance(schema, str):
            schema = json.loads(schema)
        if not isinstance(schema, dict):
            raise ValueError("json_schema needs params.schema: a JSON schema object")
        _local_references_only(schema, "schema")
        jsonschema.Draft202012Validator.check_schema(schema)
        _schema_expressions(schema, "schema")
        if _mentions(schema, "patternProperties") and _mentions(schema, "unevaluatedProperties"):
            raise ValueError(
                "schema: unevaluatedProperties together with patternProperties is not "
                "supported (its property matching would not run on RE2)"
            )
        # An explicit registry (whose default retrieves nothing): without one, jsonschema
        # fetches any URL a "$ref" names (a TestPolicy candidate made the server call
        # internal hosts).
        self._validator: Any = _RE2_VALIDATOR(schema, registry=Registry())

    def detect(self, text: str, ctx: CheckContext) -> list[Finding]:
        if ctx.direction != "OUTPUT":
            return []
        try:
            document = json.loads(text)
        except ValueError:
            return [Finding("json_schema.invalid", 0, 0, 1.0, self.name)]
        if next(self._validator.iter_errors(document), None) is not None:
            return [Finding("json_schema.invalid", 0, 0, 1.0, self.name)]
        return []


def _re2_validator() -> Any:
    """Draft 2020-12 with its three keywords that match expressions on RE2."""
    return validators.extend(
        jsonschema.Draft202012Validator,
        {
            "pattern": _pattern,
            "patternProperties": _pattern_properties,
            "additionalProperties": _additional_properties,
        },
    )


_RE2_VALIDATOR = _re2_validator()
