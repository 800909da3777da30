"""``llmops bench inference``: platform overhead of the inference service, against LiteLLM.

Three groups of cases (output per ../shared/BENCH.md, target ``inference``):

``generate_c1`` / ``generate_c8`` / ``generate_c32`` — the overhead of ``Generate``.
  One fast OpenAI-compatible upstream (:mod:`benchmarks.openai_upstream`, a process of its own:
  ``python -m benchmarks.openai_upstream``, 16 words a reply, no delay: not a model) sits behind
  every system; the same short chats (one user message), ``max_tokens`` 16, non-streaming,
  at 1, 8 and 32 calls in flight (that many coroutines of the bench's uvloop event loop, each
  sending its next call when the last is answered):

  - ``upstream-direct``: the upstream itself, ``POST /v1/chat/completions`` through one
    pooled ``aiohttp`` session: the floor every other system stands on;
  - ``llmops``: the inference service as a process (``python -m services.inference``,
    production mode, local event log, in-memory state, access log off) with a routes file
    the bench writes: one ``openai`` engine at the upstream and a route without guardrail
    policies and without cache (version pinned, so no registry lookup); called with
    ``grpc.aio`` ``Generate``;
  - ``litellm``: the LiteLLM proxy (``litellm --config ... --num_workers 1``, from its own
    venv: :mod:`benchmarks.inference_baselines`) with one ``openai/`` model at the same
    upstream, ``POST /chat/completions`` through the same kind of ``aiohttp`` session.

  The systems run back to back in interleaved rounds (never side by side: the 2 cores are
  shared by the caller, the system and the upstream), each after a warm-up. Each case of
  ``llmops`` and ``litellm`` carries ``overhead_p50_ms`` / ``overhead_p99_ms``: its p50 / p99
  minus ``upstream-direct``'s in the same case and run (a difference of percentiles: calls
  cannot be paired). At 8 and 32 in flight the latencies include queueing for the shared
  cores, so the overhead there is mostly the system's CPU cost per call times the queue.

``run_property_summary_c1`` / ``_c8``, ``run_property_summary_cold_c1`` / ``_c8``,
``run_query_intent_c1`` / ``_c8`` — a whole ``Run``. ``property_summary`` repeats one property
page (its retrieval query is then served from the embedding service's query cache, as a
popular page's would be); ``property_summary_cold`` names a new property every run, so every
retrieval embeds its query.
  The mesh in embedded mode as one process (``python -m llmops up``, 80 demo properties)
  with a routes directory whose ``chat-small`` and ``summary-small`` target the same upstream
  (so the model step is instant); the repo's tasks (``deploy/tasks/storefront.yaml``) run
  against it, every step: experiment, features, retrieval (an embedding of the query),
  prompt from the registry, guardrails in and out, model, post-processing, the prediction
  log. Measured once the demo data is seeded (a ``search_suggestions`` run returns listings
  and a ``query_intent`` run succeeds). ``p50_ms`` / ``p99_ms`` are the caller's latency;
  ``overhead_p50_ms`` / ``overhead_p99_ms`` are the service's own ``RunResponse.overhead_us``
  (everything but the model step), ``server_p50_ms`` its ``total_latency_us``,
  ``model_p50_ms`` the difference, ``stages_p50_ms`` the median of each stage it reports.

``stream_cpu`` — ``GenerateStream`` on the embedded CPU model.
  SmolLM2-135M-Instruct (GGUF) with the engine settings of ``local-cpu`` in
  ``deploy/inference/storefront.yaml`` (read from it), on a route of the same service process
  as the Generate cases (no guardrail policies), against ``llama-cpp-direct``: the project's
  :class:`~services.inference.engines.llama_cpp.LlamaCppEngine` in the bench's process, same
  GGUF and settings, same chats, greedy, ``max_tokens`` 64, one generation at a time,
  alternating. ``p50_ms`` / ``p99_ms`` are a whole generation; ``ttft_p50_ms`` /
  ``ttft_p99_ms`` the time to the first text; ``output_tok_per_s`` the completion tokens over
  the generations' total time; ``decode_tok_per_s`` the tokens after the first over the time
  after the first text; ``same_text`` the share of generations with identical text.

Ratios: ``generate_c<N>.rps.llmops/litellm``, ``stream_cpu.output_tok_per_s.llmops/direct``,
``stream_cpu.ttft_p50_ms.direct/llmops``. The targets (Generate overhead p99 <= 2 ms, >= 3x
LiteLLM's rps at 8 and 32 in flight, Run overhead p99 <= 10 ms, streaming >= 90 % of direct)
are checked on stderr after the table.

``--quick``: the same cases with fewer calls, each timed phase capped in time (``n`` in the
case): 600 Generate calls per system and concurrency (LiteLLM stops at its 1 s cap per round,
~150-250 calls), 4 streamed generations each, up to 150 Runs per task and concurrency. Every
process the bench starts listens on 127.0.0.1 and is stopped in a ``finally`` (SIGTERM, or
SIGINT for the mesh, a bounded wait, then SIGKILL of its process group).

Measured on the 2-core box (LiteLLM's venv present): ``--quick`` ~46 s in all (services and
proxy starting ~7 s, Generate cases ~11 s, streaming ~11 s, mesh start and seeding ~7 s,
Runs ~8 s); the full run ~5.5 min (LiteLLM's 3 x 5,000 calls ~2.5 min of it). The first run
creates ``.llmops/bench/litellm-venv`` (~45 s here).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks import servers
from benchmarks.report import Case, emit, percentile

HOST = servers.HOST
REPO_ROOT = servers.REPO_ROOT
REPO_ROUTES = REPO_ROOT / "deploy" / "inference"
STOREFRONT_ROUTES = REPO_ROUTES / "storefront.yaml"
CPU_ENGINE = "local-cpu"
"""The engine of storefront.yaml whose settings the streaming case copies."""

UPSTREAM_ENGINE = "bench-upstream"
GEN_ROUTE = "bench-upstream"
STREAM_ROUTE = "bench-cpu"
GEN_MAX_TOKENS = 16
UPSTREAM_REPLY_TOKENS = 16
UPSTREAM_MODEL = "upstream"
LITELLM_MODEL = "bench-upstream"
STREAM_MAX_TOKENS = 64
STREAM_REPETITION_PENALTY = 1.1
"""chat-small's, in storefront.yaml; the same on both sides of the streaming case."""
CONCURRENCIES = (1, 8, 32)
GEN_SYSTEMS = ("upstream-direct", "llmops", "litellm")
DIRECT = "upstream-direct"
LLAMA_DIRECT = "llama-cpp-direct"
RUN_CONCURRENCY = 8
COLD_RUNS = 5_000
"""Distinct property names of the cold property_summary case (more than its runs + warm-ups)."""

