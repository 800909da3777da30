"""``llmops bench experiment``: Assign over gRPC and in-process, against GrowthBook's SDK.

The set-up: 20 running experiments in 3 layers (``page`` 8 x 12.5% of its buckets,
``search`` 6 x 15%, ``email`` 6 x 10%; 2- and 3-way splits; 6 with market/device targeting),
so one unit lands in at most three experiments and the service evaluates all 20 per call.

Cases (BENCH.md):

- ``assign_grpc_20exp`` (llmops): ``Assign`` for one unit through the experiment service
  (its own process: ``python -m services.experiment``, file config store, exposures to the
  local event log) at a fixed concurrency; ``assign_grpc_20exp_seq`` one call at a time;
  ``assign_grpc_20exp_seq_no_exposure`` the same with ``skip_exposure`` (the exposure
  pipeline's share of the latency);
- ``assign_inprocess_20exp`` (llmops): the domain's ``assign`` in this process (no gRPC,
  exposures skipped: the same work GrowthBook's ``run`` does) — latency per call of all 20
  experiments, and ``assignments_per_s`` = calls x 20 / s;
- ``assign_inprocess_20exp`` (growthbook): GrowthBook's Python SDK evaluating the same 20
  experiments (namespaces = our layer ranges, same weights, targeting as conditions) in its
  own venv (:mod:`benchmarks.growthbook_baseline`).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from benchmarks import servers
from benchmarks.report import Case, emit
from llmops.v1 import common_pb2, experiment_pb2, experiment_pb2_grpc

LAYERS = (("page", 8, 1250), ("search", 6, 1500), ("email", 6, 1000))
"""(layer, experiments, buckets each) of a 10,000-bucket layer."""
CONTEXT = {"market": "NL", "device": "MOBILE_WEB", "locale": "nl-NL"}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def experiments() -> list[dict[str, Any]]:
    """The 20 experiments, with their bucket ranges as the service allocates them."""
    out = []
    for layer, count, size in LAYERS:
        for i in range(count):
            three = i % 3 == 2
            targeted = i % 3 == 1
            out.append(
                {
                    "id": f"{layer}-exp-{i}",
                    "layer": layer,
                    "ranges": [[i * size, (i + 1) * size]],
                    "traffic_bps": size,
                    "variants": [
                        {"key": "control", "weight": 34 if three else 50},
                        {"key": "treatment", "weight": 33 if three else 50},
                    ]
                    + ([{"key": "treatment_b", "weight": 33}] if three else []),
                    "salt": f"{layer}-exp-{i}",
                    "targeting": {"market_in": ["NL", "DE", "FR"], "device_eq": "MOBILE_WEB"}
                    if targeted
                    else None,
                }
            )
    return out


def _experiment_proto(spec: dict[str, Any]) -> experiment_pb2.Experiment:
    exp = experiment_pb2.Experiment(
        id=spec["id"], unit_type="user", layer=spec["layer"], traffic_bps=spec["traffic_bps"]
    )
    for n, v in enumerate(spec["variants"]):
        exp.variants.add(key=v["key"], weight=v["weight"], is_control=n == 0)
    t = spec["targeting"]
    if t:
        market = exp.targeting.all_of.filters.add().condition
        market.field = "market"
        market.operator = common_pb2.FieldCondition.OPERATOR_IN
        market.value.string_list_value.values.extend(t["market_in"])
        device = exp.targeting.all_of.filters.add().condition
        device.field = "device"
        device.operator = common_pb2.FieldCondition.OPERATOR_EQ
        device.value.string_value = t["device_eq"]
    return exp


def _context() -> common_pb2.RequestContext:
    return common_pb2.RequestContext(
        market=CONTEXT["market"], locale=CONTEXT["locale"], device=common_pb2.DEVICE_MOBILE_WEB
    )


async def _setup(admin: Any, specs: list[dict[str, Any]]) -> None:
    for layer, _, _ in LAYERS:
        await admin.CreateLayer(
            experiment_pb2.CreateLayerRequest(
                layer=experiment_pb2.Layer(name=layer, unit_type="user")
            )
        )
    for spec in specs:
        created = (
            await admin.CreateExperiment(
                experiment_pb2.CreateExperimentRequest(experiment=_experiment_proto(spec))
            )
        ).experiment
        started = (
            await admin.StartExperiment(
                experiment_pb2.StartExperimentRequest(id=created.id, version=created.version)
            )
        ).experiment
        got = [[r.start, r.end] for r in started.bucket_ranges]
        assert got == spec["ranges"], (spec["id"], got)  # GrowthBook gets the same ranges


async def _drive(stub: Any, requests: list[Any], concurrency: int, case: Case) -> None:
    queue = list(reversed(requests))

    async def worker() -> None:
        perf = time.perf_counter
        while queue:
            request = queue.pop()
            t0 = perf()
            await stub.Assign(request, timeout=5)
            case.latencies_s.append(perf() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    case.wall_s += time.perf_counter() - start


def _start_server(state: Path, log: Any) -> tuple[Any, str]:
    return servers.start_service(
        "experiment",
        {
            "LLMOPS__STATE_DIR": str(state),
            "LLMOPS__EVENTS__BACKEND": "local",  # exposures go to the durable local log
            "LLMOPS__EXPERIMENTS__STORE": "file",
        },
        log,
    )


async def _grpc_cases(address: str, specs: list[dict[str, Any]], units: list[str],
                      calls: int, concurrency: int) -> list[Case]:  # fmt: skip
    async with grpc.aio.insecure_channel(address) as channel:
        await _setup(experiment_pb2_grpc.ExperimentAdminServiceStub(channel), specs)
        stub = experiment_pb2_grpc.ExperimentServiceStub(channel)
        ctx = _context()

        def requests(n: int, offset: int, skip: bool = False) -> list[Any]:
            return [
                experiment_pb2.AssignRequest(
                    context=ctx,
                    unit_type="user",
                    unit_id=units[(offset + i) % len(units)],
                    skip_exposure=skip,
                )
                for i in range(n)
            ]

        await _drive(stub, requests(max(calls // 10, 200), 0), concurrency, Case("w", "w"))
        cases: list[Case] = []
        seq = max(calls // 4, 500)
        plan = [
            ("assign_grpc_20exp", concurrency, calls, False),
            ("assign_grpc_20exp_seq", 1, seq, False),
            ("assign_grpc_20exp_seq_no_exposure", 1, seq, True),
        ]
        for name, conc, n, skip in plan:
            case = Case(name, "llmops", concurrency=conc)
            await _drive(stub, requests(n, len(cases) * calls, skip), conc, case)
            cases.append(case)
        return cases


class _NoExposures:
    """The in-process case skips exposures: nothing is ever published."""

    def has_room(self, count: int) -> bool:
        return True

    def publish_all(self, envelopes: Sequence[Any]) -> None:
        raise AssertionError("the in-process case publishes nothing")


def _inprocess_case(state: Path, units: list[str], calls: int) -> Case:
    """The service's Assign in this process (request -> domain -> response, no gRPC), over
    the configuration the server stored."""
    from services.experiment.assignment import Assigner
    from services.experiment.catalog import Catalog
    from services.experiment.servicer import assign_query, assign_response
    from services.experiment.sticky import MemoryStickyStore
    from services.experiment.store import FileConfigStore

    catalog = Catalog(FileConfigStore(state / "experiments.json"))
    asyncio.run(catalog.refresh())
    assigner = Assigner(catalog, _NoExposures(), MemoryStickyStore())

    async def assign(r: experiment_pb2.AssignRequest) -> experiment_pb2.AssignResponse:
        return assign_response(await assigner.assign(assign_query(r)))

    ctx = _context()
    requests = [
        experiment_pb2.AssignRequest(
            context=ctx, unit_type="user", unit_id=units[i % len(units)], skip_exposure=True
        )
        for i in range(calls)
    ]
    case = Case("assign_inprocess_20exp", "llmops")

    async def run() -> int:
        for r in requests[: calls // 10]:
            await assign(r)
        assigned = 0
        perf = time.perf_counter
        start = perf()
        for r in requests:
            t0 = perf()
            assigned += len((await assign(r)).assignments)
            case.latencies_s.append(perf() - t0)
        case.wall_s = perf() - start
        return assigned

    assigned = asyncio.run(run())
    case.extra = {
        "assignments_per_s": round(calls * 20 / case.wall_s),
        "assigned_per_call": round(assigned / calls, 3),
    }
    return case


def main(*, quick: bool, concurrency: int = 8, calls: int | None = None) -> None:
    from benchmarks.growthbook_baseline import run_growthbook_baseline

    calls = calls or (3_000 if quick else 20_000)
    rng = random.Random(5)
    units = [f"u-{rng.getrandbits(48):012x}" for _ in range(50_000)]
    specs = experiments()
    tmp = Path(tempfile.mkdtemp(prefix="llmops-bench-experiment-"))
    try:
        with (tmp / "server.log").open("w") as log:
            proc, address = _start_server(tmp / "state", log)
            try:
                _log(f"gRPC Assign: {calls:,} calls at concurrency {concurrency}, then sequential")
                cases = asyncio.run(_grpc_cases(address, specs, units, calls, concurrency))
            finally:
                proc.terminate()
                proc.wait(30)
        _log("in-process assign ...")
        cases.append(_inprocess_case(tmp / "state", units, calls * 2))
        spec_path = tmp / "spec.json"
        spec_path.write_text(
            json.dumps(
                {
                    "layers": [
                        {"name": n, "bucket_count": 10_000, "salt": n} for n, _, _ in LAYERS
                    ],
                    "experiments": specs,
                    "units": units,
                    "context": CONTEXT,
                }
            )
        )
        _log("GrowthBook (its own venv) ...")
        summaries = [c.summary() for c in cases]
        summaries += run_growthbook_baseline(spec_path=spec_path, calls=calls * 2, log=_log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    by = {(c["case"], c["system"]): c for c in summaries}
    ratios: dict[str, float] = {}
    ours, theirs = (
        by.get(("assign_inprocess_20exp", "llmops")),
        by.get(("assign_inprocess_20exp", "growthbook")),
    )
    if ours and theirs and theirs.get("rps"):
        ratios["assign_inprocess_20exp.rps.llmops/growthbook"] = round(
            ours["rps"] / theirs["rps"], 2
        )
        ratios["assign_inprocess_20exp.p99_ms.growthbook/llmops"] = round(
            theirs["p99_ms"] / ours["p99_ms"], 2
        )
    emit("experiment", summaries, ratios)
