"""Benchmarks behind ``llmops bench <target>``; output format in BENCH.md."""
