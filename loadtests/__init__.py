"""Load scenarios, SLOs and their report behind ``llmops loadtest`` (loadtests/README.md)."""
