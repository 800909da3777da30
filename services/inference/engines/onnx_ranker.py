"""The ``onnx`` backend for tabular models: a ranker that scores a search page in one call.

A classic model is a function of a few numbers per candidate, so it is served very differently
from an LLM: no tokens, no streaming, microseconds per row. What costs is the per-call
overhead, so a page's candidates become ONE float32 matrix and ONE ``session.run`` (a tree
ensemble scores 1000 rows in about the time it scores 1). The production path for the same
file is Triton's ONNX Runtime backend (or its FIL backend for the tree ensemble); in-process
onnxruntime is the embedded default and the reference the Triton path is checked against.

A model directory holds ``model.onnx`` and ``model.json`` (written together by
``scripts/train_ranker.py``): the JSON card is the contract between the feature service and
the model, naming the input columns in order as feature refs (``property_stats:review_score``),
their types and how each is encoded:

* booleans become 1.0/0.0, integers and doubles become float32;
* a feature missing from a row (absent, ``None``, or not a finite float32) takes the card's
  declared ``missing`` value for it (the training median for numbers, false for booleans): a
  property with a stale or absent feature is ranked as a typical one on that aspect instead of
  failing the whole page; the feature service reports absent features by leaving them out;
* a value of another type (a string, a list) is the caller's bug: INVALID_ARGUMENT naming the
  candidate and the feature.

Row keys may be the full ref or the bare feature name (what the pipeline's features port
returns, ``{name: value}``); the ref wins when a row has both. The directory is an operator's
config path, never a caller's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmops.errors import FailedPrecondition, InvalidArgument

TRAIN_HINT = "run `python scripts/train_ranker.py` to produce model.onnx and model.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[3] / "models" / "property-ranker"
"""The demo ranker committed with the repository (``models/property-ranker``)."""
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True, slots=True)
class Feature:
    """One input column: its feature ref, registry type and the value a missing one takes."""

    ref: str
    name: str
    type: str
    missing: float


class OnnxRanker:
    """Scores candidates (one mapping of features per candidate) with an ONNX tabular model.

    One ``InferenceSession`` per ranker, shared by every call (``run`` is thread-safe).
    ``intra_op_threads`` defaults to 1: a page is small, and on a shared 2-core host more
    threads spin more than they help; raise it for pages of thousands of rows. Calls over
    ``max_batch`` rows are refused (a page is a few dozen candidates; thousands are a bug or an
    abuse), and ``score_async`` runs batches over ``thread_threshold`` rows on a worker thread
    so a big page does not stall the event loop, while small ones run inline (a thread hop
    costs more than scoring them).
    """

    def __init__(
        self,
        model_dir: str | Path = DEFAULT_MODEL_DIR,
        *,
        intra_op_threads: int = 1,
        max_batch: int = 1000,
        thread_threshold: int = 64,
    ) -> None:
        if intra_op_threads < 1 or max_batch < 1 or thread_threshold < 0:
            raise ValueError("intra_op_threads and max_batch must be >= 1, thread_threshold >= 0")
        self.model_dir = Path(model_dir)
        self.max_batch = max_batch
        self.thread_threshold = thread_threshold
        onnx_path, card_path = self.model_dir / "model.onnx", self.model_dir / "model.json"
        for path in (onnx_path, card_path):
            if not path.is_file():
                raise FailedPrecondition(f"ranker model file {path} is missing: {TRAIN_HINT}")
        blob = onnx_path.read_bytes()
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
            self._card: dict[str, Any] = card
            features = [
                Feature(
                    ref=str(f["ref"]),
                    name=str(f["ref"]).partition(":")[2],
                    type=str(f["type"]),
                    missing=float(f["missing"]),
                )
                for f in card["features"]
            ]
            self._input = str(card["input"]["name"])
            self._output = str(card["output"]["name"])
            self._positive = int(card["output"]["positive_index"])
            expected_sha = str(card.get("sha256", ""))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FailedPrecondition(
                f"ranker model card {card_path} is unreadable ({exc}): {TRAIN_HINT}"
            ) from None
        if not features or len({f.ref for f in features}) != len(features):
            raise FailedPrecondition(f"{card_path} declares no features or repeats one")
        # The card and the weights are written together; a mismatch means a half-copied model.
        if expected_sha and hashlib.sha256(blob).hexdigest() != expected_sha:
            raise FailedPrecondition(
                f"{onnx_path} does not match the sha256 in {card_path}: {TRAIN_HINT}"
            )
        self._features = tuple(features)
        self._missing = np.array([f.missing for f in features], dtype=np.float32)

        import onnxruntime as ort  # type: ignore[import-untyped]  # lazily: see engines/

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise FailedPrecondition(f"{onnx_path} does not load ({exc}): {TRAIN_HINT}") from None
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        width = inputs.get(self._input, [None, None])[-1]
        if width != len(features):
            raise FailedPrecondition(
                f"{onnx_path} input {self._input!r} has width {width}, the card declares "
                f"{len(features)} features: {TRAIN_HINT}"
            )

    @property
    def feature_refs(self) -> tuple[str, ...]:
        """The features the model reads, in input order (``view:name``): what to ask the
        feature service for."""
        return tuple(f.ref for f in self._features)

    @property
    def missing_values(self) -> dict[str, float]:
        """What each feature becomes when a row lacks it."""
        return {f.ref: f.missing for f in self._features}

    def encode(self, rows: Sequence[Mapping[str, object]]) -> np.ndarray:
        """The ``[len(rows), n_features]`` float32 matrix the model reads (module docstring)."""
        if len(rows) > self.max_batch:
            raise InvalidArgument(
                "candidates", f"{len(rows)} candidates, at most {self.max_batch} per call"
            )
        matrix = np.empty((len(rows), len(self._features)), dtype=np.float32)
        matrix[:] = self._missing
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise InvalidArgument(f"candidates[{i}]", "expected a mapping of features")
            for j, f in enumerate(self._features):
                value = row[f.ref] if f.ref in row else row.get(f.name)
                if value is None:
                    continue
                if isinstance(value, bool | np.bool_):
                    matrix[i, j] = 1.0 if value else 0.0
                elif isinstance(value, numbers.Real):
                    try:
                        number = float(value)
                    except OverflowError:  # an int beyond float: as good as missing
                        continue
                    if math.isfinite(number) and abs(number) <= _FLOAT32_MAX:
                        matrix[i, j] = number
                else:
                    raise InvalidArgument(
                        f"candidates[{i}].{f.ref}",
                        f"expected a number or a boolean, got {type(value).__name__}",
                    )
        return matrix

    def score(self, rows: Sequence[Mapping[str, object]]) -> list[float]:
        """P(positive) per row, in row order, from one ``session.run`` for the whole batch."""
        matrix = self.encode(rows)
        if not len(rows):
            return []
        (probabilities,) = self._session.run([self._output], {self._input: matrix})
        return [float(p) for p in np.asarray(probabilities)[:, self._positive]]

    async def score_async(self, rows: Sequence[Mapping[str, object]]) -> list[float]:
        """:meth:`score` off the event loop for batches over ``thread_threshold`` rows."""
        if len(rows) > self.thread_threshold:
            return await asyncio.to_thread(self.score, rows)
        return self.score(rows)

    def describe(self) -> dict[str, Any]:
        """What health and ``ListModels`` report: the model, its inputs and its test metrics
        (from the card: measured once by the training script on its held-out searches)."""
        card = self._card
        test = card.get("metrics", {}).get("test", {})
        return {
            "backend": "onnx",
            "model": str(card.get("name", self.model_dir.name)),
            "version": card.get("version"),
            "path": str(self.model_dir),
            "synthetic": bool(card.get("synthetic", False)),
            "features": len(self._features),
            "feature_refs": list(self.feature_refs),
            "opset": dict(card.get("opset", {})),
            "max_batch": self.max_batch,
            "test_metrics": dict(test.get("model", {})),
            "baseline_test_metrics": dict(test.get("baselines", {})),
        }