PROMPTS = (
    "Suggest a quiet hotel near the beach in Lisbon.",
    "Is breakfast included at Casa Azul?",
    "Which neighbourhood of Barcelona is best for families?",
    "Find me a cheap hostel in Berlin for two nights.",
    "What is the check-in time at the Nice apartment?",
    "Recommend a romantic villa with a sea view.",
    "Do any hotels in Paris allow pets?",
    "How far is the Rome guesthouse from the station?",
)
STREAM_PROMPTS = (
    "Describe a small seaside hotel in Lisbon in three sentences.",
    "Write a short welcome message for guests of a city apartment.",
    "List three things to do near a beach villa.",
    "Explain what a boutique hotel is to a first-time traveller.",
    "Summarise why guests like a quiet guesthouse.",
    "Give two tips for booking a family room.",
)
QUERIES = (
    "family hotel with a pool near the beach in Lisbon",
    "cheap hostel in Berlin",
    "romantic weekend in Paris",
    "business hotel near the station in Vienna",
    "luxury villa with a sea view",
    "quiet apartment in the old town",
)
REVIEWS = (
    "Lovely quiet stay, the room was spotless.",
    "Great breakfast and very friendly staff.",
    "Close to the beach, easy to park the car.",
)
DEMO_USERS = ("u-000001", "u-000002", "u-000003")


@dataclass(frozen=True)
class Plan:
    gen_calls: int
    """Timed Generate calls per system and concurrency (split over the rounds)."""
    gen_warmup: int
    gen_rounds: int
    gen_phase_cap_s: float
    """A system's share of one round stops after this long, whatever its count."""
    stream_warmup: int
    stream_generations: int
    run_warmup: int
    run_calls: int
    """Timed Runs per task and concurrency."""
    run_phase_cap_s: float


QUICK = Plan(
    gen_calls=600, gen_warmup=60, gen_rounds=2, gen_phase_cap_s=1.0,
    stream_warmup=1, stream_generations=4,
    run_warmup=10, run_calls=150, run_phase_cap_s=2.5,
)  # fmt: skip
FULL = Plan(
    gen_calls=5_000, gen_warmup=300, gen_rounds=4, gen_phase_cap_s=15.0,
    stream_warmup=2, stream_generations=24,
    run_warmup=30, run_calls=2_000, run_phase_cap_s=30.0,
)  # fmt: skip

START_TIMEOUT_S = 60.0
LITELLM_START_TIMEOUT_S = 180.0
"""LiteLLM imports a large web stack; its first start in a fresh venv compiles bytecode."""
MESH_START_TIMEOUT_S = 120.0
SEED_TIMEOUT_S = 120.0
QUIET_TIMEOUT_S = 20.0
"""How long the mesh may take to finish its background work after seeding."""
STOP_GRACE_S = 15.0
CALL_TIMEOUT_S = 30.0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Numbers


def overheads(system: Mapping[str, Any], direct: Mapping[str, Any]) -> dict[str, float]:
    """``overhead_p50_ms`` / ``overhead_p99_ms``: a case summary's percentiles minus those
    of the direct call in the same case."""
    return {
        "overhead_p50_ms": round(float(system["p50_ms"]) - float(direct["p50_ms"]), 4),
        "overhead_p99_ms": round(float(system["p99_ms"]) - float(direct["p99_ms"]), 4),
    }


def add_overheads(summaries: list[dict[str, Any]], direct: str = DIRECT) -> None:
    """Give every case summary of a system other than ``direct`` its overhead over the
    ``direct`` summary of the same case (in place; cases without a direct one are left)."""
    base = {s["case"]: s for s in summaries if s["system"] == direct}
    for s in summaries:
        if s["system"] != direct and s["case"] in base and "overhead_p99_ms" not in s:
            s.update(overheads(s, base[s["case"]]))


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    """a / b rounded, or None when either is missing or b is 0."""
    if a is None or b is None or not b:
        return None
    return round(a / b, digits)


