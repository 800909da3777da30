"""``llmops bench events``: the event bus's producer and consumer throughput.

Cases (each a function of :class:`Bench`, listed in :data:`CASES`; add new ones there):

- ``produce_kafka`` / ``produce_local``: realistic PredictionEvents (~580 bytes serialized)
  through :class:`EventPublisher` into the real broker (deploy/local Kafka, a fresh 6-partition
  topic) and into a :class:`LocalLog` with fsync on. ``rows_per_s``: events appended per
  second, from the first publish until ``flush()`` returned (all acknowledged). ``p50_ms`` /
  ``p99_ms``: the ``publish()`` call itself — the request-path cost — measured while the
  sender thread is busy delivering.
- ``produce_kafka`` with system ``kafka-python``: the baseline, a bare ``KafkaProducer`` with
  the same settings (acks=all, idempotent, same compression, linger, batch size) driven the way
  a service would without this library: serialize, ``send()``, then ``flush()``. Its
  p50/p99 are the ``send()`` calls.
- ``produce_kafka`` with system ``confluent-kafka``: librdkafka's producer, bare, with the same
  guarantees (acks=all, idempotence, compression, linger, batch size), driven like the
  kafka-python baseline.
- ``consume_kafka`` / ``consume_local``: a fresh consumer group reads everything back (Kafka:
  once per consumer client, system ``confluent`` = librdkafka, the default, and
  ``kafka-python``);
  ``rows_per_s`` over the whole read, p50/p99 of ``poll()`` calls (up to 5000 records each).
- ``e2e_kafka_chdb`` / ``e2e_local_chdb``: end to end, publish → log → sink → a row that a
  ClickHouse query sees (chdb, the full schema with its rollups). ``rows_per_s`` from the
  first publish until the last row is visible; ``p50_ms`` / ``p99_ms`` are the end-to-end
  lags of the events (publish call → first poll that sees the row; polls every 50 ms).

- ``sink_local_chdb`` / ``sink_kafka_chdb``: the sink alone, per path from events to rows
  (system ``protobuf``: the bulk path, ClickHouse screens and parses the records' bytes;
  ``protobuf-per-event``: the same, each record decoded in Python first; ``python``:
  converted in Python; see :data:`SINK_PATHS`): one sink drains what the producer cases
  wrote into a fresh chdb database;
  ``rows_per_s`` until the last record is committed, p50/p99 of the steps that committed
  a batch; the stored rows are counted (every log position once) or the case fails.

- ``sink_ceiling_chdb``: chdb alone, the bulk path's ClickHouse work (screen + insert of
  pre-framed 50,000-record blocks): what no sink process can exceed here.

- ``ack_local`` / ``ack_kafka``: what ``events.durable`` costs a call: one event at a time,
  system ``buffered`` times ``publish()`` (the RPC answers from the buffer) and ``durable``
  times publish + the wait until the log holds it (fsync locally, acks=all on Kafka), as the
  runtime waits before answering a call that published an audit or feedback event. Sequential
  on one event loop, so each durable wait is a whole group commit of one event: the worst case.

The Kafka broker is reused when one answers (or ``LLMOPS_KAFKA_BOOTSTRAP`` is set), otherwise
started with deploy/local and stopped at the end.
"""

from __future__ import annotations

import dataclasses
import importlib
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import servers
from benchmarks.report import Case, emit
from llmops.events.base import EventLog
from llmops.events.kafka_log import KafkaLog, default_compression
from llmops.events.local_log import LocalLog
from llmops.events.publisher import EventPublisher
from llmops.events.synthetic import prediction_envelope
from llmops.events.topics import DLQ_TOPIC
from llmops.v1 import events_pb2

PARTITIONS = 6
WARMUP = 500


