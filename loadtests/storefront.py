"""The storefront's pages as a shopper's browser (or the storefront's backend for it) calls
the mesh: which RPCs each page makes, with what, and how feedback follows.

A page calls its RPCs side by side, as a storefront backend does, through ``parallel``
(gevent greenlets under locust; one after the other in tests), and every call is timed under
its name (``ExperimentService/Assign``, ``InferenceService/Run[query_intent]``) and the page
as a whole under ``page:<name>``. Shoppers and properties are drawn Zipf-popular, the way a
marketplace's traffic concentrates on a head of cities and listings.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from llmops.v1 import (
    common_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
    experiment_pb2,
    experiment_pb2_grpc,
    feature_pb2,
    feature_pb2_grpc,
    feedback_pb2,
    feedback_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
)

from .spec import Scenario

TENANT = "loadtest"
"""Every call's tenant: the load's predictions, exposures and feedback stay apart from the
demo's in ClickHouse (``llmops logs predictions`` shows them under this tenant)."""
COLLECTION = "property_descriptions"
SEARCH_FEATURES = "property_ranking_v1"
PAGE_FEATURES = "property_summary_llm"
RESULTS_PER_PAGE = 50

QUERIES: tuple[tuple[str, str], ...] = (
    ("family hotel with a pool near the beach", "Lisbon"),
    ("cheap hostel in the old town", "Barcelona"),
    ("romantic weekend with a sea view", "Nice"),
    ("business hotel near the train station", "Paris"),
    ("apartment with parking and wifi", "Porto"),
    ("quiet place with breakfast included", "Rome"),
    ("villa with a private pool", "Malaga"),
    ("boutique hotel close to museums", "Amsterdam"),
    ("spa resort for a relaxing break", "Lisbon"),
    ("budget room near the airport", "Madrid"),
    ("family apartment near the beach", "Barcelona"),
    ("hotel with free cancellation", "Paris"),
    ("guest house with a garden", "Prague"),
    ("luxury hotel with a gym", "Berlin"),
    ("modern studio in the city centre", "Vienna"),
    ("pet friendly hotel by the sea", "Nice"),
)
"""Search box queries; the head of a Zipf draw (the first ones) is most of the traffic."""


def zipf_index(rng: random.Random, n: int, s: float = 1.1) -> int:
    """A 0-based index in ``range(n)``, index ``i`` drawn with weight ``1 / (i + 1) ** s``."""
    weights = _zipf_weights(n, s)
    return rng.choices(range(n), cum_weights=weights)[0]


_ZIPF: dict[tuple[int, float], list[float]] = {}


def _zipf_weights(n: int, s: float) -> list[float]:
    cum = _ZIPF.get((n, s))
    if cum is None:
        total, cum = 0.0, []
        for i in range(n):
            total += 1.0 / (i + 1) ** s
            cum.append(total)
        _ZIPF[(n, s)] = cum
    return cum


Record = Callable[[str, str, float, str], None]
"""``record(name, kind, latency_ms, status_code_name)``: kind is ``rpc`` or ``page``."""

T = TypeVar("T")


def one_after_another(*thunks: Callable[[], Any]) -> list[Any]:
    return [thunk() for thunk in thunks]


@dataclass(frozen=True, slots=True)
class Stubs:
    features: feature_pb2_grpc.FeatureServiceStub
    experiments: experiment_pb2_grpc.ExperimentServiceStub
    inference: inference_pb2_grpc.InferenceServiceStub
    embedding: embedding_pb2_grpc.EmbeddingServiceStub
    feedback: feedback_pb2_grpc.FeedbackServiceStub

    @classmethod
    def of(cls, mesh: Any) -> Stubs:
        """From a :class:`llmops.clients.BlockingMeshClient` (its typed blocking stubs)."""
        return cls(
            mesh.stub(feature_pb2_grpc.FeatureServiceStub),
            mesh.stub(experiment_pb2_grpc.ExperimentServiceStub),
            mesh.stub(inference_pb2_grpc.InferenceServiceStub),
            mesh.stub(embedding_pb2_grpc.EmbeddingServiceStub),
            mesh.stub(feedback_pb2_grpc.FeedbackServiceStub),
        )