def generate_ratios(summaries: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``<case>.rps.llmops/litellm`` for every generate case both systems have."""
    by = {(s["case"], s["system"]): s for s in summaries}
    out: dict[str, float] = {}
    for (case, system), ours in sorted(by.items()):
        theirs = by.get((case, "litellm"))
        if system != "llmops" or theirs is None:
            continue
        r = ratio(ours.get("rps"), theirs.get("rps"))
        if r is not None:
            out[f"{case}.rps.llmops/litellm"] = r
    return out


def ms_percentiles(values_s: Sequence[float], prefix: str) -> dict[str, float]:
    """``<prefix>_p50_ms`` / ``<prefix>_p99_ms`` of seconds (nearest rank)."""
    ordered = sorted(values_s)
    return {
        f"{prefix}_p50_ms": round(percentile(ordered, 50) * 1000, 4),
        f"{prefix}_p99_ms": round(percentile(ordered, 99) * 1000, 4),
    }


@dataclass
class StreamSample:
    total_s: float
    ttft_s: float
    tokens: int
    text: str


def stream_extra(samples: Sequence[StreamSample]) -> dict[str, float]:
    """TTFT percentiles and token rates of a streaming case (see the module docstring)."""
    total = sum(s.total_s for s in samples)
    tokens = sum(s.tokens for s in samples)
    after_first = sum(max(s.total_s - s.ttft_s, 0.0) for s in samples)
    decoded = sum(max(s.tokens - 1, 0) for s in samples)
    return {
        **ms_percentiles([s.ttft_s for s in samples], "ttft"),
        "output_tok_per_s": round(tokens / total, 2) if total else 0.0,
        "decode_tok_per_s": round(decoded / after_first, 2) if after_first else 0.0,
        "completion_tokens": tokens,
    }


def target_lines(summaries: Sequence[Mapping[str, Any]], ratios: Mapping[str, float]
                 ) -> list[str]:  # fmt: skip
    """One line per target of the issue: met or MISSED, with the number."""
    lines: list[str] = []

    def check(ok: bool, text: str) -> None:
        lines.append(f"{'met   ' if ok else 'MISSED'} {text}")

    for s in summaries:
        if (
            s["system"] == "llmops"
            and s["case"].startswith("generate_")
            and ("overhead_p99_ms" in s)
        ):
            v = float(s["overhead_p99_ms"])
            check(v <= 2.0, f"{s['case']}: Generate overhead p99 {v:.2f} ms (target <= 2 ms)")
    for c in (8, 32):
        key = f"generate_c{c}.rps.llmops/litellm"
        if key in ratios:
            check(ratios[key] >= 3.0, f"{key} = {ratios[key]:.2f} (target >= 3)")
        else:
            lines.append(f"MISSED {key}: not measured")
    for s in summaries:
        if s["case"].startswith("run_") and "overhead_p99_ms" in s and s["system"] == "llmops":
            v = float(s["overhead_p99_ms"])
            check(v <= 10.0, f"{s['case']}: Run overhead p99 {v:.2f} ms (target <= 10 ms)")
    tok = ratios.get("stream_cpu.output_tok_per_s.llmops/direct")
    if tok is not None:
        check(tok >= 0.9, f"stream_cpu output tok/s llmops/direct = {tok:.3f} (target >= 0.9)")
    ttft = ratios.get("stream_cpu.ttft_p50_ms.direct/llmops")
    if ttft is not None:
        check(ttft >= 0.9, f"stream_cpu TTFT p50 direct/llmops = {ttft:.3f} (target >= 0.9)")
    return lines


# ---------------------------------------------------------------------------------------------
# Config files the bench writes


def storefront_cpu_engine(path: Path = STOREFRONT_ROUTES) -> dict[str, Any]:
    """The ``local-cpu`` engine of the storefront routes, as written there."""
    spec = yaml.safe_load(path.read_text())["engines"][CPU_ENGINE]
    if not isinstance(spec, dict) or spec.get("backend") != "llama_cpp":
        raise RuntimeError(f"{path}: engines.{CPU_ENGINE} is not a llama_cpp engine")
    return dict(spec)


def service_routes(upstream_base_url: str, cpu_engine: Mapping[str, Any] | None) -> dict[str, Any]:
    """The standalone service's routes: ``bench-upstream`` on an openai engine at the upstream
    (no policies, no cache, version pinned), and ``bench-cpu`` on the CPU model when given."""
    engines: dict[str, Any] = {UPSTREAM_ENGINE: _upstream_engine(upstream_base_url)}
    routes: list[dict[str, Any]] = [
        {
            "name": GEN_ROUTE,
            "description": "llmops bench inference: the fast OpenAI-compatible upstream.",
            "targets": [
                {
                    "model": "bench-upstream-model",
                    "version": 1,
                    "engine": UPSTREAM_ENGINE,
                    "served_model": UPSTREAM_MODEL,
                    "timeout_s": CALL_TIMEOUT_S,
                    "max_concurrency": 64,
                    "max_queue": 256,
                }
            ],
            "sampling": {"max_tokens": GEN_MAX_TOKENS, "temperature": 0.0},
            "cache_ttl_s": 0,
        }
    ]
    if cpu_engine is not None:
        engines[CPU_ENGINE] = dict(cpu_engine)
        routes.append(
            {
                "name": STREAM_ROUTE,
                "description": "llmops bench inference: the embedded CPU model, no policies.",
                "targets": [
                    {
                        "model": "smollm2-135m-instruct",
                        "version": 1,
                        "engine": CPU_ENGINE,
                        "timeout_s": 120,
                        "max_concurrency": 2,
                        "max_queue": 32,
                    }
                ],
                "sampling": {
                    "max_tokens": STREAM_MAX_TOKENS,
                    "temperature": 0.0,
                    "repetition_penalty": STREAM_REPETITION_PENALTY,
                },
                "cache_ttl_s": 0,
            }
        )
    return {"engines": engines, "routes": routes}


def mesh_routes(upstream_base_url: str, source: Path = REPO_ROUTES) -> dict[str, dict[str, Any]]:
    """The repo's route files (file name -> content) with every target on an in-process
    ``llama_cpp`` engine (``chat-small``, ``summary-small``: the CPU model) moved to the
    upstream, keeping names, models, sampling and policies, and without a concurrency limit
    that would queue calls inside the model step (a remote server, not 2 CPU sequences).
    Other engines (e.g. an ONNX ranker) stay as they are; the llama_cpp engines no target
    uses any more are dropped (nothing to preload). The upstream engine is a file of its own
    (``00-bench-upstream.yaml``): engines are shared by every file of a directory."""
    from llmops.scheduler import YAML_SUFFIXES

    out: dict[str, dict[str, Any]] = {
        "00-bench-upstream.yaml": {
            "engines": {UPSTREAM_ENGINE: _upstream_engine(upstream_base_url)}
        }
    }
    for path in sorted(p for p in source.iterdir() if p.suffix in YAML_SUFFIXES):
        spec = yaml.safe_load(path.read_text()) or {}
        engines: dict[str, Any] = dict(spec.get("engines") or {})
        local = {n for n, e in engines.items() if (e or {}).get("backend") == "llama_cpp"}
        routes = []
        for route in spec.get("routes") or []:
            targets = [
                {
                    **target,
                    "engine": UPSTREAM_ENGINE,
                    "served_model": UPSTREAM_MODEL,
                    "max_concurrency": 64,
                    "max_queue": 256,
                }
                if target.get("engine") in local
                else target
                for target in route["targets"]
            ]
            routes.append({**route, "targets": targets})
        used = {t.get("engine") for r in routes for t in r["targets"]}
        spec["engines"] = {n: e for n, e in engines.items() if n not in local or n in used}
        spec["routes"] = routes
        out[path.name] = spec
    return out


def _upstream_engine(base_url: str) -> dict[str, Any]:
    return {"backend": "openai", "base_url": base_url, "max_connections": 64}


def litellm_config(upstream_base_url: str) -> dict[str, Any]:
    """One model at the upstream; no callbacks, no database, no master key."""
    return {
        "model_list": [
            {
                "model_name": LITELLM_MODEL,
                "litellm_params": {
                    "model": f"openai/{UPSTREAM_MODEL}",
                    "api_base": upstream_base_url,
                    "api_key": "sk-bench-unused",
                },
            }
        ],
        "litellm_settings": {"telemetry": False, "drop_params": True, "set_verbose": False},
        # no master key (the proxy refuses to start without one unless told): our service
        # authenticates no caller either, and LiteLLM checks no key per call this way
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
    }


def write_yaml(path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
    return path


def service_env(state_dir: Path, routes_dir: Path, tasks_dir: Path) -> dict[str, str]:
    """Production-like settings of the standalone inference service (on top of what
    :func:`benchmarks.servers.start_service` sets: port, no admin port, no access log)."""
    return {
        "LLMOPS__STATE_DIR": str(state_dir),
        "LLMOPS__EVENTS__BACKEND": "local",
        "LLMOPS__INFERENCE__STATE": "memory",
        "LLMOPS__INFERENCE__ROUTES": json.dumps([str(routes_dir)]),
        "LLMOPS__INFERENCE__TASKS": json.dumps([str(tasks_dir)]),
    }


def mesh_env(base: Mapping[str, str], state_dir: Path, routes_dir: Path,
             ports: Sequence[int]) -> tuple[dict[str, str], dict[str, int]]:  # fmt: skip
    """``llmops up``'s environment (as tests/support.py builds it): our environment without
    any ``LLMOPS__`` setting, a port and an admin port per service, the sink's admin port (the
    last of ``ports``), 80 demo properties, and the bench routes. (env, grpc port by name)."""
    from llmops.mesh import SERVICES

    if len(ports) != 2 * len(SERVICES) + 1:
        raise ValueError(f"need {2 * len(SERVICES) + 1} ports, got {len(ports)}")
    env = {k: v for k, v in base.items() if not k.startswith("LLMOPS__")}
    env["LLMOPS__STATE_DIR"] = str(state_dir)
    grpc_ports: dict[str, int] = {}
    for i, name in enumerate(SERVICES):
        grpc_ports[name] = ports[2 * i]
        env[f"LLMOPS__SERVICES__{name.upper()}__PORT"] = str(ports[2 * i])
        env[f"LLMOPS__SERVICES__{name.upper()}__ADMIN_PORT"] = str(ports[2 * i + 1])
    env["LLMOPS__SINK__ADMIN_PORT"] = str(ports[-1])
    env["LLMOPS__EMBEDDING__DEMO_PROPERTIES"] = "80"
    env["LLMOPS__INFERENCE__ROUTES"] = json.dumps([str(routes_dir)])
    env["LLMOPS__SERVER__ACCESS_LOG"] = "false"
    env["LLMOPS__LOGGING__LEVEL"] = "warning"
    # plaintext like the gateways it is compared with (`llmops bench noop` prices TLS + auth)
    env["LLMOPS__SECURITY__INSECURE"] = "true"
    return env, grpc_ports


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (held open together while picked)."""
    import socket

    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass
