"""``llmops bench guardrail``: Check latency via gRPC, per-detector cost, and the detectors'
quality on the held-out test split, PII compared with Microsoft Presidio.

Cases (BENCH.md):

- ``check_1kb`` / ``check_8kb`` (llmops): ``Check`` of a ~1 KB / ~8 KB input text (a shopper
  message with a few PII values, assembled from the dev split of the PII set) through the
  guardrail service (its own process, the repo's ``storefront-input`` policy: injection,
  toxicity, PII, topic) one call at a time, with the service's decision cache off (it would
  answer every repeat of a text); extras: mean per-detector cost in µs;
- the same texts through Presidio's ``AnalyzerEngine.analyze`` (PII only, English) in its own
  venv (:mod:`benchmarks.presidio_baseline`);
- ``pii_quality`` (llmops and presidio): precision / recall / F1 of PII findings on the test
  split ``services/guardrail/data/test/pii.jsonl``, overall, per type and per language
  (``by_language``), with one matching rule for both (:mod:`services.guardrail.evaluation`);
  Presidio analyses each text in its language with the recognizers it has for it;
- ``injection_quality`` and ``toxicity_quality`` (llmops): the prompt-injection and toxicity
  detectors on their test splits (texts: precision / recall / F1, per language; injection
  spans; toxicity per category). Latencies of the quality cases are per text, in-process.

Only the test split is scored (``data/README.md``: the dev split is what the detectors were
tuned on).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from benchmarks import servers
from benchmarks.report import Case, emit
from llmops.v1 import common_pb2, guardrail_pb2, guardrail_pb2_grpc
from services.guardrail.detectors.base import CheckContext, Detector, Finding
from services.guardrail.evaluation import Report, Score, load

SPLIT = "test"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def latency_texts(items: list[dict[str, Any]]) -> dict[str, str]:
    """~1 KB and ~8 KB English texts built from labelled texts (PII included)."""
    english = [i["text"] for i in items if i.get("lang") == "en"]
    out = {}
    for name, size in (("check_1kb", 1024), ("check_8kb", 8192)):
        parts: list[str] = []
        i = 0
        while sum(len(p) + 1 for p in parts) < size:
            parts.append(english[i % len(english)])
            i += 1
        out[name] = " ".join(parts)[:size]
    return out


async def _measure(address: str, texts: dict[str, str], calls: int) -> list[Case]:
    cases = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = guardrail_pb2_grpc.GuardrailServiceStub(channel)
        for name, text in texts.items():
            request = guardrail_pb2.CheckRequest(direction=common_pb2.DIRECTION_INPUT, text=text)
            for _ in range(max(calls // 10, 20)):
                await stub.Check(request, timeout=5)
            case = Case(name, "llmops")
            per_detector: dict[str, int] = {}
            perf = time.perf_counter
            start = perf()
            for _ in range(calls):
                t0 = perf()
                reply = await stub.Check(request, timeout=5)
                case.latencies_s.append(perf() - t0)
                for stage in reply.detector_latencies:
                    per_detector[stage.stage] = per_detector.get(stage.stage, 0) + stage.duration_us
            case.wall_s = perf() - start
            case.extra = {
                "text_chars": len(text),
                "verdict": common_pb2.Verdict.Name(reply.verdict),
                "detector_us": {k: round(v / calls, 1) for k, v in sorted(per_detector.items())},
                "server_latency_us": reply.latency_us,
            }
            cases.append(case)
    return cases


class _Timed:
    """A detector whose ``detect`` calls are timed (one latency per text)."""

    def __init__(self, detector: Detector) -> None:
        self.name = detector.name
        self._detector = detector
        self.latencies_s: list[float] = []

    def detect(self, text: str, ctx: CheckContext) -> list[Finding]:
        t0 = time.perf_counter()
        out = self._detector.detect(text, ctx)
        self.latencies_s.append(time.perf_counter() - t0)
        return out


def _case(name: str, timed: _Timed, extra: dict[str, Any]) -> Case:
    case = Case(name, "llmops", latencies_s=timed.latencies_s, extra={"split": SPLIT, **extra})
    case.wall_s = sum(timed.latencies_s)
    return case


def _pii_extra(report: Report, by_lang: dict[str, Report]) -> dict[str, Any]:
    return {
        **report.overall.figures(),
        "by_type": {k: v.figures() for k, v in sorted(report.by_type.items())},
        "by_language": {k: v.overall.figures() for k, v in by_lang.items()},
    }


def _quality_cases(pii_rows: list[dict[str, Any]]) -> list[Case]:
    from services.guardrail.detectors.injection import PromptInjectionDetector
    from services.guardrail.detectors.pii import PiiDetector
    from services.guardrail.detectors.toxicity import CATEGORIES, ToxicityDetector
    from services.guardrail.evaluation import evaluate_injection, evaluate_pii, evaluate_toxicity

    pii_timed = _Timed(PiiDetector())
    pii = evaluate_pii(pii_timed, pii_rows)
    _log(f"llmops PII, {SPLIT} split:\n" + pii.report.table())
    inj_timed = _Timed(PromptInjectionDetector())
    inj = evaluate_injection(inj_timed, load("injection", SPLIT))
    _log(f"llmops prompt injection, {SPLIT} split (texts): {_pr(inj.texts)}")
    tox_timed = _Timed(ToxicityDetector())
    tox = evaluate_toxicity(tox_timed, load("toxicity", SPLIT), CATEGORIES)
    _log(f"llmops toxicity, {SPLIT} split (texts): {_pr(tox.texts)}")
    return [
        _case("pii_quality", pii_timed, _pii_extra(pii.report, pii.by_lang)),
        _case("injection_quality", inj_timed, {
            **inj.texts.figures(),
            "spans": inj.spans.overall.figures(),
            "by_type_spans": {k: v.figures() for k, v in sorted(inj.spans.by_type.items())},
            "by_language": {k: v.figures() for k, v in inj.by_lang.items()},
        }),
        _case("toxicity_quality", tox_timed, {
            **tox.texts.figures(),
            "by_category": {k: v.figures() for k, v in tox.by_category.items()},
            "by_language": {k: v.figures() for k, v in tox.by_lang.items()},
        }),
    ]  # fmt: skip


def _pr(s: Score) -> str:
    return f"P {s.precision:.3f} R {s.recall:.3f} F1 {s.f1:.3f} ({s.tp}/{s.fp}/{s.fn})"


def _presidio_quality(case: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    """Score Presidio's findings (in ``case``) with our matcher; figures into ``case``."""
    from services.guardrail.evaluation import by_language, score

    found = {k: [(f["type"], f["start"], f["end"]) for f in v]
             for k, v in case.pop("findings", {}).items()}  # fmt: skip
    report = score(rows, found)
    _log(f"Presidio PII, {SPLIT} split:\n" + report.table())
    case.update(
        {"split": SPLIT, **_pii_extra(report, by_language(rows, lambda part: score(part, found)))}
    )