@dataclass
class Bench:
    """What the cases share: the events, a scratch directory, the broker, the topics."""

    quick: bool
    envelopes: list[events_pb2.EventEnvelope]
    tmp: Path
    bootstrap: str
    kafka_topics: dict[str, str] = field(default_factory=dict)  # case -> topic it wrote
    chdb: Any = None  # the process's one chdb session, opened by the first end-to-end case

    @property
    def n(self) -> int:
        return len(self.envelopes)

    def fresh(self) -> Iterator[events_pb2.EventEnvelope]:
        """The events with the fields publish() fills cleared (so each run fills them)."""
        for env in self.envelopes:
            env.key = ""
            env.ClearField("publish_time")
            yield env


CaseFn = Callable[[Bench], list[Case]]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Producing.


def _publish_all(bench: Bench, log: EventLog, topic: str, label: str) -> Case:
    pub = EventPublisher(
        log, capacity=bench.n + WARMUP, max_batch=2000, topics={"prediction": topic}
    ).start()
    try:
        rng = random.Random(0)
        for _ in range(WARMUP):  # connections, metadata, code paths
            pub.publish(prediction_envelope(rng, event_time_ns=time.time_ns()))
        if not pub.flush(60):
            raise RuntimeError(f"{label}: warm-up not delivered within 60 s")
        lat: list[float] = []
        perf = time.perf_counter
        started = perf()
        for env in bench.fresh():
            t0 = perf()
            pub.publish(env)
            lat.append(perf() - t0)
        if not pub.flush(600):
            raise RuntimeError(f"{label}: {pub.pending} events not delivered within 600 s")
        wall = perf() - started
    finally:
        pub.close(30)
    return Case(label, "llmops", lat, wall, extra={"rows_per_s": round(bench.n / wall)})


def produce_kafka(bench: Bench) -> list[Case]:
    topic = _topic(bench, "produce_kafka")
    log = KafkaLog(bench.bootstrap, client_id="llmops-bench")
    try:
        case = _publish_all(bench, log, topic, "produce_kafka")
    finally:
        log.close()
    case.extra["compression"] = log.compression
    case.extra["bytes_per_event"] = _mean_size(bench)
    return [case]


def _drive_bare(
    bench: Bench, send: Callable[[bytes, bytes], Any], flush: Callable[[float], Any]
) -> tuple[list[float], float]:
    """Drive a bare producer the way a service would without the publisher: a warm-up, then
    serialize and ``send(value, key)`` each event, then ``flush``; the send latencies and
    the wall time until the flush returned."""
    rng = random.Random(0)
    for _ in range(WARMUP):
        send(prediction_envelope(rng, event_time_ns=time.time_ns()).SerializeToString(), b"w")
    flush(60)
    lat: list[float] = []
    perf = time.perf_counter
    started = perf()
    for env in bench.envelopes:
        t0 = perf()
        send(env.SerializeToString(), env.prediction.request_id.encode())
        lat.append(perf() - t0)
    flush(600)
    return lat, perf() - started


def produce_kafka_bare(bench: Bench) -> list[Case]:
    """Baseline: kafka-python's own producer with the same settings, no publisher."""
    from kafka import KafkaProducer

    topic = _topic(bench, "produce_kafka_bare")
    log = KafkaLog(bench.bootstrap)  # only for its producer settings
    producer = KafkaProducer(**log._producer_config)
    try:
        lat, wall = _drive_bare(
            bench, lambda value, key: producer.send(topic, value=value, key=key), producer.flush
        )
    finally:
        producer.close(30)
    extra = {"rows_per_s": round(bench.n / wall)}
    return [Case("produce_kafka", "kafka-python", lat, wall, extra=extra)]