class Process:
    """A process the bench started, its output in a file; ``group``: it leads a process
    group of its own (started in a new session), stopped with its children."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    group: bool = False

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def start_process(name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path,
                  stop_signal: int = signal.SIGTERM) -> Process:  # fmt: skip
    """Start ``argv`` in a new session (so that its children are stopped with it)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            list(argv), env=dict(env), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=REPO_ROOT, start_new_session=True,
        )  # fmt: skip
    return Process(name, popen, log_path, stop_signal, group=True)


def _signal(proc: Process, sig: int) -> None:
    """``sig`` to the process (and its group when it leads one)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if proc.group:
            os.killpg(proc.popen.pid, sig)
        elif proc.popen.poll() is None:
            proc.popen.send_signal(sig)


def stop_process(proc: Process, grace_s: float = STOP_GRACE_S) -> int | None:
    """Stop ``proc`` and its process group: its stop signal, up to ``grace_s`` for it to
    exit, then SIGKILL and a bounded wait. Its exit status (None if it could not be reaped)."""
    popen = proc.popen
    if popen.poll() is None:
        _signal(proc, proc.stop_signal)
        try:
            popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            _log(f"{proc.name}: still running {grace_s:.0f} s after the stop signal; killing it")
    if proc.group or popen.poll() is None:
        _signal(proc, signal.SIGKILL)  # the process, or stragglers of its group
    try:
        return popen.wait(10)
    except subprocess.TimeoutExpired:
        return None


@contextlib.contextmanager
def running(proc: Process) -> Iterator[Process]:
    """Stop ``proc`` on the way out, whatever happened."""
    try:
        yield proc
    finally:
        stop_process(proc)


def wait_until(ready: Callable[[], bool], proc: Process | None, timeout_s: float, what: str,
               interval_s: float = 0.2) -> float:  # fmt: skip
    """Poll ``ready`` until it is true; seconds waited. RuntimeError when ``proc`` exits or
    ``timeout_s`` passes (with the tail of its log)."""
    start = time.monotonic()
    while True:
        if ready():
            return time.monotonic() - start
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(
                f"{what}: {proc.name} exited ({proc.popen.returncode}); its log:\n"
                + proc.log_tail()
            )
        if time.monotonic() - start > timeout_s:
            tail = f"; its log:\n{proc.log_tail()}" if proc is not None else ""
            raise RuntimeError(f"{what}: not ready after {timeout_s:.0f} s{tail}")
        time.sleep(interval_s)


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return bool(200 <= reply.status < 300)
    except (OSError, urllib.error.URLError):
        return False


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, every thread) of a live process, from /proc; None where
    there is no /proc or the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime: fields 14 and 15


def wait_quiet(proc: Process, timeout_s: float, busy_share: float = 0.15,
               window_s: float = 0.5) -> float | None:  # fmt: skip
    """Wait until ``proc`` uses under ``busy_share`` of a core over a ``window_s`` window
    (background work after start, e.g. seeding, would compete with the timed calls), at most
    ``timeout_s``. Its share over the last window, or None without /proc."""
    deadline = time.monotonic() + timeout_s
    share = None
    while True:
        before, t0 = process_cpu_s(proc.popen.pid), time.monotonic()
        if before is None:
            return None
        time.sleep(window_s)
        after = process_cpu_s(proc.popen.pid)
        if after is None:
            return None
        share = (after - before) / (time.monotonic() - t0)
        if share < busy_share or time.monotonic() > deadline:
            return share


def grpc_serving(address: str, service: str = "", timeout_s: float = 1.0) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


# ---------------------------------------------------------------------------------------------
# Timed loops

Call = Callable[[int], Awaitable[None]]


@dataclass
class Errors:
    count: int = 0
    first: str = ""


async def drive(call: Call, n: int, concurrency: int, cap_s: float, case: Case,
                errors: Errors | None = None, offset: int = 0) -> None:  # fmt: skip
    """``n`` calls (``call(offset + i)``) from ``concurrency`` workers, each sending its next
    call when the last is answered, stopping early once ``cap_s`` has passed. Latencies of the
    calls that succeeded go into ``case`` and the wall time is added to it; a call that
    raises is counted in ``errors`` (a bounded run never stops on one failed call)."""
    perf = time.perf_counter
    counter = iter(range(n))
    deadline = perf() + cap_s
    errs = errors if errors is not None else Errors()

    async def worker() -> None:
        for i in counter:
            t0 = perf()
            try:
                await call(offset + i)
            except Exception as exc:  # counted, reported; the run goes on
                errs.count += 1
                if not errs.first:
                    errs.first = f"{type(exc).__name__}: {exc}"[:300]
            else:
                case.latencies_s.append(perf() - t0)
            if perf() > deadline:
                return

    start = perf()
    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    case.wall_s += perf() - start


# ---------------------------------------------------------------------------------------------
# Generate: upstream-direct, llmops, litellm


def chat_body(prompt: str, model: str) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": GEN_MAX_TOKENS,
            "temperature": 0.0,
            "stream": False,
        }
    ).encode()


def _http_call(session: Any, url: str, bodies: Sequence[bytes]) -> Call:
    headers = {"Content-Type": "application/json"}

    async def call(i: int) -> None:
        async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as reply:
            payload = await reply.read()
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}: {payload[:200]!r}")
        if not json.loads(payload)["choices"][0]["message"]["content"]:
            raise RuntimeError("empty reply")

    return call


def _grpc_generate_call(stub: Any) -> Call:
    from llmops.v1 import inference_pb2

    requests = [
        inference_pb2.GenerateRequest(
            route=GEN_ROUTE,
            messages=inference_pb2.ChatMessageList(
                messages=[inference_pb2.ChatMessage(role=inference_pb2.CHAT_ROLE_USER, content=p)]
            ),
            sampling=inference_pb2.SamplingParams(max_tokens=GEN_MAX_TOKENS, temperature=0.0),
        )
        for p in PROMPTS
    ]

    async def call(i: int) -> None:
        reply = await stub.Generate(requests[i % len(requests)], timeout=CALL_TIMEOUT_S)
        if not reply.text:
            raise RuntimeError(f"empty reply (finish {reply.finish_reason})")

    return call


async def generate_cases(address: str, upstream_url: str, litellm_url: str | None, plan: Plan
                         ) -> list[Case]:  # fmt: skip
    """The generate_c<N> cases of every system (litellm only when ``litellm_url``)."""
    import aiohttp
    import grpc

    from llmops.v1 import inference_pb2_grpc

    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
    cases: list[Case] = []
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        grpc.aio.insecure_channel(address) as channel,
    ):
        calls: dict[str, Call] = {
            DIRECT: _http_call(
                session,
                f"{upstream_url}/chat/completions",
                [chat_body(p, UPSTREAM_MODEL) for p in PROMPTS],
            ),
            "llmops": _grpc_generate_call(inference_pb2_grpc.InferenceServiceStub(channel)),
        }
        if litellm_url is not None:
            calls["litellm"] = _http_call(
                session,
                f"{litellm_url}/chat/completions",
                [chat_body(p, LITELLM_MODEL) for p in PROMPTS],
            )
        for concurrency in CONCURRENCIES:
            name = f"generate_c{concurrency}"
            by = {s: Case(name, s, concurrency=concurrency) for s in calls}
            errors = {s: Errors() for s in calls}
            for call in calls.values():  # warm-up: connections, pools, first-call paths
                await drive(call, plan.gen_warmup, concurrency, 10.0, Case(name, "warmup"))
            per_round = max(1, plan.gen_calls // plan.gen_rounds)
            for r in range(plan.gen_rounds):
                order = list(calls) if r % 2 == 0 else list(reversed(calls))
                for system in order:
                    await drive(calls[system], per_round, concurrency, plan.gen_phase_cap_s,
                                by[system], errors[system], offset=r * per_round)  # fmt: skip
            for system, case in by.items():
                if errors[system].count:
                    case.extra["errors"] = errors[system].count
                    _log(f"{name} {system}: {errors[system].count} failed calls, first: "
                         f"{errors[system].first}")  # fmt: skip
                if not case.latencies_s:
                    raise RuntimeError(f"{name} {system}: no call succeeded")
                _log(f"{name} {system}: {len(case.latencies_s)} calls in {case.wall_s:.2f} s")
                cases.append(case)
    return cases


# ---------------------------------------------------------------------------------------------
# Streaming on the CPU model: the service vs llama.cpp in-process


def llama_config(spec: Mapping[str, Any]) -> Any:
    """A :class:`LlamaCppConfig` with the fields of a routes file's llama_cpp engine."""
    from dataclasses import fields

    from services.inference.engines.llama_cpp import LlamaCppConfig

    names = {f.name for f in fields(LlamaCppConfig)}
    return LlamaCppConfig(**{k: v for k, v in spec.items() if k in names})


