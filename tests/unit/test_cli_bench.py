"""`llmops bench`: a target whose optional dependency is missing says, in one line, which
extra to install; the benchmarks load only when a target runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from llmops import cli


@pytest.mark.parametrize(("target", "module", "extra"), [
    ("events", "kafka", "kafka"),
    ("clickhouse", "clickhouse_driver", "clickhouse"),
])  # fmt: skip
def test_missing_extra_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, target: str, module: str, extra: str
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == module else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    result = CliRunner().invoke(cli.cli, ["bench", target, "--quick"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == [
        f"llmops bench {target}: needs the '{extra}' extra ({module} is not installed): "
        f"pip install -e '.[{extra}]'"
    ]


def test_every_bench_target_has_a_module_with_main() -> None:
    for name in cli.bench.commands:
        spec = importlib.util.find_spec(f"benchmarks.{name}")
        assert spec is not None, name


def test_the_cli_does_not_import_the_benchmarks_or_services_until_asked() -> None:
    # only the light plug-in modules (and their packages) of the services
    code = (
        "import sys, llmops.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'benchmarks' or "
        "(m.startswith('services.') and m.count('.') > 1 and not m.endswith('.plugin'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
