"""The feedback intake without gRPC: every record checked against the registry (the field
named), repeated idempotency keys (a retry, a toggled thumb, twice in one batch), typed text
redacted or refused, durability before an answer, and keys that survive a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from llmops.errors import InvalidArgument, ResourceExhausted, Unavailable
from llmops.v1 import common_pb2, events_pb2, feedback_pb2
from services.feedback.idempotency import KeyEntry, LocalKeyStore
from services.feedback.intake import REDACTED_BLOCK, Intake, Outcome
from services.feedback.signals import SignalError, load_signals
from services.feedback.validation import check_record
from tests.feedback_support import Events, Guard, table

NOW = 1_780_000_000.0
CTX = common_pb2.RequestContext(tenant="acme", market="gb")


def build(keys: LocalKeyStore | None = None) -> tuple[Intake, Events, Guard]:
    events, guard = Events(), Guard()
    intake = Intake(
        table(), keys if keys is not None else LocalKeyStore(None, 3600, 1000), events, guard,
        durable_timeout_s=0.05, clock=lambda: NOW,
    )  # fmt: skip
    return intake, events, guard


def thumbs(key: str, thumb: int = feedback_pb2.THUMB_UP, **kw: Any) -> feedback_pb2.Feedback:
    return feedback_pb2.Feedback(
        idempotency_key=key, request_id="req-1", thumbs=feedback_pb2.Thumbs(thumb=thumb), **kw
    )  # type: ignore[arg-type]


async def submit(intake: Intake, *records: feedback_pb2.Feedback) -> list[Outcome]:
    return await intake.submit(CTX, records, lambda i: f"feedback[{i}]")


def money(units: int, currency: str = "EUR") -> common_pb2.Money:
    return common_pb2.Money(currency_code=currency, units=units)


BAD: list[tuple[feedback_pb2.Feedback, str, str]] = [
    (feedback_pb2.Feedback(request_id="r", thumbs=feedback_pb2.Thumbs(thumb=1)),
     "f.idempotency_key", "required"),
    (feedback_pb2.Feedback(idempotency_key="k", thumbs=feedback_pb2.Thumbs(thumb=1)),
     "f.request_id", "request_id or unit_id"),
    (feedback_pb2.Feedback(idempotency_key="k", unit_id="u-1", thumbs=feedback_pb2.Thumbs(thumb=1)),
     "f.unit_type", "go together"),
    (feedback_pb2.Feedback(idempotency_key="k", request_id="r"), "f.kind", "required"),
    (feedback_pb2.Feedback(idempotency_key="k", request_id="r", name="stars",
                           thumbs=feedback_pb2.Thumbs(thumb=1)), "f.name", "no signal 'stars'"),
    (feedback_pb2.Feedback(idempotency_key="k", request_id="r", name="rating",
                           thumbs=feedback_pb2.Thumbs(thumb=1)), "f.thumbs", "takes rating"),
    (feedback_pb2.Feedback(idempotency_key="k", request_id="r", thumbs=feedback_pb2.Thumbs()),
     "f.thumbs.thumb", "THUMB_UP or THUMB_DOWN"),
    (feedback_pb2.Feedback(idempotency_key="k", request_id="r",
                           rating=feedback_pb2.Rating(value=6, scale_max=5)),
     "f.rating.value", "between 1 and 5"),
    (feedback_pb2.Feedback(idempotency_key="k", request_id="r",
                           rating=feedback_pb2.Rating(value=6, scale_max=10)),
     "f.rating.scale_max", "out of 5"),
    (feedback_pb2.Feedback(idempotency_key="k", request_id="r", name="quality_label",
                           label=feedback_pb2.Label(value="great")),
     "f.label.value", "one of ['accurate'"),
    (feedback_pb2.Feedback(idempotency_key="k", request_id="r",
                           booking=feedback_pb2.Booking(booking_id="b", value=money(900_000))),
     "f.booking.value", "over 500000"),
    (feedback_pb2.Feedback(idempotency_key="k", request_id="r",
                           booking=feedback_pb2.Booking(booking_id="b", value=money(10, "eur"))),
     "f.booking.value.currency_code", "ISO 4217"),
    (feedback_pb2.Feedback(idempotency_key="k", request_id="r",
                           booking=feedback_pb2.Booking(booking_id="b")),
     "f.booking.value", "required"),
    (feedback_pb2.Feedback(idempotency_key="k", request_id="r", name="add_to_cart",
                           conversion=feedback_pb2.Conversion(conversion_type="signup")),
     "f.conversion.conversion_type", "['add_to_cart']"),
    (feedback_pb2.Feedback(idempotency_key="k", request_id="r",
                           dwell=feedback_pb2.Dwell(dwell_ms=-1)),
     "f.dwell.dwell_ms", "between 0"),
    (feedback_pb2.Feedback(idempotency_key="k", request_id="r",
                           preference=feedback_pb2.Preference(chosen_request_id="a",
                                                              rejected_request_id="a")),
     "f.preference.rejected_request_id", "must differ"),
    (feedback_pb2.Feedback(idempotency_key="k", request_id="r", name="copy",
                           interaction=feedback_pb2.Interaction(action="paste")),
     "f.interaction.action", "['copy']"),
    (feedback_pb2.Feedback(idempotency_key="k", request_id="r", click=feedback_pb2.Click()),
     "f.click.item_id", "required"),
]  # fmt: skip


@pytest.mark.parametrize(("record", "field", "message"), BAD, ids=[b[1] for b in BAD])
def test_a_bad_record_names_its_field(
    record: feedback_pb2.Feedback, field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_record(record, table().current, "f", NOW)
    assert info.value.field == field
    assert message in info.value.message


def test_times_from_the_future_or_beyond_retention_are_refused() -> None:
    record = thumbs("k")
    record.occurred_time.seconds = int(NOW) + 3600
    with pytest.raises(InvalidArgument, match="in the future"):
        check_record(record, table().current, "f", NOW)
    record.occurred_time.seconds = int(NOW) - 500 * 86_400
    with pytest.raises(InvalidArgument, match="older than 400 days"):
        check_record(record, table().current, "f", NOW)


def test_registry_errors_name_the_file_and_signal(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("signals:\n  - {name: thumbs, kind: thumbs}\n")
    (tmp_path / "b.yaml").write_text("signals:\n  - {name: thumbs, kind: thumbs}\n")
    with pytest.raises(SignalError, match="declared twice"):
        load_signals([tmp_path])
    (tmp_path / "b.yaml").write_text("signals:\n  - {name: grade, kind: label}\n")
    with pytest.raises(SignalError, match="lists its labels") as info:
        load_signals([tmp_path])
    assert "b.yaml" in info.value.field


async def test_a_record_is_published_once_and_a_retry_is_a_duplicate() -> None:
    intake, events, _ = build()
    (first,) = await submit(intake, thumbs("k-1"))
    assert first.event_id and not first.duplicate and first.error is None
    (again,) = await submit(intake, thumbs("k-1"))
    assert again == Outcome(event_id=first.event_id, duplicate=True)
    (event,) = [e.feedback for e in events.published]
    assert event.event_id == first.event_id and event.tenant == "acme" and event.market == "gb"
    assert event.kind == feedback_pb2.FEEDBACK_KIND_THUMBS and event.feedback.name == "thumbs"
    assert event.event_time.seconds == int(NOW)  # no client time: the receive time


async def test_a_toggled_thumb_replaces_and_an_ignore_signal_keeps_the_first() -> None:
    intake, events, _ = build()
    (up,) = await submit(intake, thumbs("k-2"))
    (down,) = await submit(intake, thumbs("k-2", feedback_pb2.THUMB_DOWN))
    assert down.replaced and not down.duplicate and down.event_id != up.event_id
    (down_again,) = await submit(intake, thumbs("k-2", feedback_pb2.THUMB_DOWN))
    assert down_again == Outcome(event_id=down.event_id, duplicate=True)
    click = feedback_pb2.Feedback(
        idempotency_key="k-3", request_id="r", click=feedback_pb2.Click(item_id="7")
    )
    (first,) = await submit(intake, click)
    other = feedback_pb2.Feedback(
        idempotency_key="k-3", request_id="r", click=feedback_pb2.Click(item_id="8")
    )
    (second,) = await submit(intake, other)  # click does not overwrite
    assert second == Outcome(event_id=first.event_id, duplicate=True)
    assert len(events.published) == 3


async def test_a_batch_accepts_the_good_records_and_refuses_the_bad_ones() -> None:
    intake, events, _ = build()
    bad = feedback_pb2.Feedback(
        idempotency_key="b", request_id="r", rating=feedback_pb2.Rating(value=9, scale_max=5)
    )
    out = await submit(intake, thumbs("a"), bad, thumbs("c"), thumbs("a"))
    assert out[0].event_id and out[2].event_id and out[1].error is not None
    assert out[1].error.field == "feedback[1].rating.value"  # type: ignore[union-attr]
    assert out[3] == Outcome(event_id=out[0].event_id, duplicate=True)  # twice in one batch
    assert [e.feedback.feedback.idempotency_key for e in events.published] == ["a", "c"]
    toggled = await submit(intake, thumbs("d"), thumbs("d", feedback_pb2.THUMB_DOWN))
    assert toggled[0] == Outcome(event_id=toggled[1].event_id, duplicate=True)
    (stored,) = [e.feedback.feedback for e in events.published[2:]]
    assert stored.thumbs.thumb == feedback_pb2.THUMB_DOWN  # only the last answer is stored


async def test_keys_are_per_tenant() -> None:
    intake, _, _ = build()
    (a,) = await intake.submit(common_pb2.RequestContext(tenant="a"), [thumbs("k")], str)
    (b,) = await intake.submit(common_pb2.RequestContext(tenant="b"), [thumbs("k")], str)
    assert not a.duplicate and not b.duplicate and a.event_id != b.event_id


async def test_typed_text_is_redacted_and_refused_when_the_guardrail_is_down() -> None:
    intake, events, guard = build()
    note = feedback_pb2.Feedback(
        idempotency_key="n-1", request_id="r", name="quality_label",
        label=feedback_pb2.Label(value="hallucination", note="Mail jane@example.com about it"),
    )  # fmt: skip
    fix = feedback_pb2.Feedback(
        idempotency_key="n-2", request_id="r",
        correction=feedback_pb2.Correction(corrected_text="I will kill this listing"),
    )  # fmt: skip
    out = await submit(intake, note, fix, thumbs("n-3"))
    assert all(o.error is None for o in out)
    assert guard.calls == [["Mail jane@example.com about it", "I will kill this listing"]]
    stored = [e.feedback.feedback for e in events.published]
    assert stored[0].label.note == "Mail [PII.EMAIL] about it"
    assert stored[1].correction.corrected_text == REDACTED_BLOCK
    assert note.label.note == "Mail jane@example.com about it"  # the caller's message is intact
    guard.down = True
    note.idempotency_key = "n-4"
    out = await submit(intake, note, thumbs("n-5"))
    assert isinstance(out[0].error, Unavailable) and out[1].event_id
    assert (
        stored[-1].idempotency_key != "n-4"
        and events.published[-1].feedback.feedback.idempotency_key == "n-5"
    )


async def test_nothing_is_answered_before_the_log_holds_it() -> None:
    intake, events, _ = build()
    events.fail = ResourceExhausted("event buffer full")
    with pytest.raises(ResourceExhausted):
        await submit(intake, thumbs("x"))
    events.fail = None
    events.stall = True
    with pytest.raises(Unavailable, match="not yet durable"):
        await submit(intake, thumbs("x"))
    events.stall = False
    (accepted,) = await submit(intake, thumbs("x"))  # no key was recorded for the failures
    assert accepted.event_id and not accepted.duplicate


async def test_one_key_in_two_concurrent_calls_is_accepted_once() -> None:
    intake, events, _ = build()
    slow = Events()
    original = events.publish_durable

    async def slower(envelopes: Sequence[events_pb2.EventEnvelope], timeout_s: float) -> None:
        await asyncio.sleep(0.01)
        await original(envelopes, timeout_s)

    intake.events = slow
    slow.publish_durable = slower  # type: ignore[method-assign]
    first, second = await asyncio.gather(
        submit(intake, thumbs("same")), submit(intake, thumbs("same"))
    )
    assert {first[0].duplicate, second[0].duplicate} == {False, True}
    assert first[0].event_id == second[0].event_id and len(events.published) == 1


async def test_keys_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite3"
    store = LocalKeyStore(path, ttl_s=3600, max_keys=1000)
    intake, _, _ = build(store)
    (first,) = await submit(intake, thumbs("kept"))
    await store.close()
    reopened = LocalKeyStore(path, ttl_s=3600, max_keys=1000)
    (entry,) = (await reopened.get_many(["acme\x1fkept"])).values()
    assert entry.event_id == first.event_id
    intake, events, _ = build(reopened)
    (again,) = await submit(intake, thumbs("kept"))
    assert again == Outcome(event_id=first.event_id, duplicate=True) and not events.published
    await reopened.close()


async def test_what_is_written_behind_is_what_is_read_back(tmp_path: Path) -> None:
    """The write-behind (one JSON parameter per batch, unpacked by SQLite): replaced entries,
    evictions and keys with quotes, separators and non-ASCII text survive a restart."""
    path = tmp_path / "keys.sqlite3"
    store = LocalKeyStore(path, ttl_s=3600, max_keys=1000)
    odd = 'acme\x1f"quoted" \\ back\tslash ünïcode 🙂'
    await store.put_many({odd: KeyEntry("e-odd", "f-odd")})
    await store.put_many({f"k{i}": KeyEntry(f"e{i}", f"f{i}") for i in range(600)})
    await store.put_many({"k5": KeyEntry("e5-new", "f5-new")})  # replaced
    await store.put_many({f"k{i}": KeyEntry(f"e{i}", f"f{i}") for i in range(600, 1001)})
    await store.close()  # waits for the writer
    reopened = LocalKeyStore(path, ttl_s=3600, max_keys=5000)
    assert len(reopened) == 1000  # the odd key and k0 were evicted, in SQLite too
    found = await reopened.get_many([odd, "k0", "k1", "k5", "k1000"])
    assert found == {
        "k1": KeyEntry("e1", "f1"),
        "k5": KeyEntry("e5-new", "f5-new"),
        "k1000": KeyEntry("e1000", "f1000"),
    }
    await reopened.close()
    again = LocalKeyStore(path, ttl_s=3600, max_keys=5000)
    await again.put_many({odd: KeyEntry("e-odd", "f-odd")})
    await again.close()
    last = LocalKeyStore(path, ttl_s=3600, max_keys=5000)
    assert await last.get_many([odd]) == {odd: KeyEntry("e-odd", "f-odd")}
    await last.close()


async def test_the_local_store_keeps_the_newest_keys_only() -> None:
    store = LocalKeyStore(None, ttl_s=3600, max_keys=1000)
    await store.put_many({f"k{i}": KeyEntry(f"e{i}", "f") for i in range(1500)})
    assert len(store) == 1000
    found = await store.get_many(["k0", "k499", "k500", "k1499"])
    assert sorted(found) == ["k1499", "k500"]