def produce_kafka_confluent_bare(bench: Bench) -> list[Case]:
    """What librdkafka (confluent-kafka's Producer) does with the same settings (acks=all,
    idempotence, compression, linger, batch size: the ones KafkaLog gives it), bare, driven
    like the kafka-python baseline. The measurement behind the client choice."""
    from confluent_kafka import Producer

    topic = _topic(bench, "produce_kafka_confluent_bare")
    log = KafkaLog(bench.bootstrap)  # only for its settings
    producer = Producer(log._librdkafka_producer_config)
    sent = [0]

    def send(value: bytes, key: bytes) -> None:
        producer.produce(topic, value=value, key=key)
        sent[0] += 1
        if sent[0] % 1000 == 0:
            producer.poll(0)  # serve delivery reports, as a real caller must

    try:
        lat, wall = _drive_bare(bench, send, producer.flush)
        left = producer.flush(60)
    finally:
        log.close()
    if left:
        raise RuntimeError(f"confluent producer: {left} records not delivered")
    extra = {"rows_per_s": round(bench.n / wall)}
    return [Case("produce_kafka", "confluent-kafka", lat, wall, extra=extra)]


def produce_local(bench: Bench) -> list[Case]:
    log = LocalLog(bench.tmp / "local-log", partitions={"bench.events": PARTITIONS}, fsync=True)
    try:
        case = _publish_all(bench, log, "bench.events", "produce_local")
    finally:
        log.close()
    case.extra["fsync"] = True
    return [case]


# ---------------------------------------------------------------------------------------------
# Consuming.


def _consume_all(log: EventLog, topic: str, want: int, label: str) -> Case:
    consumer = log.consumer(f"bench-{uuid.uuid4().hex[:8]}", [topic])
    try:
        lat: list[float] = []
        got, perf = 0, time.perf_counter
        deadline = time.monotonic() + 300
        started = perf()
        while got < want and time.monotonic() < deadline:
            t0 = perf()
            got += len(consumer.poll(5000, 1.0))
            lat.append(perf() - t0)
        wall = perf() - started
    finally:
        consumer.close()
    if got < want:
        raise RuntimeError(f"{label}: read {got} of {want} records")
    return Case(label, "llmops", lat, wall, extra={"rows_per_s": round(got / wall), "rows": got})


def consume_kafka(bench: Bench) -> list[Case]:
    """The same topic read by each consumer client: librdkafka (``confluent``, the default)
    and kafka-python's own fetcher (the baseline)."""
    cases = []
    for client in ("confluent", "kafka-python"):
        log = KafkaLog(bench.bootstrap, client_id="llmops-bench", consumer_client=client)
        try:
            topic = bench.kafka_topics["produce_kafka"]
            case = _consume_all(log, topic, bench.n + WARMUP, "consume_kafka")
        finally:
            log.close()
        cases.append(dataclasses.replace(case, system=client))
    return cases


def consume_local(bench: Bench) -> list[Case]:
    log = LocalLog(bench.tmp / "local-log", partitions={})
    try:
        return [_consume_all(log, "bench.events", bench.n + WARMUP, "consume_local")]
    finally:
        log.close()


# ---------------------------------------------------------------------------------------------
# End to end: publish -> log -> sink -> a row a query can see.

E2E_POLL_S = 0.05
_PARTS = range(PARTITIONS)
# Rows arrive per partition in offset order (a sink inserts each batch in log order), so
# "offset above the last one seen, per partition" finds exactly the newly visible rows.
_NEW_ROWS_SQL = (
    "SELECT log_partition AS p, log_offset AS o, toUnixTimestamp64Milli(event_time) AS t "
    "FROM predictions WHERE "
    + " OR ".join(f"(log_partition = {p} AND log_offset > %(o{p})s)" for p in _PARTS)
)


