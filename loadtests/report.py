"""A load run's report: per-call percentiles, error codes, SLO pass/fail, and plots of
latency and throughput over time, as Markdown (with PNGs beside it) and one self-contained
HTML page (the plots inlined). Reads what :mod:`loadtests.drive` wrote; never the network.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import io
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .spec import Check, Measured, Objectives, judge, percentile

WINDOW_S = 5.0
"""Width of the latency-over-time windows."""
GENERATOR_BUSY_PERCENT = 80.0
"""Above this mean CPU share of one core the load generator itself limits what is measured."""


@dataclass(slots=True)
class Sample:
    t_s: float
    name: str
    kind: str
    latency_ms: float
    code: str


@dataclass(slots=True)
class NameStats:
    name: str
    kind: str
    calls: int
    errors: int
    per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    codes: dict[str, int] = field(default_factory=dict)

    def measured(self) -> Measured:
        return Measured(self.calls, self.errors, self.p50_ms, self.p95_ms, self.p99_ms)


@dataclass(slots=True)
class Report:
    run: dict[str, Any]
    stats: list[NameStats]
    checks: list[Check]
    notes: list[str]
    generator_cpu_mean: float
    generator_cpu_max: float

    @property
    def passed(self) -> bool:
        """Every check met, and at least one made (a run that measured nothing fails)."""
        return bool(self.checks) and all(c.passed for c in self.checks)

    def summary(self) -> dict[str, Any]:
        """What another run's report compares against (``summary.json``)."""
        return {
            "run": self.run,
            "passed": self.passed,
            "stats": [asdict(s) for s in self.stats],
            "checks": [asdict(c) for c in self.checks],
            "notes": self.notes,
            "generator_cpu_mean": self.generator_cpu_mean,
        }


def read_samples(path: Path) -> list[Sample]:
    with path.open(newline="") as f:
        return [
            Sample(float(r["t_s"]), r["name"], r["kind"], float(r["latency_ms"]), r["code"])
            for r in csv.DictReader(f)
        ]


def read_timeline(path: Path) -> list[tuple[float, int, float]]:
    with path.open(newline="") as f:
        return [
            (float(r["t_s"]), int(r["users"]), float(r["generator_cpu_percent"]))
            for r in csv.DictReader(f)
        ]


def name_stats(samples: Iterable[Sample], elapsed_s: float) -> list[NameStats]:
    """Per call name: counts, rate, nearest-rank percentiles over every call (failed calls
    included: a fast refusal is a latency the shopper saw too), and codes."""
    by_name: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_name[s.name].append(s)
    out = []
    for name, rows in by_name.items():
        lat = sorted(r.latency_ms for r in rows)
        codes = Counter(r.code for r in rows)
        errors = sum(n for code, n in codes.items() if code != "OK")
        out.append(
            NameStats(
                name, rows[0].kind, len(rows), errors, len(rows) / elapsed_s if elapsed_s else 0,
                percentile(lat, 0.50), percentile(lat, 0.95), percentile(lat, 0.99), lat[-1],
                dict(sorted(codes.items())),
            )
        )  # fmt: skip
    out.sort(key=lambda s: (s.kind != "page", s.name))
    return out


def build(out: Path, objectives: Objectives) -> Report:
    run = json.loads((out / "run.json").read_text())
    samples = read_samples(out / "samples.csv")
    timeline = read_timeline(out / "users.csv")
    stats = name_stats(samples, float(run["elapsed_s"]))
    checks, notes = judge({s.name: s.measured() for s in stats}, objectives)
    cpu = [c for _, u, c in timeline if u > 0] or [0.0]
    return Report(run, stats, checks, notes, sum(cpu) / len(cpu), max(cpu))


# -- plots ----------------------------------------------------------------------------------


