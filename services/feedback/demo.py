"""The demo's simulated day of shoppers: predictions of two storefront tasks under their demo
experiments, and the feedback shoppers gave on them over the last 24 hours.

`llmops up` runs it once on a fresh state directory (``feedback.demo_data``), so that
`llmops demo` has statistics per variant to show and a preference set to export before
anyone has clicked anything. The predictions are published as the inference service would
log them (PredictionEvent, with payloads), the feedback goes through the service's own intake
(validated, deduplicated, typed text redacted, durable). The numbers are made up, with a
known truth: the treatment variants are better (more thumbs up, more clicks and bookings).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from google.protobuf import timestamp_pb2

from llmops.errors import LLMOpsError
from llmops.v1 import common_pb2, events_pb2, feedback_pb2
from services.feedback.intake import Intake

log = structlog.get_logger("llmops.feedback")

TENANT = "demo"
DAY_S = 86_400
BATCH = 500
PROPERTIES = (
    "Casa Azul", "Hotel Miramar", "Le Petit Nice", "Villa Alfama", "Barceloneta Lofts",
    "Sea Breeze Suites", "Old Town Inn", "Olive Grove House", "Harbour View", "Palau Garden",
    "Rua Augusta Flats", "Promenade Residence",
)  # fmt: skip
QUERIES = (
    "beach hotel with pool", "romantic weekend in paris", "cheap hostel lisbon",
    "family apartment near the zoo", "business hotel near the station", "luxury spa resort",
    "quiet room old town", "villa with sea view",
)  # fmt: skip
INTENTS = ("beach", "romantic", "budget", "family", "business", "luxury", "city", "beach")


@dataclass(frozen=True, slots=True)
class Arm:
    task: str
    experiment: str
    variant: str
    route: str
    model: str
    prompt: tuple[str, int]
    thumbs_up: float
    """Share of thumbs that are up."""
    click: float
    booking: float


ARMS = (
    Arm("property_summary", "property-summary-prompt", "prompt_v3", "summary-small",
        "smollm2-135m-instruct", ("property-summary", 3), 0.56, 0.20, 0.035),
    Arm("property_summary", "property-summary-prompt", "prompt_v4_highlights", "summary-small",
        "smollm2-135m-instruct", ("property-summary", 4), 0.70, 0.24, 0.045),
    Arm("query_intent", "query-intent-prompt", "zero_shot", "chat-small",
        "smollm2-135m-instruct", ("query-intent", 1), 0.5, 0.40, 0.0),
    Arm("query_intent", "query-intent-prompt", "few_shot", "chat-small",
        "smollm2-135m-instruct", ("query-intent", 2), 0.5, 0.48, 0.0),
)  # fmt: skip


@dataclass
class Simulated:
    predictions: list[events_pb2.EventEnvelope]
    feedback: list[feedback_pb2.Feedback]


def _ts(stamp: timestamp_pb2.Timestamp, seconds: float) -> None:
    stamp.seconds, stamp.nanos = divmod(int(seconds * 1e9), 1_000_000_000)


def _value(text: str) -> common_pb2.Value:
    return common_pb2.Value(string_value=text)


def simulate(now_s: float, per_arm: int = 200, seed: int = 1) -> Simulated:
    """The day: ``per_arm`` predictions per variant and their feedback (reproducible)."""
    rng = random.Random(seed)
    predictions: list[events_pb2.EventEnvelope] = []
    feedback: list[feedback_pb2.Feedback] = []
    summaries: dict[tuple[str, str], str] = {}  # (property, variant) -> request id

    def key() -> str:
        return f"demo-day-{len(feedback):05d}"

    def add(request_id: str, at: float, **kind: object) -> feedback_pb2.Feedback:
        fb = feedback_pb2.Feedback(idempotency_key=key(), request_id=request_id, source="web",
                                   **kind)  # type: ignore[arg-type]  # fmt: skip
        _ts(fb.occurred_time, at)
        feedback.append(fb)
        return fb

    for arm in ARMS:
        for i in range(per_arm):
            at = now_s - DAY_S + rng.random() * (DAY_S - 900)
            request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            env = events_pb2.EventEnvelope(producer="llmops.v1.FeedbackService/demo-day")
            ev = env.prediction
            ev.event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            _ts(ev.event_time, at)
            ev.request_id, ev.tenant, ev.market = request_id, TENANT, rng.choice(("gb", "de", "fr"))
            ev.route, ev.task, ev.model_name, ev.model_version = arm.route, arm.task, arm.model, 1
            ev.experiment_id, ev.variant = arm.experiment, arm.variant
            ev.prompt_name, ev.prompt_version = arm.prompt
            ev.total_latency_us = rng.randint(180_000, 900_000)
            ev.client_name = "demo-day"
            if arm.task == "property_summary":
                name = PROPERTIES[i % len(PROPERTIES)]
                ev.inputs["property_name"].CopyFrom(_value(name))
                style = "Three highlights: sea view, rooftop pool, quiet rooms. " if (
                    arm.variant == "prompt_v4_highlights") else ""  # fmt: skip
                ev.output.string_value = f"{style}{name} is a well-rated stay (variant {i % 3})."
                summaries.setdefault((name, arm.variant), request_id)
            else:
                q = i % len(QUERIES)
                ev.inputs["query"].CopyFrom(_value(QUERIES[q]))
                right = INTENTS[q]
                wrong = rng.random() < (0.35 if arm.variant == "zero_shot" else 0.22)
                ev.output.string_value = "other" if wrong else right
                if wrong:
                    ev.skipped_steps.append("postprocess")  # fell back: low confidence
            predictions.append(env)
            later = at + rng.random() * 600
            if arm.task == "property_summary":
                if rng.random() < 0.35:
                    thumb = 1 if rng.random() < arm.thumbs_up else 2
                    add(request_id, later, name="thumbs", thumbs=feedback_pb2.Thumbs(thumb=thumb))  # type: ignore[arg-type]
                if rng.random() < 0.05:
                    stars = feedback_pb2.Rating(value=rng.randint(2, 5), scale_max=5)
                    add(request_id, later, name="rating", rating=stars)
                if rng.random() < 0.08:
                    add(request_id, later, name="copy",
                        interaction=feedback_pb2.Interaction(action="copy"))  # fmt: skip
                if rng.random() < arm.booking:
                    value = common_pb2.Money(currency_code="EUR", units=rng.randint(120, 900))
                    add(request_id, later + 1800, name="booking", booking=feedback_pb2.Booking(
                        booking_id=f"BK-{rng.randint(10**6, 10**7)}", value=value))  # fmt: skip
            else:
                if rng.random() < arm.click:
                    add(request_id, later, name="click",
                        click=feedback_pb2.Click(item_id=f"p-{rng.randint(1, 2000)}",
                                                 position=rng.randint(0, 9)))  # fmt: skip
                elif rng.random() < 0.15:
                    add(request_id, later, name="refine_search",
                        interaction=feedback_pb2.Interaction(action="refine_search"))  # fmt: skip
    # an editor's preferences between the two prompts' summaries of the same property, a few
    # corrections and quality labels
    for name in PROPERTIES:
        a, b = summaries.get((name, "prompt_v4_highlights")), summaries.get((name, "prompt_v3"))
        if a and b:
            chosen, rejected = (a, b) if rng.random() < 0.75 else (b, a)
            add(chosen, now_s - 1200, name="preference", annotator_id="editor-1",
                preference=feedback_pb2.Preference(chosen_request_id=chosen,
                                                   rejected_request_id=rejected))  # fmt: skip
    summary_ids = [e.prediction.request_id for e in predictions
                   if e.prediction.task == "property_summary"]  # fmt: skip
    for request_id in rng.sample(summary_ids, 4):
        add(request_id, now_s - 900, name="correction", annotator_id="editor-1",
            correction=feedback_pb2.Correction(
                corrected_text="A calm, central stay with a rooftop pool; call +44 20 7946 0958 "
                "to book early check-in."))  # fmt: skip
    for request_id in rng.sample(summary_ids, 12):
        label = rng.choice(("accurate", "accurate", "accurate", "hallucination", "off_topic"))
        add(request_id, now_s - 600, name="quality_label", annotator_id="editor-2",
            label=feedback_pb2.Label(value=label, confidence=0.9))  # fmt: skip
    return Simulated(predictions, feedback)


async def seed_day(
    state_dir: Path,
    publish: Callable[[Sequence[events_pb2.EventEnvelope], float], Awaitable[None]],
    intake: Intake,
    *,
    clock: Callable[[], float] = time.time,
    attempts: int = 30,
    retry_s: float = 2.0,
) -> bool:
    """Publish the simulated day once per state directory; False when it was there already.
    Records the guardrail refused while it was starting (typed text) are retried."""
    marker = state_dir / "feedback" / "demo-day.done"
    if marker.exists():
        return False
    day = simulate(clock())
    for i in range(0, len(day.predictions), BATCH):
        await publish(day.predictions[i : i + BATCH], 30.0)
    context = common_pb2.RequestContext(tenant=TENANT, client_name="demo-day")
    pending = list(day.feedback)
    for _ in range(attempts):
        refused: list[feedback_pb2.Feedback] = []
        for i in range(0, len(pending), BATCH):
            batch = pending[i : i + BATCH]
            outcomes = await intake.submit(context, batch, lambda j: f"feedback[{j}]")
            refused += [fb for fb, o in zip(batch, outcomes, strict=True) if o.error is not None]
        if not refused:
            break
        pending = refused
        await asyncio.sleep(retry_s)
    else:
        raise LLMOpsError(f"demo day: {len(pending)} feedback records kept being refused")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("the simulated day of shoppers was published\n")
    log.info("demo_day_published", predictions=len(day.predictions), feedback=len(day.feedback))
    return True
