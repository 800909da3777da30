"""The Kafka table engine statements as a deploy job prints them."""

from __future__ import annotations

import pytest

from llmops.clickhouse import kafka_engine


def test_main_prints_every_statement(capsys: pytest.CaptureFixture[str]) -> None:
    assert kafka_engine.main(["--brokers", "k1:9092,k2:9092", "--consumers", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count(";\n") == 4
    assert "kafka_broker_list = 'k1:9092,k2:9092'" in out
    assert "kafka_num_consumers = 2" in out
    assert "kafka_schema = 'llmops_sink.proto:SinkRecord'" in out
    assert "TO predictions AS" in out


def test_quotes_what_it_is_given() -> None:
    made = kafka_engine.statements("k1:9092', evil = '1")
    assert "kafka_broker_list = 'k1:9092\\', evil = \\'1'" in made[0]
    with pytest.raises(ValueError):
        kafka_engine.statements("k1:9092", consumers=0)
