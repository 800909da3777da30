"""The scoring of `llmops bench embedding`'s search cases: exact top-k, recall@k, and the
storefront texts' cities (no model, no service, no network)."""

from __future__ import annotations

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
