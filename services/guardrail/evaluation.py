"""Precision / recall of span findings against a labelled set (shared by tests and bench).

A finding is a true positive when its type equals a labelled span's type and it covers at
least half of that span; each labelled span is matched at most once. Findings of types the
set does not label for that text are false positives; labelled spans no finding covers are
false negatives. Per type and overall (micro-averaged).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


@dataclass
class Report:
    by_type: dict[str, Score] = field(default_factory=dict)
    overall: Score = field(default_factory=Score)

    def table(self) -> str:
        rows = [f"{'type':<22} {'P':>6} {'R':>6} {'F1':>6}  tp/fp/fn"]
        for name, s in [*sorted(self.by_type.items()), ("overall", self.overall)]:
            rows.append(f"{name:<22} {s.precision:6.3f} {s.recall:6.3f} {s.f1:6.3f}  "
                        f"{s.tp}/{s.fp}/{s.fn}")  # fmt: skip
        return "\n".join(rows)


def score(
    labelled: Sequence[Mapping[str, Any]],
    findings: Mapping[str, Iterable[tuple[str, int, int]]],
    types: Iterable[str] | None = None,
) -> Report:
    """``labelled``: items with ``id`` and ``spans`` ([{type, start, end}]); ``findings``: per
    id, (type, start, end). ``types`` limits the evaluation (others are ignored)."""
    wanted = set(types) if types is not None else None
    report = Report()

    def bump(kind: str, attr: str) -> None:
        s = report.by_type.setdefault(kind, Score())
        setattr(s, attr, getattr(s, attr) + 1)
        setattr(report.overall, attr, getattr(report.overall, attr) + 1)

    for item in labelled:
        gold = [
            (s["type"], int(s["start"]), int(s["end"]))
            for s in item.get("spans", [])
            if wanted is None or s["type"] in wanted
        ]
        used = [False] * len(gold)
        for kind, start, end in findings.get(str(item["id"]), ()):
            if wanted is not None and kind not in wanted:
                continue
            hit = None
            for i, (g_kind, g_start, g_end) in enumerate(gold):
                overlap = min(end, g_end) - max(start, g_start)
                if not used[i] and g_kind == kind and overlap * 2 >= g_end - g_start:
                    hit = i
                    break
            if hit is None:
                bump(kind, "fp")
            else:
                used[hit] = True
                bump(kind, "tp")
        for i, (g_kind, _, _) in enumerate(gold):
            if not used[i]:
                bump(g_kind, "fn")
    return report