async def _stream_service(stub: Any, prompt: str) -> StreamSample:
    from llmops.v1 import inference_pb2

    request = inference_pb2.GenerateStreamRequest(
        route=STREAM_ROUTE,
        messages=inference_pb2.ChatMessageList(
            messages=[inference_pb2.ChatMessage(role=inference_pb2.CHAT_ROLE_USER, content=prompt)]
        ),
    )
    perf = time.perf_counter
    t0 = perf()
    first: float | None = None
    parts: list[str] = []
    tokens = 0
    async for chunk in stub.GenerateStream(request, timeout=120):
        if chunk.delta:
            if first is None:
                first = perf() - t0
            parts.append(chunk.delta)
        if chunk.HasField("usage"):
            tokens = chunk.usage.completion_tokens
    total = perf() - t0
    return StreamSample(total, first if first is not None else total, tokens, "".join(parts))


async def _stream_direct(engine: Any, prompt: str) -> StreamSample:
    from services.inference.engine import ChatTurn, EngineRequest, Sampling

    request = EngineRequest(
        model="smollm2-135m-instruct",
        sampling=Sampling(
            max_tokens=STREAM_MAX_TOKENS,
            temperature=0.0,
            repetition_penalty=STREAM_REPETITION_PENALTY,
        ),
        messages=(ChatTurn("user", prompt),),
        timeout_s=120,
    )
    perf = time.perf_counter
    t0 = perf()
    first: float | None = None
    parts: list[str] = []
    tokens = 0
    async for delta in engine.stream(request):
        if delta.text:
            if first is None:
                first = perf() - t0
            parts.append(delta.text)
        if delta.finish is not None:
            tokens = delta.completion_tokens
    total = perf() - t0
    return StreamSample(total, first if first is not None else total, tokens, "".join(parts))


