"""The access log: one JSON line per RPC, rendered and written off the request path."""

from __future__ import annotations

import json
import time

from llmops.server.access_log import AccessLog


def test_lines_are_json_like_the_other_log_lines_and_close_writes_the_rest() -> None:
    written: list[bytes] = []
    log = AccessLog("json", written.append, interval_s=60)  # only close() writes here
    log.record("/llmops.v1.FeatureService/GetOnlineFeatures", "OK", 0.0012345, "r-1", "ipv4:x")
    log.record("/llmops.v1.GuardrailService/Check", "NOT_FOUND", 0.002, None, "ipv4:y")
    assert written == []  # nothing on the request path
    log.close()
    lines = [json.loads(x) for x in b"".join(written).splitlines()]
    assert lines[0] == {
        "method": "/llmops.v1.FeatureService/GetOnlineFeatures",
        "code": "OK",
        "latency_ms": 1.234,
        "request_id": "r-1",
        "peer": "ipv4:x",
        "event": "rpc",
        "level": "info",
        "timestamp": lines[0]["timestamp"],
    }
    assert lines[0]["timestamp"].endswith("Z")
    assert lines[1]["code"] == "NOT_FOUND" and lines[1]["request_id"] is None


def test_the_writer_thread_writes_batches_and_a_full_buffer_drops_and_counts() -> None:
    written: list[bytes] = []
    log = AccessLog("json", written.append, interval_s=0.01, capacity=3)
    for i in range(5):
        log.record("/s/M", "OK", 0.001, f"r-{i}", "p")
    assert log.dropped == 2
    deadline = time.monotonic() + 5
    while not written and time.monotonic() < deadline:
        time.sleep(0.01)
    log.close()
    ids = [json.loads(x)["request_id"] for x in b"".join(written).splitlines()]
    assert ids == ["r-0", "r-1", "r-2"]


def test_console_format_is_one_readable_line() -> None:
    written: list[bytes] = []
    log = AccessLog("console", written.append, interval_s=60)
    log.record("/s/M", "OK", 0.0005, "r-9", "ipv4:z")
    log.close()
    text = b"".join(written).decode()
    assert "rpc method=/s/M code=OK latency_ms=0.5 request_id=r-9 peer=ipv4:z" in text
    assert text.count("\n") == 1
