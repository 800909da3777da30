"""Train the toxicity classifier shipped as services/guardrail/data/toxicity_model.json.

Two linear heads over the detector's own hashed features
(``services.guardrail.detectors.toxicity.feature_buckets``: word unigrams and bigrams and
character 3-5-grams in 2^18 buckets), fitted with numpy and scipy's L-BFGS on the
``"split": "train"`` rows of ``data/toxicity.jsonl`` only (the test rows are never read for
fitting or for choosing hyper-parameters):

- ``toxic``: binary logistic regression, toxic (any label) against clean;
- ``category``: softmax regression over the six categories, fitted on the toxic rows (a row
  with two labels counts half for each).

Each head's L2 strength is picked from a small grid by stratified k-fold cross-validation
on the train split (F1 at 0.5 for ``toxic``, top-1 accuracy for ``category``) unless given.
The toxic head's bias is then lowered until at most ``--clean-fpr`` (2%) of the clean train
rows score >= 0.5 out of fold: the train split is ~45% toxic, a storefront's traffic is not,
and a whole-text finding on a clean text blocks a shopper for nothing.
Deterministic: the folds come from ``numpy.random.default_rng(seed)`` and L-BFGS starts at
zero, so the same data and seed give the same file. Weights are stored sparse: the buckets
seen in training, 4 significant digits, rows whose weights are all below ``--prune``
dropped (the file stays well under 2 MB).

Usage::

    python scripts/train_toxicity.py            # writes the shipped model
    python scripts/train_toxicity.py --check    # retrains; exit 1 if the shipped one differs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import optimize, sparse  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.guardrail.detectors.toxicity import (  # noqa: E402
    CATEGORIES,
    HASH_BITS,
    MODEL_FORMAT,
    MODEL_PATH,
    N_BUCKETS,
    ToxicityModel,
    feature_buckets,
)

DATA_PATH = ROOT / "services" / "guardrail" / "data" / "toxicity.jsonl"
L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
"""L2 strengths tried by cross-validation (on a loss averaged over the rows)."""
Floats = npt.NDArray[np.float64]


def load_rows(path: Path = DATA_PATH) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def design(rows: Sequence[dict[str, Any]]) -> tuple[Any, Floats]:
    """Rows -> (CSR matrix n x N_BUCKETS, label matrix n x categories)."""
    indptr = [0]
    indices: list[npt.NDArray[np.int64]] = []
    values: list[Floats] = []
    for row in rows:
        buckets = feature_buckets(row["text"])
        indices.append(buckets)
        values.append(np.full(len(buckets), 1.0 / np.sqrt(max(len(buckets), 1))))
        indptr.append(indptr[-1] + len(buckets))
    x = sparse.csr_matrix(
        (np.concatenate(values), np.concatenate(indices), np.asarray(indptr)),
        shape=(len(rows), N_BUCKETS),
    )
    x.sum_duplicates()
    y = np.array([[c in row["labels"] for c in CATEGORIES] for row in rows], dtype=np.float64)
    return x, y


def _sigmoid(z: Floats) -> Floats:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)


def fit_binary(x: Any, y: Floats, l2: float) -> tuple[Floats, float]:
    """L2-regularised logistic regression (mean log loss) -> (weights, bias)."""
    n, d = x.shape
    xt = x.T.tocsr()

    def objective(theta: Floats) -> tuple[float, Floats]:
        w, b = theta[:d], theta[d]
        z = x @ w + b
        loss = float((np.logaddexp(0.0, z) - y * z).sum() / n + 0.5 * l2 * (w @ w))
        g = (_sigmoid(z) - y) / n
        return loss, np.concatenate([xt @ g + l2 * w, [g.sum()]])

    theta = _minimize(objective, d + 1)
    return theta[:d], float(theta[d])


def fit_softmax(x: Any, target: Floats, l2: float) -> tuple[Floats, Floats]:
    """L2-regularised softmax regression on target distributions -> (weights d x C, bias C)."""
    n, d = x.shape
    c = target.shape[1]
    xt = x.T.tocsr()

    def objective(theta: Floats) -> tuple[float, Floats]:
        w = theta[: d * c].reshape(d, c)
        b = theta[d * c :]
        z = x @ w + b
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = float(-(target * log_p).sum() / n + 0.5 * l2 * (w * w).sum())
        g = (np.exp(log_p) - target) / n
        return loss, np.concatenate([(xt @ g + l2 * w).ravel(), g.sum(axis=0)])

    theta = _minimize(objective, d * c + c)
    return theta[: d * c].reshape(d, c), theta[d * c :]


def _minimize(objective: Any, size: int) -> Floats:
    result = optimize.minimize(
        objective,
        np.zeros(size),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 3000, "gtol": 1e-8, "ftol": 1e-13},
    )
    return np.asarray(result.x, dtype=np.float64)


def _targets(y: Floats) -> Floats:
    return np.asarray(y / np.maximum(y.sum(axis=1, keepdims=True), 1.0), dtype=np.float64)


def _f1(truth: npt.NDArray[np.bool_], flagged: npt.NDArray[np.bool_]) -> float:
    tp = int((truth & flagged).sum())
    return 2 * tp / max(2 * tp + int((~truth & flagged).sum()) + int((truth & ~flagged).sum()), 1)


def folds(rows: Sequence[dict[str, Any]], k: int, seed: int) -> npt.NDArray[np.int64]:
    """Stratified fold of each row (by its first label, or clean), shuffled by ``seed``."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(rows), dtype=np.int64)
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row["labels"][0] if row["labels"] else "clean", []).append(i)
    for key in sorted(groups):
        members = groups[key]
        for j, i in enumerate(rng.permutation(len(members))):
            fold[members[int(i)]] = j % k
    return fold


