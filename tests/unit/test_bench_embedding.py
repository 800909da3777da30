"""The scoring of `llmops bench embedding`'s search cases: exact top-k, recall@k, and the
storefront texts' cities; the harness' sequential and concurrent timing loops, the ratios,
and the chromadb server's start/stop (a stand-in script: no model, no service, no network)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.embedding import (
    CITIES,
    city_of,
    exact_top_k,
    exact_top_k_within,
    recall_at_k,
    storefront_texts,
)


def test_recall_counts_the_true_neighbours_found_in_the_first_k() -> None:
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_at_k([[3, 2, 1], [6, 5, 4]], truth) == 1.0
    # order inside the top-k does not matter; hits beyond k do not count
    assert recall_at_k([[1, 9, 9, 2], [4, 5, 7]], truth) == pytest.approx(3 / 6)
    assert recall_at_k([[], [7, 8, 9]], truth) == 0.0


def test_recall_refuses_a_result_list_per_query_mismatch() -> None:
    with pytest.raises(ValueError):
        recall_at_k([[1, 2, 3]], np.array([[1, 2, 3], [4, 5, 6]]))


def test_exact_top_k_ranks_by_inner_product_best_first() -> None:
    rng = np.random.default_rng(3)
    corpus = rng.standard_normal((50, 8)).astype(np.float32)
    queries = rng.standard_normal((7, 8)).astype(np.float32)
    got = exact_top_k(corpus, queries, 5, chunk=3)  # chunks smaller than the query count
    want = np.argsort(-(queries @ corpus.T), axis=1)[:, :5]
    assert np.array_equal(got, want)


def test_exact_top_k_within_ranks_only_the_query_group() -> None:
    rng = np.random.default_rng(4)
    corpus = rng.standard_normal((60, 8)).astype(np.float32)
    queries = rng.standard_normal((6, 8)).astype(np.float32)
    groups = np.arange(60) % 3
    wanted = np.array([0, 1, 2, 0, 1, 2])
    got = exact_top_k_within(corpus, queries, 4, groups, wanted)
    for i, g in enumerate(wanted.tolist()):
        members = np.flatnonzero(groups == g)
        best = members[np.argsort(-(corpus[members] @ queries[i]))[:4]]
        assert np.array_equal(got[i], best)


def test_storefront_texts_are_a_prefix_stable_stream_naming_a_city() -> None:
    # the vector cache serves a shorter run from a longer prefix
    assert storefront_texts(20) == storefront_texts(50)[:20]
    for text in storefront_texts(50):
        assert CITIES[city_of(text)] in text.split(",")[0]


# ---------------------------------------------------------------------------------------------
# The search cases' timing loops, ratios, and the chromadb server's lifecycle (harness side)


def test_sequential_stops_at_the_call_count_or_the_time_cap() -> None:
    from benchmarks.vector_baselines_harness import sequential

    seen: list[int] = []
    latencies, wall = sequential(seen.append, 50, None)
    assert seen == list(range(50)) and len(latencies) == 50 and wall >= sum(latencies)
    latencies, _ = sequential(lambda i: time.sleep(0.01), 10_000, 0.1)
    assert 1 <= len(latencies) < 100


def test_concurrent_runs_each_call_once_from_several_threads() -> None:
    from benchmarks.vector_baselines_harness import concurrent

    seen: list[int] = []
    threads: set[int] = set()
    lock = threading.Lock()

    def call(i: int) -> None:
        time.sleep(0.001)  # lets the other threads in
        with lock:
            seen.append(i)
            threads.add(threading.get_ident())

    latencies, wall = concurrent(call, 200, None, 8)
    assert sorted(seen) == list(range(200)) and len(latencies) == 200
    assert len(threads) > 1
    assert wall < sum(latencies)  # overlapped
    latencies, _ = concurrent(lambda i: time.sleep(0.01), 100_000, 0.1, 4)
    assert 4 <= len(latencies) < 400


def test_concurrent_reraises_a_failing_call() -> None:
    from benchmarks.vector_baselines_harness import concurrent

    def call(i: int) -> None:
        if i == 5:
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        concurrent(call, 20, None, 4)


def test_search_ratios_compare_sequential_and_concurrent_rps_per_system() -> None:
    from benchmarks.embedding import CONCURRENT_CASE, search_ratios

    def case(name: str, system: str, rps: float, recall: float = 0.99) -> dict[str, object]:
        return {"case": name, "system": system, "rps": rps, "recall_at_10": recall}

    cases = [
        case("search_k10", "llmops", 1000.0),
        case(CONCURRENT_CASE, "llmops", 3000.0),
        case("search_k10", "chromadb-server", 500.0, 0.97),
        case(CONCURRENT_CASE, "chromadb-server", 1000.0, 0.97),
        case("search_k10", "usearch", 2000.0),  # no concurrent case: no ratio for it
    ]
    ratios = search_ratios(cases)
    assert ratios["search_k10.rps.llmops/chromadb-server"] == 2.0
    assert ratios[f"{CONCURRENT_CASE}.rps.llmops/chromadb-server"] == 3.0
    assert ratios["search_k10.recall_at_10.llmops-chromadb-server"] == 0.02
    assert ratios["search_k10.rps.llmops/usearch"] == 0.5
    assert f"{CONCURRENT_CASE}.rps.llmops/usearch" not in ratios


def _fake_chroma_server(tmp_path: Path, script: str) -> Any:
    """A ChromaServer whose ``chroma`` CLI is a shell script (chromadb is not installed in
    the project venv), with short timeouts."""
    from benchmarks.vector_baselines_harness import ChromaServer

    cli = tmp_path / "chroma"
    cli.write_text("#!/bin/sh\n" + script + "\n")
    cli.chmod(0o755)
    server = ChromaServer.__new__(ChromaServer)
    server.cli, server.data_dir, server.log_path = cli, tmp_path / "data", tmp_path / "log"
    server.proc, server.port = None, 0
    server.START_S, server.STOP_S = 0.5, 0.5
    return server


def test_chroma_server_that_never_answers_is_killed(tmp_path: Path) -> None:
    # ignores SIGTERM and never listens: no heartbeat, then SIGTERM, then SIGKILL
    server = _fake_chroma_server(tmp_path, "trap '' TERM\nexec sleep 60")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="no heartbeat"):
        server.start_server()
    assert time.monotonic() - started < 10
    assert server.proc is None  # stopped and forgotten


def test_chroma_server_that_exits_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    server = _fake_chroma_server(tmp_path, "echo no such flag >&2\nexit 3")
    with pytest.raises(RuntimeError, match=r"exited at start \(code 3\).*no such flag"):
        server.start_server()
    server.close()  # nothing left to stop