def _e2e(bench: Bench, log: EventLog, topic: str, label: str, rate: float | None = None) -> Case:
    """Publish events (all of them at full speed, or ``rate`` per second for 5 s) while a
    sink loads them into chdb; poll ClickHouse every 50 ms for newly visible rows. Lag of an
    event = the poll time that first saw it - its publish time (so lags carry up to 50 ms of
    polling granularity). At full speed the lag is mostly queueing behind the burst; paced
    below capacity it is the pipeline's own latency (linger, sink flush interval, insert)."""
    n = bench.n if rate is None else min(bench.n, int(rate * 5))
    from llmops.sink.runner import SinkThreads, build_sinks

    store = _e2e_store(bench, label)
    (sink,) = build_sinks(log, store, topic_kinds={topic: "prediction"}, batch_rows=20_000,
                          flush_interval_s=0.2)  # fmt: skip
    threads = SinkThreads([sink]).start()
    pub = EventPublisher(log, capacity=bench.n + 1, max_batch=2000, topics={"prediction": topic})
    pub.start()
    lags: list[float] = []
    deadline = time.monotonic() + (120 if bench.quick else 900)
    poller = threading.Thread(target=_watch_rows, args=(store, n, lags, deadline), daemon=True)
    started = time.time()
    poller.start()
    try:
        for i, env in zip(range(n), bench.fresh(), strict=False):
            if rate is not None:
                time.sleep(max(0.0, started + i / rate - time.time()))
            env.prediction.event_time.FromNanoseconds(time.time_ns())
            env.prediction.request_id = f"e2e-{i}"
            pub.publish(env)
        poller.join()
        wall = time.time() - started
    finally:
        pub.close(30)
        threads.stop()
    if len(lags) < n:
        raise RuntimeError(f"{label}: only {len(lags)} of {n} rows became visible")
    return Case(label, "llmops", lags, wall, extra={
        "rows_per_s": round(n / wall), "lag_poll_ms": E2E_POLL_S * 1000,
        "sink_batch_rows": 20_000, "sink_flush_interval_ms": 200,
        "offered_events_per_s": rate or "burst",
    })  # fmt: skip


def _watch_rows(store: Any, n: int, lags: list[float], deadline: float) -> None:
    """Poll for newly visible rows (concurrently with the publishing) until ``n`` are seen."""
    seen: dict[int, int] = {}  # log partition -> highest offset seen
    while len(lags) < n and time.monotonic() < deadline:
        time.sleep(E2E_POLL_S)
        now = time.time()
        for row in store.query(_NEW_ROWS_SQL, {f"o{p}": seen.get(p, -1) for p in _PARTS}):
            lags.append(now - int(row["t"]) / 1000)
            p = int(row["p"])
            seen[p] = max(seen.get(p, -1), int(row["o"]))


def _e2e_store(bench: Bench, label: str) -> Any:
    """A fresh database in the bench's one chdb session (chdb: one path per process)."""
    from llmops.clickhouse.chdb_store import ChdbStore
    from llmops.clickhouse.migrations import apply_migrations

    if bench.chdb is None:
        chdb_session: Any = importlib.import_module("chdb.session")  # untyped package
        bench.chdb = chdb_session.Session(str(bench.tmp / "chdb"))
    ChdbStore(bench.chdb).execute(f"CREATE DATABASE IF NOT EXISTS {label}")
    store = ChdbStore(bench.chdb, database=label)
    apply_migrations(store)
    return store


E2E_PACED_RATE = 2000.0
"""Events/s offered in the paced end-to-end cases: well below what one process sustains."""


def e2e_kafka(bench: Bench) -> list[Case]:
    cases = []
    for label, rate in (("e2e_kafka_chdb", None), ("e2e_kafka_chdb_paced", E2E_PACED_RATE)):
        topic = _topic(bench, label)
        log = KafkaLog(bench.bootstrap, client_id="llmops-bench-e2e")
        try:
            cases.append(_e2e(bench, log, topic, label, rate))
        finally:
            log.close()
    return cases


def e2e_local(bench: Bench) -> list[Case]:
    cases = []
    for label, rate in (("e2e_local_chdb", None), ("e2e_local_chdb_paced", E2E_PACED_RATE)):
        topic = f"bench.{label}"
        log = LocalLog(bench.tmp / label, partitions={topic: PARTITIONS, DLQ_TOPIC: 1})
        try:
            cases.append(_e2e(bench, log, topic, label, rate))
        finally:
            log.close()
    return cases


# ---------------------------------------------------------------------------------------------
# The sink alone: a log already holding the events -> chdb, one sink process, both paths.

SINK_BATCH_ROWS = 50_000


