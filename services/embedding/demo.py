"""The demo storefront's property descriptions as a collection, for semantic search.

Seeded by ``llmops up`` (``embedding.demo_data``: auto = embedded mode) after the service
serves, when the collection does not exist yet: the first ``demo_properties`` properties of
the synthetic marketplace (``llmops.demo.data``, the ones the feature service seeds) with a
listing text each, embedded with the served model and upserted with their city, country,
type, stars, review score and tonight's price as filterable metadata. It goes through the
same path as any caller (validated, logged, audited).
"""

from __future__ import annotations

import structlog

from llmops.demo import data
from llmops.v1 import common_pb2
from services.embedding.collection import CollectionSpec
from services.embedding.vectors import NewItem, Vectors

log = structlog.get_logger("llmops.embedding")

COLLECTION = "property_descriptions"
T = common_pb2.ValueType
SCHEMA = {
    "city": T.VALUE_TYPE_STRING,
    "country": T.VALUE_TYPE_STRING,
    "property_type": T.VALUE_TYPE_STRING,
    "stars": T.VALUE_TYPE_INT64,
    "review_score": T.VALUE_TYPE_DOUBLE,
    "price_tonight": T.VALUE_TYPE_DOUBLE,
    "text": T.VALUE_TYPE_STRING,
}
"""Filterable metadata, and the listing ``text`` itself: a vector index keeps no text, and
retrieval for grounding (task runs) needs the passage back."""
BATCH = 100


async def seed_if_absent(vectors: Vectors, count: int) -> bool:
    """Create and fill the demo collection; False when it exists already."""
    if COLLECTION in vectors.names():
        return False
    info = vectors.embeddings.info
    if not info.dimension:
        log.warning("embedding_demo_skipped", reason="the embedding model is not available")
        return False
    await vectors.create(
        CollectionSpec(
            name=COLLECTION,
            dimension=info.dimension,
            metric="cosine",
            index_kind="flat",  # a few hundred listings: exact search is the fastest
            index_params={},
            metadata_schema=dict(SCHEMA),
            embedding_model=info.name,
            description="Listing texts of the demo storefront's properties (llmops up).",
        ),
        if_not_exists=True,
    )
    props = data.properties(count)
    texts = data.descriptions(props)
    content, stats = props["property_content"], props["property_stats"]
    price = props["property_pricing"]["price_tonight"]
    items = [
        NewItem(
            id=f"property-{key}",
            vector=None,
            text=texts[i],
            metadata={
                "city": content["city"][i],
                "country": content["country"][i],
                "property_type": content["property_type"][i],
                "stars": int(stats["stars"][i]),
                "review_score": float(stats["review_score"][i]),
                "price_tonight": float(price[i]),
                "text": texts[i],
            },
        )
        for i, key in enumerate(props.keys)
    ]
    for start in range(0, len(items), BATCH):
        await vectors.upsert(COLLECTION, items[start : start + BATCH])
    log.info("embedding_demo_data", collection=COLLECTION, items=len(items))
    return True
