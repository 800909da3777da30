"""Train the demo property ranker and export it to ONNX: ``models/property-ranker/``.

    python scripts/train_ranker.py            # writes models/property-ranker/model.{onnx,json}
    python scripts/train_ranker.py --out DIR  # somewhere else (the determinism test does this)

SYNTHETIC DATA. Nothing here is a real shopper's behaviour: the labels are drawn from a
generative story written below, on top of the synthetic marketplace of ``llmops.demo.data``.
The model can only ever be as good as that story; its metrics say the pipeline works (the
features reach the model, the ranking beats a trivial one), not that it would rank real
properties well.

The generative story (every draw from one ``numpy`` generator seeded with ``LABEL_SEED``):

1. The catalogue is the demo's: ``properties(2000, seed=7)`` (what ``llmops up`` seeds into
   the feature store), ``users(500, seed=11)`` and ``searches(6000, 500, seed=13)``.
2. A search page: the first-stage retrieval returns up to ``PAGE`` properties of the
   search's city, drawn uniformly without replacement (no position bias is modelled).
3. The shopper's utility for each candidate is a logistic model of the property's features
   (review score, review volume, 7-day conversion, free cancellation, discount, cancel rate,
   price relative to the city's median price tonight), plus what the ranker cannot see: a
   taste penalty ``|stars - preferred_stars|`` from the shopper's profile, a per-search
   offset (some shoppers click more) and per-candidate Gaussian noise.
4. A candidate the shopper cannot book (no rooms left, or ``min_nights`` above the search's
   nights) gets label 0. Otherwise label = Bernoulli(sigmoid(utility)): "clicked through to
   book". About one candidate in twenty is positive.

The ranker sees only the numeric and boolean features the ``property_ranking_v1`` feature
service serves (``FEATURES``: strings, lists and the city are not inputs), with monotonic
constraints where the product demands them (a better review never ranks lower). Searches are
split 70/15/15 into train/validation/test with a fixed seed (a search's whole page stays in one
split); validation picks the number of boosting rounds, the test split is only measured, once,
on the exported ONNX model run by onnxruntime (what the service runs), next to two trivial
rankings (by review score, by cheapest in city) on the same pages.

Deterministic: the same inputs give a byte-identical ``model.onnx`` and ``model.json`` (no
timestamps, no random graph names, one thread). scikit-learn and skl2onnx are dev-only
dependencies: the service needs only onnxruntime.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
import skl2onnx  # type: ignore[import-untyped]
import sklearn  # type: ignore[import-untyped]
from scipy.stats import rankdata  # type: ignore[import-untyped]
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType  # type: ignore[import-untyped]
from sklearn.ensemble import HistGradientBoostingClassifier  # type: ignore[import-untyped]
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from llmops.demo import data

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "models" / "property-ranker"
MODEL_NAME = "property-ranker"

N_PROPERTIES, PROPERTY_SEED = 2000, 7
N_USERS, USER_SEED = 500, 11
N_SEARCHES, SEARCH_SEED = 6000, 13
LABEL_SEED = 20240611
SPLIT_SEED = 4242
MODEL_SEED = 0
PAGE = 25
SPLIT = (0.70, 0.15, 0.15)
OPSET = {"": 17, "ai.onnx.ml": 3}
"""Fixed opsets: ONNX 17 and the ML domain 3 (TreeEnsembleClassifier), which every
onnxruntime since 1.12 and Triton's ONNX Runtime backend load."""
MAX_ROUNDS = 300

