"""A vector collection: a FAISS index plus string ids, metadata and metadata filters.

``VectorCollection`` is pure domain (no gRPC, no file I/O). It holds:

- the ``VectorIndex`` (``index.py``), which knows vectors only by internal int64 ids;
- the string id <-> int64 id maps. Int ids come from a monotonic counter and are never
  reused: overwriting an item removes its old int id from the index (on HNSW: tombstones
  it) and gives the new version a fresh one, so a tombstone can never hide a live vector;
- each item's metadata (a dict of plain values, see ``filters.py``), by int id;
- a ``MetadataIndex``: per declared field an inverted index value -> int ids, which turns a
  compiled filter into the set of matching ids without scanning the metadata.

Searches with a filter pre-filter: the matching ids are computed first; when there are at
most ``EXACT_FILTER_MAX`` of them the top-k is computed exactly over just those vectors,
otherwise the index searches with a FAISS ``IDSelector`` over them (exact for ``flat``). An
approximate search (IVF, HNSW) that finds fewer than ``min(k, matching items)`` hits, as
can happen when the matches are rare in the probed lists or the HNSW neighbourhood, is
retried with 4x the search knobs (``nprobe`` / ``ef_search``), at most
``MAX_WIDEN_RETRIES`` times; what it then has is returned. No post-filtering is needed.

Thread safety: every public method takes ``lock`` (an ``RLock``) for its whole duration,
so the service may call a collection from worker threads; a caller may also hold ``lock``
across several calls (e.g. to snapshot at a consistent point). ``rebuild()`` holds it for the
whole rebuild, blocking searches and writes meanwhile: acceptable for an operator action.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from llmops.errors import FailedPrecondition, InvalidArgument
from services.embedding.filters import (
    CompiledFilter,
    MetadataIndex,
    validate_metadata,
    validate_schema,
)
from services.embedding.index import (
    INDEX_KINDS,
    METRICS,
    VectorIndex,
    default_index_params,
    selector_for,
    validate_index_params,
    validate_search_params,
)

__all__ = [
    "EXACT_FILTER_MAX",
    "MAX_DIMENSION",
    "MAX_ID_BYTES",
    "MAX_K",
    "MAX_UPSERT_ITEMS",
    "CollectionSpec",
    "CollectionStats",
    "Hit",
    "StoredItem",
    "VectorCollection",
    "default_index_params",
    "validate_spec",
]

MAX_UPSERT_ITEMS: Final = 1000
MAX_K: Final = 1000
MAX_ID_BYTES: Final = 256
MAX_DIMENSION: Final = 16_384
EXACT_FILTER_MAX: Final = 512
"""A filter matching at most this many items is searched exactly over just those vectors."""
MAX_WIDEN_RETRIES: Final = 3
STATE_FORMAT: Final = b"1"

_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,127}")


@dataclass(frozen=True)
class CollectionSpec:
    """What defines a collection (the contract's ``Collection`` minus output-only fields).

    ``metric`` is one of ``METRICS`` (cosine, dot, l2); ``index_kind`` one of
    ``INDEX_KINDS`` (flat, ivf_flat, hnsw); ``metadata_schema`` maps field names to
    ``common_pb2.ValueType`` numbers; ``embedding_model`` is the model name ("" for
    vectors only).
    """

    name: str
    dimension: int
    metric: str
    index_kind: str
    index_params: dict[str, int | float]
    metadata_schema: dict[str, int]
    embedding_model: str = ""
    description: str = ""


def validate_spec(spec: CollectionSpec) -> None:
    """Raise ``InvalidArgument`` naming the ``collection.*`` field that is not acceptable."""
    if not _NAME_RE.fullmatch(spec.name):
        raise InvalidArgument(
            "collection.name", "must be lower_snake_case: [a-z][a-z0-9_]*, at most 128 chars"
        )
    if not 1 <= spec.dimension <= MAX_DIMENSION:
        raise InvalidArgument("collection.dimension", f"must be in [1, {MAX_DIMENSION}]")
    if spec.metric not in METRICS:
        raise InvalidArgument("collection.metric", f"must be one of {', '.join(METRICS)}")
    if spec.index_kind not in INDEX_KINDS:
        raise InvalidArgument("collection.index_kind", f"must be one of {', '.join(INDEX_KINDS)}")
    validate_index_params(spec.index_kind, spec.index_params)
    validate_schema(spec.metadata_schema)


# --------------------------------------------------------------------------------------------
# Item and query checks, shared by every collection backend (FAISS here, Milvus in milvus.py):
# the same rules and the same messages whatever holds the collection.


def check_ids(ids: Sequence[str]) -> None:
    """Non-empty UTF-8 ids of at most ``MAX_ID_BYTES``, unique in the request."""
    first: dict[str, int] = {}
    for i, item_id in enumerate(ids):
        path = f"items[{i}].id"
        if not isinstance(item_id, str) or not item_id:
            raise InvalidArgument(path, "must be a non-empty string")
        try:
            size = len(item_id.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidArgument(path, "must be valid UTF-8") from None
        if size > MAX_ID_BYTES:
            raise InvalidArgument(path, f"is {size} bytes, at most {MAX_ID_BYTES}")
        if item_id in first:
            raise InvalidArgument(path, f"duplicates items[{first[item_id]}].id")
        first[item_id] = i


def bad_norms(x: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """Rows that cosine cannot normalise in float32 (a norm that is 0 or overflows)."""
    with np.errstate(over="ignore", under="ignore"):
        sq = np.einsum("ij,ij->i", x, x)
    bad: npt.NDArray[np.bool_] = ~np.isfinite(sq) | (sq <= 0)
    return bad


def check_vectors(spec: CollectionSpec, vectors: Any, n: int) -> npt.NDArray[np.float32]:
    """``n`` finite vectors of the collection's dimension (non-zero for cosine), as an
    (n, d) float32 array; an (n, d) array or a sequence of n vectors is accepted."""
    d = spec.dimension
    if isinstance(vectors, np.ndarray) and vectors.ndim == 2:
        if vectors.shape[0] != n:
            raise InvalidArgument("items", f"{n} ids but {vectors.shape[0]} vectors")
        if vectors.shape[1] != d and n:
            raise InvalidArgument(
                "items[0].vector", f"has {vectors.shape[1]} dimensions, the collection {d}"
            )
        x = np.ascontiguousarray(vectors, dtype=np.float32)
    else:
        rows = [np.asarray(v, dtype=np.float32) for v in vectors]
        if len(rows) != n:
            raise InvalidArgument("items", f"{n} ids but {len(rows)} vectors")
        for i, row in enumerate(rows):
            if row.ndim != 1 or row.shape[0] != d:
                got = row.shape[0] if row.ndim == 1 else f"shape {row.shape}"
                raise InvalidArgument(
                    f"items[{i}].vector", f"has {got} dimensions, the collection {d}"
                )
        x = np.stack(rows) if rows else np.zeros((0, d), dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        raise InvalidArgument(f"items[{i}].vector", "must be finite (no NaN or infinity)")
    if spec.metric == "cosine":
        bad = bad_norms(x)
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidArgument(
                f"items[{i}].vector", "a zero (or out of range) vector has no direction"
            )
    return x


def check_query(spec: CollectionSpec, query: Any) -> npt.NDArray[np.float32]:
    """A finite query vector of the collection's dimension (non-zero for cosine)."""
    q = np.asarray(query, dtype=np.float32)
    d = spec.dimension
    if q.ndim != 1 or q.shape[0] != d:
        got = q.shape[0] if q.ndim == 1 else f"shape {q.shape}"
        raise InvalidArgument("vector", f"has {got} dimensions, the collection {d}")
    if not np.isfinite(q).all():
        raise InvalidArgument("vector", "must be finite (no NaN or infinity)")
    if spec.metric == "cosine" and bad_norms(q[None, :])[0]:
        raise InvalidArgument("vector", "a zero (or out of range) vector has no direction")
    return q


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result; ``metadata`` / ``vector`` are set only when asked for."""

    id: str
    score: float
    metadata: dict[str, Any] | None = None
    vector: npt.NDArray[np.float32] | None = None


@dataclass(frozen=True, slots=True)
class StoredItem:
    """An item as stored (cosine collections store the L2-normalised vector)."""

    id: str
    vector: npt.NDArray[np.float32]
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CollectionStats:
    """Index statistics (the contract's ``IndexStats`` minus the snapshot)."""

    item_count: int
    deleted_count: int
    """Deleted vectors still in the index (HNSW tombstones) until ``rebuild()``."""
    memory_bytes: int
    """Estimate of the index's memory (``VectorIndex.memory_bytes``)."""
    trained: bool
    device: str
    tombstone_ratio: float


def _copy_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    # Lists are the only mutable plain values: copy them so callers cannot alter the store.
    return {k: list(v) if isinstance(v, list) else v for k, v in metadata.items()}


def _dumps(obj: Any) -> bytes:
    """Deterministic JSON (sorted keys, no spaces, ASCII-only)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class VectorCollection:
    """The items of one collection and its index (see the module doc)."""

    def __init__(self, spec: CollectionSpec, *, exact_filter_max: int = EXACT_FILTER_MAX) -> None:
        validate_spec(spec)
        self.spec = spec
        self.exact_filter_max = exact_filter_max
        """Filters matching at most this many items are searched exactly (module doc)."""
        self.lock = threading.RLock()
        """Taken by every public method; reentrant so a caller can group several calls."""
        self._index = VectorIndex(spec.dimension, spec.metric, spec.index_kind, spec.index_params)
        self._int_of: dict[str, int] = {}
        self._str_of: dict[int, str] = {}
        self._metadata: dict[int, dict[str, Any]] = {}
        self._meta_index = MetadataIndex(spec.metadata_schema)
        self._next_id = 0
        self._journal: list[tuple[str, Any, Any]] | None = None
        """Writes made while ``rebuild_online`` builds (None when none runs)."""

    @property
    def item_count(self) -> int:
        with self.lock:
            return len(self._str_of)

    def __len__(self) -> int:
        return self.item_count

    # ----------------------------------------------------------------------------------------
    # Writes

    def upsert(
        self,
        ids: Sequence[str],
        vectors: npt.NDArray[np.floating[Any]] | Sequence[Any],
        metadata: Sequence[Mapping[str, Any]],
    ) -> int:
        """Insert or replace items; returns how many were written.

        ``vectors`` is an (n, d) array or a sequence of n vectors (each checked for its
        dimension: ``items[i].vector``). Everything is validated before anything is
        written: at most 1000 items, unique non-empty ids of at most 256 UTF-8 bytes, finite
        vectors of the collection's dimension (non-zero for cosine), metadata matching the
        schema. An existing id is replaced (new vector, metadata wholly replaced).
        """
        n = len(ids)
        x, metas = self._checked(ids, vectors, metadata)
        if not n:
            return 0
        with self.lock:
            new = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            # Add before removing: if FAISS fails here, the collection is unchanged.
            self._index.add(x, new)
            if self._journal is not None:  # an online rebuild is running: replay it there
                self._journal.append(("add", x, new))
            self._next_id += n
            old = [self._int_of[s] for s in ids if s in self._int_of]
            if old:
                self._index.remove(np.array(old, dtype=np.int64))
                if self._journal is not None:
                    self._journal.append(("remove", np.array(old, dtype=np.int64), None))
                for int_id in old:
                    self._forget(int_id)
            for s, int_id, meta in zip(ids, new.tolist(), metas, strict=True):
                self._int_of[s] = int_id
                self._str_of[int_id] = s
                self._metadata[int_id] = meta
                self._meta_index.add(int_id, meta)
        return n

    def check_upsert(
        self,
        ids: Sequence[str],
        vectors: npt.NDArray[np.floating[Any]] | Sequence[Any],
        metadata: Sequence[Mapping[str, Any]],
    ) -> None:
        """Raise what ``upsert`` would raise for these items, writing nothing (the service
        checks a request before it logs it)."""
        self._checked(ids, vectors, metadata)

    def _checked(
        self,
        ids: Sequence[str],
        vectors: npt.NDArray[np.floating[Any]] | Sequence[Any],
        metadata: Sequence[Mapping[str, Any]],
    ) -> tuple[Any, list[dict[str, Any]]]:
        n = len(ids)
        if n > MAX_UPSERT_ITEMS:
            raise InvalidArgument("items", f"at most {MAX_UPSERT_ITEMS} items per call, got {n}")
        if len(metadata) != n:
            raise InvalidArgument("items", f"{n} ids but {len(metadata)} metadata maps")
        check_ids(ids)
        x = check_vectors(self.spec, vectors, n)
        schema = self.spec.metadata_schema
        metas = [
            validate_metadata(m, schema, f"items[{i}].metadata") for i, m in enumerate(metadata)
        ]
        return x, metas

    def _forget(self, int_id: int) -> None:
        """Drop an int id from the maps and the metadata index (not from the FAISS index)."""
        s = self._str_of.pop(int_id)
        if self._int_of.get(s) == int_id:
            del self._int_of[s]
        self._meta_index.remove(int_id, self._metadata.pop(int_id))

    def _delete_ints(self, int_ids: npt.NDArray[np.int64]) -> int:
        if not len(int_ids):
            return 0
        self._index.remove(int_ids)
        if self._journal is not None:
            self._journal.append(("remove", int_ids, None))
        for int_id in int_ids.tolist():
            self._forget(int_id)
        return len(int_ids)

    def delete_ids(self, ids: Sequence[str]) -> int:
        """Delete items by id; unknown ids are ignored. Returns how many were deleted."""
        with self.lock:
            found = {self._int_of[s] for s in ids if s in self._int_of}
            return self._delete_ints(np.array(sorted(found), dtype=np.int64))

    def delete_where(self, where: CompiledFilter) -> int:
        """Delete the items matching a (non-empty) filter. Returns how many were deleted."""
        if where.is_empty:
            raise InvalidArgument(
                "filter", "must not be empty (DropCollection deletes a whole collection)"
            )
        with self.lock:
            return self._delete_ints(where.matching_ids(self._meta_index))

    def rebuild_online(self) -> bool:
        """Compact the index without stopping searches or writes for the build: copy the
        live vectors under the lock, build a fresh index outside it, then — under the lock
        again — apply the writes made meanwhile (journalled in order; int ids are never
        reused, so order is all that matters) and swap the fresh index in. Searches see the
        old index (tombstones excluded) until the swap, the fresh one after: never a deleted
        id. Returns False when a rebuild is already running."""
        with self.lock:
            if self._journal is not None:
                return False
            ids, vectors = self._index.live_contents()
            self._journal = []
        try:
            fresh = VectorIndex(
                self.spec.dimension, self.spec.metric, self.spec.index_kind, self.spec.index_params
            )
            fresh.add_prepared(vectors, ids)  # the slow part, outside the lock
        except BaseException:
            with self.lock:
                self._journal = None
            raise
        with self.lock:
            for op, arg, new_ids in self._journal:
                if op == "add":
                    fresh.add(arg, new_ids)
                else:
                    fresh.remove(arg)
            self._index = fresh
            self._journal = None
        return True

    def rebuild(self) -> None:
        """Rebuild the index from the live vectors (HNSW: drops tombstones). Holds the lock."""
        with self.lock:
            self._index.rebuild()

    # ----------------------------------------------------------------------------------------
    # Reads

    def search(
        self,
        query: npt.ArrayLike,
        k: int,
        filter: CompiledFilter | None = None,
        params: Mapping[str, Any] | None = None,
        include_metadata: bool = False,
        include_vectors: bool = False,
        min_score: float | None = None,
    ) -> list[Hit]:
        """The k items nearest to ``query`` (d,), best first, restricted by ``filter``.

        ``params`` are per-query knobs (``nprobe`` / ``ef_search``); hits scoring below
        ``min_score`` are dropped. See the module doc for how filters are applied.
        """
        if not 1 <= k <= MAX_K:
            raise InvalidArgument("k", f"must be in [1, {MAX_K}], got {k}")
        q = check_query(self.spec, query)
        sp = validate_search_params(self.spec.index_kind, params or {})
        with self.lock:
            if not self._str_of:
                return []
            candidates = None
            matching = len(self._str_of)
            if filter is not None and not filter.is_empty:
                candidates = filter.matching_ids(self._meta_index)
                matching = len(candidates)
                if not matching:
                    return []
            if candidates is not None and matching <= self.exact_filter_max:
                scores, ids = self._index.search_among(q, k, candidates)
            else:
                scores, ids = self._search_index(q, k, candidates, sp, min(k, matching))
            return self._hits(scores, ids, include_metadata, include_vectors, min_score)

    def _search_index(
        self,
        q: npt.NDArray[np.float32],
        k: int,
        candidates: npt.NDArray[np.int64] | None,
        params: dict[str, int],
        want: int,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        selector = selector_for(candidates) if candidates is not None else None
        knobs: dict[str, int] | None = params
        scores, ids = self._index.search(q[None, :], k, selector, params)
        for _ in range(MAX_WIDEN_RETRIES):
            if int((ids[0] >= 0).sum()) >= want:
                break
            knobs = self._index.widen(knobs or {})
            if knobs is None:
                break
            scores, ids = self._index.search(q[None, :], k, selector, knobs)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]

    def _hits(
        self,
        scores: npt.NDArray[np.float32],
        ids: npt.NDArray[np.int64],
        include_metadata: bool,
        include_vectors: bool,
        min_score: float | None,
    ) -> list[Hit]:
        if min_score is not None:
            keep = scores >= min_score
            scores, ids = scores[keep], ids[keep]
        vectors = self._index.reconstruct(ids) if include_vectors else None
        hits: list[Hit] = []
        for i, (score, int_id) in enumerate(zip(scores.tolist(), ids.tolist(), strict=True)):
            hits.append(
                Hit(
                    id=self._str_of[int_id],
                    score=score,
                    metadata=_copy_metadata(self._metadata[int_id]) if include_metadata else None,
                    vector=vectors[i].copy() if vectors is not None else None,
                )
            )
        return hits

    def get(self, ids: Sequence[str]) -> list[StoredItem]:
        """The stored items of the given ids, in request order; unknown ids are skipped."""
        with self.lock:
            known = [s for s in dict.fromkeys(ids) if s in self._int_of]
            int_ids = np.array([self._int_of[s] for s in known], dtype=np.int64)
            vectors = self._index.reconstruct(int_ids)
            return [
                StoredItem(
                    id=s, vector=vectors[i].copy(), metadata=_copy_metadata(self._metadata[j])
                )
                for i, (s, j) in enumerate(zip(known, int_ids.tolist(), strict=True))
            ]

    def stats(self) -> CollectionStats:
        """Item count and index statistics."""
        with self.lock:
            return CollectionStats(
                item_count=len(self._str_of),
                deleted_count=self._index.deleted_count,
                memory_bytes=self._index.memory_bytes,
                trained=self._index.trained,
                device="cpu",
                tombstone_ratio=self._index.tombstone_ratio,
            )

    # ----------------------------------------------------------------------------------------
    # State

    def export_state(self) -> dict[str, bytes]:
        """Everything needed to restore this collection exactly (see ``from_state``).

        Keys: ``format`` (b"1"), ``index`` (``VectorIndex.to_bytes``), ``ids`` (JSON
        ``[[int_id, id], ...]``), ``metadata`` (JSON ``[[int_id, {...}], ...]``), both sorted by
        int id, deterministic JSON), ``counter`` (the next int id, decimal).
        """
        with self.lock:
            order = sorted(self._str_of)
            return {
                "format": STATE_FORMAT,
                "index": self._index.to_bytes(),
                "ids": _dumps([[i, self._str_of[i]] for i in order]),
                "metadata": _dumps([[i, self._metadata[i]] for i in order]),
                "counter": str(self._next_id).encode(),
            }

    @classmethod
    def from_state(
        cls,
        spec: CollectionSpec,
        state: Mapping[str, bytes],
        *,
        exact_filter_max: int = EXACT_FILTER_MAX,
    ) -> VectorCollection:
        """A collection restored from ``export_state`` output.

        Raises ``FailedPrecondition`` when the state is malformed or does not fit ``spec``.
        """
        out = cls(spec, exact_filter_max=exact_filter_max)
        missing = {"format", "index", "ids", "metadata", "counter"} - set(state)
        if missing:
            raise FailedPrecondition(f"collection state lacks {', '.join(sorted(missing))}")
        if state["format"] != STATE_FORMAT:
            raise FailedPrecondition(f"unknown collection state format {state['format']!r}")
        try:
            id_pairs = json.loads(state["ids"])
            meta_pairs = json.loads(state["metadata"])
            counter = int(state["counter"])
            str_of = {int(i): str(s) for i, s in id_pairs}
            metadata = {int(i): dict(m) for i, m in meta_pairs}
        except (ValueError, TypeError) as e:
            raise FailedPrecondition(f"collection state is malformed: {e}") from None
        index = VectorIndex.from_bytes(
            spec.dimension, spec.metric, spec.index_kind, spec.index_params, state["index"]
        )
        if (
            len(str_of) != len(id_pairs)
            or set(metadata) != set(str_of)
            or len(set(str_of.values())) != len(str_of)
            or index.live_count != len(str_of)
            or (str_of and max(str_of) >= counter)
        ):
            raise FailedPrecondition("collection state is inconsistent (ids, metadata, index)")
        out._index = index
        out._str_of = str_of
        out._int_of = {s: i for i, s in str_of.items()}
        out._metadata = metadata
        out._next_id = counter
        for i, m in metadata.items():
            out._meta_index.add(i, m)
        return out
