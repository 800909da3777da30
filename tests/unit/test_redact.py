"""Credentials never leave in messages: URLs and DSNs redacted."""

from __future__ import annotations

import pytest

from llmops.redact import redact_url, scrub


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://app:s3cret@cache.internal:6380/2", "rediss://app:***@cache.internal:6380/2"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("redis://app@cache:6379", "redis://app@cache:6379"),  # a user alone is no secret
        (
            "postgresql+psycopg://llmops:pw%40x@db:5432/llmops?sslmode=require",
            "postgresql+psycopg://llmops:***@db:5432/llmops?sslmode=require",
        ),
        (
            "clickhouse://default@ch:9000/default?password=hunter2&secure=1",
            "clickhouse://default@ch:9000/default?password=***&secure=1",
        ),
        ("http://127.0.0.1:8181", "http://127.0.0.1:8181"),
        ("not a url", "not a url"),
        ("user:pw@host", "***"),  # no scheme: unparseable as a URL, so masked whole
    ],
)
def test_passwords_and_credential_parameters_are_masked(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    for secret in ("s3cret", "hunter2", "pw%40x"):
        assert secret not in redact_url(url)


async def test_a_redis_store_that_cannot_connect_names_the_url_without_its_password() -> None:
    from llmops.errors import Unavailable
    from services.feedback.idempotency import RedisKeyStore

    # port 1 on loopback: nothing listens, the connection is refused at once
    store = RedisKeyStore("redis://:s3cret@127.0.0.1:1/0", "t", 60)
    with pytest.raises(Unavailable) as caught:
        await store.get_many(["k"])
    await store.close()
    assert "redis://:***@127.0.0.1:1/0" in caught.value.message
    assert "s3cret" not in str(caught.value)


def test_urls_inside_a_message_are_masked() -> None:
    from llmops.redact import redact_text

    said = redact_text(
        "Error 111 connecting to redis://:hunter2@cache:6379/0. Connection refused; "
        "retried https://api.example.com/v1?api_key=abc&x=1 and clickhouse://default@ch:9000"
    )
    assert "hunter2" not in said and "abc" not in said
    assert "redis://:***@cache:6379/0." in said
    assert "api_key=***" in said and "clickhouse://default@ch:9000" in said


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("to redis://:hunter2@cache:6379/0 failed", "to redis://:***@cache:6379/0 failed"),
        ("Authorization: Bearer llmops_abc.DEF-123", "Authorization: Bearer ***"),
        ("password=hunter2 user=bob", "password=*** user=bob"),
        ("token: abc123, next", "token: ***, next"),
        ("api_key=XYZ&x=1", "api_key=***&x=1"),
        ("prompt_tokens=5 tokens: 7 time: 12:30", "prompt_tokens=5 tokens: 7 time: 12:30"),
        ("nothing to hide", "nothing to hide"),
    ],
)  # fmt: skip
def test_scrub_masks_what_looks_like_a_credential(text: str, shown: str) -> None:
    assert scrub(text) == shown


def test_every_log_line_is_scrubbed(capfd: pytest.CaptureFixture[str]) -> None:
    """A library's error that quotes a DSN, a structlog line with a header in it, and the
    traceback of an exception carrying a password: none reaches stderr as it was."""
    import logging

    import structlog

    from llmops.logging import configure_logging

    configure_logging("info", "json")
    try:
        log = structlog.get_logger("test")
        log.warning("backend_down", error="redis://:hunter2@cache:6379/0 refused")
        log.info("call", header="Bearer llmops_s3cr3t")
        try:
            raise ConnectionError("auth failed for password=hunter2")
        except ConnectionError:
            log.exception("crashed")
        logging.getLogger("kafka.conn").error("sasl: token=s3cr3t rejected")
        out = capfd.readouterr().err
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert "hunter2" not in out and "s3cr3t" not in out
    assert out.count("***") >= 4 and "backend_down" in out and "crashed" in out
