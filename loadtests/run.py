"""``llmops loadtest``: check the target, run the load generator, write and judge the report."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import subprocess
import sys
from pathlib import Path

from llmops.config import MeshConfig

from . import ghz, report
from .spec import (
    Probe,
    Scenario,
    SpecError,
    load_objectives,
    load_probes,
    load_scenarios,
    scenario_with,
)

EXIT_PASS, EXIT_SLO_FAILED, EXIT_USAGE, EXIT_GENERATOR = 0, 1, 2, 3
GRACE_S = 120
"""How long past its duration the generator may take (start, drain, writing samples)."""


class LoadtestError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def pick(name: str, duration_s: float | None, users: int | None) -> Scenario | Probe:
    """The scenario or ghz probe called ``name``, with ``--duration``/``--users`` applied
    (a probe's users are its concurrency)."""
    scenarios, probes = load_scenarios(), load_probes()
    if name in scenarios:
        return scenario_with(scenarios[name], duration_s=duration_s, users=users)
    if name in probes:
        changes = {k: v for k, v in (("duration_s", duration_s), ("concurrency", users)) if v}
        try:
            return Probe.model_validate({**probes[name].model_dump(), **changes})
        except ValueError as exc:
            raise LoadtestError(f"probe {name}: {str(exc).splitlines()[0]}") from None
    known = ", ".join(sorted(scenarios)) + "; probes: " + ", ".join(sorted(probes))
    raise LoadtestError(f"no scenario {name!r}; known: {known}")


def execute(
    chosen: Scenario | Probe,
    target: str,
    out: Path,
    config: MeshConfig,
    config_path: Path | None,
    seed: int | None,
) -> None:
    if isinstance(chosen, Probe):
        try:
            ghz.run_probe(chosen, config, out, target)
        except ghz.GhzError as exc:
            raise LoadtestError(str(exc), EXIT_GENERATOR) from None
    else:
        drive(chosen, target, out, config_path, seed)


def describe(chosen: Scenario | Probe) -> str:
    if isinstance(chosen, Probe):
        return (f"{chosen.name} (ghz, {chosen.call}, concurrency {chosen.concurrency}, "
                f"{chosen.duration_s:.0f} s, at most {chosen.total} calls)")  # fmt: skip
    return (f"{chosen.name} ({chosen.shape}, {chosen.users} users, {chosen.duration_s:.0f} s, "
            f"at most {chosen.max_requests} calls)")  # fmt: skip


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_loopback(config: MeshConfig) -> None:
    """Load tests target this machine only: every enabled service's address must resolve to
    loopback addresses."""
    for name, svc in config.services.items():
        if not svc.enabled:
            continue
        host = svc.address.rsplit(":", 1)[0].strip("[]")
        if not _is_loopback(host):
            raise LoadtestError(
                f"services.{name} is at {svc.address}: load tests target loopback only "
                "(127.0.0.1, ::1, localhost)"
            )


def parse_duration(text: str | None) -> float | None:
    """``90``, ``90s``, ``5m``, ``1h`` -> seconds; None stays None."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    body, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        value = float(body) * unit
    except ValueError:
        raise LoadtestError(
            f"--duration {text!r}: a number of seconds, or e.g. 90s, 5m, 1h"
        ) from None
    if value <= 0:
        raise LoadtestError(f"--duration {text!r}: more than zero")
    return value


def default_out(scenario: Scenario | Probe, target: str) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path("loadtest-reports") / f"{stamp}-{scenario.name}-{target}"


def drive(
    scenario: Scenario, target: str, out: Path, config_path: Path | None, seed: int | None
) -> None:
    """Runs the load generator process and waits for it (bounded)."""
    overrides = {"duration_s": scenario.duration_s, "users": scenario.users}
    cmd = [sys.executable, "-m", "loadtests.drive", "--scenario", scenario.name,
           "--out", str(out), "--target", target, "--overrides", json.dumps(overrides)]  # fmt: skip
    if config_path is not None:
        cmd += ["--config", str(config_path)]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    try:
        done = subprocess.run(cmd, timeout=scenario.duration_s + GRACE_S, check=False)
    except subprocess.TimeoutExpired:
        raise LoadtestError(
            f"the load generator did not finish within {scenario.duration_s + GRACE_S:.0f} s",
            EXIT_GENERATOR,
        ) from None
    if done.returncode != 0 or not (out / "samples.csv").is_file():
        raise LoadtestError(
            f"the load generator failed (exit {done.returncode}); see its output above",
            EXIT_GENERATOR,
        )


def write_report(out: Path, compare: Path | None) -> report.Report:
    try:
        objectives = load_objectives()
    except SpecError as exc:
        raise LoadtestError(str(exc)) from None
    if compare is not None and not (compare / "summary.json").is_file():
        raise LoadtestError(f"--compare {compare}: no summary.json there (a report directory)")
    return report.write(out, objectives, compare)