FEATURES: tuple[tuple[str, str, int], ...] = (
    ("property_stats:review_score", "DOUBLE", 1),
    ("property_stats:review_count", "INT64", 1),
    ("property_stats:stars", "INT64", 0),
    ("property_stats:bookings_7d", "INT64", 0),
    ("property_stats:views_7d", "INT64", 0),
    ("property_stats:conversion_rate_7d", "DOUBLE", 1),
    ("property_stats:cancel_rate_30d", "DOUBLE", -1),
    ("property_stats:avg_price_30d", "DOUBLE", 0),
    ("property_content:has_free_cancellation", "BOOL", 1),
    ("property_content:description_length", "INT64", 0),
    ("property_pricing:price_tonight", "DOUBLE", 0),
    ("property_pricing:discount_pct", "DOUBLE", 1),
    ("property_pricing:min_nights", "INT64", 0),
    ("property_pricing:available_rooms", "INT64", 0),
    ("property_pricing:price_rank_in_city", "INT64", 0),
)
"""Model inputs in column order: every numeric/boolean feature of ``property_ranking_v1``
(deploy/features/storefront.yaml), as ``view:name``, with its registry type and a monotonic
constraint (+1: the score never falls when it rises, -1: never rises, 0: free). The
constraints are product rules, not fitted: a better review, a free cancellation or a bigger
discount never ranks a property lower, all else equal. Stars and price stay free (taste and
price sensitivity are relative to the shopper and the city)."""


def _column(props: data.Dataset, ref: str) -> np.ndarray:
    view, _, name = ref.partition(":")
    return np.asarray(props[view][name], dtype=np.float64)


def build_dataset() -> dict[str, np.ndarray]:
    """Pages of candidates with a synthetic click/book label (the story in the docstring)."""
    props = data.properties(N_PROPERTIES, seed=PROPERTY_SEED)
    people = data.users(N_USERS, seed=USER_SEED)
    shop = data.searches(N_SEARCHES, N_USERS, seed=SEARCH_SEED)
    rng = np.random.default_rng(LABEL_SEED)

    x_all = np.stack([_column(props, ref) for ref, _, _ in FEATURES], axis=1)
    # float32 is what the service feeds the model: train on the same values.
    x_all = x_all.astype(np.float32).astype(np.float64)
    col = {ref: x_all[:, j] for j, (ref, _, _) in enumerate(FEATURES)}
    city = np.asarray(props["property_content"]["city"])
    members = {c: np.flatnonzero(city == c) for c in np.unique(city)}
    city_median = {c: float(np.median(col["property_pricing:price_tonight"][m]))
                   for c, m in members.items()}  # fmt: skip
    preferred = dict(zip(people.keys, people["user_profile"]["preferred_stars"], strict=True))

    # The observable part of the utility, per property.
    price = col["property_pricing:price_tonight"]
    rel_price = np.log(price / np.array([city_median[c] for c in city]))
    observable = (
        -2.9
        + 0.85 * (col["property_stats:review_score"] - 8.0)
        + 0.30 * (np.log1p(col["property_stats:review_count"]) - 4.5)
        + 14.0 * (col["property_stats:conversion_rate_7d"] - 0.03)
        + 0.45 * col["property_content:has_free_cancellation"]
        + 0.03 * col["property_pricing:discount_pct"]
        - 2.0 * (col["property_stats:cancel_rate_30d"] - 0.14)
        - 1.2 * rel_price
    )
    stars = col["property_stats:stars"]
    rooms = col["property_pricing:available_rooms"]
    min_nights = col["property_pricing:min_nights"]

    rows: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    for s in range(N_SEARCHES):
        pool = members[shop["city"][s]]
        page = rng.choice(pool, size=min(PAGE, len(pool)), replace=False)
        utility = (
            observable[page]
            - 0.35 * np.abs(stars[page] - preferred[shop["user_id"][s]])
            + rng.normal(0.0, 0.5)  # this shopper's propensity to click at all
            + rng.normal(0.0, 0.7, len(page))
        )
        bookable = (rooms[page] > 0) & (min_nights[page] <= shop["nights"][s])
        clicked = rng.random(len(page)) < 1.0 / (1.0 + np.exp(-utility))
        rows.append(page)
        labels.append((clicked & bookable).astype(np.int64))
        groups.append(np.full(len(page), s))
    index = np.concatenate(rows)
    return {"x": x_all[index], "y": np.concatenate(labels), "group": np.concatenate(groups)}


