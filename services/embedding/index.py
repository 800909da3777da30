"""FAISS indexes for vector collections, addressed by caller-assigned int64 ids.

One ``VectorIndex`` per collection, of one kind:

``flat``
    ``IndexIDMap2`` over ``IndexFlatIP`` / ``IndexFlatL2``: exact search; deletes are physical.
``ivf_flat``
    ``IndexIVFFlat`` (params ``nlist``; search param ``nprobe``) with a hashtable direct map,
    so vectors can be reconstructed and removed by id. IVF needs training, so until the index
    has held ``train_size(nlist)`` vectors (``max(8 * nlist, 256)``) it serves exact search
    from a staging flat index; the ``add`` that reaches that size trains the IVF on everything
    staged and moves over. Deletes are physical.
``hnsw``
    ``IndexHNSWFlat`` (params ``m``, ``ef_construction``; search param ``ef_search``) under an
    ``IndexIDMap2``. HNSW cannot remove vectors: deletes are *tombstones* that every search
    excludes with an ``IDSelectorNot`` (kept until ``rebuild()`` builds a fresh graph from
    the live vectors); ``tombstone_ratio`` tells when that is worth doing.

Metrics: ``cosine`` (vectors L2-normalised on write and query, inner product), ``dot`` (inner
product) and ``l2`` (the score is the negated squared distance), so scores are always
higher-is-better. Cosine indexes store the normalised vectors (``reconstruct`` returns them).

Not thread-safe: the owning collection serialises calls under its lock.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any, Final

import faiss as _faiss
import numpy as np
import numpy.typing as npt

from llmops.errors import FailedPrecondition, InvalidArgument

# faiss ships partial type stubs (no SearchParametersHNSW, DirectMap, ...): use it untyped.
faiss: Any = _faiss

__all__ = [
    "INDEX_KINDS",
    "METRICS",
    "VectorIndex",
    "default_index_params",
    "selector_for",
    "train_size",
    "validate_index_params",
    "validate_search_params",
]

METRICS: Final = ("cosine", "dot", "l2")
INDEX_KINDS: Final = ("flat", "ivf_flat", "hnsw")

DEFAULT_EXPECTED_ITEMS: Final = 100_000
"""Collection size assumed for a default ``nlist`` when the creator gives none."""
MAX_NLIST: Final = 65_536
MAX_HNSW_M: Final = 256
MAX_EF: Final = 4_096
"""Upper bound of ``ef_construction`` and ``ef_search`` (a per-query cost guard)."""

_BUILD_PARAMS: Final[dict[str, tuple[str, ...]]] = {
    "flat": (),
    "ivf_flat": ("nlist", "nprobe"),
    "hnsw": ("m", "ef_construction", "ef_search"),
}
_SEARCH_PARAMS: Final[dict[str, tuple[str, ...]]] = {
    "flat": (),
    "ivf_flat": ("nprobe",),
    "hnsw": ("ef_search",),
}

_MAGIC: Final = b"LMVI\x01"
"""Header of ``to_bytes``: format 1 = magic, u64 faiss-bytes length, faiss bytes, tombstones."""

Floats = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]


def set_faiss_threads(threads: int) -> None:
    """FAISS's OpenMP threads for this process (searches and builds alike)."""
    faiss.omp_set_num_threads(threads)


def train_size(nlist: int) -> int:
    """Vectors an IVF index stages (served exactly) before it trains on them."""
    return max(8 * nlist, 256)


def default_index_params(kind: str, expected_items: int) -> dict[str, int]:
    """Build and search parameters of an index kind for about ``expected_items`` vectors.

    IVF: ``nlist`` = 4 * sqrt(n) clipped to [16, 65536], ``nprobe`` 16 (at most nlist).
    HNSW: ``m`` 32, ``ef_construction`` 64, ``ef_search`` 64. Flat has none.
    """
    if kind == "ivf_flat":
        nlist = int(min(max(round(4 * math.sqrt(max(expected_items, 0))), 16), MAX_NLIST))
        return {"nlist": nlist, "nprobe": min(16, nlist)}
    if kind == "hnsw":
        return {"m": 32, "ef_construction": 64, "ef_search": 64}
    return {}


def _as_int(value: Any, path: str) -> int:
    # Params arrive as contract Values (int64 or double); an integral double is accepted.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(path, "must be an integer")
    if isinstance(value, float) and not value.is_integer():
        raise InvalidArgument(path, f"must be an integer, got {value}")
    return int(value)


