"""Embedding collections on FAISS: writes, deletes, (filtered) search, HNSW tombstones, state."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from llmops.errors import FailedPrecondition, InvalidArgument
from llmops.v1 import common_pb2 as c
from services.embedding.collection import (
    CollectionSpec,
    VectorCollection,
    default_index_params,
    validate_spec,
)
from services.embedding.filters import compile_filter
from services.embedding.index import VectorIndex, train_size

VT = c.ValueType
Op = c.FieldCondition
SCHEMA = {"cat": VT.VALUE_TYPE_INT64, "brand": VT.VALUE_TYPE_STRING}
N, D, K = 3000, 64, 10

Floats = npt.NDArray[np.float32]


def spec(metric: str = "cosine", kind: str = "flat", **params: int) -> CollectionSpec:
    if kind == "ivf_flat" and "nlist" not in params:
        params = {**default_index_params(kind, N), **params}
    return CollectionSpec("products", D, metric, kind, dict(params), dict(SCHEMA))


def mixtures(rng: np.random.Generator, centres: Floats, n: int) -> Floats:
    """Structured, low-rank data: sparse random mixtures of the centres plus small noise."""
    weights = rng.dirichlet(np.full(len(centres), 0.3), size=n)
    return (weights @ centres + 0.01 * rng.normal(size=(n, centres.shape[1]))).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[Floats, Floats]:
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(20, D)).astype(np.float32)
    return mixtures(rng, centres, N), mixtures(rng, centres, 40)


def meta(i: int) -> dict[str, Any]:
    return {"cat": i % 10, "brand": "acme" if i % 3 == 0 else "bolt", "note": f"item {i}"}


def fill(col: VectorCollection, x: Floats, offset: int = 0) -> None:
    """Upsert x[i] as "p{offset + i}", 1000 at a time."""
    for start in range(0, len(x), 1000):
        stop = min(start + 1000, len(x))
        ids = [f"p{offset + i}" for i in range(start, stop)]
        metas = [meta(offset + i) for i in range(start, stop)]
        assert col.upsert(ids, x[start:stop], metas) == len(ids)


def scores_np(metric: str, x: Floats, q: Floats) -> npt.NDArray[np.float64]:
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        x64 = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
        q64 = q64 / np.linalg.norm(q64)
    out: npt.NDArray[np.float64] = -((x64 - q64) ** 2).sum(axis=1) if metric == "l2" else x64 @ q64
    return out


def truth(metric: str, x: Floats, q: Floats, k: int, mask: Any = None) -> list[int]:
    s = scores_np(metric, x, q)
    if mask is not None:
        s = np.where(mask, s, -np.inf)
        k = min(k, int(np.sum(mask)))
    return [int(i) for i in np.argsort(-s, kind="stable")[:k]]


def as_stored(metric: str, v: Floats) -> Floats:
    """A vector as the collection stores it (unit length under cosine)."""
    return v / np.linalg.norm(v) if metric == "cosine" else v


def hit_ints(hits: list[Any]) -> list[int]:
    return [int(h.id[1:]) for h in hits]


def f_cat_below(n: int) -> c.Filter:
    return c.Filter(
        condition=c.FieldCondition(
            field="cat", operator=Op.OPERATOR_LT, value=c.Value(int64_value=n)
        )
    )


def f_brand(brand: str) -> c.Filter:
    return c.Filter(
        condition=c.FieldCondition(
            field="brand", operator=Op.OPERATOR_EQ, value=c.Value(string_value=brand)
        )
    )


# --------------------------------------------------------------------------------------------
# Exactness of flat search, per metric, with and without filters


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("exact_filter_max", [0, 4096])  # selector path / exact-subset path
def test_flat_search_equals_brute_force(
    metric: str, exact_filter_max: int, data: tuple[Floats, Floats]
) -> None:
    x, queries = data
    col = VectorCollection(spec(metric), exact_filter_max=exact_filter_max)
    fill(col, x)
    cats = np.arange(N) % 10
    brands_acme = np.arange(N) % 3 == 0
    for q in queries[:10]:
        hits = col.search(q, K)
        assert hit_ints(hits) == truth(metric, x, q, K)
        expected = scores_np(metric, x, q)[hit_ints(hits)]
        np.testing.assert_allclose([h.score for h in hits], expected, rtol=1e-4, atol=1e-4)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

        f = compile_filter(f_cat_below(3), SCHEMA)
        assert hit_ints(col.search(q, K, f)) == truth(metric, x, q, K, cats < 3)
        f = compile_filter(
            c.Filter(all_of=c.FilterList(filters=[f_cat_below(5), f_brand("acme")])), SCHEMA
        )
        assert hit_ints(col.search(q, K, f)) == truth(metric, x, q, K, (cats < 5) & brands_acme)


def test_filter_with_fewer_matches_than_k(data: tuple[Floats, Floats]) -> None:
    x, queries = data
    col = VectorCollection(spec("l2"))
    fill(col, x[:50])
    f = compile_filter(f_cat_below(1), SCHEMA)  # items 0, 10, 20, 30, 40
    hits = col.search(queries[0], 100, f)
    assert sorted(hit_ints(hits)) == [0, 10, 20, 30, 40]
    assert col.search(queries[0], 5, compile_filter(f_brand("none"), SCHEMA)) == []


# --------------------------------------------------------------------------------------------
# Approximate kinds: recall on structured data


def recall(col: VectorCollection, metric: str, x: Floats, queries: Floats, **kw: Any) -> float:
    mask = kw.pop("mask", None)
    found = 0
    for q in queries:
        want = set(truth(metric, x, q, K, mask))
        found += len(want & set(hit_ints(col.search(q, K, **kw))))
    return found / (K * len(queries))


@pytest.fixture(scope="module")
def ivf(data: tuple[Floats, Floats]) -> VectorCollection:
    col = VectorCollection(spec("cosine", "ivf_flat", nprobe=32), exact_filter_max=0)
    fill(col, data[0])
    return col


@pytest.fixture(scope="module")
def hnsw(data: tuple[Floats, Floats]) -> VectorCollection:
    col = VectorCollection(spec("dot", "hnsw"), exact_filter_max=0)
    fill(col, data[0])
    return col


def test_ivf_recall_unfiltered_and_filtered(
    ivf: VectorCollection, data: tuple[Floats, Floats]
) -> None:
    x, queries = data
    assert ivf.stats().trained
    assert recall(ivf, "cosine", x, queries) >= 0.95
    mask = np.arange(N) % 10 < 4
    f = compile_filter(f_cat_below(4), SCHEMA)
    assert recall(ivf, "cosine", x, queries, filter=f, mask=mask) >= 0.95
    # Filtered hits only ever come from the matching subset.
    assert all(int(h.id[1:]) % 10 < 4 for h in ivf.search(queries[0], 50, f))


def test_ivf_rare_filter_widens_nprobe(ivf: VectorCollection, data: tuple[Floats, Floats]) -> None:
    _, queries = data
    rare = compile_filter(f_cat_below(1), SCHEMA)  # 300 items: one list holds only a few
    for q in queries[:5]:
        hits = ivf.search(q, 50, rare, params={"nprobe": 1})
        assert len(hits) == 50  # the retry with 4x probes found enough matches
        assert all(int(h.id[1:]) % 10 == 0 for h in hits)


def test_hnsw_recall_unfiltered_and_filtered(
    hnsw: VectorCollection, data: tuple[Floats, Floats]
) -> None:
    x, queries = data
    assert recall(hnsw, "dot", x, queries) >= 0.95
    mask = np.arange(N) % 3 == 0
    f = compile_filter(f_brand("acme"), SCHEMA)
    assert recall(hnsw, "dot", x, queries, filter=f, mask=mask) >= 0.95
    assert recall(hnsw, "dot", x, queries, params={"ef_search": 128}) >= 0.95


def test_search_params_are_checked(ivf: VectorCollection, hnsw: VectorCollection) -> None:
    q = np.ones(D, dtype=np.float32)
    with pytest.raises(InvalidArgument) as info:
        hnsw.search(q, 5, params={"nprobe": 4})
    assert info.value.field == 'search_params["nprobe"]'
    with pytest.raises(InvalidArgument) as info:
        ivf.search(q, 5, params={"nprobe": 0})
    assert info.value.field == 'search_params["nprobe"]'
    assert len(ivf.search(q, 5, params={"nprobe": 10**6 // 100})) == 5  # above nlist: clipped


# --------------------------------------------------------------------------------------------
# HNSW deletes are tombstones


def test_hnsw_deletes_tombstones_and_rebuild(data: tuple[Floats, Floats]) -> None:
    x, queries = data
    n = 1500
    col = VectorCollection(spec("l2", "hnsw", m=16), exact_filter_max=0)
    fill(col, x[:n])
    deleted = {f"p{i}" for i in range(0, n, 2)}
    assert col.delete_ids([*sorted(deleted), "unknown"]) == len(deleted)
    stats = col.stats()
    assert (stats.item_count, stats.deleted_count) == (n // 2, n // 2)
    assert stats.tombstone_ratio == pytest.approx(0.5)
    # Overwriting a live item tombstones its old vector too.
    col.upsert(["p1"], x[1:2] + 0.5, [meta(1)])
    assert col.stats().deleted_count == n // 2 + 1
    assert col.stats().tombstone_ratio == pytest.approx((n // 2 + 1) / (n + 1))

    live = np.arange(n) % 2 == 1
    x_now = x[:n].copy()
    x_now[1] += 0.5
    f = compile_filter(f_cat_below(6), SCHEMA)
    before = []
    for q in queries[:20]:
        hits = col.search(q, K)
        assert not deleted & {h.id for h in hits}
        assert hit_ints(hits)[:K] and set(hit_ints(hits)) <= set(np.flatnonzero(live).tolist())
        filtered = col.search(q, K, f)
        assert not deleted & {h.id for h in filtered}
        before.append(hit_ints(hits))
    assert recall(col, "l2", x_now, queries[:20], mask=live) >= 0.95

    col.rebuild()
    stats = col.stats()
    assert (stats.item_count, stats.deleted_count, stats.tombstone_ratio) == (n // 2, 0, 0.0)
    after = [hit_ints(col.search(q, K)) for q in queries[:20]]
    overlap = sum(len(set(a) & set(b)) for a, b in zip(before, after, strict=True))
    assert overlap / (K * 20) >= 0.95
    assert recall(col, "l2", x_now, queries[:20], mask=live) >= 0.95
    assert col.get(["p1"])[0].vector == pytest.approx(x_now[1])


# --------------------------------------------------------------------------------------------
# IVF training


def test_ivf_stages_until_trained(data: tuple[Floats, Floats]) -> None:
    x, queries = data
    col = VectorCollection(spec("l2", "ivf_flat", nlist=32, nprobe=32))
    threshold = train_size(32)
    assert threshold == 256
    fill(col, x[:200])
    assert not col.stats().trained
    assert hit_ints(col.search(queries[0], K)) == truth("l2", x[:200], queries[0], K)  # exact
    assert col.delete_ids(["p0"]) == 1
    col.upsert(["p0"], x[0:1], [meta(0)])
    fill(col, x[200:400], offset=200)
    assert col.stats().trained and col.stats().item_count == 400
    assert hit_ints(col.search(queries[0], K)) == truth("l2", x[:400], queries[0], K)
    assert col.delete_ids(["p1", "p2"]) == 2
    assert {"p1", "p2"}.isdisjoint(h.id for h in col.search(x[1], 400))
    assert col.get(["p3"])[0].vector == pytest.approx(x[3])


# --------------------------------------------------------------------------------------------
# Writes


def test_upsert_overwrites_vector_and_metadata(data: tuple[Floats, Floats]) -> None:
    x, _ = data
    col = VectorCollection(spec("dot"))
    col.upsert(["a", "b"], x[:2], [{"cat": 1, "brand": "acme"}, {"cat": 2}])
    col.upsert(["a"], x[5:6], [{"cat": 9}])
    assert len(col) == 2
    (a,) = col.get(["a"])
    assert a.metadata == {"cat": 9}
    np.testing.assert_array_equal(a.vector, x[5])
    assert [h.id for h in col.search(x[5], 1)] == ["a"]
    # The old metadata is gone from the filter index too.
    assert col.search(x[0], 5, compile_filter(f_brand("acme"), SCHEMA)) == []
    hits = col.search(x[5], 2, compile_filter(f_cat_below(10), SCHEMA), include_metadata=True)
    assert {h.id: h.metadata for h in hits} == {"a": {"cat": 9}, "b": {"cat": 2}}


def test_get_returns_known_items_in_order_and_normalised_for_cosine(
    data: tuple[Floats, Floats],
) -> None:
    x, _ = data
    col = VectorCollection(spec("cosine"))
    col.upsert(["a", "b"], x[:2], [meta(0), meta(1)])
    items = col.get(["b", "zzz", "a", "b"])
    assert [i.id for i in items] == ["b", "a"]
    assert items[0].metadata == meta(1)
    np.testing.assert_allclose(items[1].vector, x[0] / np.linalg.norm(x[0]), rtol=1e-5)
    items[1].metadata["cat"] = 99  # callers get copies
    assert col.get(["a"])[0].metadata == meta(0)


def test_upsert_accepts_a_list_of_vectors(data: tuple[Floats, Floats]) -> None:
    x, _ = data
    col = VectorCollection(spec("l2"))
    assert col.upsert(["a", "b"], [x[0].tolist(), x[1]], [{}, {}]) == 2
    assert [h.id for h in col.search(x[1], 1)] == ["b"]


BAD_UPSERTS: list[tuple[str, str, str]] = [
    ("dim", "items[2].vector", "dimensions"),
    ("dim_array", "items[0].vector", "dimensions"),
    ("nan", "items[1].vector", "finite"),
    ("zero", "items[2].vector", "direction"),
    ("dup", "items[2].id", "duplicates items[0].id"),
    ("empty_id", "items[1].id", "non-empty"),
    ("long_id", "items[2].id", "at most 256"),
    ("meta", 'items[2].metadata["cat"]', "INT64"),
    ("too_many", "items", "at most 1000"),
]


@pytest.mark.parametrize(("case", "path", "words"), BAD_UPSERTS)
def test_invalid_upsert_writes_nothing(
    case: str, path: str, words: str, data: tuple[Floats, Floats]
) -> None:
    x, _ = data
    col = VectorCollection(spec("cosine"))
    col.upsert(["p0", "p1"], x[:2], [meta(0), meta(1)])
    state = col.export_state()

    ids = ["p0", "new1", "new2"]  # p0 would be an overwrite
    vectors: Any = x[10:13].copy()
    metas = [meta(10), meta(11), meta(12)]
    if case == "dim":
        vectors = [x[10], x[11], x[12][:-1]]
    elif case == "dim_array":
        vectors = x[10:13, :-1]
    elif case == "nan":
        vectors[1, 3] = np.nan
    elif case == "zero":
        vectors[2] = 0
    elif case == "dup":
        ids[2] = "p0"
    elif case == "empty_id":
        ids[1] = ""
    elif case == "long_id":
        ids[2] = "é" * 128 + "x"  # 257 bytes in UTF-8, 129 characters
    elif case == "meta":
        metas[2] = {"cat": "three"}
    elif case == "too_many":
        ids = [f"n{i}" for i in range(1001)]
        vectors = np.ones((1001, D), dtype=np.float32)
        metas = [{}] * 1001
    with pytest.raises(InvalidArgument) as info:
        col.upsert(ids, vectors, metas)
    assert info.value.field == path
    assert words in info.value.message
    assert col.export_state() == state  # nothing written, not even the id counter


def test_delete_by_ids_and_by_filter(data: tuple[Floats, Floats]) -> None:
    x, _ = data
    col = VectorCollection(spec("l2"))
    fill(col, x[:100])
    assert col.delete_ids(["p1", "p1", "p2", "nope"]) == 2
    assert col.delete_ids(["p1"]) == 0
    f = compile_filter(f_brand("acme"), SCHEMA)  # i % 3 == 0
    assert col.delete_where(f) == 34
    assert col.delete_where(f) == 0
    remaining = {h.id for h in col.search(x[0], 1000)}
    assert remaining == {f"p{i}" for i in range(100) if i % 3 and i not in (1, 2)}
    assert col.stats().item_count == len(remaining) == 64
    with pytest.raises(InvalidArgument) as info:
        col.delete_where(compile_filter(c.Filter(), SCHEMA))
    assert info.value.field == "filter"


# --------------------------------------------------------------------------------------------
# Search arguments and result shaping


def test_search_arguments(data: tuple[Floats, Floats]) -> None:
    x, _ = data
    col = VectorCollection(spec("cosine"))
    assert col.search(x[0], 5) == []  # empty collection
    fill(col, x[:20])
    for k in (0, 1001):
        with pytest.raises(InvalidArgument) as info:
            col.search(x[0], k)
        assert info.value.field == "k"
    for q in (x[0][:-1], np.zeros(D), np.full(D, np.inf)):
        with pytest.raises(InvalidArgument) as info:
            col.search(q, 5)
        assert info.value.field == "vector"
    assert len(col.search(x[0], 1000)) == 20


def test_min_score_metadata_and_vectors(data: tuple[Floats, Floats]) -> None:
    x, _ = data
    col = VectorCollection(spec("cosine"))
    fill(col, x[:50])
    hits = col.search(x[7], 10, include_metadata=True, include_vectors=True)
    assert hits[0].id == "p7"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].metadata == meta(7)
    assert hits[0].vector is not None
    np.testing.assert_allclose(hits[0].vector, x[7] / np.linalg.norm(x[7]), rtol=1e-5)
    cut = hits[4].score
    kept = col.search(x[7], 10, min_score=cut)
    assert [h.id for h in kept] == [h.id for h in hits[:5]]
    bare = col.search(x[7], 3)
    assert all(h.metadata is None and h.vector is None for h in bare)


# --------------------------------------------------------------------------------------------
# State round trip


@pytest.mark.parametrize(
    ("metric", "kind"), [("cosine", "flat"), ("l2", "ivf_flat"), ("dot", "hnsw")]
)
def test_export_and_restore_give_identical_results(
    metric: str, kind: str, data: tuple[Floats, Floats]
) -> None:
    x, queries = data
    s = spec(metric, kind, nlist=32) if kind == "ivf_flat" else spec(metric, kind)
    col = VectorCollection(s, exact_filter_max=0)
    fill(col, x[:1200])
    col.delete_ids([f"p{i}" for i in range(0, 1200, 7)])
    col.upsert(["p3"], x[3:4] * 2, [{"cat": 3, "extra": [1.5, 2.5], "gone": None}])
    state = col.export_state()
    assert set(state) == {"format", "index", "ids", "metadata", "counter"}

    back = VectorCollection.from_state(s, state, exact_filter_max=0)
    assert back.stats() == col.stats()
    assert back.export_state() == state  # deterministic bytes
    f = compile_filter(f_cat_below(4), SCHEMA)
    for q in queries[:10]:
        for kw in ({}, {"filter": f}):
            a = col.search(q, K, include_metadata=True, **kw)  # type: ignore[arg-type]
            b = back.search(q, K, include_metadata=True, **kw)  # type: ignore[arg-type]
            assert [(h.id, h.score, h.metadata) for h in a] == [
                (h.id, h.score, h.metadata) for h in b
            ]
    assert back.get(["p3"])[0].metadata == {"cat": 3, "extra": [1.5, 2.5], "gone": None}
    # The restored counter keeps new int ids clear of the old ones.
    back.upsert(["fresh", "p5"], x[1500:1502], [{}, {}])
    fresh, p5, p6 = back.get(["fresh", "p5", "p6"])
    np.testing.assert_allclose(fresh.vector, as_stored(metric, x[1500]), rtol=1e-6)
    np.testing.assert_allclose(p5.vector, as_stored(metric, x[1501]), rtol=1e-6)
    np.testing.assert_array_equal(p6.vector, col.get(["p6"])[0].vector)
    assert back.stats().item_count == col.stats().item_count + 1


def test_restore_refuses_state_that_does_not_fit(data: tuple[Floats, Floats]) -> None:
    x, _ = data
    col = VectorCollection(spec("l2"))
    fill(col, x[:10])
    state = col.export_state()
    other = CollectionSpec("products", D + 1, "l2", "flat", {}, dict(SCHEMA))
    with pytest.raises(FailedPrecondition):
        VectorCollection.from_state(other, state)
    with pytest.raises(FailedPrecondition):
        VectorCollection.from_state(spec("dot"), state)
    with pytest.raises(FailedPrecondition):
        VectorCollection.from_state(spec("l2"), {**state, "ids": b'[[0,"p0"]]'})
    with pytest.raises(FailedPrecondition):
        VectorCollection.from_state(spec("l2"), {**state, "index": b"garbage"})
    with pytest.raises(FailedPrecondition):
        VectorCollection.from_state(spec("l2"), {k: v for k, v in state.items() if k != "counter"})


def test_index_bytes_round_trip_keeps_tombstones(data: tuple[Floats, Floats]) -> None:
    x, _ = data
    idx = VectorIndex(D, "dot", "hnsw", {"m": 8})
    idx.add(x[:100], np.arange(100, dtype=np.int64))
    idx.remove(np.array([3, 4, 5], dtype=np.int64))
    back = VectorIndex.from_bytes(D, "dot", "hnsw", {"m": 8}, idx.to_bytes())
    assert (back.ntotal, back.deleted_count, back.live_count) == (100, 3, 97)
    _, ids = back.search(x[3:4], 5)
    assert not {3, 4, 5} & set(ids[0].tolist())


# --------------------------------------------------------------------------------------------
# Spec, defaults, threads


def test_default_index_params() -> None:
    assert default_index_params("flat", 10) == {}
    assert default_index_params("hnsw", 10) == {"m": 32, "ef_construction": 64, "ef_search": 64}
    assert default_index_params("ivf_flat", 10) == {"nlist": 16, "nprobe": 16}
    assert default_index_params("ivf_flat", 1_000_000) == {"nlist": 4000, "nprobe": 16}
    assert default_index_params("ivf_flat", 10**12)["nlist"] == 65536


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"name": "Products"}, "collection.name"),
        ({"dimension": 0}, "collection.dimension"),
        ({"metric": "cos"}, "collection.metric"),
        ({"index_kind": "ivf_pq"}, "collection.index_kind"),
        ({"index_kind": "hnsw", "index_params": {"nlist": 8}}, 'collection.index_params["nlist"]'),
        ({"index_kind": "hnsw", "index_params": {"m": 1}}, 'collection.index_params["m"]'),
        (
            {"index_kind": "ivf_flat", "index_params": {"nlist": 2.5}},
            'collection.index_params["nlist"]',
        ),
        ({"metadata_schema": {"t": VT.VALUE_TYPE_BYTES}}, 'collection.metadata_schema["t"]'),
    ],
)
def test_spec_validation(changes: dict[str, Any], path: str) -> None:
    base: dict[str, Any] = {
        "name": "products",
        "dimension": D,
        "metric": "cosine",
        "index_kind": "flat",
        "index_params": {},
        "metadata_schema": {},
    }
    bad = CollectionSpec(**{**base, **changes})
    with pytest.raises(InvalidArgument) as info:
        validate_spec(bad)
    assert info.value.field == path
    with pytest.raises(InvalidArgument):
        VectorCollection(bad)


def test_concurrent_writers_and_readers(data: tuple[Floats, Floats]) -> None:
    x, queries = data
    col = VectorCollection(spec("l2", "hnsw", m=8))
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def writer(w: int) -> None:
        try:
            start.wait()
            for b in range(5):
                lo = w * 250 + b * 50
                ids = [f"p{i}" for i in range(lo, lo + 50)]
                col.upsert(ids, x[lo : lo + 50], [meta(i) for i in range(lo, lo + 50)])
                col.search(queries[w], K)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert col.stats().item_count == 1000
    assert hit_ints(col.search(x[123], 1)) == [123]
