"""`llmops sink` as an operator runs it: Kafka in, ClickHouse out (chdb here, as the only
ClickHouse server on this machine is too old for the schema), stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from llmops.events.kafka_log import KafkaLog
from llmops.events.publisher import EventPublisher
from llmops.events.synthetic import prediction_envelope
from tests.support import free_ports, running

pytestmark = pytest.mark.timeout(180)


def _samples(url: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            text = reply.read().decode()
    except OSError:  # not listening yet
        return []
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def test_llmops_sink_moves_kafka_events_into_clickhouse(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    (metrics_port,) = free_ports(1)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LLMOPS__")},
        "LLMOPS__STATE_DIR": str(tmp_path / "state"),
        "LLMOPS__BACKENDS__KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "LLMOPS__BACKENDS__CLICKHOUSE__BACKEND": "chdb",
        "LLMOPS__SINK__ADMIN_PORT": str(metrics_port),
        "LLMOPS__SINK__FLUSH_INTERVAL_S": "0.2",
    }
    migrate = subprocess.run(
        [sys.executable, "-m", "llmops", "migrate"],
        env={**env, "LLMOPS__MODE": "production"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr
    assert "applied: 0001_raw_tables" in migrate.stdout

    log = KafkaLog(kafka_bootstrap)
    rng = random.Random(17)
    sent = []
    with EventPublisher(log).start() as publisher:
        for _ in range(300):
            envelope = prediction_envelope(rng, event_time_ns=time.time_ns())
            publisher.publish(envelope)
            sent.append(envelope.prediction.request_id)
        assert publisher.flush(30)
    log.close()

    with running(["llmops", "sink", "--topic", "llmops.predictions.v1"], tmp_path, env) as (
        proc,
        log_path,
    ):
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        deadline = time.monotonic() + 90
        inserted, lag = 0.0, [1.0]
        while time.monotonic() < deadline and not (inserted >= len(sent) and not any(lag)):
            time.sleep(0.3)
            samples = _samples(url)
            rows = ("llmops_sink_rows_total", "predictions")
            inserted = sum(v for n, labels, v in samples if (n, labels.get("table")) == rows)
            lag = [v for n, _, v in samples if n == "llmops_sink_lag_records"] or [1.0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()[-2000:]
        assert inserted >= len(sent), (
            f"{inserted:.0f} of {len(sent)} rows inserted, lag {lag}; the sink's log:\n"
            + log_path.read_text()[-4000:]
        )

    logs = subprocess.run(
        [sys.executable, "-m", "llmops", "logs", "predictions", "--last", "1h", "--limit", "1000",
         "--json"],
        env={**env, "LLMOPS__MODE": "production"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert logs.returncode == 0, logs.stderr
    stored = {row["request_id"] for row in json.loads(logs.stdout)["rows"]}
    assert set(sent) <= stored