def _bounded(params: Mapping[str, Any], name: str, lo: int, hi: int, where: str) -> int | None:
    if name not in params:
        return None
    path = f'{where}["{name}"]'
    v = _as_int(params[name], path)
    if not lo <= v <= hi:
        raise InvalidArgument(path, f"must be in [{lo}, {hi}], got {v}")
    return v


def validate_index_params(
    kind: str, params: Mapping[str, int | float], where: str = "collection.index_params"
) -> dict[str, int]:
    """Check the build parameters of an index kind and fill in the defaults.

    Raises ``InvalidArgument`` naming ``where["param"]`` for an unknown parameter, a
    non-integer or an out-of-range value.
    """
    if kind not in _BUILD_PARAMS:
        raise InvalidArgument("collection.index_kind", f"unsupported index kind {kind!r}")
    for name in params:
        if name not in _BUILD_PARAMS[kind]:
            known = ", ".join(_BUILD_PARAMS[kind]) or "none"
            raise InvalidArgument(
                f'{where}["{name}"]', f"not a parameter of a {kind} index (known: {known})"
            )
    out = default_index_params(kind, DEFAULT_EXPECTED_ITEMS)
    if kind == "ivf_flat":
        nlist = _bounded(params, "nlist", 1, MAX_NLIST, where)
        if nlist is not None:
            out["nlist"] = nlist
            out["nprobe"] = min(out["nprobe"], nlist)
        nprobe = _bounded(params, "nprobe", 1, out["nlist"], where)
        if nprobe is not None:
            out["nprobe"] = nprobe
    elif kind == "hnsw":
        for name, lo, hi in (
            ("m", 2, MAX_HNSW_M),
            ("ef_construction", 1, MAX_EF),
            ("ef_search", 1, MAX_EF),
        ):
            v = _bounded(params, name, lo, hi, where)
            if v is not None:
                out[name] = v
    return out


def validate_search_params(
    kind: str, params: Mapping[str, Any], where: str = "search_params"
) -> dict[str, int]:
    """Check per-query knobs (``nprobe`` for IVF, ``ef_search`` for HNSW).

    Unknown names, values below 1 and ``ef_search`` above MAX_EF are ``InvalidArgument``;
    ``nprobe`` above ``nlist`` is clipped by the search (as FAISS itself does).
    """
    out: dict[str, int] = {}
    for name, value in params.items():
        path = f'{where}["{name}"]'
        if name not in _SEARCH_PARAMS[kind]:
            known = ", ".join(_SEARCH_PARAMS[kind]) or "none"
            raise InvalidArgument(
                path, f"not a search parameter of a {kind} index (known: {known})"
            )
        hi = MAX_EF if name == "ef_search" else MAX_NLIST
        v = _as_int(value, path)
        if not 1 <= v <= hi:
            raise InvalidArgument(path, f"must be in [1, {hi}], got {v}")
        out[name] = v
    return out


def selector_for(ids: Ids) -> Any:
    """A FAISS selector admitting exactly ``ids`` (``IDSelectorBatch`` copies them)."""
    return faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))


def _faiss_metric(metric: str) -> int:
    return int(faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)


