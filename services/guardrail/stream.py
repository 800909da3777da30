"""CheckStream: checking text as a model generates it, chunk by chunk.

Text is released to the client only once it is safe: the last :data:`HOLD_BACK` code
points are held back, so a finding that spans a chunk boundary (an e-mail address split
over two tokens) is seen whole before any of it leaves. Each new chunk re-runs the
detectors over the unreleased text plus :data:`CONTEXT` code points of released text
before it (patterns that start earlier are still seen), not over the whole stream, so the
cost per chunk stays flat. A released cut never splits a finding: it moves back to the
finding's start. REDACT spans are replaced before release; a BLOCK ends the stream at once
with the block message (no further text is released). On half-close the rest is checked
and released.

Hold-back: 64 code points, so the client sees text at most 64 characters behind the
model — about 15 tokens. Matches longer than that across a boundary (a 70-character
e-mail address split exactly at its end) are caught when the next chunk arrives, as long
as their start is still unreleased; the window is a constant of the module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.guardrail.detectors.base import CheckContext, Finding
from services.guardrail.engine import BLOCK, REDACT, Counted, Decision, Engine
from services.guardrail.policy import CompiledPolicy

HOLD_BACK = 64
CONTEXT = 256


@dataclass(slots=True)
class Release:
    text: str
    until: int
    findings: list[Counted]
    decision: Decision


@dataclass(slots=True)
class StreamState:
    engine: Engine
    policy: CompiledPolicy
    ctx: CheckContext
    text: str = ""
    released: int = 0
    seen: set[tuple[str, int, int]] = field(default_factory=set)
    counted: list[Counted] = field(default_factory=list)
    latency_us: int = 0
    degraded: bool = False
    latencies: dict[str, int] = field(default_factory=dict)

    def _scan(self) -> Decision:
        base = max(0, self.released - CONTEXT)
        decision = self.engine.evaluate(self.policy, self.text[base:], self.ctx)
        self.latency_us += decision.latency_us
        self.degraded = self.degraded or decision.degraded
        for name, us in decision.latencies_us:
            self.latencies[name] = self.latencies.get(name, 0) + us
        shifted = []
        for c in decision.findings:
            f = c.finding
            if f.end > f.start:
                f = Finding(f.type, f.start + base, f.end + base, f.score, f.detector)
            shifted.append(Counted(f, c.action, c.redact_style, c.block_message, c.match_hash))
        decision.findings = shifted
        return decision

    def push(self, chunk: str) -> Release:
        self.text += chunk
        return self._advance(final=False)

    def finish(self) -> Release:
        return self._advance(final=True)

    def _advance(self, final: bool) -> Release:
        decision = self._scan()
        new = []
        for c in decision.findings:
            key = (c.finding.type, c.finding.start, c.finding.end)
            if key not in self.seen:
                self.seen.add(key)
                new.append(c)
                self.counted.append(c)
        if decision.verdict == BLOCK:
            return Release("", self.released, new, decision)
        cut = len(self.text) if final else max(self.released, len(self.text) - HOLD_BACK)
        for c in self.counted:  # never cut through a finding
            f = c.finding
            if f.start < cut < f.end:
                cut = max(self.released, f.start)
        piece = self.text[self.released : cut]
        spans = [c for c in self.counted if c.action == REDACT and c.finding.end > c.finding.start]
        released_text = self.engine.redact(piece, spans, offset=self.released) if spans else piece
        self.released = cut
        return Release(released_text, cut, new, decision)