def _drain(bench: Bench, log: EventLog, topic: str, label: str, rows_from: str) -> Case:
    """One sink (a fresh consumer group, a fresh database) loads every record of ``topic``
    into chdb, rows derived by ``rows_from`` (``protobuf``: ClickHouse parses the records'
    bytes; ``python``: converted in Python). ``rows_per_s``: records in the topic / the time
    until the group committed the last one. p50/p99: the sink steps that committed a batch
    (poll + decode + convert + insert + commit of up to 50,000 records). The rows are then
    counted: every log position exactly once, or the case fails."""
    from llmops.sink.runner import build_sinks

    store = _e2e_store(bench, f"{label}_{rows_from.replace('-', '_')}")
    (sink,) = build_sinks(
        log, store, topic_kinds={topic: "prediction"}, batch_rows=SINK_BATCH_ROWS,
        flush_interval_s=0.2, group_prefix=f"bench-{uuid.uuid4().hex[:8]}.",
        rows_from=rows_from.removesuffix("-per-event"),
    )  # fmt: skip
    if rows_from.endswith("-per-event"):
        sink._bulk = None
    commits: list[float] = []
    perf = time.perf_counter
    last = [perf()]

    def committed() -> None:
        now = perf()
        commits.append(now - last[0])
        last[0] = now

    started = last[0] = perf()
    sink.catch_up(600, on_commit=committed)
    wall = perf() - started
    row = store.query(
        "SELECT count() AS n, uniqExact(log_partition, log_offset) AS positions FROM predictions"
    )[0]
    want = bench.n + WARMUP
    if (int(row["n"]), int(row["positions"])) != (want, want):
        raise RuntimeError(f"{label}/{rows_from}: stored {row} of {want} records")
    return Case(label, rows_from, commits, wall, extra={
        "rows_per_s": round(want / wall), "rows": want, "batch_rows": SINK_BATCH_ROWS,
        "verified": "count and distinct log positions == records",
    })  # fmt: skip


def sink_local(bench: Bench) -> list[Case]:
    log = LocalLog(bench.tmp / "local-log", partitions={})
    try:
        return [_drain(bench, log, "bench.events", "sink_local_chdb", p) for p in SINK_PATHS]
    finally:
        log.close()


def sink_kafka(bench: Bench) -> list[Case]:
    log = KafkaLog(bench.bootstrap, client_id="llmops-bench-sink")
    try:
        topic = bench.kafka_topics["produce_kafka"]
        return [_drain(bench, log, topic, "sink_kafka_chdb", p) for p in SINK_PATHS]
    finally:
        log.close()


def sink_ceiling(bench: Bench) -> list[Case]:
    """What chdb itself takes to store the bench's events on the bulk path, nothing read
    from a log: the blocks framed beforehand (50,000 records, in pieces as the sink makes
    them), then each screened and inserted in turn. ``rows_per_s``: records / the time of
    the screens and inserts — the most any sink process can load into chdb with this
    schema on this machine; p50/p99: one block's screen + insert."""
    from llmops.clickhouse.protobuf_rows import PREDICTIONS
    from llmops.sink.worker import bulk_pieces

    store = _e2e_store(bench, "sink_ceiling_chdb")
    values = [env.SerializeToString() for env in bench.envelopes]
    blocks = []
    for start in range(0, len(values), SINK_BATCH_ROWS):
        chunk = values[start : start + SINK_BATCH_ROWS]
        runs = [("bench.ceiling", p, range(start + p, start + len(chunk), PARTITIONS),
                 chunk[p::PARTITIONS]) for p in _PARTS]  # fmt: skip
        blocks.append(PREDICTIONS.run_block(runs, bulk_pieces(len(chunk))))
    lat: list[float] = []
    perf = time.perf_counter
    started = perf()
    for k, block in enumerate(blocks):
        t = perf()
        store.query_protobuf(PREDICTIONS.screen(block))
        store.insert_protobuf("predictions", block, dedup_token=f"ceiling-{k}")
        lat.append(perf() - t)
    wall = perf() - started
    row = store.query(
        "SELECT count() AS n, uniqExact(log_partition, log_offset) AS positions FROM predictions"
    )[0]
    if (int(row["n"]), int(row["positions"])) != (len(values), len(values)):
        raise RuntimeError(f"sink_ceiling_chdb: stored {row} of {len(values)} records")
    return [Case("sink_ceiling_chdb", "chdb", lat, wall, extra={
        "rows_per_s": round(len(values) / wall), "rows": len(values),
        "batch_rows": SINK_BATCH_ROWS, "verified": "count and distinct log positions == records",
    })]  # fmt: skip


