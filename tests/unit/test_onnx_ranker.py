"""The ``onnx`` ranking backend on the committed demo model (models/property-ranker).

The model is trained on SYNTHETIC labels (scripts/train_ranker.py); these tests hold the
serving contract to account (encoding, one batched run, errors, the card's claims), and the
training script to its promise of byte-identical output.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmops.demo import data
from llmops.errors import FailedPrecondition, InvalidArgument
from services.inference.engines.onnx_ranker import DEFAULT_MODEL_DIR, OnnxRanker

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "models" / "property-ranker"
CARD: dict[str, Any] = json.loads((MODEL_DIR / "model.json").read_text(encoding="utf-8"))
VIEWS = ("property_stats", "property_content", "property_pricing")


@pytest.fixture(scope="module")
def ranker() -> OnnxRanker:
    return OnnxRanker(MODEL_DIR)


@pytest.fixture(scope="module")
def rows() -> list[dict[str, object]]:
    """What the feature service serves for the demo's first 120 properties, keyed by ref:
    every feature of property_ranking_v1, strings and lists included (the ranker skips them)."""
    props = data.properties(120, seed=7)
    return [
        {f"{view}:{name}": props[view][name][i] for view in VIEWS for name in props[view]}
        for i in range(120)
    ]


def test_the_default_directory_is_the_committed_model(ranker: OnnxRanker) -> None:
    assert DEFAULT_MODEL_DIR == MODEL_DIR
    assert ranker.feature_refs == tuple(f["ref"] for f in CARD["features"])
    assert all(ref.partition(":")[0] in VIEWS for ref in ranker.feature_refs)


def test_scores_are_probabilities_and_deterministic(
    ranker: OnnxRanker, rows: list[dict[str, object]]
) -> None:
    scores = ranker.score(rows)
    assert len(scores) == len(rows)
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert len(set(scores)) > 20  # the features reach the model: not one constant
    assert ranker.score(rows) == scores
    assert OnnxRanker(MODEL_DIR).score(rows) == scores
    assert ranker.score([]) == []


def test_one_batched_run_equals_row_by_row_runs(
    ranker: OnnxRanker, rows: list[dict[str, object]]
) -> None:
    batched = ranker.score(rows)
    single = [ranker.score([row])[0] for row in rows]
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-6)


def test_bare_feature_names_work_like_refs(
    ranker: OnnxRanker, rows: list[dict[str, object]]
) -> None:
    bare = [{ref.partition(":")[2]: v for ref, v in row.items()} for row in rows[:20]]
    assert ranker.score(bare) == ranker.score(rows[:20])


def test_better_reviews_never_lower_the_score_and_stars_barely(
    ranker: OnnxRanker, rows: list[dict[str, object]]
) -> None:
    # The card's monotonic constraints (review_score: +1) are guaranteed by the trees.
    declared = {f["ref"]: f["monotonic"] for f in CARD["features"]}
    assert declared["property_stats:review_score"] == 1
    reviews = [5.0, 6.0, 7.0, 7.5, 8.0, 8.5, 9.0, 9.5, 10.0]
    grid = np.array(
        [ranker.score([{**r, "property_stats:review_score": v} for v in reviews]) for r in rows]
    )
    assert np.all(np.diff(grid, axis=1) >= -1e-6)
    assert np.mean(grid[:, -1] - grid[:, 0]) > 0.02  # and it matters
    # Stars are unconstrained (the synthetic shoppers have a preferred star rating), so only
    # a sanity check: one more star, all else equal, never costs much.
    stars = np.array(
        [ranker.score([{**r, "property_stats:stars": s} for s in range(6)]) for r in rows]
    )
    steps = np.diff(stars, axis=1)
    assert steps.min() > -0.1
    assert np.all(steps.mean(axis=0) > -0.03)


def test_missing_features_take_the_declared_value(
    ranker: OnnxRanker, rows: list[dict[str, object]]
) -> None:
    row = dict(rows[0])
    ref = "property_stats:review_score"
    declared = ranker.missing_values[ref]
    assert declared == next(f["missing"] for f in CARD["features"] if f["ref"] == ref)
    expected = ranker.score([{**row, ref: declared}])
    absent = {k: v for k, v in row.items() if k != ref}
    for variant in (absent, {**row, ref: None}, {**row, ref: float("nan")}, {**row, ref: 1e300}):
        assert ranker.score([variant]) == expected
    # A row with nothing at all is every feature's declared value.
    all_missing = ranker.encode([{}])
    np.testing.assert_array_equal(
        all_missing[0], np.array(list(ranker.missing_values.values()), dtype=np.float32)
    )
    assert 0.0 <= ranker.score([{}])[0] <= 1.0


def test_booleans_and_numpy_scalars_encode_as_numbers(
    ranker: OnnxRanker, rows: list[dict[str, object]]
) -> None:
    row = dict(rows[1])
    ref = "property_content:has_free_cancellation"
    assert ranker.encode([{**row, ref: True}])[0].tolist() == (
        ranker.encode([{**row, ref: 1}])[0].tolist()
    )
    assert ranker.encode([{**row, ref: np.False_}])[0].tolist() == (
        ranker.encode([{**row, ref: 0.0}])[0].tolist()
    )
    as_numpy = {k: np.float64(v) if isinstance(v, float) else v for k, v in row.items()}
    assert ranker.score([as_numpy]) == ranker.score([row])


def test_bad_inputs_raise_invalid_argument(
    ranker: OnnxRanker, rows: list[dict[str, object]]
) -> None:
    with pytest.raises(InvalidArgument) as bad_type:
        ranker.score([rows[0], {**rows[1], "property_stats:stars": "four"}])
    assert bad_type.value.field == "candidates[1].property_stats:stars"
    with pytest.raises(InvalidArgument) as not_a_row:
        ranker.score([rows[0], ["not", "a", "mapping"]])  # type: ignore[list-item]
    assert not_a_row.value.field == "candidates[1]"
    with pytest.raises(InvalidArgument) as too_many:
        ranker.score([{}] * 1001)
    assert too_many.value.field == "candidates"
    assert "at most 1000" in too_many.value.message
    small = OnnxRanker(MODEL_DIR, max_batch=5)
    assert len(small.score(rows[:5])) == 5
    with pytest.raises(InvalidArgument, match="6 candidates, at most 5"):
        small.score(rows[:6])


def test_a_missing_or_tampered_model_is_a_failed_precondition(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition) as missing:
        OnnxRanker(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "model.onnx") in missing.value.message
    assert "python scripts/train_ranker.py" in missing.value.message

    shutil.copytree(MODEL_DIR, tmp_path / "half")
    (tmp_path / "half" / "model.json").unlink()
    with pytest.raises(FailedPrecondition, match=r"model\.json is missing"):
        OnnxRanker(tmp_path / "half")

    shutil.copytree(MODEL_DIR, tmp_path / "tampered")
    blob = bytearray((tmp_path / "tampered" / "model.onnx").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "tampered" / "model.onnx").write_bytes(bytes(blob))
    with pytest.raises(FailedPrecondition, match="sha256"):
        OnnxRanker(tmp_path / "tampered")

    shutil.copytree(MODEL_DIR, tmp_path / "garbled")
    (tmp_path / "garbled" / "model.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(FailedPrecondition, match="unreadable"):
        OnnxRanker(tmp_path / "garbled")


async def test_score_async_matches_score_inline_and_on_a_thread(
    ranker: OnnxRanker, rows: list[dict[str, object]]
) -> None:
    assert ranker.thread_threshold == 64
    assert await ranker.score_async(rows[:10]) == ranker.score(rows[:10])  # inline
    assert await ranker.score_async(rows) == ranker.score(rows)  # 120 rows: on a thread


def test_describe_reports_the_card(ranker: OnnxRanker) -> None:
    info = ranker.describe()
    assert info["backend"] == "onnx"
    assert info["model"] == "property-ranker"
    assert info["synthetic"] is True
    assert info["features"] == len(CARD["features"]) == 15
    assert info["opset"] == {"": 17, "ai.onnx.ml": 3}
    assert info["test_metrics"] == CARD["metrics"]["test"]["model"]


def test_the_card_beats_trivial_rankings_on_the_test_split() -> None:
    test = CARD["metrics"]["test"]
    model = test["model"]
    for name, baseline in test["baselines"].items():
        for metric in ("auc", "auc_per_search", "ndcg@10"):
            assert model[metric] > baseline[metric] + 0.05, (name, metric)
        assert baseline["searches_with_a_positive"] == model["searches_with_a_positive"]
    assert 0.5 < model["auc"] <= 1.0 and 0.0 < model["ndcg@10"] <= 1.0


def test_the_split_sizes_add_up() -> None:
    training = CARD["training"]
    split, total = training["split"], training["total"]
    assert set(split) == {"train", "validation", "test"}
    assert sum(s["searches"] for s in split.values()) == total["searches"]
    assert sum(s["rows"] for s in split.values()) == total["rows"]
    assert training["rows"] == split["train"]["rows"]
    assert all(s["searches"] > 0 and s["rows"] >= s["searches"] for s in split.values())
    assert (MODEL_DIR / "model.onnx").stat().st_size < 1_000_000


def _versions_differ() -> str:
    if any(importlib.util.find_spec(m) is None for m in ("sklearn", "skl2onnx", "onnx")):
        return "scikit-learn/skl2onnx are not installed (dev-only: the training script needs them)"
    import onnx
    import skl2onnx  # type: ignore[import-untyped]
    import sklearn  # type: ignore[import-untyped]

    pinned = CARD["training"]["versions"]
    have = {
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
    }
    if have != pinned:
        return f"the committed model was trained with {pinned}, this environment has {have}"
    return ""


def test_retraining_gives_byte_identical_files(tmp_path: Path) -> None:
    reason = _versions_differ()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_ranker.py"), "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model.onnx").read_bytes() == (MODEL_DIR / "model.onnx").read_bytes()
    assert (tmp_path / "model.json").read_bytes() == (MODEL_DIR / "model.json").read_bytes()