class Shopper:
    """One shopper's visits; each page method makes the page's calls and records them."""

    def __init__(
        self,
        stubs: Stubs,
        scenario: Scenario,
        record: Record,
        *,
        rng: random.Random | None = None,
        parallel: Callable[..., list[Any]] = one_after_another,
        timeout_s: float = 30.0,
    ) -> None:
        self.stubs = stubs
        self.scenario = scenario
        self.record = record
        self.rng = rng or random.Random()
        self.parallel = parallel
        self.timeout_s = timeout_s
        self.user_id = f"u-{zipf_index(self.rng, scenario.shoppers) + 1:06d}"
        self.session_id = str(uuid.uuid4())

    # -- calls -------------------------------------------------------------------------------

    def _context(self) -> common_pb2.RequestContext:
        return common_pb2.RequestContext(
            tenant=TENANT, user_id=self.user_id, session_id=self.session_id,
            client_name="llmops-loadtest", locale="en-GB", currency="EUR",
        )  # fmt: skip

    def call(self, name: str, method: Callable[..., T], request: Any) -> T | None:
        """``method(request)`` timed and recorded under ``name``; None when it failed (its
        status is what is recorded)."""
        began = time.perf_counter()
        try:
            reply = method(request, timeout=self.timeout_s)
            code = "OK"
        except grpc.RpcError as exc:
            reply = None
            code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
        self.record(name, "rpc", (time.perf_counter() - began) * 1000, code)
        return reply

    def _page(self, name: str, *thunks: Callable[[], Any]) -> list[Any]:
        began = time.perf_counter()
        replies = self.parallel(*thunks)
        failed = any(r is None for r in replies)
        self.record(f"page:{name}", "page", (time.perf_counter() - began) * 1000,
                    "FAILED_CALL" if failed else "OK")  # fmt: skip
        return replies

    def _run(self, task: str, inputs: dict[str, common_pb2.Value]) -> Callable[[], Any]:
        request = inference_pb2.RunRequest(task=task, inputs=inputs, context=self._context())
        return lambda: self.call(f"InferenceService/Run[{task}]", self.stubs.inference.Run, request)

    def _property(self) -> int:
        return zipf_index(self.rng, self.scenario.catalogue) + 1

    def _candidates(self, count: int) -> list[int]:
        """``count`` distinct properties, popular ones more often (Zipf draws; the tail
        filled uniformly should the draws repeat for too long)."""
        found: set[int] = set()
        for _ in range(count * 20):
            found.add(self._property())
            if len(found) == count:
                break
        rest = [p for p in range(1, self.scenario.catalogue + 1) if p not in found]
        found.update(self.rng.sample(rest, count - len(found)))
        return sorted(found)

    # -- pages -------------------------------------------------------------------------------

    def search_results(self) -> None:
        """A results page: features of 50 candidate properties, the shopper's experiment
        variants (exposures logged), the query's intent, and the semantic matches; a click on
        one result now and then, as feedback on the intent's prediction."""
        query, city = QUERIES[zipf_index(self.rng, len(QUERIES))]
        candidates = self._candidates(min(RESULTS_PER_PAGE, self.scenario.catalogue))
        features = feature_pb2.GetOnlineFeaturesRequest(feature_service=SEARCH_FEATURES)
        features.entity_keys.extend(_property_key(p) for p in candidates)
        assign = experiment_pb2.AssignRequest(
            unit_type="user", unit_id=self.user_id, context=self._context()
        )
        search = embedding_pb2.SearchRequest(
            collection=COLLECTION, text=f"{query} in {city}", k=10, include_metadata=False
        )
        _, _, intent, found = self._page(
            "search_results",
            lambda: self.call("FeatureService/GetOnlineFeatures", self.stubs.features.GetOnlineFeatures, features),  # noqa: E501
            lambda: self.call("ExperimentService/Assign", self.stubs.experiments.Assign, assign),
            self._run("query_intent", {"query": _text(f"{query} in {city}")}),
            lambda: self.call("EmbeddingService/Search", self.stubs.embedding.Search, search),
        )  # fmt: skip
        if (
            intent is not None
            and found is not None
            and self.rng.random() < self.scenario.click_rate
        ):
            hits = list(found.hits) or [None]
            position = self.rng.randrange(len(hits))
            hit = hits[position]
            click = feedback_pb2.Click(item_id=hit.id if hit else "", position=position)
            self._feedback(intent.request_id, "query_intent", feedback_pb2.Feedback(click=click))

    def property_page(self) -> None:
        """A property's page: its highlights (an LLM task grounded in its features) and its
        features; a booking now and then, as feedback on the highlights' prediction."""
        prop = self._property()
        highlights, _ = self._page(
            "property_page",
            self._run("property_highlights", {
                "property_id": common_pb2.Value(int64_value=prop),
                "property_name": _text(f"Property {prop}"),
            }),
            lambda: self.call(
                "FeatureService/GetOnlineFeatures", self.stubs.features.GetOnlineFeatures,
                feature_pb2.GetOnlineFeaturesRequest(
                    feature_service=PAGE_FEATURES, entity_keys=[_property_key(prop)]),
            ),
        )  # fmt: skip
        if highlights is not None and self.rng.random() < self.scenario.booking_rate:
            euros = self.rng.randint(60, 900)
            self._feedback(highlights.request_id, "property_highlights", feedback_pb2.Feedback(
                booking=feedback_pb2.Booking(
                    booking_id=f"lt-{uuid.uuid4().hex[:12]}", item_id=str(prop),
                    value=common_pb2.Money(currency_code="EUR", units=euros)),
            ))  # fmt: skip

    def autocomplete(self) -> None:
        """Suggestions while the shopper types: retrieval only, no model."""
        query, city = QUERIES[zipf_index(self.rng, len(QUERIES))]
        typed = query[: self.rng.randint(4, len(query))]
        self._page("autocomplete", self._run("search_suggestions", {
            "query": _text(typed), "city": _text(city)}))  # fmt: skip

    def _feedback(self, request_id: str, task: str, feedback: feedback_pb2.Feedback) -> None:
        feedback.idempotency_key = str(uuid.uuid4())
        feedback.request_id = request_id
        feedback.task = task
        feedback.source = "web"
        feedback.unit_type, feedback.unit_id = "user", self.user_id
        request = feedback_pb2.SubmitRequest(context=self._context(), feedback=feedback)
        self.call("FeedbackService/Submit", self.stubs.feedback.Submit, request)

    def visit(self, page: str) -> None:
        getattr(self, page)()


def _text(value: str) -> common_pb2.Value:
    return common_pb2.Value(string_value=value)


def _property_key(prop: int) -> common_pb2.EntityKey:
    return common_pb2.EntityKey(
        entity="property",
        columns=[
            common_pb2.KeyColumn(name="property_id", value=common_pb2.Value(int64_value=prop))
        ],
    )


def page_weights(scenario: Scenario) -> tuple[Sequence[str], Sequence[float]]:
    pages = [p for p, w in scenario.pages.items() if w > 0]
    return pages, [scenario.pages[p] for p in pages]
