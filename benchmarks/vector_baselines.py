"""Vector databases beside the search cases of `llmops bench embedding`: milvus-lite, chromadb
(in-process, and its own server through HTTP), usearch.

Each runs from a venv of its own (:mod:`benchmarks.baseline`) with one exactly pinned
release, and `vector_baselines_harness.py` measures it there on the bench's vectors (config
key ``system`` picks which). Pinned exactly so that the numbers are comparable run to run;
bump deliberately (a venv is rebuilt when its marker does not match ``version``). The
versions are the newest on PyPI when this was written that install on Python 3.11 here.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.baseline import Baseline

HARNESS = Path(__file__).resolve().with_name("vector_baselines_harness.py")
_VERSION_OF = "from importlib.metadata import version as v; print("

MILVUS_LITE_VERSION = "3.2.2"
PYMILVUS_VERSION = "3.0.2"
"""The pymilvus pip resolves beside milvus-lite 3.2.2 (milvus-lite itself does not pin one;
pymilvus finds milvus-lite through ``milvus_lite.server_manager`` for ``.db`` URIs)."""
CHROMADB_VERSION = "1.5.9"
USEARCH_VERSION = "2.26.6"

MILVUS_LITE = Baseline(
    name="milvus-lite",
    requirement=f"milvus-lite=={MILVUS_LITE_VERSION}",
    extra_requirements=(f"pymilvus=={PYMILVUS_VERSION}",),
    version=f"{MILVUS_LITE_VERSION}+pymilvus-{PYMILVUS_VERSION}",
    probe=_VERSION_OF + "v('milvus-lite') + '+pymilvus-' + v('pymilvus'))",
    harness=HARNESS,
    install_timeout_s=900,
    run_timeout_s=3600,
)
CHROMADB = Baseline(
    name="chromadb",
    requirement=f"chromadb=={CHROMADB_VERSION}",
    version=CHROMADB_VERSION,
    probe=_VERSION_OF + "v('chromadb'))",
    harness=HARNESS,
    install_timeout_s=900,
    run_timeout_s=3600,
)
USEARCH = Baseline(
    name="usearch",
    requirement=f"usearch=={USEARCH_VERSION}",
    version=USEARCH_VERSION,
    probe=_VERSION_OF + "v('usearch'))",
    harness=HARNESS,
    install_timeout_s=600,
    run_timeout_s=3600,
)
BASELINES = (MILVUS_LITE, CHROMADB, USEARCH)
"""The venvs."""
SYSTEMS: tuple[tuple[str, Baseline], ...] = (
    ("milvus-lite", MILVUS_LITE),
    ("chromadb", CHROMADB),
    ("chromadb-server", CHROMADB),
    ("usearch", USEARCH),
)
"""The systems measured, in order, and the venv each runs in (config ``system`` of the
harness): ``chromadb-server`` is chromadb's own server (``chroma run``, shipped in the same
pip package) started by the harness in the chromadb venv, with ``chromadb.HttpClient``."""
