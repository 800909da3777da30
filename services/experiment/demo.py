"""Demo experiments of the travel storefront, so a newcomer's first ``Assign`` returns some.

Seeded by ``llmops up`` (``experiments.demo_data``: auto = embedded mode) into an *empty*
store only, after the service serves: two layers of ``user`` units, three experiments,
started. A store that holds anything (an operator's layer, an archived experiment) is left
as it is. The changes are audited like any other, as ``system:experiments``.
"""

from __future__ import annotations

import structlog

from llmops.v1 import common_pb2, experiment_pb2
from services.experiment import model
from services.experiment.catalog import Catalog
from services.experiment.lifecycle import SYSTEM, Change, Lifecycle

log = structlog.get_logger("llmops.experiment")

LAYERS = (
    experiment_pb2.Layer(
        name="search_ranking",
        unit_type="user",
        description="How search results are ordered (one ranking experiment at a time).",
    ),
    experiment_pb2.Layer(
        name="property_page",
        unit_type="user",
        description="What the property page shows beside the photos.",
    ),
    experiment_pb2.Layer(
        name="search_box",
        unit_type="session",
        description="How the search box reads and completes what shoppers type.",
    ),
    experiment_pb2.Layer(
        name="content_tools",
        unit_type="user",
        description="Generated content beside reviews and facts (highlights, translations).",
    ),
)


def _variant(
    key: str,
    weight: int,
    description: str,
    *,
    route: str = "",
    prompt: tuple[str, int] | None = None,
    params: dict[str, common_pb2.Value] | None = None,
    control: bool = False,
) -> experiment_pb2.Variant:
    payload = experiment_pb2.VariantPayload(model_route=route, params=params or {})
    if prompt is not None:
        payload.prompt.name, payload.prompt.version = prompt
    return experiment_pb2.Variant(
        key=key, weight=weight, description=description, is_control=control, payload=payload
    )


def _int(value: int) -> common_pb2.Value:
    return common_pb2.Value(int64_value=value)


EXPERIMENTS = (
    experiment_pb2.Experiment(
        id="search-ranking-model",
        description="Does the two-tower retriever (optionally LLM-reranked) book more stays "
        "than the LightGBM ranker?",
        owner="search-team",
        unit_type="user",
        layer="search_ranking",
        traffic_bps=10_000,
        metrics=["booking", "click"],
        variants=[
            _variant(
                "lgbm_v3",
                50,
                "LightGBM learning-to-rank, today's ranker",
                route="rank-lgbm-v3",
                control=True,
            ),
            _variant(
                "two_tower",
                25,
                "two-tower retriever, 200 candidates",
                route="rank-two-tower-v1",
                params={"candidates": _int(200)},
            ),
            _variant(
                "two_tower_llm",
                25,
                "two-tower, top 20 reranked by an LLM",
                route="rank-two-tower-v1",
                params={"candidates": _int(200), "llm_rerank_top_k": _int(20)},
            ),
        ],
    ),
    experiment_pb2.Experiment(
        id="property-summary-prompt",
        description="A summary prompt that leads with three highlights, against v3.",
        owner="content-team",
        unit_type="user",
        layer="property_page",
        traffic_bps=6_000,
        metrics=["booking", "thumbs_up"],
        variants=[
            _variant(
                "prompt_v3",
                50,
                "property summary prompt v3 (a paragraph)",
                route="summary-small",
                prompt=("property-summary", 3),
                control=True,
            ),
            _variant(
                "prompt_v4_highlights",
                50,
                "prompt v4: three highlights, then a paragraph",
                route="summary-small",
                prompt=("property-summary", 4),
                params={"max_highlights": _int(3)},
            ),
        ],
    ),
    experiment_pb2.Experiment(
        id="review-digest",
        description="An LLM digest of recent reviews instead of the three newest reviews.",
        owner="content-team",
        unit_type="user",
        layer="property_page",
        traffic_bps=4_000,
        metrics=["booking", "dwell_s"],
        variants=[
            _variant(
                "newest_reviews",
                50,
                "the three newest reviews, as today",
                params={"reviews_shown": _int(3)},
                control=True,
            ),
            _variant(
                "llm_digest",
                50,
                "a digest of the last 50 reviews",
                route="summary-small",
                prompt=("review-digest", 1),
                params={"reviews_read": _int(50)},
            ),
        ],
    ),
)


def _double(value: float) -> common_pb2.Value:
    return common_pb2.Value(double_value=value)


TASK_EXPERIMENTS = (
    experiment_pb2.Experiment(
        id="query-intent-prompt",
        description="Does a few-shot intent prompt route more searches to a clicked result?",
        owner="search-team", unit_type="session", layer="search_box", traffic_bps=5_000,
        metrics=["click"],
        variants=[
            _variant("zero_shot", 50, "query-intent v1, zero-shot", route="chat-small",
                     prompt=("query-intent", 1), control=True),
            _variant("few_shot", 50, "query-intent v2, two examples", route="chat-small",
                     prompt=("query-intent", 2)),
        ],
    ),
    experiment_pb2.Experiment(
        id="search-suggestions-k",
        description="Three or five listing suggestions under the search box?",
        owner="search-team", unit_type="session", layer="search_box", traffic_bps=5_000,
        metrics=["suggestion_click"],
        variants=[
            _variant("three", 50, "3 suggestions", params={"k": _int(3)}, control=True),
            _variant("five", 50, "5 suggestions", params={"k": _int(5)}),
        ],
    ),
    experiment_pb2.Experiment(
        id="property-highlights-count",
        description="Three or five generated highlights on the property page?",
        owner="content-team", unit_type="user", layer="content_tools", traffic_bps=5_000,
        metrics=["highlight_click", "booking"],
        variants=[
            _variant("three", 50, "3 highlights", route="summary-small",
                     params={"max_highlights": _int(3)}, control=True),
            _variant("five", 50, "5 highlights", route="summary-small",
                     params={"max_highlights": _int(5)}),
        ],
    ),
    experiment_pb2.Experiment(
        id="review-translation-sampling",
        description="Greedy or lightly sampled review translations?",
        owner="content-team", unit_type="user", layer="content_tools", traffic_bps=5_000,
        metrics=["translation_helpful"],
        variants=[
            _variant("greedy", 50, "temperature 0", route="chat-small",
                     params={"temperature": _double(0.0)}, control=True),
            _variant("sampled", 50, "temperature 0.3, seed 7", route="chat-small",
                     params={"temperature": _double(0.3), "seed": _int(7)}),
        ],
    ),
)  # fmt: skip
"""One per storefront task of the inference service (deploy/tasks/storefront.yaml)."""


async def seed_if_empty(catalog: Catalog, lifecycle: Lifecycle) -> bool:
    """Create and start the demo layers and experiments if the store holds nothing; True
    when it seeded."""
    await catalog.refresh()
    if not catalog.empty:
        log.info("demo_experiments_skipped", reason="the experiment store is not empty")
        return False
    change = Change(reason="demo data (experiments.demo_data)", actor=SYSTEM)
    for layer in LAYERS:
        await lifecycle.create_layer(layer, change)
    for exp in (*EXPERIMENTS, *TASK_EXPERIMENTS):
        created = await lifecycle.create(exp, change)
        await lifecycle.transition(created.id, created.version, model.RUNNING, change)
    log.info(
        "demo_experiments_seeded",
        layers=[layer.name for layer in LAYERS],
        experiments=[exp.id for exp in (*EXPERIMENTS, *TASK_EXPERIMENTS)],
    )
    return True
