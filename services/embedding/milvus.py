"""A vector collection stored in Milvus, behind the same API as ``VectorCollection``.

``MilvusCollection`` has ``VectorCollection``'s public methods, signatures and semantics
(string ids of at most 256 bytes, overwrite on upsert, everything validated before anything
is written, higher-is-better scores, metadata filters with the same meaning), so the service
can hold either; it is for collections that outgrow one replica's memory (see "Sizing").
The vectors, metadata and indexes live in Milvus: a server (``http://host:19530``) in
production, or milvus-lite (a ``.db`` path: the same client API and gRPC protocol, served
in-process) in embedded mode and tests. Pure domain otherwise: no gRPC of our own, and
errors are the project's typed errors (``Unavailable`` when Milvus cannot be reached).

Differences, by design:

- **Filters.** Milvus evaluates filters itself, from an expression string, so ``search``
  and ``delete_where`` take the contract's ``common_pb2.Filter`` (validated like
  ``compile_filter`` does, then compiled by ``milvus_filters.compile_milvus_filter``). They
  also accept a ``CompiledFilter``, but only an empty one (``MATCH_ALL``): a compiled
  filter is an in-memory matcher over FAISS ids and cannot be sent to Milvus; the service
  passes the proto to a Milvus collection.
- **Row layout** (``milvus_filters.MilvusLayout``): ``id`` VARCHAR(256) primary key,
  ``vector`` FLOAT_VECTOR, one nullable typed column per declared metadata field (INT64,
  DOUBLE, VARCHAR, BOOL with an INVERTED index each, so filters use Milvus's typed columns;
  ARRAY of those for list types), ``present`` (which declared fields an item has) and
  ``extra`` (JSON, the undeclared keys). At most 60 declared fields (Milvus's default
  limit is 64 columns). Milvus-specific limits, refused with ``InvalidArgument``: metadata
  floats must be finite (Milvus's JSON and double columns hold no NaN / infinity), strings
  of declared fields at most 65,535 UTF-8 bytes, lists at most 4,096 elements, the
  undeclared keys at most 65,536 bytes of JSON.
- **Indexes** (Milvus builds and searches them): ``flat`` -> FLAT, ``ivf_flat`` ->
  IVF_FLAT (``nlist``; search ``nprobe``, clipped to ``nlist`` as FAISS does), ``hnsw`` ->
  HNSW (``m`` -> ``M``, ``ef_construction`` -> ``efConstruction``; search ``ef_search`` ->
  ``ef``, raised to ``k`` since Milvus refuses ``ef < k``). milvus-lite 3.x serves all
  three with FAISS; Milvus trains IVF itself and searches small segments exactly. Filtered
  search is Milvus's own (a bitset pre-filter inside the index search), so there is no
  exact-subset path or widening retry here.
- **Scores.** Metrics: cosine -> COSINE (vectors are L2-normalised on write and query, as
  in ``VectorCollection``, so ``get`` returns the same vectors), dot -> IP, l2 -> L2.
  Milvus returns similarities for COSINE / IP (the score as is) and the *squared*
  Euclidean distance for L2 (it skips the square root, like FAISS): the score is its
  negation, the same number ``VectorCollection`` reports.
- **Consistency.** Collections are created with consistency level Strong: every read sees
  every acknowledged write (Milvus's default, Bounded, would not). ``lock`` serialises this
  process's calls on a collection, as milvus-lite requires for writes; counts returned by
  ``delete_ids`` / ``delete_where`` are what existed when they looked (another replica
  writing meanwhile can change that).
- **Durability** is Milvus's: no write-ahead log or snapshots here. ``export_state`` /
  ``from_state`` raise ``FailedPrecondition`` (a Milvus collection is backed up with
  Milvus's own tools), ``rebuild`` is a no-op (Milvus compacts segments itself),
  ``stats().memory_bytes`` is 0 (nothing is held on this replica) and ``device`` "milvus".
- **Creation.** ``MilvusCollection.open(spec, client)`` creates the Milvus collection when
  it is absent and records the spec in its properties (``llmops.collection_spec``); an
  existing one must carry the same spec (else ``FailedPrecondition``), so a replica
  never reads a collection laid out for another definition.
- pymilvus's own ``get(ids=...)`` / ``delete(ids=...)`` paste string ids into an
  expression unescaped: ids go through ``milvus_filters.string_literal`` here instead.

Sizing: when to move a collection to Milvus
-------------------------------------------

A FAISS collection (``VectorCollection``) holds everything in the replica's memory. Per
item, for the served 384-d model (float32):

- the vector: 384 x 4 B = **1,536 B**;
- the index: flat / IVF add an id map, ~40 B; HNSW (``m`` = 32, our default) adds its
  level-0 links, 2m = 64 neighbours x 4 B (FAISS stores int32 neighbour ids, not 8-byte
  ones) = 256 B, upper levels (~1/m of the nodes, m links each) and bookkeeping ~20 B:
  ~1,850 B in all (``VectorIndex.memory_bytes`` says 1,852);
- the string id (kept in both id maps) and the metadata dict with its inverted-index
  postings: Python objects, far above their raw bytes.

Measured (RSS growth of a process filling a ``VectorCollection``: HNSW m = 32, 384-d,
20-byte ids, the demo's six metadata fields: three strings, one int, two doubles):

| items | steady, per item | during ``export_state`` (snapshot), per item |
|-------|------------------|----------------------------------------------|
| 50 k, no metadata | 2.7 KB | 4.6 KB |
| 50 k | 3.9 KB | 5.9 KB |
| 200 k | 3.4 KB | 5.5 KB |

The snapshot peak (``Snapshot`` serialises the index and the metadata in memory before
writing them; start-up loads a snapshot the same way) is what bounds a replica: budget
**~5.5 KB an item**. A 16 GiB replica, less ~1.5 GiB for the runtime, the encoder and
gRPC buffers, holds 14.5 GiB / 5.5 KB = 15.6e9 / 5,632 = **~2.8 M items** at the peak
(~4.5 M at 3.4 KB if it never snapshotted); keeping ~30 % headroom for growth between
reviews: **~2 M items a 16 GiB replica, ~135 k a GiB**. The dimension scales the 1.5 KB
vector and the rest does not: 768-d is ~7 KB an item at the peak, so ~1.5 M. (The bare
HNSW index of ~1,850 B an item would fit ~8 M vectors in the same memory: what Milvus,
which holds no Python objects per item, serves from a query node of that size.)

Move a collection to Milvus when any of these holds:

- it will exceed **~2 M items** (384-d) on a 16 GiB replica (scale with memory and
  dimension as above);
- several replicas must serve one collection with read-your-writes across them (a FAISS
  collection is one replica's: replicas do not share writes);
- start-up time matters: a FAISS replica loads its snapshot and replays the write-ahead
  log past it, and every replayed upsert is re-inserted into HNSW (~1,200 items/s on
  2 vCPUs at 384-d, m = 32: 200 k items took ~170 s), so a large, busy collection restarts
  slowly unless snapshotted often;
- the data must survive the replica's disk (Milvus keeps segments in object storage).

Below that stay on FAISS: one in-process call with no network hop (Milvus adds a gRPC
round trip, ~1 ms in a cluster) and an exact subset search for selective filters.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt

from llmops.errors import FailedPrecondition, InvalidArgument, Unavailable
from llmops.v1 import common_pb2
from services.embedding.collection import (
    MAX_ID_BYTES,
    MAX_K,
    MAX_UPSERT_ITEMS,
    CollectionSpec,
    CollectionStats,
    Hit,
    StoredItem,
    check_ids,
    check_query,
    check_vectors,
    validate_spec,
)
from services.embedding.filters import CompiledFilter, key_path, validate_metadata
from services.embedding.index import validate_index_params, validate_search_params
from services.embedding.milvus_filters import (
    EXTRA_FIELD,
    ID_FIELD,
    PRESENT_FIELD,
    VECTOR_FIELD,
    MilvusExpr,
    MilvusLayout,
    compile_milvus_filter,
    string_literal,
)

__all__ = [
    "MAX_DECLARED_FIELDS",
    "SPEC_PROPERTY",
    "MilvusCollection",
    "connect",
    "embedded_uri",
]

VT = common_pb2.ValueType
T = TypeVar("T")

MAX_DECLARED_FIELDS: Final = 60
"""Declared metadata fields of a Milvus collection: Milvus allows 64 columns, we use 4."""
MAX_VARCHAR_BYTES: Final = 65_535
MAX_ARRAY_CAPACITY: Final = 4_096
MAX_EXTRA_JSON_BYTES: Final = 65_536
SPEC_PROPERTY: Final = "llmops.collection_spec"
"""Collection property holding the ``CollectionSpec`` (JSON) the collection was made for."""
IDS_PER_CALL: Final = 1_000
"""Ids per expression of a get / delete by ids (bounds the expression's size)."""

_INDEX_TYPES: Final = {"flat": "FLAT", "ivf_flat": "IVF_FLAT", "hnsw": "HNSW"}
_METRIC_TYPES: Final = {"cosine": "COSINE", "dot": "IP", "l2": "L2"}
_COUNT: Final = "count(*)"
_MESSAGE_CHARS: Final = 300
_CONNECT_FAILED: Final = 2  # pymilvus's code when no channel could be opened


# --------------------------------------------------------------------------------------------
# Connecting


def _pymilvus() -> Any:
    # Imported on first use: the service runs (FAISS collections) without pymilvus installed.
    try:
        import pymilvus  # type: ignore[import-untyped]
    except ImportError:
        raise FailedPrecondition(
            "the Milvus backend needs pymilvus: pip install 'pymilvus[milvus-lite]'"
        ) from None
    return pymilvus


def embedded_uri(state_dir: Path) -> str:
    """The milvus-lite database of embedded mode: ``<state_dir>/embedding/milvus.db``."""
    return str(state_dir / "embedding" / "milvus.db")


def _redacted(uri: str) -> str:
    """``uri`` without credentials (``http://user:password@host``), for messages."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def connect(uri: str, *, token: str = "", timeout_s: float = 10.0) -> Any:
    """A ``pymilvus.MilvusClient`` for ``uri``.

    ``uri`` is a Milvus server (``http://host:19530``, ``https://...``) or a milvus-lite
    database path ending in ``.db`` (its folder is created), served in this process.
    ``token`` is ``user:password`` or an API key; ``timeout_s`` bounds every call. Raises
    ``Unavailable`` when Milvus cannot be reached, ``InvalidArgument("milvus_uri")`` for a
    URI that is neither.
    """
    pymilvus = _pymilvus()
    if not uri.startswith(("http://", "https://", "tcp://", "unix:")):
        if not uri.endswith(".db"):
            raise InvalidArgument(
                "milvus_uri", "must be http(s)://host:port or a milvus-lite path ending in .db"
            )
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    try:
        return pymilvus.MilvusClient(uri=uri, token=token, timeout=timeout_s)
    except pymilvus.MilvusException as e:
        raise Unavailable(f"cannot reach Milvus at {_redacted(uri)}: {_message(e)}") from None


def _message(e: Any) -> str:
    text = str(getattr(e, "message", "") or e)
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS] + "..."


def _call(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` with pymilvus's errors as the project's typed errors."""
    pymilvus = _pymilvus()
    try:
        return fn(*args, **kwargs)
    except pymilvus.MilvusException as e:
        unavailable = (
            pymilvus.exceptions.ConnectError,
            pymilvus.exceptions.MilvusUnavailableException,
        )
        if isinstance(e, unavailable) or e.code == _CONNECT_FAILED or e.retriable:
            raise Unavailable(f"Milvus {what} failed: {_message(e)}") from None
        # Requests are validated before they are sent: a refusal means the collection in
        # Milvus is not what this service expects (changed or dropped behind its back).
        raise FailedPrecondition(f"Milvus refused {what}: {_message(e)}") from None


def _normalized(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Rows scaled to unit L2 norm in float32 (as FAISS's ``normalize_L2`` does)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float32))
    out: npt.NDArray[np.float32] = (x / norms[:, None]).astype(np.float32, copy=False)
    return out


def _not_finite(x: Any) -> bool:
    if isinstance(x, float):
        return not math.isfinite(x)
    return isinstance(x, list) and any(isinstance(e, float) and not math.isfinite(e) for e in x)


def _check_milvus_metadata(meta: Mapping[str, Any], layout: MilvusLayout, where: str) -> None:
    """What Milvus cannot store of an item's (schema-valid) metadata (module doc)."""
    extra: dict[str, Any] = {}
    for key, x in meta.items():
        path = key_path(where, key)
        if _not_finite(x):
            raise InvalidArgument(path, "must be finite: Milvus stores no NaN or infinity")
        if key not in layout.schema:
            extra[key] = x
            continue
        if isinstance(x, list) and len(x) > MAX_ARRAY_CAPACITY:
            raise InvalidArgument(
                path, f"has {len(x)} elements, a Milvus collection at most {MAX_ARRAY_CAPACITY}"
            )
        for s in x if isinstance(x, list) else (x,):
            if isinstance(s, str) and len(s.encode("utf-8")) > MAX_VARCHAR_BYTES:
                raise InvalidArgument(
                    path, f"a string of a Milvus collection is at most {MAX_VARCHAR_BYTES} bytes"
                )
    if extra:
        size = len(json.dumps(extra, ensure_ascii=False).encode("utf-8"))
        if size > MAX_EXTRA_JSON_BYTES:
            raise InvalidArgument(
                where,
                f"the undeclared keys take {size} bytes of JSON, a Milvus collection at most "
                f"{MAX_EXTRA_JSON_BYTES} (declare the fields, or store less)",
            )


def _check_milvus_spec(spec: CollectionSpec) -> None:
    if len(spec.metadata_schema) > MAX_DECLARED_FIELDS:
        raise InvalidArgument(
            "collection.metadata_schema",
            f"a Milvus collection declares at most {MAX_DECLARED_FIELDS} fields, "
            f"got {len(spec.metadata_schema)}",
        )


def _spec_doc(spec: CollectionSpec) -> Any:
    """The spec as the JSON value recorded in (and compared with) the collection property."""
    return json.loads(json.dumps(asdict(spec), sort_keys=True))


# --------------------------------------------------------------------------------------------
# The collection


class MilvusCollection:
    """One collection stored in Milvus (see the module doc); build it with ``open``."""

    def __init__(self, spec: CollectionSpec, client: Any, milvus_name: str) -> None:
        """Wrap an existing Milvus collection laid out for ``spec`` (``open`` checks that)."""
        validate_spec(spec)
        _check_milvus_spec(spec)
        self.spec = spec
        self.client = client
        """The ``pymilvus.MilvusClient`` (thread-safe; may be shared by collections)."""
        self.milvus_name = milvus_name
        self.lock = threading.RLock()
        """Taken by every public method; reentrant so a caller can group several calls."""
        self.layout = MilvusLayout.of(spec.metadata_schema)
        self._index_params = validate_index_params(spec.index_kind, spec.index_params)
        self._metric = _METRIC_TYPES[spec.metric]

    @classmethod
    def open(cls, spec: CollectionSpec, client: Any, *, name_prefix: str = "") -> MilvusCollection:
        """The collection ``name_prefix + spec.name`` in Milvus, created (with its index,
        loaded) when absent. Raises ``FailedPrecondition`` when it exists with another spec
        or was not created by this service, ``InvalidArgument`` for a spec Milvus cannot
        hold, ``Unavailable`` when Milvus cannot be reached."""
        out = cls(spec, client, name_prefix + spec.name)
        with out.lock:
            if not _call("has_collection", client.has_collection, out.milvus_name):
                try:
                    out._create()
                except FailedPrecondition:
                    # Another replica may have created it first: then check that one.
                    if not _call("has_collection", client.has_collection, out.milvus_name):
                        raise
            out._check_spec()
            _call("load_collection", client.load_collection, out.milvus_name)
        return out

    def _create(self) -> None:
        pymilvus = _pymilvus()
        dt = pymilvus.DataType
        scalar: dict[int, Any] = {
            VT.VALUE_TYPE_INT64: dt.INT64,
            VT.VALUE_TYPE_DOUBLE: dt.DOUBLE,
            VT.VALUE_TYPE_STRING: dt.VARCHAR,
            VT.VALUE_TYPE_BOOL: dt.BOOL,
        }
        element: dict[int, Any] = {
            VT.VALUE_TYPE_INT64_LIST: dt.INT64,
            VT.VALUE_TYPE_DOUBLE_LIST: dt.DOUBLE,
            VT.VALUE_TYPE_STRING_LIST: dt.VARCHAR,
            VT.VALUE_TYPE_BOOL_LIST: dt.BOOL,
        }
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID_FIELD, dt.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
        schema.add_field(VECTOR_FIELD, dt.FLOAT_VECTOR, dim=self.spec.dimension)
        for name, col in self.layout.columns.items():
            value_type = self.layout.schema[name]
            if value_type in scalar:
                extra_args = (
                    {"max_length": MAX_VARCHAR_BYTES} if scalar[value_type] == dt.VARCHAR else {}
                )
                schema.add_field(col, scalar[value_type], nullable=True, **extra_args)
            else:
                el = element[value_type]
                extra_args = {"max_length": MAX_VARCHAR_BYTES} if el == dt.VARCHAR else {}
                schema.add_field(
                    col,
                    dt.ARRAY,
                    element_type=el,
                    max_capacity=MAX_ARRAY_CAPACITY,
                    nullable=True,
                    **extra_args,
                )
        schema.add_field(
            PRESENT_FIELD,
            dt.ARRAY,
            element_type=dt.INT64,
            max_capacity=max(1, len(self.layout.columns)),
        )
        schema.add_field(EXTRA_FIELD, dt.JSON)

        index_params = self.client.prepare_index_params()
        index_params.add_index(
            field_name=VECTOR_FIELD,
            index_type=_INDEX_TYPES[self.spec.index_kind],
            metric_type=self._metric,
            # As the "params" JSON entry (pymilvus's older wire form): Milvus reads it and
            # flattened keys alike, milvus-lite only this form.
            params={"params": self._build_params()},
        )
        # Declared fields are what filters read: an inverted index each keeps a filter from
        # scanning the column (Milvus's equivalent of MetadataIndex). Not on list fields:
        # milvus-lite refuses scalar indexes on ARRAY columns (there they are scanned).
        for name, col in self.layout.columns.items():
            if self.layout.schema[name] in scalar:
                index_params.add_index(field_name=col, index_type="INVERTED")
        _call(
            "create_collection",
            self.client.create_collection,
            self.milvus_name,
            schema=schema,
            consistency_level="Strong",
            properties={SPEC_PROPERTY: json.dumps(_spec_doc(self.spec), sort_keys=True)},
        )
        # Not through create_collection(index_params=): pymilvus then polls each index's
        # build every 0.5 s; on an empty collection there is nothing to wait for (``open``
        # checks the vector index exists, then loads).
        _call("create_index", self.client.create_index, self.milvus_name, index_params, sync=False)

    def _build_params(self) -> dict[str, int]:
        p = self._index_params
        if self.spec.index_kind == "ivf_flat":
            return {"nlist": p["nlist"]}
        if self.spec.index_kind == "hnsw":
            return {"M": p["m"], "efConstruction": p["ef_construction"]}
        return {}

    def _check_spec(self) -> None:
        info = _call("describe_collection", self.client.describe_collection, self.milvus_name)
        recorded = (info.get("properties") or {}).get(SPEC_PROPERTY)
        if recorded is None:
            raise FailedPrecondition(
                f"the Milvus collection {self.milvus_name!r} exists but was not created by "
                "the embedding service (it has no collection spec): drop or rename it"
            )
        try:
            same = json.loads(recorded) == _spec_doc(self.spec)
        except ValueError:
            same = False
        if not same:
            raise FailedPrecondition(
                f"the Milvus collection {self.milvus_name!r} exists with another definition"
            )
        # A creation that failed half-way (e.g. Milvus went away) can leave it index-less.
        if VECTOR_FIELD not in _call("list_indexes", self.client.list_indexes, self.milvus_name):
            raise FailedPrecondition(
                f"the Milvus collection {self.milvus_name!r} has no index on {VECTOR_FIELD!r}: "
                "its creation did not finish; drop it and create the collection again"
            )

    def drop(self) -> None:
        """Drop the Milvus collection and everything in it."""
        with self.lock:
            _call("drop_collection", self.client.drop_collection, self.milvus_name)

    # ----------------------------------------------------------------------------------------
    # Counts

    @property
    def item_count(self) -> int:
        with self.lock:
            return self._count("")

    def __len__(self) -> int:
        return self.item_count

    def _count(self, expr: str) -> int:
        rows = _call(
            "count", self.client.query, self.milvus_name, filter=expr, output_fields=[_COUNT]
        )
        return int(rows[0][_COUNT]) if rows else 0

    # ----------------------------------------------------------------------------------------
    # Writes

    def upsert(
        self,
        ids: Sequence[str],
        vectors: npt.NDArray[np.floating[Any]] | Sequence[Any],
        metadata: Sequence[Mapping[str, Any]],
    ) -> int:
        """Insert or replace items; returns how many were written.

        Validated as ``VectorCollection.upsert`` validates (at most 1000 items, unique ids
        of at most 256 UTF-8 bytes, finite vectors of the collection's dimension, non-zero
        for cosine, metadata matching the schema) plus Milvus's limits (module doc), all
        before anything is sent. An existing id is replaced whole (Milvus upsert).
        """
        x, metas = self._checked(ids, vectors, metadata)
        if not len(ids):
            return 0
        if self.spec.metric == "cosine":
            x = _normalized(x)
        rows = [self._row(s, x[i], metas[i]) for i, s in enumerate(ids)]
        with self.lock:
            _call("upsert", self.client.upsert, self.milvus_name, rows)
        return len(ids)

    def check_upsert(
        self,
        ids: Sequence[str],
        vectors: npt.NDArray[np.floating[Any]] | Sequence[Any],
        metadata: Sequence[Mapping[str, Any]],
    ) -> None:
        """Raise what ``upsert`` would raise for these items, writing nothing."""
        self._checked(ids, vectors, metadata)

    def _checked(
        self,
        ids: Sequence[str],
        vectors: npt.NDArray[np.floating[Any]] | Sequence[Any],
        metadata: Sequence[Mapping[str, Any]],
    ) -> tuple[npt.NDArray[np.float32], list[dict[str, Any]]]:
        n = len(ids)
        if n > MAX_UPSERT_ITEMS:
            raise InvalidArgument("items", f"at most {MAX_UPSERT_ITEMS} items per call, got {n}")
        if len(metadata) != n:
            raise InvalidArgument("items", f"{n} ids but {len(metadata)} metadata maps")
        check_ids(ids)
        x = check_vectors(self.spec, vectors, n)
        schema = self.spec.metadata_schema
        metas = []
        for i, m in enumerate(metadata):
            where = f"items[{i}].metadata"
            meta = validate_metadata(m, schema, where)
            _check_milvus_metadata(meta, self.layout, where)
            metas.append(meta)
        return x, metas

    def _row(self, item_id: str, vector: npt.NDArray[np.float32], meta: dict[str, Any]) -> Any:
        row: dict[str, Any] = {ID_FIELD: item_id, VECTOR_FIELD: vector.tolist()}
        row.update(dict.fromkeys(self.layout.columns.values()))
        present: list[int] = []
        extra: dict[str, Any] = {}
        for key, value in meta.items():
            col = self.layout.columns.get(key)
            if col is None:
                extra[key] = value
            else:
                row[col] = value
                present.append(self.layout.slots[key])
        row[PRESENT_FIELD] = sorted(present)
        row[EXTRA_FIELD] = extra
        return row

    def delete_ids(self, ids: Sequence[str]) -> int:
        """Delete items by id; unknown ids are ignored. Returns how many were deleted."""
        unique = [s for s in dict.fromkeys(ids) if isinstance(s, str) and s]
        deleted = 0
        with self.lock:
            for start in range(0, len(unique), IDS_PER_CALL):
                # Milvus's delete reports the ids it was given, known or not: count first.
                expr = self._ids_expr(unique[start : start + IDS_PER_CALL])
                found = self._count(expr)
                if found:
                    _call("delete", self.client.delete, self.milvus_name, filter=expr)
                    deleted += found
        return deleted

    def delete_where(self, where: common_pb2.Filter | CompiledFilter) -> int:
        """Delete the items matching a (non-empty) filter. Returns how many were deleted.

        ``where`` is the contract's Filter (a ``CompiledFilter`` only when empty, which is
        refused like any empty filter).
        """
        compiled = self._compile(where)
        if compiled.is_empty:
            raise InvalidArgument(
                "filter", "must not be empty (DropCollection deletes a whole collection)"
            )
        if compiled.matches_none:
            return 0
        with self.lock:
            found = self._count(compiled.expr)
            if found:
                _call("delete", self.client.delete, self.milvus_name, filter=compiled.expr)
            return found

    def rebuild(self) -> None:
        """Nothing to do: Milvus compacts its segments and rebuilds their indexes itself."""

    # ----------------------------------------------------------------------------------------
    # Reads

    def _compile(self, f: common_pb2.Filter | CompiledFilter | None) -> MilvusExpr:
        if f is None:
            return MilvusExpr("", matches_all=True, is_empty=True)
        if isinstance(f, CompiledFilter):
            if f.is_empty:
                return MilvusExpr("", matches_all=True, is_empty=True)
            raise TypeError(
                "a Milvus collection filters in Milvus: pass the contract's Filter, "
                "not a CompiledFilter"
            )
        return compile_milvus_filter(f, self.layout)

    def _ids_expr(self, ids: Sequence[str]) -> str:
        # Escaped here: pymilvus's get(ids=) / delete(ids=) would paste ids in raw.
        return f"{ID_FIELD} in [{', '.join(string_literal(s) for s in ids)}]"

    def _output_fields(self, metadata: bool, vectors: bool) -> list[str]:
        fields = [ID_FIELD]
        if metadata:
            fields += [*self.layout.columns.values(), PRESENT_FIELD, EXTRA_FIELD]
        if vectors:
            fields.append(VECTOR_FIELD)
        return fields

    def _search_knobs(self, params: Mapping[str, int], k: int) -> dict[str, int]:
        p = self._index_params
        if self.spec.index_kind == "ivf_flat":
            return {"nprobe": min(params.get("nprobe", p["nprobe"]), p["nlist"])}
        if self.spec.index_kind == "hnsw":
            return {"ef": max(params.get("ef_search", p["ef_search"]), k)}
        return {}

    def search(
        self,
        query: npt.ArrayLike,
        k: int,
        filter: common_pb2.Filter | CompiledFilter | None = None,
        params: Mapping[str, Any] | None = None,
        include_metadata: bool = False,
        include_vectors: bool = False,
        min_score: float | None = None,
    ) -> list[Hit]:
        """The k items nearest to ``query`` (d,), best first, restricted by ``filter``.

        As ``VectorCollection.search``, except that ``filter`` is the contract's Filter
        (module doc). ``params`` are ``nprobe`` (ivf_flat) / ``ef_search`` (hnsw); hits
        scoring below ``min_score`` are dropped.
        """
        if not 1 <= k <= MAX_K:
            raise InvalidArgument("k", f"must be in [1, {MAX_K}], got {k}")
        q = check_query(self.spec, query)
        sp = validate_search_params(self.spec.index_kind, params or {})
        compiled = self._compile(filter)
        if compiled.matches_none:
            return []
        if self.spec.metric == "cosine":
            q = _normalized(q[None, :])[0]
        with self.lock:
            result = _call(
                "search",
                self.client.search,
                self.milvus_name,
                data=[q.tolist()],
                anns_field=VECTOR_FIELD,
                limit=k,
                filter=compiled.expr,
                output_fields=self._output_fields(include_metadata, include_vectors),
                search_params={"metric_type": self._metric, "params": self._search_knobs(sp, k)},
            )
        hits: list[Hit] = []
        for h in result[0] if result else []:
            distance = float(h["distance"])
            # Milvus's L2 is the squared distance, smaller is better: negate (module doc).
            score = -distance if self.spec.metric == "l2" else distance
            if min_score is not None and score < min_score:
                continue
            entity = h["entity"]
            hits.append(
                Hit(
                    id=str(h["id"]),
                    score=score,
                    metadata=self._metadata(entity) if include_metadata else None,
                    vector=np.asarray(entity[VECTOR_FIELD], dtype=np.float32)
                    if include_vectors
                    else None,
                )
            )
        hits.sort(key=lambda hit: -hit.score)  # stable: Milvus's order among equal scores
        return hits

    def _metadata(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """An item's metadata from its row: present declared fields, then the undeclared."""
        present = set(row.get(PRESENT_FIELD) or ())
        out: dict[str, Any] = {}
        for name, col in self.layout.columns.items():
            if self.layout.slots[name] in present:
                out[name] = _plain(row.get(col), self.layout.schema[name])
        extra = row.get(EXTRA_FIELD) or {}
        if isinstance(extra, str | bytes):  # some pymilvus versions hand JSON back as text
            extra = json.loads(extra)
        out.update(extra)
        return out

    def get(self, ids: Sequence[str]) -> list[StoredItem]:
        """The stored items of the given ids, in request order; unknown ids are skipped."""
        wanted = [s for s in dict.fromkeys(ids) if isinstance(s, str) and s]
        rows: dict[str, Any] = {}
        with self.lock:
            for start in range(0, len(wanted), IDS_PER_CALL):
                chunk = wanted[start : start + IDS_PER_CALL]
                for row in _call(
                    "query",
                    self.client.query,
                    self.milvus_name,
                    filter=self._ids_expr(chunk),
                    output_fields=self._output_fields(True, True),
                    limit=len(chunk),
                ):
                    rows[str(row[ID_FIELD])] = row
        return [
            StoredItem(
                id=s,
                vector=np.asarray(rows[s][VECTOR_FIELD], dtype=np.float32),
                metadata=self._metadata(rows[s]),
            )
            for s in wanted
            if s in rows
        ]

    def stats(self) -> CollectionStats:
        """Item count (from Milvus); the index is Milvus's, so no memory on this replica."""
        return CollectionStats(
            item_count=self.item_count,
            deleted_count=0,
            memory_bytes=0,
            trained=True,
            device="milvus",
            tombstone_ratio=0.0,
        )

    # ----------------------------------------------------------------------------------------
    # State

    def export_state(self) -> dict[str, bytes]:
        """Refused: a Milvus collection is backed up with Milvus's own tools."""
        raise FailedPrecondition("snapshots of a Milvus collection are Milvus's own backups")

    @classmethod
    def from_state(
        cls, spec: CollectionSpec, state: Mapping[str, bytes], **_: Any
    ) -> MilvusCollection:
        """Refused, as ``export_state``."""
        raise FailedPrecondition("snapshots of a Milvus collection are Milvus's own backups")


def _plain(value: Any, value_type: int) -> Any:
    """A column's value as the plain value ``validate_metadata`` stored (types as declared)."""
    if value is None:
        return None
    if value_type == VT.VALUE_TYPE_DOUBLE:
        return float(value)
    if value_type == VT.VALUE_TYPE_INT64:
        return int(value)
    if value_type == VT.VALUE_TYPE_DOUBLE_LIST:
        return [float(e) for e in value]
    if value_type == VT.VALUE_TYPE_INT64_LIST:
        return [int(e) for e in value]
    if isinstance(value, list | tuple):
        return list(value)
    return value
