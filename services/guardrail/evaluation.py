"""Quality of the detectors on the labelled sets (shared by the tests, the bench and the CLI).

The sets live in ``data/<split>/<set>.jsonl`` (``data/README.md`` says how each was written):
``dev`` is what the detectors were built and tuned on; ``test`` was written afterwards and is
never used for tuning — the figures the README and ``llmops bench guardrail`` report come
from it.

Scoring rules, one for every consumer:

- a finding counts when its score is at least ``MIN_SCORE`` (0.5, the threshold the shipped
  storefront policies use for PII and toxicity);
- spans (:func:`score`): a finding is a true positive when its type equals a labelled span's
  type and it covers at least half of that span; each labelled span is matched at most once.
  Findings of types the set does not label for that text are false positives; labelled spans
  no finding covers are false negatives. Per type and overall (micro-averaged);
- texts (injection, toxicity): a labelled text is a true positive when a finding of one of its
  labels is present (a miss otherwise); a clean text with any finding is a false positive.

``python -m services.guardrail.evaluation [--split test|dev]`` prints every table.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.guardrail.detectors.base import CheckContext, Detector, Finding

DATA = Path(__file__).resolve().parent / "data"
SPLITS = ("dev", "test")
SETS = ("pii", "injection", "toxicity")
MIN_SCORE = 0.5
LOCALES = {"en": "en-GB", "fr": "fr-FR", "de": "de-DE", "es": "es-ES"}
"""The locale each set language is checked with (the phone detector takes its region)."""

Row = Mapping[str, Any]
Spans = Mapping[str, Iterable[tuple[str, int, int]]]


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

    def add(self, other: Score) -> None:
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn

    def figures(self) -> dict[str, float | int]:
        """Rounded P/R/F1 and the counts, as the bench JSON carries them."""
        return {
            "precision": round(self.precision, 3),
            "recall": round(self.recall, 3),
            "f1": round(self.f1, 3),
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


@dataclass
class Report:
    by_type: dict[str, Score] = field(default_factory=dict)
    overall: Score = field(default_factory=Score)

    def table(self, title: str = "type") -> str:
        return table(title, {**dict(sorted(self.by_type.items())), "overall": self.overall})


def table(title: str, scores: Mapping[str, Score]) -> str:
    rows = [f"{title:<38} {'P':>6} {'R':>6} {'F1':>6}  tp/fp/fn"]
    for name, s in scores.items():
        rows.append(f"{name:<38} {s.precision:6.3f} {s.recall:6.3f} {s.f1:6.3f}  "
                    f"{s.tp}/{s.fp}/{s.fn}")  # fmt: skip
    return "\n".join(rows)


def score(labelled: Sequence[Row], findings: Spans, types: Iterable[str] | None = None) -> Report:
    """Span scoring. ``labelled``: items with ``id`` and ``spans`` ([{type, start, end}]);
    ``findings``: per id, (type, start, end). ``types`` limits the evaluation."""
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


def score_texts(labelled: Sequence[Row], found: Mapping[str, set[str]]) -> Score:
    """Text scoring: ``labelled`` items carry ``labels`` (empty: clean); ``found`` maps each
    id to the finding types present."""
    s = Score()
    for item in labelled:
        labels, types = set(item["labels"]), found.get(str(item["id"]), set())
        if labels:
            s.tp += bool(types & labels)
            s.fn += not types & labels
        else:
            s.fp += bool(types)
    return s


# ----------------------------------------------------------------------------- the sets


def load(name: str, split: str) -> list[dict[str, Any]]:
    """The rows of labelled set ``name`` (pii, injection, toxicity) in ``split``."""
    if name not in SETS or split not in SPLITS:
        raise ValueError(f"no labelled set {split}/{name} (sets {SETS}, splits {SPLITS})")
    path = DATA / split / f"{name}.jsonl"
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def locale(lang: str) -> str:
    return LOCALES.get(lang, "")


def run(
    detector: Detector, rows: Sequence[Row], min_score: float = MIN_SCORE
) -> dict[str, list[Finding]]:
    """Each row's findings (at least ``min_score``), checked in the row's locale."""
    return {
        str(r["id"]): [
            f
            for f in detector.detect(r["text"], CheckContext(locale=locale(r.get("lang", ""))))
            if f.score >= min_score
        ]
        for r in rows
    }


def spans_of(found: Mapping[str, Sequence[Finding]]) -> dict[str, list[tuple[str, int, int]]]:
    return {k: [(f.type, f.start, f.end) for f in v] for k, v in found.items()}


def by_language(rows: Sequence[Row], scorer: Callable[[list[Row]], Any]) -> dict[str, Any]:
    """``scorer`` applied to the rows of each language (sorted by language)."""
    langs: dict[str, list[Row]] = {}
    for r in rows:
        langs.setdefault(str(r.get("lang", "")), []).append(r)
    return {lang: scorer(langs[lang]) for lang in sorted(langs)}


@dataclass
class PiiResult:
    report: Report
    by_lang: dict[str, Report]


def evaluate_pii(detector: Detector, rows: Sequence[Row]) -> PiiResult:
    found = spans_of(run(detector, rows))
    return PiiResult(score(rows, found), by_language(rows, lambda part: score(part, found)))


@dataclass
class InjectionResult:
    texts: Score
    spans: Report
    by_lang: dict[str, Score]
    """Text scores per language."""


def evaluate_injection(detector: Detector, rows: Sequence[Row]) -> InjectionResult:
    found = run(detector, rows)
    labelled = [_text_labels(r) for r in rows]
    types = {k: {f.type for f in v} for k, v in found.items()}
    return InjectionResult(
        texts=score_texts(labelled, types),
        spans=score(rows, spans_of(found)),
        by_lang=by_language(labelled, lambda part: score_texts(part, types)),
    )


def _text_labels(row: Row) -> dict[str, Any]:
    """An injection row (one ``label``, "clean" or a type) as a text-scoring row."""
    return {**row, "labels": [] if row["label"] == "clean" else [row["label"]]}


@dataclass
class ToxicityResult:
    texts: Score
    by_category: dict[str, Score]
    by_lang: dict[str, Score]


def evaluate_toxicity(
    detector: Detector, rows: Sequence[Row], categories: Sequence[str]
) -> ToxicityResult:
    """Texts overall (a toxic text counts as found when a finding of one of its categories
    is present), per category (each category scored as its own binary task) and per
    language."""
    types = {k: {f.type for f in v} for k, v in run(detector, rows).items()}
    by_category = {
        c: score_texts(
            [{**r, "labels": [c] if c in r["labels"] else []} for r in rows],
            {k: v & {c} for k, v in types.items()},
        )
        for c in categories
    }
    return ToxicityResult(
        texts=score_texts(rows, types),
        by_category=by_category,
        by_lang=by_language(rows, lambda part: score_texts(part, types)),
    )


# -------------------------------------------------------------------------------- CLI


def report(split: str) -> dict[str, Any]:
    """Every detector on ``split``: printable tables and the figures (for the bench JSON)."""
    from services.guardrail.detectors.injection import PromptInjectionDetector
    from services.guardrail.detectors.pii import PiiDetector
    from services.guardrail.detectors.toxicity import CATEGORIES, ToxicityDetector

    pii_rows, inj_rows, tox_rows = (load(name, split) for name in SETS)
    pii = evaluate_pii(PiiDetector(), pii_rows)
    inj = evaluate_injection(PromptInjectionDetector(), inj_rows)
    tox = evaluate_toxicity(ToxicityDetector(), tox_rows, CATEGORIES)
    tables = [
        pii.report.table(f"pii ({split}, {len(pii_rows)} texts), spans"),
        table("pii per language, spans", {k: v.overall for k, v in pii.by_lang.items()}),
        table(f"prompt_injection ({split}, {len(inj_rows)} texts), texts",
              {"overall": inj.texts, **inj.by_lang}),
        inj.spans.table("prompt_injection spans"),
        table(f"toxicity ({split}, {len(tox_rows)} texts), texts",
              {"overall": tox.texts, **tox.by_lang, **tox.by_category}),
    ]  # fmt: skip
    figures = {
        "split": split,
        "pii": {
            **pii.report.overall.figures(),
            "texts": len(pii_rows),
            "by_type": {k: v.figures() for k, v in sorted(pii.report.by_type.items())},
            "by_language": {k: v.overall.figures() for k, v in pii.by_lang.items()},
        },
        "prompt_injection": {
            **inj.texts.figures(),
            "texts": len(inj_rows),
            "spans": inj.spans.overall.figures(),
            "by_language": {k: v.figures() for k, v in inj.by_lang.items()},
        },
        "toxicity": {
            **tox.texts.figures(),
            "texts": len(tox_rows),
            "by_category": {k: v.figures() for k, v in tox.by_category.items()},
            "by_language": {k: v.figures() for k, v in tox.by_lang.items()},
        },
    }
    return {"tables": tables, "figures": figures}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Detector quality on a labelled split.")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    result = report(args.split)
    if args.json:
        print(json.dumps(result["figures"], indent=1))
    else:
        print("\n\n".join(result["tables"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