def _windows(samples: Sequence[Sample], name: str) -> tuple[list[float], list[float], list[float]]:
    buckets: dict[int, list[float]] = defaultdict(list)
    for s in samples:
        if s.name == name:
            buckets[int(s.t_s // WINDOW_S)].append(s.latency_ms)
    xs, p50, p99 = [], [], []
    for b in sorted(buckets):
        lat = sorted(buckets[b])
        xs.append((b + 0.5) * WINDOW_S)
        p50.append(percentile(lat, 0.5))
        p99.append(percentile(lat, 0.99))
    return xs, p50, p99


def plots(samples: Sequence[Sample], timeline: Sequence[tuple[float, int, float]],
          stats: Sequence[NameStats]) -> dict[str, bytes]:  # fmt: skip
    """``latency.png`` (p50 and p99 per 5 s window, per page and per call) and
    ``throughput.png`` (calls and pages per second, and the running users)."""
    import matplotlib

    matplotlib.use("Agg")  # no display; set before pyplot is imported
    import matplotlib.pyplot as plt

    images: dict[str, bytes] = {}
    fig, axes = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    for ax, kind, title in ((axes[0], "page", "pages"), (axes[1], "rpc", "calls")):
        names = [s.name for s in stats if s.kind == kind]
        colours = plt.colormaps["tab10"]
        for i, name in enumerate(names):
            xs, p50, p99 = _windows(samples, name)
            colour = colours(i % 10)
            ax.plot(xs, p99, color=colour, linewidth=1.4, label=name)
            ax.plot(xs, p50, color=colour, linewidth=1.0, linestyle="--")
        ax.set_yscale("log")
        ax.set_ylabel("ms (log)")
        ax.set_title(
            f"Latency of {title} over time (p99 solid, p50 dashed, {WINDOW_S:g} s windows)"
        )
        ax.grid(True, which="both", alpha=0.3)
        if names:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[1].set_xlabel("seconds since start")
    fig.tight_layout()
    images["latency.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(11, 4.5))
    end = int(max((s.t_s for s in samples), default=0.0)) + 1
    for kind, label in (("rpc", "calls/s"), ("page", "pages/s")):
        per_s = [0] * end
        errors = [0] * end
        for s in samples:
            if s.kind == kind:
                per_s[int(s.t_s)] += 1
                errors[int(s.t_s)] += s.code != "OK"
        ax.plot(range(end), per_s, linewidth=1.2, label=label)
        if any(errors):
            ax.plot(range(end), errors, linewidth=1.0, label=f"{label} failed")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("per second")
    ax.grid(True, alpha=0.3)
    users = ax.twinx()
    users.step([t for t, _, _ in timeline], [u for _, u, _ in timeline], where="post",
               color="grey", linewidth=1.0, label="users")  # fmt: skip
    users.set_ylabel("users")
    users.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    more = users.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper left")
    ax.set_title("Throughput and users over time")
    fig.tight_layout()
    images["throughput.png"] = _png(fig)
    plt.close(fig)
    return images


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")  # the legends outside too
    return buf.getvalue()


# -- text -----------------------------------------------------------------------------------


def _ms(v: float) -> str:
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _verdict(report: Report) -> str:
    failed = [c for c in report.checks if not c.passed]
    if not report.checks:
        return "FAIL: nothing to judge (no call of any name in loadtests/slo.yaml was made)"
    if report.passed:
        return f"PASS: all {len(report.checks)} objectives met"
    return f"FAIL: {len(failed)} of {len(report.checks)} objectives missed"


def tables(
    report: Report, compare: Mapping[str, Any] | None = None
) -> list[tuple[str, list[list[str]]]]:
    """The report's tables as (title, rows with a header row first)."""
    slo = [["call", "objective", "bound", "measured", "result"]]
    for c in report.checks:
        unit = "" if c.what == "error_rate" else " ms"
        fmt = (lambda v: f"{v:.2%}") if c.what == "error_rate" else _ms
        slo.append([c.name, c.what.removesuffix("_ms"), f"{fmt(c.objective)}{unit}",
                    f"{fmt(c.measured)}{unit}", "pass" if c.passed else "**FAIL**"])  # fmt: skip
    calls = [["name", "calls", "per s", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms"]]
    for s in report.stats:
        calls.append([s.name, str(s.calls), f"{s.per_s:.1f}", str(s.errors), _ms(s.p50_ms),
                      _ms(s.p95_ms), _ms(s.p99_ms), _ms(s.max_ms)])  # fmt: skip
    codes = [["name", "status", "count"]]
    for s in report.stats:
        codes.extend([s.name, code, str(n)] for code, n in s.codes.items() if code != "OK")
    out = [("Service-level objectives (loadtests/slo.yaml)", slo)]
    if report.notes:
        out.append(("Not judged", [["what"], *([n] for n in report.notes)]))
    out.append(("Calls and pages", calls))
    out.append(("Errors by status", codes if len(codes) > 1 else [["none"]]))
    if compare is not None:
        out.append((f"Compared with {compare['run']['target']} ({compare['run']['mode']} mode)",
                    comparison(report, compare)))  # fmt: skip
    return out


def comparison(report: Report, other: Mapping[str, Any]) -> list[list[str]]:
    theirs = {s["name"]: s for s in other["stats"]}
    rows = [["name", "per s (this / other)", "p50 ms", "p99 ms", "errors"]]
    for s in report.stats:
        o = theirs.get(s.name)
        if o is None:
            continue
        rows.append([
            s.name, f"{s.per_s:.1f} / {o['per_s']:.1f}",
            f"{_ms(s.p50_ms)} / {_ms(o['p50_ms'])}", f"{_ms(s.p99_ms)} / {_ms(o['p99_ms'])}",
            f"{s.errors} / {o['errors']}",
        ])  # fmt: skip
    return rows


def _header(report: Report) -> list[str]:
    run = report.run
    sc = run["scenario"]
    began = dt.datetime.fromtimestamp(run["started_unix"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        f"Scenario **{sc['name']}** ({sc['shape']}, up to {sc['users']} users, think time "
        f"{sc['think_time_s'][0]}-{sc['think_time_s'][1]} s) against the **{run['target']}** "
        f"mesh ({run['mode']} mode), started {began} UTC, ran {run['elapsed_s']:.0f} s, "
        f"stopped by {run['stopped_by']}.",
        f"Load generator CPU: mean {report.generator_cpu_mean:.0f}%, max "
        f"{report.generator_cpu_max:.0f}% of one core.",
    ]
    if report.generator_cpu_mean > GENERATOR_BUSY_PERCENT:
        lines.append(
            "**Warning:** the load generator was busy most of the run; latencies include its "
            "own queueing. Run fewer users per generator."
        )
    return lines


def markdown(report: Report, compare: Mapping[str, Any] | None = None) -> str:
    out = [f"# Load test: {report.run['scenario']['name']}", "", f"**{_verdict(report)}**", ""]
    out += [*_header(report), ""]
    for title, rows in tables(report, compare):
        out += [f"## {title}", "", "| " + " | ".join(rows[0]) + " |",
                "|" + "---|" * len(rows[0])]  # fmt: skip
        out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        out.append("")
    out += ["## Over time", "", "![latency](latency.png)", "", "![throughput](throughput.png)", ""]
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}td:first-child,th:first-child{text-align:left}.pass{color:#176f2c}
.fail{color:#b00020;font-weight:bold}img{max-width:100%}"""


def html_page(report: Report, images: Mapping[str, bytes],
              compare: Mapping[str, Any] | None = None) -> str:  # fmt: skip
    """One file: tables and the plots inlined as data URIs (no request leaves the page)."""
    esc = html.escape
    verdict = _verdict(report)
    body = [f"<h1>Load test: {esc(report.run['scenario']['name'])}</h1>",
            f"<p class=\"{'pass' if report.passed else 'fail'}\">{esc(verdict)}</p>"]  # fmt: skip
    body += [f"<p>{esc(line.replace('**', ''))}</p>" for line in _header(report)]
    for title, rows in tables(report, compare):
        body.append(f"<h2>{esc(title)}</h2><table>")
        body.append("<tr>" + "".join(f"<th>{esc(c)}</th>" for c in rows[0]) + "</tr>")
        for r in rows[1:]:
            cells = []
            for c in r:
                cls = ' class="fail"' if c.startswith("**") else ""
                cells.append(f"<td{cls}>{esc(c.replace('**', ''))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        body.append("</table>")
    body.append("<h2>Over time</h2>")
    for name, png in images.items():
        data = base64.b64encode(png).decode()
        body.append(f'<p><img alt="{esc(name)}" src="data:image/png;base64,{data}"></p>')
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>Load test {esc(report.run['scenario']['name'])}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>"
    )


def write(out: Path, objectives: Objectives, compare: Path | None = None) -> Report:
    """Builds the report of the run in ``out`` and writes ``report.md`` (+ its PNGs),
    ``report.html`` and ``summary.json`` there."""
    report = build(out, objectives)
    other = json.loads((compare / "summary.json").read_text()) if compare else None
    samples = read_samples(out / "samples.csv")
    images = plots(samples, read_timeline(out / "users.csv"), report.stats)
    for name, png in images.items():
        (out / name).write_bytes(png)
    (out / "report.md").write_text(markdown(report, other))
    (out / "report.html").write_text(html_page(report, images, other))
    (out / "summary.json").write_text(json.dumps(report.summary(), indent=2))
    return report


def console_summary(report: Report) -> str:
    """A few lines for the terminal: the verdict and each objective missed."""
    lines = [_verdict(report)]
    for c in report.checks:
        if not c.passed:
            unit = "" if c.what == "error_rate" else " ms"
            lines.append(f"  missed {c.name} {c.what.removesuffix('_ms')}: "
                         f"{c.measured:.4g}{unit} > {c.objective:g}{unit}")  # fmt: skip
    lines.extend(f"  not judged: {n}" for n in report.notes if "not called" not in n)
    return "\n".join(lines)