class VectorIndex:
    """One FAISS index of a collection (see the module doc), with int64 ids.

    ``ids`` given to ``add`` must be new (never used before in this index); ``remove`` and
    ``reconstruct`` must be given live ids. The owning collection guarantees both.
    """

    def __init__(
        self, dimension: int, metric: str, kind: str, params: Mapping[str, int | float]
    ) -> None:
        if metric not in METRICS:
            raise InvalidArgument("collection.metric", f"unsupported metric {metric!r}")
        if dimension < 1:
            raise InvalidArgument("collection.dimension", "must be at least 1")
        self.dimension = dimension
        self.metric = metric
        self.kind = kind
        self.params = validate_index_params(kind, params)
        self._tombstones: set[int] = set()
        self._live_selector: Any = None  # cached IDSelectorNot(tombstones); None when stale
        self._index: Any = self._new_index(staging=kind == "ivf_flat")

    # ----------------------------------------------------------------------------------------
    # Construction

    def _new_index(self, *, staging: bool = False) -> Any:
        d, fm = self.dimension, _faiss_metric(self.metric)
        if self.kind == "flat" or staging:
            flat = faiss.IndexFlatL2(d) if self.metric == "l2" else faiss.IndexFlatIP(d)
            return faiss.IndexIDMap2(flat)
        if self.kind == "ivf_flat":
            quantizer = faiss.IndexFlatL2(d) if self.metric == "l2" else faiss.IndexFlatIP(d)
            ivf = faiss.IndexIVFFlat(quantizer, d, self.params["nlist"], fm)
            # A hashtable direct map lets reconstruct() and remove_ids() address arbitrary ids.
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            # We train on >= 8 points a list (train_size); FAISS would warn below 39 on stderr.
            ivf.cp.min_points_per_centroid = 1
            ivf.nprobe = self.params["nprobe"]
            return ivf
        hnsw = faiss.IndexHNSWFlat(d, self.params["m"], fm)
        hnsw.hnsw.efConstruction = self.params["ef_construction"]
        hnsw.hnsw.efSearch = self.params["ef_search"]
        return faiss.IndexIDMap2(hnsw)

    # ----------------------------------------------------------------------------------------
    # State

    @property
    def _staging(self) -> bool:
        """An ivf_flat index still serving from its staging flat index."""
        return self.kind == "ivf_flat" and isinstance(self._index, faiss.IndexIDMap2)

    @property
    def ntotal(self) -> int:
        """Vectors physically in the index, tombstones included."""
        return int(self._index.ntotal)

    @property
    def deleted_count(self) -> int:
        """Tombstoned vectors not yet compacted away (HNSW only; other kinds delete in place)."""
        return len(self._tombstones)

    @property
    def live_count(self) -> int:
        return self.ntotal - len(self._tombstones)

    @property
    def tombstone_ratio(self) -> float:
        """Share of the vectors in the index that are tombstones (0 when empty)."""
        return len(self._tombstones) / self.ntotal if self.ntotal else 0.0

    @property
    def trained(self) -> bool:
        """False only for an ivf_flat index still staging its training vectors."""
        return not self._staging

    @property
    def memory_bytes(self) -> int:
        """A cheap estimate of the memory held, in bytes (not measured).

        Vectors (4 bytes a float) plus per-vector overheads: 8 for the stored id and ~32 for a
        hash map entry (IDMap2 reverse map or IVF direct map); IVF adds its centroids, HNSW
        its links (~(2m + 1) int32 neighbours a vector plus level bookkeeping), tombstones
        ~64 bytes each in a Python set.
        """
        n, d = self.ntotal, self.dimension
        total = n * (4 * d + 8 + 32)
        if self.kind == "ivf_flat" and not self._staging:
            total += self.params["nlist"] * 4 * d
        if self.kind == "hnsw":
            total += n * (4 * (2 * self.params["m"] + 1) + 16) + 64 * len(self._tombstones)
        return total

    # ----------------------------------------------------------------------------------------
    # Writes

    def prepare(self, vectors: npt.ArrayLike) -> Floats:
        """Vectors as a C-contiguous float32 (n, d) copy, L2-normalised for cosine."""
        x = np.array(vectors, dtype=np.float32, order="C", copy=True, ndmin=2)
        if x.ndim != 2 or x.shape[1] != self.dimension:
            raise ValueError(f"expected vectors of shape (n, {self.dimension}), got {x.shape}")
        if self.metric == "cosine":
            faiss.normalize_L2(x)
        return x

    def add(self, vectors: npt.ArrayLike, ids: Ids) -> None:
        """Add vectors (already validated: right dimension, finite) under new ids."""
        x = self.prepare(vectors)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) != len(x):
            raise ValueError("one id per vector")
        if not len(x):
            return
        self._index.add_with_ids(x, ids)
        if self._staging and self._index.ntotal >= train_size(self.params["nlist"]):
            self._train_from_staging()

    def _train_from_staging(self) -> None:
        ids, vectors = self._contents(self._index)
        ivf = self._new_index()
        ivf.train(vectors)
        ivf.add_with_ids(vectors, ids)
        self._index = ivf

    def remove(self, ids: Ids) -> int:
        """Delete live ids (HNSW: tombstone them); returns how many."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if not len(ids):
            return 0
        if self.kind == "hnsw":
            before = len(self._tombstones)
            self._tombstones.update(ids.tolist())
            self._live_selector = None
            return len(self._tombstones) - before
        if self.kind == "ivf_flat" and not self._staging:
            # The hashtable direct map only removes through an IDSelectorArray.
            return int(self._index.remove_ids(faiss.IDSelectorArray(ids)))
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def rebuild(self) -> None:
        """Build a fresh index of the same kind from the live vectors and swap it in.

        Drops HNSW tombstones (and re-links the graph); an IVF index is retrained on its
        current contents (or stays staging when too small). Cost: a full build.
        """
        ids, vectors = self.live_contents()
        fresh = VectorIndex(self.dimension, self.metric, self.kind, self.params)
        # The vectors come out of the index already normalised: add them as they are.
        fresh.add_prepared(vectors, ids)
        self._index = fresh._index
        self._tombstones = set()
        self._live_selector = None

    def add_prepared(self, vectors: Floats, ids: Ids) -> None:
        """Add vectors read out of an index of this collection (already normalised)."""
        if not len(ids):
            return
        if self._staging and len(ids) >= train_size(self.params["nlist"]):
            ivf = self._new_index()
            ivf.train(vectors)
            ivf.add_with_ids(vectors, ids)
            self._index = ivf
        else:
            self._index.add_with_ids(vectors, ids)

    # ----------------------------------------------------------------------------------------
    # Reads

    def reconstruct(self, ids: Ids) -> Floats:
        """The stored vectors of live ids, (n, d) float32, in the order given."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.asarray(self._index.reconstruct_batch(ids), dtype=np.float32)

    def live_contents(self) -> tuple[Ids, Floats]:
        """Every live id (ascending) and its stored vector."""
        ids, vectors = self._contents(self._index)
        if self._tombstones:
            keep = ~np.isin(ids, np.fromiter(self._tombstones, dtype=np.int64))
            ids, vectors = ids[keep], vectors[keep]
        order = np.argsort(ids, kind="stable")
        return ids[order], np.ascontiguousarray(vectors[order])

    def _contents(self, index: Any) -> tuple[Ids, Floats]:
        """All (ids, vectors) physically in ``index``, in storage order."""
        if isinstance(index, faiss.IndexIDMap2):
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            inner = faiss.downcast_index(index.index)
            vectors = inner.reconstruct_n(0, inner.ntotal) if inner.ntotal else None
        else:  # a trained IndexIVFFlat: read the inverted lists directly
            invlists = index.invlists
            id_parts: list[Ids] = []
            vec_parts: list[Floats] = []
            for lst in range(index.nlist):
                size = invlists.list_size(lst)
                if not size:
                    continue
                id_parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
                codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * invlists.code_size)
                vec_parts.append(codes.view(np.float32).reshape(size, self.dimension).copy())
            ids = np.concatenate(id_parts) if id_parts else np.zeros(0, dtype=np.int64)
            vectors = np.concatenate(vec_parts) if vec_parts else None
        if vectors is None:
            vectors = np.zeros((0, self.dimension), dtype=np.float32)
        return ids.astype(np.int64), np.ascontiguousarray(vectors, dtype=np.float32)

    def search(
        self,
        queries: npt.ArrayLike,
        k: int,
        selector: Any = None,
        params: Mapping[str, int] | None = None,
    ) -> tuple[Floats, Ids]:
        """The k best ids per query and their scores (higher is better), like ``faiss.search``.

        ``queries`` (n, d) are prepared here (normalised for cosine). ``selector`` (a FAISS
        IDSelector over ids) pre-filters the search; tombstones are always excluded.
        ``params`` are validated search knobs (``validate_search_params``). Missing results
        are id -1.
        """
        q = self.prepare(queries)
        if not self.ntotal:
            return (
                np.full((len(q), k), -np.inf, dtype=np.float32),
                np.full((len(q), k), -1, dtype=np.int64),
            )
        params = params or {}
        sel = selector
        if self._tombstones:
            live = self._live()
            sel = live if sel is None else faiss.IDSelectorAnd(sel, live)
        kwargs: dict[str, Any] = {} if sel is None else {"sel": sel}
        search_params: Any
        if self.kind == "hnsw":
            ef = min(params.get("ef_search", self.params["ef_search"]), MAX_EF)
            # HNSW can return at most ef results: ef below k would silently truncate.
            search_params = faiss.SearchParametersHNSW(efSearch=max(ef, k), **kwargs)
        elif self.kind == "ivf_flat" and not self._staging:
            nprobe = min(params.get("nprobe", self.params["nprobe"]), self.params["nlist"])
            search_params = faiss.SearchParametersIVF(nprobe=nprobe, **kwargs)
        else:
            search_params = faiss.SearchParameters(**kwargs) if kwargs else None
        distances, ids = self._index.search(q, k, params=search_params)
        scores = -distances if self.metric == "l2" else distances
        return np.asarray(scores, dtype=np.float32), np.asarray(ids, dtype=np.int64)

    def search_among(self, query: npt.ArrayLike, k: int, ids: Ids) -> tuple[Floats, Ids]:
        """Exact top-k of one query among the given live ids (brute force over their vectors).

        Returns 1-D scores and ids, best first, at most k of each.
        """
        q = self.prepare(query)[0]
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = self.reconstruct(ids)
        if self.metric == "l2":
            diff = vectors - q
            scores = -np.einsum("ij,ij->i", diff, diff)
        else:
            scores = vectors @ q
        k = min(k, len(ids))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
        order = top[np.lexsort((ids[top], -scores[top]))]  # by score, ties by id
        return scores[order].astype(np.float32), ids[order]

    def widen(self, params: Mapping[str, int]) -> dict[str, int] | None:
        """Search knobs 4x wider than ``params`` (more probes / candidates), or None at the max.

        Used to retry a filtered or tombstone-heavy approximate search that found fewer
        results than asked for.
        """
        if self.kind == "ivf_flat" and not self._staging:
            nlist = self.params["nlist"]
            nprobe = min(params.get("nprobe", self.params["nprobe"]), nlist)
            return None if nprobe >= nlist else {**params, "nprobe": min(nprobe * 4, nlist)}
        if self.kind == "hnsw":
            ef = params.get("ef_search", self.params["ef_search"])
            return None if ef >= MAX_EF else {**params, "ef_search": min(ef * 4, MAX_EF)}
        return None

    def _live(self) -> Any:
        """The cached selector that excludes tombstones."""
        if self._live_selector is None:
            dead = np.fromiter(self._tombstones, dtype=np.int64, count=len(self._tombstones))
            self._live_selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(dead))
        return self._live_selector

    # ----------------------------------------------------------------------------------------
    # Serialisation

    def to_bytes(self) -> bytes:
        """The index (FAISS serialisation) and its tombstones, as one deterministic blob."""
        if self.kind == "ivf_flat" and not self._staging:
            # The direct map's hashtable serialises in hash order, which differs between two
            # copies of one index: leave it out (from_bytes rebuilds it from the lists).
            self._index.set_direct_map_type(faiss.DirectMap.NoMap)
            try:
                data: bytes = faiss.serialize_index(self._index).tobytes()
            finally:
                self._index.set_direct_map_type(faiss.DirectMap.Hashtable)
        else:
            data = faiss.serialize_index(self._index).tobytes()
        dead = np.array(sorted(self._tombstones), dtype="<i8").tobytes()
        return _MAGIC + struct.pack("<Q", len(data)) + data + dead

    @classmethod
    def from_bytes(
        cls,
        dimension: int,
        metric: str,
        kind: str,
        params: Mapping[str, int | float],
        data: bytes,
    ) -> VectorIndex:
        """Restore an index written by ``to_bytes`` (FailedPrecondition if it does not fit)."""
        head = len(_MAGIC) + 8
        if len(data) < head or not data.startswith(_MAGIC):
            raise FailedPrecondition("index state: not a serialised vector index")
        (size,) = struct.unpack_from("<Q", data, len(_MAGIC))
        if len(data) < head + size or (len(data) - head - size) % 8:
            raise FailedPrecondition("index state: truncated")
        out = cls(dimension, metric, kind, params)
        index = faiss.deserialize_index(
            np.frombuffer(data, dtype=np.uint8, count=size, offset=head)
        )
        expected = (
            (faiss.IndexIDMap2,) if kind != "ivf_flat" else (faiss.IndexIDMap2, faiss.IndexIVFFlat)
        )
        if (
            not isinstance(index, expected)
            or index.d != dimension
            or index.metric_type != _faiss_metric(metric)
        ):
            raise FailedPrecondition("index state: does not match the collection's spec")
        if kind == "hnsw" and not isinstance(faiss.downcast_index(index.index), faiss.IndexHNSW):
            raise FailedPrecondition("index state: not an HNSW index")
        if isinstance(index, faiss.IndexIVFFlat) and index.nlist != out.params["nlist"]:
            raise FailedPrecondition("index state: nlist does not match the collection's spec")
        if isinstance(index, faiss.IndexIVFFlat):
            index.set_direct_map_type(faiss.DirectMap.Hashtable)
            index.cp.min_points_per_centroid = 1
        out._index = index
        out._tombstones = set(np.frombuffer(data, dtype="<i8", offset=head + size).tolist())
        return out