SINK_PATHS = ("protobuf", "protobuf-per-event", "python")
"""``protobuf``: the default, the bulk path (records read as runs of bytes, screened and
parsed by ClickHouse, nothing decoded in Python but payloads); ``protobuf-per-event``: the
same rows from records decoded one by one in Python (the bulk path's fallback, and the
default before it); ``python``: every column converted in Python."""


def _ack(bench: Bench, log: EventLog, topic: str, label: str) -> list[Case]:
    import asyncio

    count = 200 if bench.quick else 1000
    pub = EventPublisher(log, topics={"prediction": topic}).start()
    rng = random.Random(7)
    buffered: list[float] = []
    durable: list[float] = []
    perf = time.perf_counter

    async def run() -> tuple[float, float]:
        for _ in range(50):  # warm-up: connections, code paths
            await pub.publish_durable([prediction_envelope(rng, event_time_ns=time.time_ns())], 30)
        started = perf()
        for _ in range(count):
            env = prediction_envelope(rng, event_time_ns=time.time_ns())
            t0 = perf()
            pub.publish(env)
            buffered.append(perf() - t0)
        pub.flush(60)
        buffered_wall = perf() - started
        started = perf()
        for _ in range(count):
            env = prediction_envelope(rng, event_time_ns=time.time_ns())
            t0 = perf()
            await pub.publish_durable([env], 30)
            durable.append(perf() - t0)
        return buffered_wall, perf() - started

    try:
        buffered_wall, durable_wall = asyncio.run(run())
    finally:
        pub.close(30)
    return [
        Case(label, "buffered", buffered, buffered_wall),
        Case(label, "durable", durable, durable_wall),
    ]


def ack_local(bench: Bench) -> list[Case]:
    log = LocalLog(bench.tmp / "ack-log", partitions={"bench.ack": 1}, fsync=True)
    try:
        return _ack(bench, log, "bench.ack", "ack_local")
    finally:
        log.close()


def ack_kafka(bench: Bench) -> list[Case]:
    topic = _topic(bench, "ack_kafka")
    log = KafkaLog(bench.bootstrap, client_id="llmops-bench")
    try:
        return _ack(bench, log, topic, "ack_kafka")
    finally:
        log.close()


CASES: list[CaseFn] = [
    ack_local,
    ack_kafka,
    produce_kafka,
    produce_kafka_bare,
    produce_kafka_confluent_bare,
    produce_local,
    consume_kafka,
    consume_local,
    sink_local,
    sink_kafka,
    sink_ceiling,
    e2e_kafka,
    e2e_local,
]
"""Run in this order (consumers read what the producers wrote)."""


# ---------------------------------------------------------------------------------------------


def _mean_size(bench: Bench) -> int:
    sample = bench.envelopes[:1000]
    return round(sum(e.ByteSize() for e in sample) / len(sample))


def _topic(bench: Bench, case: str) -> str:
    """A fresh topic for ``case`` (deleted at the end), compressed like the producer sends
    (zstd, as the spec's topics, when ``zstandard`` is installed)."""
    from kafka.admin import KafkaAdminClient

    name = f"bench.events.{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bench.bootstrap, client_id="llmops-bench")
    try:
        spec = {"num_partitions": PARTITIONS, "replication_factor": 1}
        configs = {"compression.type": default_compression()}  # stored as the producer sends
        admin.create_topics({name: {**spec, "configs": configs}})
        admin.wait_for_topics([name], timeout_ms=30000)
    finally:
        admin.close()
    bench.kafka_topics[case] = name
    return name


