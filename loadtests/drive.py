"""The load generator process: locust's gevent users run one scenario against the mesh.

Started by ``llmops loadtest`` as ``python -m loadtests.drive`` (its own process: gevent
patches the standard library, which the CLI's process must not see). It writes, into
``--out``:

- ``samples.csv``: one row per call and per page (seconds since the start, name, kind,
  latency in ms, status code);
- ``users.csv``: the number of running users and the generator's own CPU use, each second;
- ``run.json``: what ran (scenario, target, start, duration, why it stopped).

It stops by itself at the scenario's duration or request cap, whichever comes first, and
on SIGINT/SIGTERM.
"""

from __future__ import annotations

# gevent patches the standard library before anything else imports it (locust does the
# same on import); grpc then waits on gevent's hub instead of blocking the process.
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import grpc.experimental.gevent as grpc_gevent  # noqa: E402

grpc_gevent.init_gevent()

import psutil  # noqa: E402
from locust import LoadTestShape, User, between, task  # noqa: E402
from locust.env import Environment  # noqa: E402

from llmops.clients import BlockingMeshClient  # noqa: E402
from llmops.config import MeshConfig, load_config  # noqa: E402

from .spec import Scenario, load_scenarios, scenario_with  # noqa: E402
from .storefront import Shopper, Stubs, page_weights  # noqa: E402


class Samples:
    """Every call's and page's outcome, in memory until the run ends (a row is ~40 bytes:
    the request cap bounds it)."""

    def __init__(self, cap: int) -> None:
        self.began = time.perf_counter()
        self.rows: list[tuple[float, str, str, float, str]] = []
        self.calls = 0
        self.cap = cap

    def record(self, name: str, kind: str, latency_ms: float, code: str) -> None:
        self.rows.append((time.perf_counter() - self.began, name, kind, latency_ms, code))
        if kind == "rpc":
            self.calls += 1

    @property
    def full(self) -> bool:
        return self.calls >= self.cap


def _parallel(*thunks: Any) -> list[Any]:
    greenlets = [gevent.spawn(thunk) for thunk in thunks]
    gevent.joinall(greenlets)
    return [g.value for g in greenlets]


def user_class(scenario: Scenario, stubs: Stubs, samples: Samples, seed: int | None) -> type[User]:
    """A locust user class for ``scenario``: a shopper who visits its pages by weight, with
    the scenario's think time between pages."""
    pages, weights = page_weights(scenario)
    seeds = random.Random(seed)
    low, high = scenario.think_time_s

    class StorefrontShopper(User):
        wait_time = between(low, high)

        def on_start(self) -> None:
            self.shopper = Shopper(
                stubs, scenario, samples.record, rng=random.Random(seeds.random()),
                parallel=_parallel,
            )  # fmt: skip

        @task
        def browse(self) -> None:
            if samples.full:
                runner = self.environment.runner
                if runner is not None:
                    runner.quit()
                return
            page = self.shopper.rng.choices(pages, weights)[0]
            self.shopper.visit(page)

    return StorefrontShopper


def shape_class(scenario: Scenario) -> type[LoadTestShape]:
    class ScenarioShape(LoadTestShape):
        def tick(self) -> tuple[int, float] | None:
            users = scenario.users_at(self.get_run_time())  # type: ignore[no-untyped-call]
            return None if users is None else (users, scenario.spawn_rate)

    return ScenarioShape


def run(scenario: Scenario, config: MeshConfig, out: Path, target: str, seed: int | None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    samples = Samples(scenario.max_requests)
    mesh = BlockingMeshClient(config, default_timeout_s=30)
    stubs = Stubs.of(mesh)
    env = Environment(
        user_classes=[user_class(scenario, stubs, samples, seed)],
        shape_class=shape_class(scenario)(),
    )
    runner = env.create_local_runner()
    process = psutil.Process()
    process.cpu_percent(None)
    timeline: list[tuple[float, int, float]] = []

    def watch() -> None:
        while True:
            gevent.sleep(1.0)
            timeline.append(
                (time.perf_counter() - samples.began, runner.user_count, process.cpu_percent(None))
            )

    stopped = {"why": "duration"}

    def stop(why: str) -> None:
        stopped["why"] = why
        runner.quit()

    for sig in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(sig, stop, "signal")
    started = time.time()
    samples.began = time.perf_counter()
    watcher = gevent.spawn(watch)
    # The hard stop: the shape ends the run at its duration; this ends it even if a call
    # hangs past every deadline.
    hard = gevent.spawn_later(scenario.duration_s + 60, stop, "hard stop (duration + 60 s)")
    runner.start_shape()
    # The shape's greenlet ends when the shape says the run is over (or on quit); the
    # runner itself would wait for more commands.
    shape = runner.shape_greenlet
    if shape is not None:
        shape.join()
    runner.quit()
    hard.kill()
    watcher.kill()
    if samples.full:
        stopped["why"] = f"request cap ({scenario.max_requests} calls)"
    elapsed = time.perf_counter() - samples.began
    mesh.close()
    with (out / "samples.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("t_s", "name", "kind", "latency_ms", "code"))
        w.writerows((f"{t:.4f}", n, k, f"{ms:.3f}", c) for t, n, k, ms, c in samples.rows)
    with (out / "users.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("t_s", "users", "generator_cpu_percent"))
        w.writerows((f"{t:.2f}", u, f"{cpu:.1f}") for t, u, cpu in timeline)
    (out / "run.json").write_text(
        json.dumps(
            {
                "scenario": scenario.model_dump(mode="json"),
                "target": target,
                "mode": config.mode.value,
                "started_unix": started,
                "elapsed_s": elapsed,
                "stopped_by": stopped["why"],
                "generator_pid": os.getpid(),
            },
            indent=2,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.drive")
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--target", default="embedded")
    parser.add_argument("--overrides", default="{}", help="scenario fields as JSON")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    scenario = scenario_with(load_scenarios()[args.scenario], **json.loads(args.overrides))
    config = load_config(args.config)
    return run(scenario, config, args.out, args.target, args.seed)


if __name__ == "__main__":
    sys.exit(main())
