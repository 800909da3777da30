"""How a sink turns a batch of pending events into rows: two converters, one per path.

* :func:`python_rows` — every column read from the decoded events in Python
  (:mod:`llmops.clickhouse.rows`); works with every store.
* :func:`protobuf_rows` — the tables of :data:`llmops.clickhouse.protobuf_rows.KIND_SPECS`
  (predictions) from the records' bytes, parsed and derived by ClickHouse; the rest, and
  the payload rows of the predictions that carry one, as in :func:`python_rows`. Needs a
  store that takes protobuf blocks (:class:`~llmops.clickhouse.base.ProtobufInsertStore`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from llmops.clickhouse.base import ClickHouseStore, ProtobufInsertStore
from llmops.clickhouse.protobuf_rows import KIND_SPECS
from llmops.clickhouse.rows import columns_for, has_payload, payload_columns
from llmops.sink.worker import BulkPath, Converter, Item, Rows


def python_rows(items: Sequence[Item]) -> Mapping[str, Rows]:
    return columns_for([item[:4] for item in items])


def protobuf_rows(items: Sequence[Item]) -> Mapping[str, Rows]:
    raw: dict[str, list[Item]] = {}
    rest: list[Item] = []
    for item in items:
        kind = item[3].WhichOneof("event")
        if kind is not None and kind in KIND_SPECS:
            raw.setdefault(kind, []).append(item)
        else:
            rest.append(item)
    out: dict[str, Rows] = dict(python_rows(rest)) if rest else {}
    for raw_kind, group in raw.items():
        spec = KIND_SPECS[raw_kind]
        out[spec.table] = spec.block([(t, p, o, value) for t, p, o, _, value in group])
        if raw_kind == "prediction":
            paid = [i for i in group if has_payload(i[3].prediction)]
            if paid:
                out.update(_payload_rows(paid))
    return out


def _payload_rows(items: Sequence[Item]) -> Mapping[str, Rows]:
    """``prediction_payloads`` rows of predictions that carry a payload."""
    return {"prediction_payloads": payload_columns([i[:4] for i in items])}


ROW_PATHS = ("protobuf", "python")


def bulk_path_for(store: ClickHouseStore, rows_from: str, kind: str) -> BulkPath | None:
    """The bulk path for a sink of ``kind`` events, where there is one: ``protobuf`` rows, a
    store that takes (and screens) protobuf blocks, a kind whose table ClickHouse fills."""
    if rows_from != "protobuf" or not isinstance(store, ProtobufInsertStore):
        return None
    spec = KIND_SPECS.get(kind)
    if spec is None:
        return None
    return BulkPath(spec, _payload_rows if kind == "prediction" else lambda items: {})


def converter_for(store: ClickHouseStore, rows_from: str) -> Converter:
    """The converter of ``rows_from`` (``protobuf`` or ``python``); ``protobuf`` falls back
    to ``python`` for a store that cannot take protobuf blocks."""
    if rows_from not in ROW_PATHS:
        raise ValueError(f"sink rows come from one of {ROW_PATHS}, not {rows_from!r}")
    if rows_from == "protobuf" and isinstance(store, ProtobufInsertStore):
        return protobuf_rows
    return python_rows