@contextmanager
def _cleanup_topics(bench: Bench) -> Iterator[None]:
    try:
        yield
    finally:
        if bench.kafka_topics:
            from kafka.admin import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=bench.bootstrap, client_id="llmops-bench")
            admin.delete_topics(list(bench.kafka_topics.values()))
            admin.close()


def _ratios(cases: list[dict[str, Any]]) -> dict[str, float]:
    by = {(c["case"], c["system"]): c for c in cases}
    ratios: dict[str, float] = {}
    for label in ("ack_local", "ack_kafka"):
        durable, buffered = by.get((label, "durable")), by.get((label, "buffered"))
        if durable and buffered:
            for m in ("p50_ms", "p99_ms"):
                ratios[f"{label}.{m}.durable_minus_buffered"] = round(durable[m] - buffered[m], 3)
    for label in ("sink_local_chdb", "sink_kafka_chdb"):
        raw, python = by.get((label, "protobuf")), by.get((label, "python"))
        if raw and python:
            ratios[f"{label}.rows_per_s.protobuf/python"] = round(
                raw["rows_per_s"] / python["rows_per_s"], 2
            )
        ceiling = by.get(("sink_ceiling_chdb", "chdb"))
        if raw and ceiling:
            ratios[f"{label}.rows_per_s.protobuf/chdb_ceiling"] = round(
                raw["rows_per_s"] / ceiling["rows_per_s"], 2
            )
        per_event = by.get((label, "protobuf-per-event"))
        if raw and per_event:
            ratios[f"{label}.rows_per_s.protobuf/protobuf-per-event"] = round(
                raw["rows_per_s"] / per_event["rows_per_s"], 2
            )
    fast, slow = by.get(("consume_kafka", "confluent")), by.get(("consume_kafka", "kafka-python"))
    if fast and slow:
        ratios["consume_kafka.rows_per_s.confluent/kafka-python"] = round(
            fast["rows_per_s"] / slow["rows_per_s"], 2
        )
    native = by.get(("produce_kafka", "confluent-kafka"))
    bare_python = by.get(("produce_kafka", "kafka-python"))
    if native and bare_python:
        ratios["produce_kafka.rows_per_s.confluent-kafka/kafka-python"] = round(
            native["rows_per_s"] / bare_python["rows_per_s"], 2
        )
    mine, bare = by.get(("produce_kafka", "llmops")), by.get(("produce_kafka", "kafka-python"))
    if mine and bare:
        key = "produce_kafka.{}.llmops/kafka-python"
        ratios.update(
            {key.format(m): round(mine[m] / bare[m], 3) for m in ("rows_per_s", "p50_ms")}
        )
    return ratios


def main(*, quick: bool) -> None:
    n = 20_000 if quick else 200_000
    _say(f"generating {n} prediction events")
    rng = random.Random(42)
    now = time.time_ns()
    envelopes = [prediction_envelope(rng, event_time_ns=now + i * 1000) for i in range(n)]
    with ExitStack() as stack:
        tmp = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(
                    prefix="llmops-bench-events-", ignore_cleanup_errors=True
                )
            )
        )
        bootstrap = stack.enter_context(servers.kafka())
        bench = Bench(quick, envelopes, tmp, bootstrap)
        # chdb merges in the background: closed before its directory is removed
        stack.callback(lambda: bench.chdb is not None and bench.chdb.close())
        stack.enter_context(_cleanup_topics(bench))
        summaries = []
        for fn in CASES:
            _say(f"case {fn.__name__} ...")
            summaries += [c.summary() for c in fn(bench)]
    for s in summaries:
        if "rows_per_s" in s:
            _say(f"{s['case']:<16} {s['system']:<13} rows/s {s['rows_per_s']:>9}")
    emit("events", summaries, _ratios(summaries))
