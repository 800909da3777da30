"""Shared helpers of the benchmarks: latency summaries and the BENCH.md JSON line."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in [0, 100])."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass
class Case:
    case: str
    system: str
    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    concurrency: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_s)
        return {
            "case": self.case,
            "system": self.system,
            "p50_ms": round(percentile(lat, 50) * 1000, 4),
            "p99_ms": round(percentile(lat, 99) * 1000, 4),
            "rps": round(len(lat) / self.wall_s, 1) if self.wall_s else None,
            "n": len(lat),
            "concurrency": self.concurrency,
            **self.extra,
        }


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version()}


def emit(target: str, cases: list[dict[str, Any]], ratios: dict[str, float]) -> None:
    """Print the human table on stderr and the JSON line last on stdout."""
    for c in cases:
        print(
            f"{c['case']:<22} {c['system']:<10} p50 {c['p50_ms']:8.3f} ms  "
            f"p99 {c['p99_ms']:8.3f} ms  rps {c['rps']:>9}  n {c['n']}  c {c['concurrency']}",
            file=sys.stderr,
        )
    for key, value in ratios.items():
        print(f"{key} = {value}", file=sys.stderr)
    line = {"target": target, "machine": machine(), "cases": cases, "ratios": ratios}
    print(json.dumps(line), flush=True)