async def stream_cases(address: str, cpu_engine: Mapping[str, Any], plan: Plan
                       ) -> list[dict[str, Any]]:  # fmt: skip
    import grpc

    from llmops.v1 import inference_pb2_grpc
    from services.inference.engines.llama_cpp import LlamaCppEngine

    engine = LlamaCppEngine("bench-direct", llama_config(cpu_engine))
    await asyncio.to_thread(engine.load)
    samples: dict[str, list[StreamSample]] = {"llmops": [], LLAMA_DIRECT: []}
    walls = {"llmops": 0.0, LLAMA_DIRECT: 0.0}
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            runners: dict[str, Callable[[str], Awaitable[StreamSample]]] = {
                "llmops": lambda p: _stream_service(stub, p),
                LLAMA_DIRECT: lambda p: _stream_direct(engine, p),
            }
            for i in range(plan.stream_warmup):
                for run in runners.values():
                    await run(STREAM_PROMPTS[i % len(STREAM_PROMPTS)])
            for i in range(plan.stream_generations):
                prompt = STREAM_PROMPTS[i % len(STREAM_PROMPTS)]
                order = list(runners) if i % 2 == 0 else list(reversed(runners))
                for system in order:
                    t0 = time.perf_counter()
                    samples[system].append(await runners[system](prompt))
                    walls[system] += time.perf_counter() - t0
    finally:
        await engine.close()
    same = sum(
        a.text == b.text for a, b in zip(samples["llmops"], samples[LLAMA_DIRECT], strict=True)
    )
    out = []
    for system, got in samples.items():
        case = Case("stream_cpu", system, [s.total_s for s in got], walls[system])
        case.extra = {
            **stream_extra(got),
            "max_tokens": STREAM_MAX_TOKENS,
            "same_text": round(same / max(1, len(got)), 3),
        }
        out.append(case.summary())
    return out


