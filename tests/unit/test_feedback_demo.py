"""The demo's simulated day: every record passes the service's own checks, the treatment
variants are better as simulated, it is published once per state directory, and records the
guardrail refuses while it starts are retried."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmops.v1 import events_pb2, feedback_pb2
from services.feedback.demo import TENANT, seed_day, simulate
from services.feedback.idempotency import LocalKeyStore
from services.feedback.intake import Intake
from tests.feedback_support import Events, Guard, table


def test_the_day_is_valid_and_the_treatments_are_better() -> None:
    day = simulate(time.time())
    variant = {e.prediction.request_id: e.prediction.variant for e in day.predictions}
    assert len(day.predictions) == 800 and len({*variant}) == 800
    thumbs = Counter(
        (variant[f.request_id], f.thumbs.thumb) for f in day.feedback if f.HasField("thumbs")
    )

    def up_share(v: str) -> float:
        return thumbs[(v, feedback_pb2.THUMB_UP)] / (
            thumbs[(v, feedback_pb2.THUMB_UP)] + thumbs[(v, feedback_pb2.THUMB_DOWN)]
        )

    assert up_share("prompt_v4_highlights") > up_share("prompt_v3")
    clicks = Counter(variant[f.request_id] for f in day.feedback if f.HasField("click"))
    assert clicks["few_shot"] > clicks["zero_shot"]
    assert all(e.prediction.tenant == TENANT and e.prediction.output.string_value
               for e in day.predictions)  # fmt: skip
    assert simulate(1_780_000_000.0).feedback == simulate(1_780_000_000.0).feedback


async def test_it_is_published_once_and_refusals_are_retried(tmp_path: Path) -> None:
    class Starting(Guard):
        """Down for its first call (the guardrail is still starting), up afterwards."""

        async def redact(self, context: Any, texts: Sequence[str], timeout_s: float) -> list[str]:
            self.down = not self.calls
            return await super().redact(context, texts, timeout_s)

    events, guard = Events(), Starting()
    intake = Intake(table(), LocalKeyStore(None, 86_400, 100_000), events, guard)
    published: list[events_pb2.EventEnvelope] = []

    async def publish(envelopes: Sequence[events_pb2.EventEnvelope], timeout_s: float) -> None:
        published.extend(envelopes)

    assert await seed_day(tmp_path, publish, intake, retry_s=0.01)
    day = simulate(time.time())
    assert len(published) == len(day.predictions)
    assert len(events.published) == len(day.feedback)  # everything accepted, once
    assert len(guard.calls) == 2  # the typed texts were refused once, then accepted
    assert not await seed_day(tmp_path, publish, intake)  # the marker says it is done
    assert len(events.published) == len(day.feedback)
