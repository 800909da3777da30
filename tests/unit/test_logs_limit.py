"""``llmops logs`` returns at most MAX_RECENT_ROWS rows: a larger limit is refused where it is
given (the CLI, the logs endpoint), never silently cut to fewer rows than asked for."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from llmops.cli import cli
from llmops.clickhouse.queries import MAX_RECENT_ROWS
from llmops.observability import recent_rows


@pytest.mark.parametrize("command", [["logs", "feedback"], ["logs", "predictions"], ["drift"]])
def test_the_cli_refuses_a_limit_above_the_cap(command: list[str]) -> None:
    done = CliRunner().invoke(cli, [*command, "--limit", str(MAX_RECENT_ROWS + 1)])
    assert done.exit_code == 2
    assert f"1<=x<={MAX_RECENT_ROWS}" in done.output


@pytest.mark.parametrize("limit", [0, MAX_RECENT_ROWS + 1, 100_000])
def test_recent_rows_refuses_a_limit_outside_the_cap(limit: int) -> None:
    with pytest.raises(ValueError, match=f"limit must be 1..{MAX_RECENT_ROWS}"):
        recent_rows(None, "feedback", 60, limit)  # type: ignore[arg-type]  # never reached