def stream_ratios(summaries: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    by = {s["system"]: s for s in summaries if s["case"] == "stream_cpu"}
    ours, direct = by.get("llmops"), by.get(LLAMA_DIRECT)
    if ours is None or direct is None:
        return {}
    out: dict[str, float] = {}
    tok = ratio(ours["output_tok_per_s"], direct["output_tok_per_s"])
    if tok is not None:
        out["stream_cpu.output_tok_per_s.llmops/direct"] = tok
    dec = ratio(ours["decode_tok_per_s"], direct["decode_tok_per_s"])
    if dec is not None:
        out["stream_cpu.decode_tok_per_s.llmops/direct"] = dec
    ttft = ratio(direct["ttft_p50_ms"], ours["ttft_p50_ms"])
    if ttft is not None:
        out["stream_cpu.ttft_p50_ms.direct/llmops"] = ttft
    return out


# ---------------------------------------------------------------------------------------------
# Run on the whole mesh


def _run_requests() -> dict[str, list[Any]]:
    from llmops.v1 import common_pb2, inference_pb2

    def s(text: str) -> common_pb2.Value:
        return common_pb2.Value(string_value=text)

    def request(i: int, task: str, inputs: dict[str, Any]) -> Any:
        return inference_pb2.RunRequest(
            task=task,
            inputs=inputs,
            context=common_pb2.RequestContext(
                tenant="demo",
                user_id=DEMO_USERS[i % len(DEMO_USERS)],
                session_id=f"bench-{i}",
                client_name="llmops-bench",
            ),
        )

    reviews = common_pb2.Value()
    reviews.string_list_value.values.extend(REVIEWS)

    def summary_inputs(name: str) -> dict[str, Any]:
        return {
            "property_id": common_pb2.Value(int64_value=1),
            "property_name": s(name),
            "reviews": reviews,
        }

    summary = [request(i, "property_summary", summary_inputs("Casa Azul")) for i in range(12)]
    intent = [
        request(i, "query_intent", {"query": s(QUERIES[i % len(QUERIES)])}) for i in range(12)
    ]
    # A new property name for every run: the retrieval query misses the embedding service's
    # query cache each time (the "warm" case above repeats one property page).
    cold = [
        request(i, "property_summary", summary_inputs(f"Casa Azul {i}")) for i in range(COLD_RUNS)
    ]
    return {"property_summary": summary, "property_summary_cold": cold, "query_intent": intent}


def stage_p50s(replies: Sequence[Any]) -> dict[str, float]:
    """Median duration in ms of each stage the replies report (``RunResponse.stages``), in
    the order they first appear."""
    by: dict[str, list[float]] = {}
    for reply in replies:
        for stage in reply.stages:
            by.setdefault(stage.stage, []).append(stage.duration_us / 1000)
    return {name: round(percentile(sorted(v), 50), 3) for name, v in by.items()}


def _seeded(address: str) -> bool:
    """The demo data is in: a search_suggestions run lists listings and a query_intent run
    (prompt from the registry, the model step) answers with output."""
    import grpc

    from llmops.v1 import common_pb2, inference_pb2, inference_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        try:
            listed = stub.Run(
                inference_pb2.RunRequest(
                    task="search_suggestions",
                    inputs={
                        "query": common_pb2.Value(string_value="quiet apartment near the beach")
                    },
                ),
                timeout=10,
            )
            if not listed.output.string_list_value.values:
                return False
            intent = stub.Run(_run_requests()["query_intent"][0], timeout=10)
        except grpc.RpcError:
            return False
    return intent.HasField("output")


async def run_cases(
    address: str,
    plan: Plan,
    system: str = "llmops",
    concurrencies: Sequence[int] = (1, RUN_CONCURRENCY),
) -> list[dict[str, Any]]:
    import grpc

    from llmops.v1 import inference_pb2, inference_pb2_grpc

    requests = _run_requests()
    out: list[dict[str, Any]] = []
    fresh = itertools.count()  # the cold case never repeats a request, across its phases
    async with grpc.aio.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        for task, reqs in requests.items():
            for concurrency in concurrencies:
                name = f"run_{task}_c{concurrency}"
                replies: list[Any] = []

                async def call(
                    i: int,
                    reqs: list[Any] = reqs,
                    keep: list[Any] = replies,
                    cold: bool = (task.endswith("_cold")),
                ) -> None:
                    n = next(fresh) if cold else i
                    reply = await stub.Run(reqs[n % len(reqs)], timeout=CALL_TIMEOUT_S)
                    keep.append(reply)

                await drive(call, plan.run_warmup, concurrency, 20.0, Case(name, "warmup"))
                replies.clear()
                case = Case(name, system, concurrency=concurrency)
                errors = Errors()
                await drive(call, plan.run_calls, concurrency, plan.run_phase_cap_s, case, errors)
                if not replies:
                    raise RuntimeError(f"{name}: no run succeeded ({errors.first})")
                blocked = sum(
                    r.finish_reason == inference_pb2.FINISH_REASON_CONTENT_FILTER for r in replies
                )
                without_output = sum(not r.HasField("output") for r in replies)
                case.extra = {
                    **ms_percentiles([r.overhead_us / 1e6 for r in replies], "overhead"),
                    **ms_percentiles([r.total_latency_us / 1e6 for r in replies], "server"),
                    **ms_percentiles(
                        [(r.total_latency_us - r.overhead_us) / 1e6 for r in replies], "model"
                    ),
                    "stages_p50_ms": stage_p50s(replies),
                    "blocked": blocked,
                    "without_output": without_output,
                }
                if errors.count:
                    case.extra["errors"] = errors.count
                    _log(f"{name}: {errors.count} failed runs, first: {errors.first}")
                if blocked or without_output:
                    _log(f"{name}: {blocked} blocked, {without_output} without output")
                _log(f"{name} {system}: {len(case.latencies_s)} runs in {case.wall_s:.2f} s")
                out.append(case.summary())
    return out


GRPC_HOPS = "llmops-grpc-hops"
"""The Run cases again on a mesh with ``server.local_calls: false``: every call between its
services over loopback gRPC, as between processes (sequential only)."""


def _mesh_part(tmp: Path, upstream_url: str, plan: Plan, *, local_calls: bool = True
               ) -> list[dict[str, Any]]:  # fmt: skip
    from llmops.mesh import SERVICES

    label = "" if local_calls else f" ({GRPC_HOPS})"
    routes_dir = tmp / "mesh-routes"
    for name, spec in mesh_routes(upstream_url).items():
        write_yaml(routes_dir / name, spec)
    state = tmp / ("mesh-state" if local_calls else "mesh-state-grpc-hops")
    env, ports = mesh_env(os.environ, state, routes_dir, free_ports(2 * len(SERVICES) + 1))
    env["LLMOPS__SERVER__LOCAL_CALLS"] = "true" if local_calls else "false"
    started = time.monotonic()
    mesh = start_process(
        "llmops up", [sys.executable, "-m", "llmops", "up"], env, tmp / "mesh.log",
        stop_signal=signal.SIGINT,  # as Ctrl-C: every service drains and stops
    )  # fmt: skip
    with running(mesh):
        for name, plugin in SERVICES.items():
            address, service = f"{HOST}:{ports[name]}", plugin.grpc_service
            left = MESH_START_TIMEOUT_S - (time.monotonic() - started)

            def serving(address: str = address, service: str = service) -> bool:
                return grpc_serving(address, service)

            wait_until(serving, mesh, max(left, 1.0), f"the mesh's {name} service")
        _log(f"mesh{label}: every service SERVING after {time.monotonic() - started:.1f} s")
        address = f"{HOST}:{ports['inference']}"
        wait_until(lambda: _seeded(address), mesh, SEED_TIMEOUT_S, "the mesh's demo data",
                   interval_s=0.5)  # fmt: skip
        _log(f"mesh{label}: demo data seeded after {time.monotonic() - started:.1f} s")
        share = wait_quiet(mesh, QUIET_TIMEOUT_S)
        if share is not None:
            _log(f"mesh{label}: {share:.0%} of a core while idle, "
                 f"{time.monotonic() - started:.1f} s")  # fmt: skip
        import uvloop

        if local_calls:
            return uvloop.run(run_cases(address, plan))
        return uvloop.run(run_cases(address, plan, GRPC_HOPS, (1,)))


# ---------------------------------------------------------------------------------------------
# main


def _start_litellm(tmp: Path, upstream_url: str) -> tuple[Process | None, str | None]:
    """The LiteLLM proxy started (not yet ready), or (None, None) with the reason on stderr."""
    from benchmarks.inference_baselines import LITELLM_VERSION, ensure_litellm, litellm_command

    try:
        python = ensure_litellm(_log)
    except RuntimeError as exc:
        _log(f"litellm {LITELLM_VERSION}: skipped, its venv could not be made: {exc}")
        return None, None
    config = write_yaml(tmp / "litellm.yaml", litellm_config(upstream_url))
    port = servers.free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.pop("VIRTUAL_ENV", None)
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # no download of the price list at start
        LITELLM_LOG="ERROR",
        LITELLM_TELEMETRY="False",
        DISABLE_ADMIN_UI="True",
    )
    proc = start_process("litellm", litellm_command(python, config, port), env,
                         tmp / "litellm.log")  # fmt: skip
    return proc, f"http://{HOST}:{port}"