def main(*, quick: bool, calls: int | None = None) -> None:
    from benchmarks.presidio_baseline import run_presidio_baseline

    calls = calls or (300 if quick else 3000)
    pii_rows = load("pii", SPLIT)
    texts = latency_texts(load("pii", "dev"))
    tmp = Path(tempfile.mkdtemp(prefix="llmops-bench-guardrail-"))
    try:
        with (tmp / "server.log").open("w") as log:
            proc, address = servers.start_service(
                "guardrail", {"LLMOPS__STATE_DIR": str(tmp / "state"),
                              "LLMOPS__EVENTS__BACKEND": "local",
                              # the same texts are checked again and again here: the decision
                              # cache would answer all but the first; the detectors are measured
                              "LLMOPS__GUARDRAILS__DECISION_CACHE_ENTRIES": "0"}, log,
            )  # fmt: skip
            try:
                _log(f"gRPC Check: {calls:,} calls per text, one at a time")
                cases = asyncio.run(_measure(address, texts, calls))
            finally:
                proc.terminate()
                proc.wait(30)
        cases += _quality_cases(pii_rows)
        spec = tmp / "texts.json"
        spec.write_text(json.dumps({"latency_texts": texts, "labelled": pii_rows}))
        _log("Presidio (its own venv) ...")
        # Presidio takes ~50 ms per KB here: fewer calls (its percentiles settle quickly)
        theirs = run_presidio_baseline(texts_path=spec, calls=30 if quick else 300, log=_log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summaries = [c.summary() for c in cases]
    for c in theirs:
        if c["case"] == "pii_quality":
            _presidio_quality(c, pii_rows)
        summaries.append(c)
    emit("guardrail", summaries, _ratios(summaries))


def _ratios(summaries: list[dict[str, Any]]) -> dict[str, float]:
    by = {(c["case"], c["system"]): c for c in summaries}
    ratios: dict[str, float] = {}
    for name in ("check_1kb", "check_8kb"):
        a, b = by.get((name, "llmops")), by.get((name, "presidio"))
        if a and b:
            ratios[f"{name}.p50_ms.presidio/llmops"] = round(b["p50_ms"] / a["p50_ms"], 2)
            ratios[f"{name}.p99_ms.presidio/llmops"] = round(b["p99_ms"] / a["p99_ms"], 2)
    a, b = by.get(("pii_quality", "llmops")), by.get(("pii_quality", "presidio"))
    if a and b:
        ratios["pii_quality.f1.llmops-presidio"] = round(a["f1"] - b["f1"], 3)
        for lang, ours in a["by_language"].items():
            theirs = b["by_language"].get(lang)
            if theirs:
                ratios[f"pii_quality.{lang}.f1.llmops-presidio"] = round(
                    ours["f1"] - theirs["f1"], 3
                )
    return ratios
