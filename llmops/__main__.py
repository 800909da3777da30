"""`python -m llmops` is the `llmops` command."""

from __future__ import annotations

from llmops.cli import main

if __name__ == "__main__":
    main(prog_name="llmops")