def main(*, quick: bool) -> None:
    plan = QUICK if quick else FULL
    began = time.monotonic()
    summaries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llmops-bench-inference-") as tmp_name:
        tmp = Path(tmp_name)
        up_port = servers.free_port()
        upstream = start_process(
            "upstream",
            [sys.executable, "-m", "benchmarks.openai_upstream", "--host", HOST,
             "--port", str(up_port), "--reply-tokens", str(UPSTREAM_REPLY_TOKENS),
             "--model", UPSTREAM_MODEL],
            os.environ, tmp / "upstream.log",
        )  # fmt: skip
        upstream_url = f"http://{HOST}:{up_port}/v1"
        with running(upstream):
            wait_until(lambda: http_ok(f"{upstream_url}/models"), upstream, START_TIMEOUT_S,
                       "the upstream")  # fmt: skip
            summaries += _service_part(tmp, upstream_url, plan)
            measured = time.monotonic()
            summaries += _mesh_part(tmp, upstream_url, plan)
            summaries += _mesh_part(tmp, upstream_url, plan, local_calls=False)
            _log(f"run cases done in {time.monotonic() - measured:.1f} s (mesh starts included)")
    add_overheads(summaries)
    ratios = {**generate_ratios(summaries), **stream_ratios(summaries)}
    _log(f"llmops bench inference: {time.monotonic() - began:.1f} s in all")
    for line in target_lines(summaries, ratios):
        _log(line)
    emit("inference", summaries, ratios)


def _service_part(tmp: Path, upstream_url: str, plan: Plan) -> list[dict[str, Any]]:
    """Generate cases (three systems) and the streaming case, on one service process."""
    import uvloop

    cpu_engine = storefront_cpu_engine()
    routes_dir, tasks_dir = tmp / "routes", tmp / "tasks"
    write_yaml(routes_dir / "bench.yaml", service_routes(upstream_url, cpu_engine))
    write_yaml(tasks_dir / "bench.yaml", {"tasks": []})
    litellm, litellm_url = _start_litellm(tmp, upstream_url)  # starts while ours starts
    try:
        started = time.monotonic()
        with (tmp / "service.log").open("wb") as log:
            service, address = servers.start_service(
                "inference", service_env(tmp / "state", routes_dir, tasks_dir), log
            )
        with running(Process("inference service", service, tmp / "service.log")):
            _log(f"inference service SERVING after {time.monotonic() - started:.1f} s")
            if litellm is not None:
                try:
                    wait_until(lambda: http_ok(f"{litellm_url}/health/liveliness"), litellm,
                               LITELLM_START_TIMEOUT_S, "the LiteLLM proxy")  # fmt: skip
                    _log(f"litellm proxy ready after {time.monotonic() - started:.1f} s")
                except RuntimeError as exc:
                    _log(f"litellm: skipped: {exc}")
                    stop_process(litellm)
                    litellm, litellm_url = None, None
            measured = time.monotonic()
            cases = uvloop.run(generate_cases(address, upstream_url, litellm_url, plan))
            if litellm is not None:
                stop_process(litellm)  # idle, but no process of another system runs meanwhile
                litellm = None
            _log(f"generate cases done in {time.monotonic() - measured:.1f} s")
            measured = time.monotonic()
            streamed = uvloop.run(stream_cases(address, cpu_engine, plan))
            _log(f"stream cases done in {time.monotonic() - measured:.1f} s")
    finally:
        if litellm is not None:
            stop_process(litellm)
    return [c.summary() for c in cases] + streamed