def cross_validate(x: Any, y: Floats, fold: npt.NDArray[np.int64], k: int) -> dict[str, Any]:
    """Out-of-fold F1 of the toxic head and top-1 accuracy of the category head per L2."""
    toxic: npt.NDArray[np.bool_] = np.asarray(y.sum(axis=1) > 0)
    f1: dict[str, float] = {}
    top1: dict[str, float] = {}
    oof: dict[str, Floats] = {}
    for l2 in L2_GRID:
        z = np.zeros(len(y))
        right = 0
        for j in range(k):
            train, held = fold != j, fold == j
            w, b = fit_binary(x[train], toxic[train].astype(np.float64), l2)
            z[held] = x[held] @ w + b
            tr, he = train & toxic, held & toxic
            wc, bc = fit_softmax(x[tr], _targets(y[tr]), l2)
            top = (x[he] @ wc + bc).argmax(axis=1)
            right += int(y[he][np.arange(len(top)), top].sum())
        oof[f"{l2:g}"] = z
        f1[f"{l2:g}"] = round(_f1(toxic, z >= 0), 4)
        top1[f"{l2:g}"] = round(right / max(int(toxic.sum()), 1), 4)
    l2_toxic = max(L2_GRID, key=lambda v: (f1[f"{v:g}"], v))
    return {
        "l2_toxic": l2_toxic,
        "l2_category": max(L2_GRID, key=lambda v: (top1[f"{v:g}"], v)),
        "cv_f1_toxic": f1,
        "cv_top1_category": top1,
        "oof_logits": oof[f"{l2_toxic:g}"],
    }


def bias_shift(oof_logits: Floats, toxic: npt.NDArray[np.bool_], clean_fpr: float) -> float:
    """How much to lower the toxic bias so that at most ``clean_fpr`` of the clean rows'
    out-of-fold logits stay >= 0 (probability 0.5); never raises it.

    The train split is ~45% toxic while a storefront's traffic is mostly clean: at the
    training prior, short clean texts with little evidence either way sit near 0.5."""
    clean = np.sort(oof_logits[~toxic])
    if len(clean) == 0:
        return 0.0
    allowed = int(np.floor(clean_fpr * len(clean)))
    kth = clean[len(clean) - 1 - allowed]  # the highest clean logit that must fall below 0
    return float(-(kth + 1e-3)) if kth >= 0 else 0.0