def split_searches() -> dict[str, np.ndarray]:
    """Search ids per split: a seeded permutation cut 70/15/15."""
    order = np.random.default_rng(SPLIT_SEED).permutation(N_SEARCHES)
    n_train = round(SPLIT[0] * N_SEARCHES)
    n_val = round(SPLIT[1] * N_SEARCHES)
    return {
        "train": np.sort(order[:n_train]),
        "validation": np.sort(order[n_train : n_train + n_val]),
        "test": np.sort(order[n_train + n_val :]),
    }


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half)."""
    ranks = rankdata(score)
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _ndcg(y: np.ndarray, score: np.ndarray, k: int = 10) -> float:
    """NDCG@k with linear gains; candidates tied on score share their positions' discounts
    (the expected DCG over random tie-breaks, as ``sklearn.metrics.ndcg_score`` does)."""
    discount = 1.0 / np.log2(np.arange(len(y)) + 2.0)
    discount[k:] = 0.0
    order = np.argsort(-score, kind="stable")
    gains, ranked = y[order].astype(np.float64), score[order]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(ranked) != 0) + 1))
    sizes = np.diff(np.append(starts, len(y)))
    dcg = np.sum(np.add.reduceat(gains, starts) / sizes * np.add.reduceat(discount, starts))
    ideal = np.sum(np.sort(gains)[::-1] * discount)
    return float(dcg / ideal)


def ranking_metrics(y: np.ndarray, score: np.ndarray, group: np.ndarray) -> dict[str, Any]:
    """Pooled AUC, mean per-search AUC (searches with both classes) and mean NDCG@10 per
    search (searches with at least one positive; ties in the score are averaged)."""
    aucs: list[float] = []
    ndcgs: list[float] = []
    for g in np.unique(group):
        m = group == g
        yg, sg = y[m], score[m]
        if 0 < yg.sum() < len(yg):
            aucs.append(_auc(yg, sg))
        if yg.sum() > 0:
            ndcgs.append(_ndcg(yg, sg))
    return {
        "auc": round(_auc(y, score), 6),
        "auc_per_search": round(float(np.mean(aucs)), 6),
        "ndcg@10": round(float(np.mean(ndcgs)), 6),
        "searches_with_a_positive": len(ndcgs),
    }


def _fit(x: np.ndarray, y: np.ndarray, rounds: int) -> Any:
    model = HistGradientBoostingClassifier(
        learning_rate=0.1,
        max_iter=rounds,
        max_leaf_nodes=15,
        min_samples_leaf=40,
        l2_regularization=1.0,
        monotonic_cst=[monotonic for _, _, monotonic in FEATURES],
        early_stopping=False,
        random_state=MODEL_SEED,
    )
    return model.fit(x, y)


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def export(model: Any, n_features: int) -> bytes:
    """The fitted model as ONNX bytes: one float input ``features`` [None, n], outputs
    ``label`` and ``probabilities`` [None, 2] (a plain tensor, no ZipMap); every field that
    could vary between runs is set to a fixed value."""
    onx = convert_sklearn(
        model,
        name="property_ranker",
        initial_types=[("features", FloatTensorType([None, n_features]))],
        target_opset=dict(OPSET),
        options={id(model): {"zipmap": False}},
    )
    onx.graph.name = "property_ranker"
    onx.producer_name = "llmops scripts/train_ranker.py"
    onx.producer_version = f"skl2onnx {skl2onnx.__version__}, scikit-learn {sklearn.__version__}"
    onx.domain = "llmops.mesh"
    onx.model_version = 1
    onx.doc_string = "Demo property ranker trained on SYNTHETIC labels (scripts/train_ranker.py)."
    del onx.metadata_props[:]
    entry = onx.metadata_props.add()
    entry.key, entry.value = "feature_refs", ",".join(ref for ref, _, _ in FEATURES)
    onnx.checker.check_model(onx)
    return bytes(onx.SerializeToString(deterministic=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    with threadpool_limits(limits=1):
        ds = build_dataset()
        splits = split_searches()
        part = {name: np.isin(ds["group"], ids) for name, ids in splits.items()}
        x_tr, y_tr = ds["x"][part["train"]], ds["y"][part["train"]]
        x_va, y_va = ds["x"][part["validation"]], ds["y"][part["validation"]]

        # Validation picks the number of boosting rounds; the test split is not looked at.
        probe = _fit(x_tr, y_tr, MAX_ROUNDS)
        losses = [_log_loss(y_va, p[:, 1]) for p in probe.staged_predict_proba(x_va)]
        rounds = int(np.argmin(losses)) + 1
        model = _fit(x_tr, y_tr, rounds)
        blob = export(model, len(FEATURES))

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])

        def onnx_scores(x: np.ndarray) -> np.ndarray:
            out = session.run(["probabilities"], {"features": x.astype(np.float32)})[0]
            return np.asarray(out)[:, 1].astype(np.float64)

        metrics: dict[str, Any] = {}
        for name in ("validation", "test"):
            m = part[name]
            x, y, g = ds["x"][m], ds["y"][m], ds["group"][m]
            col = {ref: x[:, j] for j, (ref, _, _) in enumerate(FEATURES)}
            metrics[name] = {
                "model": ranking_metrics(y, onnx_scores(x), g),
                "baselines": {
                    "review_score": ranking_metrics(y, col["property_stats:review_score"], g),
                    "cheapest_in_city": ranking_metrics(
                        y, -col["property_pricing:price_rank_in_city"], g
                    ),
                },
            }
        x_te = ds["x"][part["test"]]
        drift = float(np.max(np.abs(onnx_scores(x_te) - model.predict_proba(x_te)[:, 1])))

    x_train = ds["x"][part["train"]]
    features = []
    for j, (ref, kind, monotonic) in enumerate(FEATURES):
        missing = 0.0 if kind == "BOOL" else float(f"{np.median(x_train[:, j]):.6g}")
        features.append({"ref": ref, "type": kind, "missing": missing, "monotonic": monotonic})
    split_sizes = {
        name: {"searches": len(ids), "rows": int(part[name].sum())} for name, ids in splits.items()
    }
    card: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": 1,
        "task": "property ranking: P(click-to-book) per candidate of a search page",
        "synthetic": True,
        "backend": "onnx",
        "file": "model.onnx",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "opset": dict(OPSET),
        "input": {"name": "features", "dtype": "float32", "shape": [None, len(FEATURES)]},
        "output": {"name": "probabilities", "shape": [None, 2], "positive_index": 1},
        "features": features,
        "encoding": {
            "dtype": "float32",
            "bool": "true -> 1.0, false -> 0.0",
            "numbers": "INT64 and DOUBLE as float32",
            "missing": "a feature absent from the row, null, or not a finite number takes its "
            "`missing` value: the training median for numbers, 0 (false) for booleans",
        },
        "training": {
            "script": "scripts/train_ranker.py",
            "data": (
                f"SYNTHETIC: llmops.demo.data properties({N_PROPERTIES}, seed={PROPERTY_SEED}),"
                f" users({N_USERS}, seed={USER_SEED}), searches({N_SEARCHES}, {N_USERS},"
                f" seed={SEARCH_SEED}); labels from the generative story in the script's"
                f" docstring (seed {LABEL_SEED})"
            ),
            "estimator": "sklearn HistGradientBoostingClassifier",
            "params": {
                k: v
                for k, v in sorted(model.get_params().items())
                if isinstance(v, int | float | str | bool) or v is None
            },
            "rounds_picked_on_validation": rounds,
            "rows": int(part["train"].sum()),
            "positive_rate": round(float(y_tr.mean()), 6),
            "split_seed": SPLIT_SEED,
            "split": split_sizes,
            "total": {"searches": N_SEARCHES, "rows": len(ds["y"])},
            "versions": {
                "scikit-learn": sklearn.__version__,
                "skl2onnx": skl2onnx.__version__,
                "onnx": onnx.__version__,
                "numpy": np.__version__,
            },
        },
        "metrics": metrics,
        "onnx_vs_sklearn_max_abs_diff_test": float(f"{drift:.1e}"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model.onnx").write_bytes(blob)
    text = json.dumps(card, indent=2, allow_nan=False) + "\n"
    (args.out / "model.json").write_text(text, encoding="utf-8")
    elapsed = time.perf_counter() - t0
    test = metrics["test"]
    print(
        f"wrote {args.out}/model.onnx ({len(blob)} bytes, {rounds} rounds) in {elapsed:.1f}s;"
        f" test AUC {test['model']['auc']:.4f} NDCG@10 {test['model']['ndcg@10']:.4f}"
        f" (review_score: {test['baselines']['review_score']['auc']:.4f}"
        f" / {test['baselines']['review_score']['ndcg@10']:.4f})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
