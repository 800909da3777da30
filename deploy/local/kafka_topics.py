"""Apply deploy/kafka/topics.yaml to a Kafka cluster, idempotently (kafka-python admin client).

    kafka_topics.py apply [--bootstrap 127.0.0.1:19092] [--spec deploy/kafka/topics.yaml]
                          [--max-partitions N | --local] [--dry-run]
    kafka_topics.py check [...]   exit 1 when the cluster differs from the spec (for CI)
    kafka_topics.py wait [--timeout S]   wait until the broker lists itself in cluster metadata
    kafka_topics.py list          print the spec as the cluster would get it

A thin wrapper: the logic lives in llmops/events/topics.py (the spec) and
llmops/events/topic_admin.py (the cluster side), which `llmops topics` uses too. Runs from a
source checkout with any Python that has kafka-python and PyYAML (the repo root goes on
sys.path). Exit status: 0 ok, 1 drift (check) or failure, 2 bad spec.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from llmops.events.topic_admin import (  # noqa: E402
    DEFAULT_BOOTSTRAP,
    apply,
    broker_count,
    current_state,
    diff,
    flatten_configs,
    main,
    wait,
)
from llmops.events.topics import (  # noqa: E402
    DEFAULT_SPEC_PATH,
    Spec,
    SpecError,
    TopicSpec,
    effective,
    load_spec,
)

DEFAULT_SPEC = DEFAULT_SPEC_PATH
_flatten_configs = flatten_configs  # the name tests/integration/test_infra_kafka.py uses

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_SPEC",
    "Spec",
    "SpecError",
    "TopicSpec",
    "apply",
    "broker_count",
    "current_state",
    "diff",
    "effective",
    "flatten_configs",
    "load_spec",
    "main",
    "wait",
]

if __name__ == "__main__":
    sys.exit(main())
