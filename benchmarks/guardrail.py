"""``llmops bench guardrail``: Check latency via gRPC, per-detector cost, and PII quality vs
Microsoft Presidio on the project's labelled set.

Cases (BENCH.md):

- ``check_1kb`` / ``check_8kb`` (llmops): ``Check`` of a ~1 KB / ~8 KB input text (a shopper
  message with a few PII values, assembled from the labelled set) through the guardrail
  service (its own process, the repo's ``storefront-input`` policy: injection, toxicity,
  PII, topic) one call at a time; extras: mean per-detector cost in µs;
- the same texts through Presidio's ``AnalyzerEngine.analyze`` (PII only, English spaCy
  pipeline) in its own venv (:mod:`benchmarks.presidio_baseline`);
- ``pii_quality`` (llmops and presidio): precision / recall / F1 of PII findings on
  ``services/guardrail/data/pii.jsonl`` with one matching rule for both
  (:mod:`services.guardrail.evaluation`).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from benchmarks import servers
from benchmarks.report import Case, emit
from llmops.v1 import common_pb2, guardrail_pb2, guardrail_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
PII_SET = REPO / "services" / "guardrail" / "data" / "pii.jsonl"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def labelled() -> list[dict[str, Any]]:
    return [json.loads(line) for line in PII_SET.read_text(encoding="utf-8").splitlines() if line]


def latency_texts(items: list[dict[str, Any]]) -> dict[str, str]:
    """~1 KB and ~8 KB English texts built from the labelled set (PII included)."""
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


def _our_quality(items: list[dict[str, Any]]) -> tuple[Case, dict[str, Any]]:
    from services.guardrail.detectors.base import CheckContext
    from services.guardrail.detectors.pii import PiiDetector
    from services.guardrail.evaluation import score

    detector = PiiDetector()
    case = Case("pii_quality", "llmops")
    findings: dict[str, list[tuple[str, int, int]]] = {}
    start = time.perf_counter()
    for item in items:
        t0 = time.perf_counter()
        found = detector.detect(item["text"], CheckContext(locale=_locale(item.get("lang", "en"))))
        case.latencies_s.append(time.perf_counter() - t0)
        findings[str(item["id"])] = [(f.type, f.start, f.end) for f in found if f.score >= 0.5]
    case.wall_s = time.perf_counter() - start
    return case, {"report": score(items, findings)}


def _locale(lang: str) -> str:
    return {"en": "en-GB", "fr": "fr-FR", "de": "de-DE", "es": "es-ES"}.get(lang, "en-GB")


def _quality_extra(report: Any) -> dict[str, Any]:
    return {
        "precision": round(report.overall.precision, 3),
        "recall": round(report.overall.recall, 3),
        "f1": round(report.overall.f1, 3),
        "by_type_f1": {k: round(v.f1, 3) for k, v in sorted(report.by_type.items())},
    }


def main(*, quick: bool, calls: int | None = None) -> None:
    from benchmarks.presidio_baseline import run_presidio_baseline
    from services.guardrail.evaluation import score

    calls = calls or (300 if quick else 3000)
    items = labelled()
    texts = latency_texts(items)
    tmp = Path(tempfile.mkdtemp(prefix="llmops-bench-guardrail-"))
    try:
        with (tmp / "server.log").open("w") as log:
            proc, address = servers.start_service(
                "guardrail", {"LLMOPS__STATE_DIR": str(tmp / "state"),
                              "LLMOPS__EVENTS__BACKEND": "local"}, log,
            )  # fmt: skip
            try:
                _log(f"gRPC Check: {calls:,} calls per text, one at a time")
                cases = asyncio.run(_measure(address, texts, calls))
            finally:
                proc.terminate()
                proc.wait(30)
        ours, quality = _our_quality(items)
        ours.extra = _quality_extra(quality["report"])
        _log("llmops PII on the labelled set:\n" + quality["report"].table())
        cases.append(ours)
        spec = tmp / "texts.json"
        spec.write_text(json.dumps({"latency_texts": texts, "labelled": items}))
        _log("Presidio (its own venv) ...")
        # Presidio takes ~50 ms per KB here: fewer calls (its percentiles settle quickly)
        theirs = run_presidio_baseline(texts_path=spec, calls=30 if quick else 300, log=_log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summaries = [c.summary() for c in cases]
    for c in theirs:
        if c["case"] == "pii_quality":
            found = {k: [(f["type"], f["start"], f["end"]) for f in v]
                     for k, v in c.pop("findings", {}).items()}  # fmt: skip
            report = score(items, found)
            _log("Presidio PII on the labelled set:\n" + report.table())
            c.update(_quality_extra(report))
        summaries.append(c)
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
    emit("guardrail", summaries, ratios)