def train(
    rows: Sequence[dict[str, Any]],
    seed: int = 7,
    l2_toxic: float | None = None,
    l2_category: float | None = None,
    prune: float = 1e-3,
    k: int = 5,
    clean_fpr: float = 0.02,
    toxic_bias_shift: float | None = None,
    data_sha256: str = "",
) -> dict[str, Any]:
    """Fit on the train rows; returns the model document (the JSON that is shipped).

    With ``k`` < 2 there is no cross-validation: give both L2 strengths (and the toxic bias
    shift, else 0) — e.g. the ones recorded in a shipped model, to reproduce it quickly."""
    train_rows = [r for r in rows if r.get("split") == "train"]
    test_rows = [r for r in rows if r.get("split") == "test"]
    x_all, y = design(train_rows)
    used = np.unique(x_all.indices)
    x = x_all[:, used]
    toxic: npt.NDArray[np.bool_] = np.asarray(y.sum(axis=1) > 0)
    cv = cross_validate(x, y, folds(train_rows, k, seed), k) if k > 1 else {}
    l2_t = float(l2_toxic if l2_toxic is not None else cv["l2_toxic"])
    l2_c = float(l2_category if l2_category is not None else cv["l2_category"])
    if toxic_bias_shift is not None:
        shift = float(toxic_bias_shift)
    else:
        shift = bias_shift(cv["oof_logits"], toxic, clean_fpr) if cv else 0.0
    w_t, b_t = fit_binary(x, toxic.astype(np.float64), l2_t)
    b_t += shift
    w_c, b_c = fit_softmax(x[toxic], _targets(y[toxic]), l2_c)
    w = np.column_stack([w_t, w_c])
    w = np.where(np.abs(w) < prune, 0.0, w)
    keep = np.flatnonzero(np.abs(w).max(axis=1) > 0)
    doc: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "categories": list(CATEGORIES),
        "hash_bits": HASH_BITS,
        "features": "word unigrams + word bigrams + char 3/4/5-grams; poly-64 + fmix64 hash",
        "scaling": "bucket counts / sqrt(number of n-grams)",
        "training": {
            "data": "services/guardrail/data/toxicity.jsonl (split=train)",
            "data_sha256": data_sha256,
            "n_train": len(train_rows),
            "n_toxic": int(toxic.sum()),
            "positives": {c: int(v) for c, v in zip(CATEGORIES, y.sum(axis=0), strict=True)},
            "seed": seed,
            "l2_toxic": l2_t,
            "l2_category": l2_c,
            "prune_below": prune,
            "cv_folds": k,
            "clean_fpr_target": clean_fpr,
            "toxic_bias_shift": shift,
            **{key: cv[key] for key in ("cv_f1_toxic", "cv_top1_category") if key in cv},
        },
        "buckets": [int(v) for v in used[keep]],
        "toxic": {"bias": _round(b_t), "weights": [_round(v) for v in w[keep, 0]]},
        "category": {
            "bias": [_round(v) for v in b_c],
            "weights": [[_round(v) for v in w[keep, 1 + j]] for j in range(len(CATEGORIES))],
        },
    }
    model = ToxicityModel.from_json(doc)
    doc["metrics"] = {"train": _metrics(model, train_rows), "test": _metrics(model, test_rows)}
    return doc


def _round(value: float) -> float:
    return float(f"{value:.4g}")


def _metrics(model: ToxicityModel, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The classifier alone: toxic head at 0.5 (precision, recall) and category head top-1."""
    if not rows:
        return {}
    preds = [model.predict(feature_buckets(r["text"])) for r in rows]
    toxic = np.array([bool(r["labels"]) for r in rows])
    flagged = np.array([p.toxic >= 0.5 for p in preds])
    right = sum(p.category in r["labels"] for p, r in zip(preds, rows, strict=True) if r["labels"])
    return {
        "toxic_precision": round(float((flagged & toxic).sum() / max(flagged.sum(), 1)), 4),
        "toxic_recall": round(float((flagged & toxic).sum() / max(toxic.sum(), 1)), 4),
        "category_top1": round(right / max(int(toxic.sum()), 1), 4),
    }


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA_PATH)
    parser.add_argument("--out", type=Path, default=MODEL_PATH)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--l2-toxic", type=float, default=None)
    parser.add_argument("--l2-category", type=float, default=None)
    parser.add_argument("--prune", type=float, default=1e-3)
    parser.add_argument("--clean-fpr", type=float, default=0.02)
    parser.add_argument("--folds", type=int, default=5, help="0: no CV (give both --l2-*)")
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = parser.parse_args(argv)
    raw = args.data.read_bytes()
    rows = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
    doc = train(
        rows,
        seed=args.seed,
        l2_toxic=args.l2_toxic,
        l2_category=args.l2_category,
        prune=args.prune,
        k=args.folds,
        clean_fpr=args.clean_fpr,
        data_sha256=hashlib.sha256(raw).hexdigest(),
    )
    text = dumps(doc)
    if args.check:
        same = args.out.exists() and args.out.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{args.out} differs from a fresh training run")
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(
        f"wrote {args.out} ({len(text) / 1024:.0f} KiB, {len(doc['buckets'])} buckets, "
        f"l2 {doc['training']['l2_toxic']:g} / {doc['training']['l2_category']:g}); "
        f"classifier on the test split: {json.dumps(doc['metrics']['test'])}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
