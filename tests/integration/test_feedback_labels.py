"""Label queues: the item store on SQLite and on a real PostgreSQL (leases exclusive and
expiring, a prediction queued once, the backlog bounded), the rules' ClickHouse queries on
chdb (sample, guardrail verdicts, low confidence, negative feedback, payloads joined), and the
whole loop — fill, lease, label, complete — with the label recorded as feedback."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmops.clickhouse.chdb_store import ChdbStore
from llmops.clickhouse.migrations import apply_migrations
from llmops.clickhouse.rows import columns_for, value_json
from llmops.errors import FailedPrecondition, InvalidArgument, NotFound
from llmops.v1 import common_pb2, events_pb2, feedback_pb2
from services.feedback.idempotency import LocalKeyStore
from services.feedback.intake import Intake
from services.feedback.label_store import NewItem, SqlLabelStore
from services.feedback.labelling import ClickHouseCandidates, Labelling
from services.feedback.signals import QueueRule
from tests.feedback_support import Events, Guard, table

pytestmark = pytest.mark.infra

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)  # payloads keep 7 days
IDS = [str(uuid.UUID(int=(7 << 64) + i)) for i in range(40)]


def item(i: int) -> NewItem:
    return NewItem(IDS[i], "acme", "property_summary", "summary-small", "sample", {})


_ids = itertools.count()


def new_id() -> str:
    return f"item-{next(_ids):04d}"


@pytest.fixture(params=["sqlite", "postgres"])
async def labels(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlLabelStore]:
    if request.param == "sqlite":
        store = SqlLabelStore(f"sqlite:///{tmp_path / 'labels.sqlite3'}")
    else:
        dsn: str = request.getfixturevalue("postgres_dsn")
        store = SqlLabelStore(dsn)
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM label_items")
            conn.exec_driver_sql("DELETE FROM label_watermarks")
    yield store
    await store.close()


async def test_items_are_queued_once_and_the_backlog_is_bounded(labels: SqlLabelStore) -> None:
    assert await labels.enqueue("q", [item(0), item(1), item(0)], new_id, max_pending=10) == 2
    assert await labels.enqueue("q", [item(1), item(2)], new_id, max_pending=10) == 1
    assert await labels.enqueue("q", [item(3), item(4)], new_id, max_pending=4) == 1
    assert await labels.enqueue("other", [item(0)], new_id, max_pending=10) == 1  # per queue
    counts = await labels.counts()
    assert counts["q"].pending == 4 and counts["q"].completed == 0
    assert counts["q"].oldest_pending is not None


async def test_leases_are_exclusive_expire_and_guard_completion(labels: SqlLabelStore) -> None:
    await labels.enqueue("q", [item(i) for i in range(3)], new_id, max_pending=10)
    first = await labels.lease("q", 2, 600, "ann-a", "token-a")
    assert [r.request_id for r in first] == IDS[:2]  # oldest first
    second = await labels.lease("q", 5, 0.2, "ann-b", "token-b")
    assert [r.request_id for r in second] == [IDS[2]]
    assert await labels.lease("q", 5, 600, "ann-c", "token-c") == []
    await asyncio.sleep(0.3)  # b's lease runs out: the item is pending again
    third = await labels.lease("q", 5, 600, "ann-c", "token-c")
    assert [(r.request_id, r.annotator) for r in third] == [(IDS[2], "ann-c")]
    assert not await labels.complete("q", third[0].item_id, "token-b", "e-1")  # b lost it
    assert await labels.complete("q", third[0].item_id, "token-c", "e-2")
    assert not await labels.complete("q", third[0].item_id, "token-c", "e-3")  # done already
    done = await labels.get("q", third[0].item_id)
    assert done is not None and done.state == "done"
    assert (await labels.counts())["q"].completed == 1


async def test_concurrent_leases_never_share_an_item(labels: SqlLabelStore) -> None:
    await labels.enqueue("q", [item(i) for i in range(30)], new_id, max_pending=100)
    leased = await asyncio.gather(
        *(labels.lease("q", 4, 600, f"ann-{k}", f"tok-{k}") for k in range(8))
    )
    ids = [r.item_id for batch in leased for r in batch]
    assert len(ids) == 30 and len(set(ids)) == 30


# -- the rules on chdb, and the whole loop ----------------------------------------------------


@pytest.fixture(scope="module")
def store(chdb_session: Any) -> Iterator[ChdbStore]:
    s = ChdbStore(chdb_session, database="it_feedback_labels")
    s.execute("DROP DATABASE IF EXISTS it_feedback_labels")
    s = ChdbStore(chdb_session, database="it_feedback_labels")
    apply_migrations(s)
    n = 40
    verdicts = [""] * n
    verdicts[3], verdicts[4], verdicts[5] = "FLAG", "BLOCK", "ALLOW"
    skipped = [[] for _ in range(n)]
    skipped[6] = ["postprocess"]
    skipped[7] = ["retrieval"]
    s.insert("predictions", {
        "event_time": np.array(
            [(T0 + timedelta(seconds=i)).replace(tzinfo=None) for i in range(n)],
            dtype="datetime64[ms]",
        ),
        "request_uuid": IDS, "tenant": ["acme"] * n, "task": ["property_summary"] * n,
        "route": ["summary-small"] * n, "guardrail_verdict": verdicts, "skipped_steps": skipped,
    })  # fmt: skip
    s.insert("prediction_payloads", {
        "event_time": np.array([T0.replace(tzinfo=None)], dtype="datetime64[ms]"),
        "event_id": [str(uuid.uuid4())], "request_id": [IDS[3]], "tenant": ["acme"],
        "task": ["property_summary"],
        "inputs": [{"property_name": value_json(common_pb2.Value(string_value="Casa Azul"))}],
        "output": [value_json(common_pb2.Value(string_value="A bright flat by the sea."))],
    })  # fmt: skip
    events = []
    for i, (key, thumb, rid) in enumerate(
        [("n-1", 2, IDS[8]), ("n-2", 1, IDS[9]), ("n-3", 1, IDS[10]), ("n-3", 2, IDS[10])]
    ):
        env = events_pb2.EventEnvelope()
        ev = env.feedback
        ev.event_id, ev.tenant, ev.request_id = str(uuid.uuid4()), "acme", rid
        ev.event_time.FromDatetime(T0 + timedelta(minutes=10 + i))
        ev.received_time.FromDatetime(T0 + timedelta(minutes=10 + i))
        ev.kind = feedback_pb2.FEEDBACK_KIND_THUMBS
        ev.feedback.CopyFrom(feedback_pb2.Feedback(
            idempotency_key=key, request_id=rid, name="thumbs",
            thumbs=feedback_pb2.Thumbs(thumb=thumb),  # type: ignore[arg-type]
        ))  # fmt: skip
        events.append(("llmops.feedback.v1", 0, i, env))
    for name, cols in columns_for(events).items():
        s.insert(name, cols)
    yield s
    s.execute("DROP DATABASE IF EXISTS it_feedback_labels")


async def _picked(store: ChdbStore, rule: QueueRule) -> list[str]:
    queue = table().current.queues["summary-review"]
    found = await ClickHouseCandidates(lambda: store).candidates(
        queue, rule, T0.timestamp() - 1, (T0 + timedelta(hours=1)).timestamp(), 100
    )
    return [i.request_id for i, _ in found]


async def test_each_rule_picks_its_predictions(store: ChdbStore) -> None:
    assert await _picked(store, QueueRule(guardrail=("FLAG", "BLOCK"))) == IDS[3:5]
    assert await _picked(store, QueueRule(low_confidence=True)) == [IDS[6]]
    negative = QueueRule.model_validate({"negative_feedback": {"signals": ["thumbs"]}})
    assert await _picked(store, negative) == [IDS[8], IDS[10]]  # n-3 flipped to down
    sample = await _picked(store, QueueRule(sample=0.5))
    assert 8 <= len(sample) <= 32 and sample == await _picked(store, QueueRule(sample=0.5))
    assert set(await _picked(store, QueueRule(sample=1.0))) == set(IDS)


async def test_fill_lease_label_complete(store: ChdbStore, tmp_path: Path) -> None:
    events = Events()
    intake = Intake(table(), LocalKeyStore(None, 3600, 1000), events, Guard())
    labels = SqlLabelStore(f"sqlite:///{tmp_path / 'labels.sqlite3'}")
    now = (T0 + timedelta(hours=1)).timestamp()
    labelling = Labelling(
        table(), labels, ClickHouseCandidates(lambda: store), intake, clock=lambda: now
    )
    added = await labelling.fill()
    assert added["summary-review"] >= 4  # two guardrail verdicts, two negative, a sample
    assert (await labelling.fill())["summary-review"] == 0  # nothing new: nothing twice
    (view,) = [v for v in await labelling.list_queues() if v.spec.name == "summary-review"]
    assert view.counts.pending == added["summary-review"] and "hallucination" in view.labels
    leased = await labelling.lease("summary-review", 100, 600, "ann-1")
    flagged = next(i for i in leased if i.request_id == IDS[3])
    assert flagged.reason == "guardrail"
    assert flagged.payload == {
        "inputs": {"property_name": '"Casa Azul"'},
        "output": "A bright flat by the sea.",
    }
    label = feedback_pb2.Label(value="hallucination", note="mail jane@example.com")
    with pytest.raises(InvalidArgument) as info:
        await labelling.complete(
            "summary-review", flagged.item_id, flagged.lease_token,
            feedback_pb2.Label(value="great"), "ann-1",
        )  # fmt: skip
    assert info.value.field == "label.value"
    with pytest.raises(FailedPrecondition, match="lease is not held"):
        await labelling.complete("summary-review", flagged.item_id, "wrong", label, "ann-1")
    with pytest.raises(NotFound):
        await labelling.complete("summary-review", "no-such-item", "t", label, "ann-1")
    with pytest.raises(NotFound):
        await labelling.lease("no-queue", 1, 600, "ann-1")
    event_id = await labelling.complete(
        "summary-review", flagged.item_id, flagged.lease_token, label, "ann-1"
    )
    (recorded,) = [e.feedback for e in events.published]
    assert recorded.event_id == event_id and recorded.request_id == IDS[3]
    fb = recorded.feedback
    assert (fb.label_queue, fb.name, fb.annotator_id, fb.source) == (
        "summary-review", "quality_label", "ann-1", "annotator",
    )  # fmt: skip
    assert fb.label.note == "mail [PII.EMAIL]"  # typed text redacted like any feedback
    with pytest.raises(FailedPrecondition, match="labelled already"):
        await labelling.complete(
            "summary-review", flagged.item_id, flagged.lease_token, label, "ann-1"
        )
    (view,) = [v for v in await labelling.list_queues() if v.spec.name == "summary-review"]
    assert view.counts.completed == 1
    await labels.close()
