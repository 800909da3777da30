"""Sinks: consumer groups that move events from the log into ClickHouse, exactly once."""
