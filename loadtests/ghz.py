"""Single-RPC probes with ghz (https://ghz.sh, Apache-2.0), through server reflection: the
same credentials as the mesh's own clients, ghz's per-call details turned into the samples
the report reads (``samples.csv``, ``users.csv``, ``run.json``).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmops.config import MeshConfig
from llmops.security import provision

from .spec import Probe

GRACE_S = 60


class GhzError(Exception):
    pass


def find_ghz() -> str:
    """ghz on PATH, else where ``deploy/local/install.sh ghz`` puts it."""
    found = shutil.which("ghz")
    if found:
        return found
    gobin = os.environ.get("GOBIN") or str(
        Path(os.environ.get("GOPATH", Path.home() / "go")) / "bin"
    )
    candidate = Path(gobin) / "ghz"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    raise GhzError("ghz not found: install it with `bash deploy/local/install.sh ghz` "
                   "(go install github.com/bojand/ghz/cmd/ghz)")  # fmt: skip


def credentials_args(config: MeshConfig) -> list[str]:
    """ghz's TLS and metadata flags for the mesh's service identity: its client certificate
    (mTLS), or its service token where the servers take no client certificates. The token
    goes in a metadata file, never on the command line (``ps`` would show it)."""
    if config.security.insecure:
        return ["--insecure"]
    files = provision(config)
    if files.ca is None:
        raise GhzError("the mesh's CA file is missing: start the mesh once (`llmops up`)")
    args = [f"--cacert={files.ca}"]
    if config.security.tls_server_name:
        args.append(f"--cname={config.security.tls_server_name}")
    if files.client_cert is not None and files.client_key is not None:
        args += [f"--cert={files.client_cert}", f"--key={files.client_key}"]
    return args


def _metadata_file(config: MeshConfig, out: Path) -> Path | None:
    if config.security.insecure or config.security.client_certificates != "none":
        return None
    files = provision(config)
    if files.service_token is None:
        return None
    token = files.service_token.read_text().strip()
    path = out / ".ghz-metadata.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"authorization": f"Bearer {token}"}, f)
    return path


def command(probe: Probe, config: MeshConfig, ghz: str, out: Path) -> list[str]:
    address = config.services[probe.service].address
    argv = [
        ghz, f"--call={probe.call.replace('/', '.')}", f"--data={json.dumps(probe.data)}",
        f"--concurrency={probe.concurrency}", f"--total={probe.total}",
        # at most `total` calls and at most `duration_s` (ghz ignores -n when -z is given)
        f"--max-duration={probe.duration_s:g}s", "--duration-stop=wait", "--timeout=10s",
        "--format=json", f"--output={out / 'ghz.json'}", "--count-errors",
        *credentials_args(config),
    ]  # fmt: skip
    metadata = _metadata_file(config, out)
    if metadata is not None:
        argv += [f"--metadata-file={metadata}", f"--reflect-metadata={metadata}"]
    return [*argv, address]


def _timestamp(text: str) -> float:
    # RFC 3339 with nanoseconds and a zone; Python parses microseconds at most.
    head, _, rest = text.partition(".")
    frac = "".join(c for c in rest if c.isdigit())[:6]
    zone = rest[len("".join(c for c in rest if c.isdigit())) :] or "Z"
    parsed = dt.datetime.fromisoformat(f"{head}.{frac or '0'}{zone.replace('Z', '+00:00')}")
    return parsed.timestamp()


def to_samples(probe: Probe, report: dict[str, Any], out: Path, elapsed_s: float) -> None:
    """ghz's JSON report as the load test's samples: every call's latency and status."""
    details: Sequence[dict[str, Any]] = report.get("details") or []
    if not details:
        raise GhzError(f"ghz reported no calls ({report.get('errorDistribution') or 'no errors'})")
    stamps = [_timestamp(d["timestamp"]) for d in details]
    began = min(stamps)
    with (out / "samples.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("t_s", "name", "kind", "latency_ms", "code"))
        for d, t in zip(details, stamps, strict=True):
            code = str(d.get("status") or ("OK" if not d.get("error") else "Unknown"))
            w.writerow((f"{t - began:.4f}", probe.objective, "rpc",
                        f"{d['latency'] / 1e6:.3f}", _grpc_name(code)))  # fmt: skip
    with (out / "users.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("t_s", "users", "generator_cpu_percent"))
        w.writerows((f"{t:.2f}", probe.concurrency, "0") for t in range(int(elapsed_s) + 1))


def _grpc_name(code: str) -> str:
    """ghz writes status codes as gRPC-Go spells them (``OK``, ``Unavailable``,
    ``ResourceExhausted``); the report uses the protocol's names (``UNAVAILABLE``)."""
    if code == "OK":
        return code
    out = "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(code))
    return out.upper()


def run_probe(probe: Probe, config: MeshConfig, out: Path, target: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    argv = command(probe, config, find_ghz(), out)
    started = time.time()
    began = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True,
                              timeout=probe.duration_s + GRACE_S, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise GhzError(f"ghz did not finish within {probe.duration_s + GRACE_S:.0f} s") from None
    finally:
        (out / ".ghz-metadata.json").unlink(missing_ok=True)
    elapsed = time.perf_counter() - began
    report_path = out / "ghz.json"
    if done.returncode != 0 or not report_path.is_file():
        raise GhzError(f"ghz failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    report = json.loads(report_path.read_text())
    to_samples(probe, report, out, elapsed)
    stopped = "request cap" if report.get("count", 0) >= probe.total else "duration"
    (out / "run.json").write_text(json.dumps({
        "scenario": probe.as_scenario(), "target": target, "mode": config.mode.value,
        "started_unix": started, "elapsed_s": elapsed, "stopped_by": stopped,
        "tool": "ghz", "ghz_rps": report.get("rps"),
    }, indent=2))  # fmt: skip
