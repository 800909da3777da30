"""The pure parts of `llmops bench inference`: overheads and ratios, the target check, the
config files it writes (validated by the service's own loaders), and the process handling
(start in a group of its own, stop within bounded waits, readiness polling). No service,
no model, no LiteLLM: stand-in scripts only."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks import inference as bench
from benchmarks.inference_baselines import LITELLM, LITELLM_VERSION, litellm_command
from benchmarks.report import Case
from services.inference.config import load_serving
from services.inference.routes import load_routes

UPSTREAM = "http://127.0.0.1:9999/v1"


def _case(case: str, system: str, p50: float, p99: float, rps: float) -> dict[str, Any]:
    return {"case": case, "system": system, "p50_ms": p50, "p99_ms": p99, "rps": rps}


# -- numbers ----------------------------------------------------------------------------------


def test_overhead_is_the_difference_of_percentiles_with_the_direct_call() -> None:
    got = bench.overheads(_case("g", "llmops", 1.5, 4.25, 1), _case("g", "d", 0.25, 1.0, 1))
    assert got == {"overhead_p50_ms": 1.25, "overhead_p99_ms": 3.25}


def test_add_overheads_per_case_and_never_on_the_direct_system() -> None:
    summaries = [
        _case("generate_c1", "upstream-direct", 0.2, 0.5, 4000),
        _case("generate_c1", "llmops", 1.2, 2.5, 700),
        _case("generate_c1", "litellm", 10.2, 12.5, 90),
        _case("generate_c8", "upstream-direct", 1.0, 3.0, 7000),
        _case("generate_c8", "llmops", 6.0, 10.0, 1100),
        _case("stream_cpu", "llmops", 1000.0, 1200.0, 1),  # no direct in its case
    ]
    bench.add_overheads(summaries)
    assert "overhead_p99_ms" not in summaries[0] and "overhead_p99_ms" not in summaries[5]
    assert summaries[1]["overhead_p50_ms"] == pytest.approx(1.0)
    assert summaries[2]["overhead_p99_ms"] == pytest.approx(12.0)
    assert summaries[4]["overhead_p99_ms"] == pytest.approx(7.0)  # against c8's direct
    # a Run case carries the service's own overhead: never overwritten
    run = {**_case("generate_c1", "llmops", 1, 2, 3), "overhead_p99_ms": 0.5}
    bench.add_overheads([_case("generate_c1", "upstream-direct", 0.1, 0.2, 1), run])
    assert run["overhead_p99_ms"] == 0.5


def test_rps_ratios_llmops_over_litellm_where_both_ran() -> None:
    summaries = [
        _case("generate_c8", "llmops", 6, 10, 1100.0),
        _case("generate_c8", "litellm", 70, 400, 100.0),
        _case("generate_c32", "llmops", 26, 38, 1200.0),  # litellm skipped here
        _case("generate_c32", "upstream-direct", 3, 7, 8000.0),
    ]
    assert bench.generate_ratios(summaries) == {"generate_c8.rps.llmops/litellm": 11.0}
    assert bench.ratio(None, 1.0) is None and bench.ratio(1.0, 0.0) is None
    assert bench.ratio(1.0, 3.0) == 0.333


def test_percentiles_in_ms_and_streaming_rates() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    # nearest rank, as benchmarks.report.percentile
    assert bench.ms_percentiles(values, "x") == {"x_p50_ms": 50.0, "x_p99_ms": 100.0}
    samples = [
        bench.StreamSample(total_s=1.0, ttft_s=0.2, tokens=41, text="a"),
        bench.StreamSample(total_s=2.0, ttft_s=0.4, tokens=81, text="b"),
    ]
    extra = bench.stream_extra(samples)
    assert extra["output_tok_per_s"] == pytest.approx(122 / 3.0, abs=0.01)
    assert extra["decode_tok_per_s"] == pytest.approx(120 / 2.4, abs=0.01)
    assert extra["completion_tokens"] == 122 and extra["ttft_p50_ms"] == 400.0  # rank 2 of 2
    ratios = bench.stream_ratios([
        {"case": "stream_cpu", "system": "llmops", "output_tok_per_s": 45.0,
         "decode_tok_per_s": 50.0, "ttft_p50_ms": 110.0},
        {"case": "stream_cpu", "system": bench.LLAMA_DIRECT, "output_tok_per_s": 50.0,
         "decode_tok_per_s": 50.0, "ttft_p50_ms": 100.0},
    ])  # fmt: skip
    assert ratios == {
        "stream_cpu.output_tok_per_s.llmops/direct": 0.9,
        "stream_cpu.decode_tok_per_s.llmops/direct": 1.0,
        "stream_cpu.ttft_p50_ms.direct/llmops": 0.909,
    }


def test_stage_medians_of_run_replies() -> None:
    from llmops.v1 import common_pb2, inference_pb2

    def reply(*stages: tuple[str, int]) -> inference_pb2.RunResponse:
        return inference_pb2.RunResponse(
            stages=[common_pb2.StageLatency(stage=n, duration_us=us) for n, us in stages]
        )

    replies = [reply(("features", 1000), ("model", 500)), reply(("features", 3000)),
               reply(("features", 2000), ("model", 700))]  # fmt: skip
    assert bench.stage_p50s(replies) == {"features": 2.0, "model": 0.7}


def test_targets_are_stated_met_or_missed_with_their_numbers() -> None:
    summaries = [
        {**_case("generate_c1", "llmops", 1, 2, 3), "overhead_p99_ms": 1.5},
        {**_case("generate_c8", "llmops", 1, 2, 3), "overhead_p99_ms": 8.0},
        {**_case("generate_c8", "litellm", 1, 2, 3), "overhead_p99_ms": 80.0},  # not ours
        {**_case("run_query_intent_c1", "llmops", 1, 2, 3), "overhead_p99_ms": 12.0},
    ]
    ratios = {
        "generate_c8.rps.llmops/litellm": 4.0,
        "stream_cpu.output_tok_per_s.llmops/direct": 0.8,
    }
    lines = bench.target_lines(summaries, ratios)
    assert lines == [
        "met    generate_c1: Generate overhead p99 1.50 ms (target <= 2 ms)",
        "MISSED generate_c8: Generate overhead p99 8.00 ms (target <= 2 ms)",
        "met    generate_c8.rps.llmops/litellm = 4.00 (target >= 3)",
        "MISSED generate_c32.rps.llmops/litellm: not measured",
        "MISSED run_query_intent_c1: Run overhead p99 12.00 ms (target <= 10 ms)",
        "MISSED stream_cpu output tok/s llmops/direct = 0.800 (target >= 0.9)",
    ]


# -- config files -----------------------------------------------------------------------------


def test_the_service_routes_validate_and_have_no_policies_or_cache(tmp_path: Path) -> None:
    cpu = bench.storefront_cpu_engine()
    assert cpu["backend"] == "llama_cpp" and cpu["gguf"].endswith(".gguf")
    bench.write_yaml(tmp_path / "routes" / "bench.yaml", bench.service_routes(UPSTREAM, cpu))
    table = load_routes([tmp_path / "routes"])
    gen = table.routes[bench.GEN_ROUTE]
    assert (gen.input_policy, gen.output_policy, gen.cache_ttl_s) == ("", "", 0)
    assert gen.targets[0].version == 1 and not gen.targets[0].alias  # no registry lookup
    assert gen.sampling.max_tokens == bench.GEN_MAX_TOKENS
    spec = yaml.safe_load((tmp_path / "routes" / "bench.yaml").read_text())
    assert spec["engines"][bench.UPSTREAM_ENGINE]["base_url"] == UPSTREAM
    assert spec["engines"][bench.CPU_ENGINE] == cpu  # the storefront's CPU settings, as is
    stream = table.routes[bench.STREAM_ROUTE]
    assert (stream.input_policy, stream.output_policy) == ("", "")
    assert stream.sampling.temperature == 0.0
    assert stream.sampling.max_tokens == bench.STREAM_MAX_TOKENS
    # without the CPU model: the upstream route only
    only = bench.service_routes(UPSTREAM, None)
    assert [r["name"] for r in only["routes"]] == [bench.GEN_ROUTE]
    # the empty tasks file the service gets validates too
    bench.write_yaml(tmp_path / "tasks" / "bench.yaml", {"tasks": []})
    served = load_serving([tmp_path / "routes"], [tmp_path / "tasks"])
    assert not served.tasks.tasks


def test_the_mesh_routes_put_the_cpu_model_routes_on_the_upstream(tmp_path: Path) -> None:
    files = bench.mesh_routes(UPSTREAM)
    assert next(iter(files)) == "00-bench-upstream.yaml" and "storefront.yaml" in files
    for name, spec in files.items():
        bench.write_yaml(tmp_path / "routes" / name, spec)
    repo_tasks = bench.REPO_ROOT / "deploy" / "tasks"
    served = load_serving([tmp_path / "routes"], [repo_tasks])  # the repo tasks validate
    assert {"property_summary", "query_intent"} <= set(served.tasks.tasks)
    routes = served.routes.routes
    repo = load_routes([bench.REPO_ROUTES]).routes
    assert set(routes) == set(repo)  # every repo route, by name
    for name in ("chat-small", "summary-small"):
        for target, theirs in zip(routes[name].targets, repo[name].targets, strict=True):
            assert target.engine == bench.UPSTREAM_ENGINE
            assert target.served_model == bench.UPSTREAM_MODEL
            assert target.model == theirs.model and target.alias == theirs.alias
            assert target.max_concurrency >= 32  # no queueing inside the model step
        assert routes[name].sampling == repo[name].sampling
    engines = {e for r in routes.values() for t in r.targets for e in [t.engine]}
    written = yaml.safe_load((tmp_path / "routes" / "storefront.yaml").read_text())
    assert set(written["engines"]) <= engines  # the unused CPU engine is gone
    assert all(e.get("backend") != "llama_cpp" for e in written["engines"].values())


def test_mesh_routes_keep_what_is_not_on_the_cpu_model(tmp_path: Path) -> None:
    source = tmp_path / "src"
    bench.write_yaml(source / "a.yaml", {
        "engines": {"cpu": {"backend": "llama_cpp", "gguf": "x/y.gguf"},
                    "vllm": {"backend": "openai", "base_url": "http://vllm:8000/v1"}},
        "routes": [{"name": "mixed", "targets": [
            {"model": "big", "version": 2, "engine": "vllm"},
            {"model": "small", "version": 1, "engine": "cpu", "max_concurrency": 2},
        ]}],
    })  # fmt: skip
    (source / "notes.txt").write_text("not a routes file")
    files = bench.mesh_routes(UPSTREAM, source)
    assert sorted(files) == ["00-bench-upstream.yaml", "a.yaml"]
    first, second = files["a.yaml"]["routes"][0]["targets"]
    assert first == {"model": "big", "version": 2, "engine": "vllm"}
    assert second["engine"] == bench.UPSTREAM_ENGINE and second["max_concurrency"] == 64
    assert list(files["a.yaml"]["engines"]) == ["vllm"]


def test_the_litellm_config_and_command() -> None:
    config = bench.litellm_config(UPSTREAM)
    (model,) = config["model_list"]
    assert model["model_name"] == bench.LITELLM_MODEL
    assert model["litellm_params"]["model"] == f"openai/{bench.UPSTREAM_MODEL}"
    assert model["litellm_params"]["api_base"] == UPSTREAM
    python = Path("/v/bin/python")
    cmd = litellm_command(python, Path("/t/c.yaml"), 4321)
    assert cmd[0] == "/v/bin/litellm"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "4321"
    assert cmd[cmd.index("--num_workers") + 1] == "1"
    assert LITELLM.requirement == f"litellm[proxy]=={LITELLM_VERSION}"
    assert LITELLM.venv.name == "litellm-venv"


def test_the_service_and_mesh_environments(tmp_path: Path) -> None:
    from llmops.config import load_config
    from llmops.mesh import SERVICES

    env = bench.service_env(tmp_path / "s", tmp_path / "r", tmp_path / "t")
    assert json.loads(env["LLMOPS__INFERENCE__ROUTES"]) == [str(tmp_path / "r")]
    assert json.loads(env["LLMOPS__INFERENCE__TASKS"]) == [str(tmp_path / "t")]
    assert env["LLMOPS__EVENTS__BACKEND"] == "local" and env["LLMOPS__INFERENCE__STATE"] == "memory"

    ports = bench.free_ports(2 * len(SERVICES) + 1)
    assert len(set(ports)) == len(ports)
    base = {"PATH": "/bin", "LLMOPS__INFERENCE__TASKS": "[]", "LLMOPS__MODE": "x"}
    menv, grpc_ports = bench.mesh_env(base, tmp_path / "state", tmp_path / "r", ports)
    assert menv["PATH"] == "/bin" and "LLMOPS__MODE" not in menv
    assert "LLMOPS__INFERENCE__TASKS" not in menv  # the repo tasks
    assert set(grpc_ports) == set(SERVICES)
    assert menv["LLMOPS__SINK__ADMIN_PORT"] == str(ports[-1])
    assert menv["LLMOPS__EMBEDDING__DEMO_PROPERTIES"] == "80"
    config = load_config(environ=menv)  # the mesh's config loader takes every setting
    assert config.services["inference"].port == grpc_ports["inference"]
    with pytest.raises(ValueError):
        bench.mesh_env(base, tmp_path, tmp_path, ports[:3])


# -- timed loop -------------------------------------------------------------------------------


def test_drive_makes_n_calls_counts_failures_and_stops_at_its_cap() -> None:
    seen: list[int] = []

    async def call(i: int) -> None:
        seen.append(i)
        await asyncio.sleep(0)
        if i % 5 == 0:
            raise RuntimeError(f"boom {i}")

    case, errors = Case("c", "s"), bench.Errors()
    asyncio.run(bench.drive(call, 20, 4, 60.0, case, errors, offset=100))
    assert sorted(seen) == list(range(100, 120))
    assert errors.count == 4 and errors.first.startswith("RuntimeError: boom")
    assert len(case.latencies_s) == 16 and case.wall_s > 0

    async def slow(i: int) -> None:
        await asyncio.sleep(0.02)

    capped = Case("c", "s")
    started = time.monotonic()
    asyncio.run(bench.drive(slow, 10_000, 2, 0.1, capped))
    assert time.monotonic() - started < 2.0
    assert 2 <= len(capped.latencies_s) < 100


# -- processes --------------------------------------------------------------------------------

STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_stubborn_process_and_its_child_are_killed_within_bounds(tmp_path: Path) -> None:
    proc = bench.start_process("stubborn", [sys.executable, "-c", STUBBORN], os.environ,
                               tmp_path / "log")  # fmt: skip
    try:
        bench.wait_until(lambda: (tmp_path / "log").read_text().strip() != "", proc, 20, "child")
        child = int((tmp_path / "log").read_text().split()[0])
        assert _alive(child) and proc.group
    finally:
        started = time.monotonic()
        status = bench.stop_process(proc, grace_s=0.5)
    assert time.monotonic() - started < 5.0
    assert status == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)  # the process group went with it
    assert bench.stop_process(proc) == -signal.SIGKILL  # stopping twice is harmless


def test_a_process_that_stops_on_sigterm_exits_cleanly(tmp_path: Path) -> None:
    proc = bench.start_process("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
                               os.environ, tmp_path / "log")  # fmt: skip
    with bench.running(proc):
        assert proc.popen.poll() is None
    assert proc.popen.returncode == -signal.SIGTERM


def test_wait_until_fails_when_the_process_exits_or_time_runs_out(tmp_path: Path) -> None:
    script = "import sys; print('bad config'); sys.exit(3)"
    proc = bench.start_process("quitter", [sys.executable, "-c", script], os.environ,
                               tmp_path / "log")  # fmt: skip
    with bench.running(proc), pytest.raises(RuntimeError, match=r"exited \(3\)") as caught:
        bench.wait_until(lambda: False, proc, 20, "the quitter", interval_s=0.05)
    assert "bad config" in str(caught.value)  # the tail of its log
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="not ready after"):
        bench.wait_until(lambda: False, None, 0.2, "nothing", interval_s=0.05)
    assert time.monotonic() - started < 2.0
    assert bench.wait_until(lambda: True, None, 0.0, "ready at once") < 1.0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_cpu_time_and_quiet_wait_of_an_idle_process(tmp_path: Path) -> None:
    assert (bench.process_cpu_s(os.getpid()) or 0) > 0
    proc = bench.start_process("idle", [sys.executable, "-c", "import time; time.sleep(60)"],
                               os.environ, tmp_path / "log")  # fmt: skip
    with bench.running(proc):
        time.sleep(0.3)  # its interpreter start is done
        share = bench.wait_quiet(proc, 5.0, window_s=0.2)
        assert share is not None and share < 0.15
    assert bench.process_cpu_s(proc.popen.pid) is None  # reaped: gone from /proc


def test_http_ok_is_false_when_nothing_listens() -> None:
    (port,) = bench.free_ports(1)
    assert not bench.http_ok(f"http://127.0.0.1:{port}/health", timeout_s=0.5)
