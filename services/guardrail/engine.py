"""Running a policy over a text: detectors, thresholds, actions, redaction, fail modes.

Pure computation (no I/O): :meth:`Engine.evaluate` takes a compiled policy and a text and
returns a :class:`Decision`. Detectors run one after another in the calling thread. The
domain (:mod:`services.guardrail.domain`) runs every text above :data:`INLINE_LIMIT` on a
bounded worker pool with a hard timeout, so no text — however it was crafted — blocks the
event loop the embedded mesh shares: linear detectors still cost up to ~30 µs a character
on adversarial text (PII on "1 1 1 ...": a 4 KiB text took 60-125 ms), where the 64
characters a short query has cost at most ~2 ms.

The policy's timeout bounds the detectors together: a detector that raises, or that would
start after the budget is spent, counts as failed; FAIL_MODE_OPEN ignores it (the decision
is marked degraded), FAIL_MODE_CLOSED blocks.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import structlog

from llmops.callcontext import remaining_time
from llmops.v1 import common_pb2
from services.guardrail.detectors.base import CheckContext, Finding
from services.guardrail.policy import SEVERITY, CompiledPolicy

log = structlog.get_logger("llmops.guardrail")

ALLOW = common_pb2.VERDICT_ALLOW
FLAG = common_pb2.VERDICT_FLAG
REDACT = common_pb2.VERDICT_REDACT
BLOCK = common_pb2.VERDICT_BLOCK
INLINE_LIMIT = 64
"""Texts up to this many code points are checked on the event loop (the worst adversarial
64 characters: ~2 ms); longer ones on the worker pool, under the hard timeout."""
CACHEABLE_TEXT = 4096
"""Longest text (code points) whose decision :class:`DecisionCache` keeps."""
DEGRADED_MESSAGE = "This content can't be checked right now."


@dataclass(frozen=True, slots=True)
class Counted:
    """A finding the policy acts on."""

    finding: Finding
    action: int
    redact_style: str
    block_message: str
    match_hash: str


@dataclass(slots=True)
class Decision:
    verdict: int
    findings: list[Counted]
    redacted_text: str
    block_message: str
    latencies_us: list[tuple[str, int]]
    degraded: bool
    latency_us: int
    text_length: int = 0
    failed: list[str] = field(default_factory=list)
    cached: bool = False
    """Taken from :class:`DecisionCache` (no detector ran for this check)."""


_RANK: dict[int, int] = {int(k): v for k, v in SEVERITY.items()}


def _rank(action: int) -> int:
    return _RANK.get(action, 0)


def worst(a: int, b: int) -> int:
    """The more severe of two verdicts (ALLOW < FLAG < REDACT < BLOCK)."""
    return a if _rank(a) >= _rank(b) else b


class Engine:
    def __init__(self, hmac_key: bytes) -> None:
        self._key = hmac_key

    def match_hash(self, text: str) -> str:
        """HMAC-SHA256 of a matched value: analysts can count repeats without seeing it."""
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def evaluate(self, policy: CompiledPolicy, text: str, ctx: CheckContext) -> Decision:
        start = time.perf_counter()
        budget_end = start + policy.timeout_s
        left = remaining_time()  # the RPC's deadline: no detector starts after it either
        if left is not None and left < policy.timeout_s:
            budget_end = start + left
        found: dict[str, list[Finding]] = {}
        latencies: list[tuple[str, int]] = []
        failed: list[str] = []
        for detector in policy.detectors:
            t0 = time.perf_counter()
            if t0 > budget_end:
                failed.append(detector.name)
                continue
            try:
                found[detector.name] = detector.detect(text, ctx)
            except Exception as exc:  # a detector bug must not take the service down
                log.error("detector_failed", detector=detector.name, error=repr(exc))
                failed.append(detector.name)
            latencies.append((detector.name, int((time.perf_counter() - t0) * 1e6)))
        if time.perf_counter() > budget_end and not failed:
            failed.append(latencies[-1][0] if latencies else "timeout")
        counted: list[Counted] = []
        for check in policy.checks:
            for f in found.get(check.detector.name, ()):
                if check.counts(f.type, f.score):
                    matched = text[f.start : f.end] if f.end > f.start else ""
                    counted.append(
                        Counted(
                            f,
                            check.action,
                            check.redact_style,
                            check.block_message,
                            self.match_hash(matched) if matched else "",
                        )
                    )
        counted = _strongest_per_span(counted)
        verdict = max((c.action for c in counted), key=_rank, default=ALLOW)
        degraded = bool(failed)
        block_message = ""
        if degraded and not policy.fail_open:
            verdict, block_message = BLOCK, DEGRADED_MESSAGE
        if verdict == BLOCK and not block_message:
            block_message = next(c.block_message for c in counted if c.action == BLOCK)
        redacted = self.redact(text, counted) if verdict == REDACT else ""
        return Decision(
            verdict=verdict,
            findings=counted,
            redacted_text=redacted,
            block_message=block_message,
            latencies_us=latencies,
            degraded=degraded,
            latency_us=int((time.perf_counter() - start) * 1e6),
            text_length=len(text),
            failed=failed,
        )

    def timed_out(self, policy: CompiledPolicy, text: str) -> Decision:
        """The decision of a check that did not finish within the hard timeout: degraded,
        blocked under FAIL_MODE_CLOSED, allowed (and marked) under FAIL_MODE_OPEN."""
        verdict = ALLOW if policy.fail_open else BLOCK
        return Decision(
            verdict=verdict,
            findings=[],
            redacted_text="",
            block_message="" if policy.fail_open else DEGRADED_MESSAGE,
            latencies_us=[],
            degraded=True,
            latency_us=0,
            text_length=len(text),
            failed=["hard_timeout"],
        )

    def redact(self, text: str, counted: Sequence[Counted], offset: int = 0) -> str:
        """``text`` with every REDACT span replaced in its check's style. ``offset`` is the
        position of ``text`` in a longer stream (findings are in stream offsets)."""
        spans = sorted(
            (c for c in counted if c.action == REDACT and c.finding.end > c.finding.start),
            key=lambda c: c.finding.start,
        )
        out: list[str] = []
        cursor = 0
        for c in spans:
            s, e = c.finding.start - offset, c.finding.end - offset
            if e <= cursor or s >= len(text) or e <= 0:
                continue
            s = max(s, cursor)
            out.append(text[cursor:s])
            out.append(self._replacement(text[s:e], c))
            cursor = e
        out.append(text[cursor:])
        whole = [c for c in counted if c.action == REDACT and c.finding.end == c.finding.start]
        if whole:  # a whole-text finding to redact: nothing of the text survives
            return f"[{whole[0].finding.type.upper()}]"
        return "".join(out)

    def _replacement(self, value: str, c: Counted) -> str:
        if c.redact_style == "mask":
            return "*" * len(value)
        if c.redact_style == "hash":
            return f"[{c.finding.type.upper()}:{c.match_hash[:10]}]"
        return f"[{c.finding.type.upper()}]"


def _strongest_per_span(counted: list[Counted]) -> list[Counted]:
    """One entry per (detector, type, span): the most severe check's action wins."""
    best: dict[tuple[str, str, int, int], Counted] = {}
    for c in counted:
        f = c.finding
        key = (f.detector, f.type, f.start, f.end)
        if key not in best or _rank(c.action) > _rank(best[key].action):
            best[key] = c
    return sorted(best.values(), key=lambda c: (c.finding.start, c.finding.end, c.finding.type))


