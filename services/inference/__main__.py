"""Same as `llmops run inference`: this service alone, in production mode."""

from __future__ import annotations

from llmops.cli import run_service_main

if __name__ == "__main__":
    run_service_main("inference")