class DecisionCache:
    """Recent decisions, so that a text checked again under the same policy and context is
    not run through the detectors again.

    A decision is a function of the policy, the text and the context (direction, locale,
    facts) alone — the detectors are deterministic, the policy's parameters are part of it —
    and a storefront checks the same texts over and over: the catalogue passages retrieved
    for every shopper of a page, a property's reviews, popular queries. Keys hold a BLAKE2b
    digest of the text, not the text (no shopper text is kept beyond its check); the whole
    cache is dropped when the policy set changes (a new revision). Degraded decisions (a
    detector failed or ran out of time) are never kept, nor decisions of texts longer than
    ``max_text`` code points (memory). ``max_entries`` 0 turns it off.
    """

    def __init__(self, max_entries: int, max_text: int = CACHEABLE_TEXT) -> None:
        self.max_entries = max_entries
        self.max_text = max_text
        self._entries: OrderedDict[tuple[object, ...], Decision] = OrderedDict()
        self._revision: object = None
        self.hits = 0
        self.misses = 0

    def _key(
        self, revision: object, policy: CompiledPolicy, text: str, ctx: CheckContext
    ) -> tuple[object, ...]:
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16)
        facts = b""
        if ctx.facts:
            f = hashlib.blake2b(digest_size=16)
            for fact in ctx.facts:
                for part in (fact.id, fact.text, fact.source):
                    raw = part.encode("utf-8", "surrogatepass")
                    f.update(len(raw).to_bytes(4, "big"))
                    f.update(raw)
            facts = f.digest()
        # the revision too: a decision made under the old set never lands in the new one
        return (revision, policy.name, policy.version, digest.digest(), ctx.direction,
                ctx.locale, facts)  # fmt: skip

    def lookup(
        self, revision: object, policy: CompiledPolicy, text: str, ctx: CheckContext
    ) -> tuple[tuple[object, ...] | None, Decision | None]:
        """(the key to :meth:`keep` the decision under, or None when it is not to be kept;
        a copy of the kept decision, or None). On the event loop only (not thread-safe)."""
        if self.max_entries <= 0 or len(text) > self.max_text:
            return None, None
        start = time.perf_counter()
        if revision != self._revision:
            self._entries.clear()
            self._revision = revision
        key = self._key(revision, policy, text, ctx)
        kept = self._entries.get(key)
        if kept is None:
            self.misses += 1
            return key, None
        self._entries.move_to_end(key)
        self.hits += 1
        return key, replace(
            kept, findings=list(kept.findings), latencies_us=[], failed=[], cached=True,
            latency_us=int((time.perf_counter() - start) * 1e6),
        )  # fmt: skip

    def keep(self, key: tuple[object, ...] | None, decision: Decision) -> None:
        if key is None or decision.degraded or decision.cached:
            return
        self._entries[key] = replace(decision, findings=list(decision.findings))
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
