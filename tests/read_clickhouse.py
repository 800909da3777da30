"""``python -m tests.read_clickhouse SQL``: the rows of ``SQL`` as JSON, read from the
ClickHouse of the mesh configured by the environment (``LLMOPS__STATE_DIR`` ...), as
``llmops logs`` would but without its row cap. For tests, once the mesh is stopped: chdb
opens a data directory in one process at a time."""

from __future__ import annotations

import json
import sys

from llmops.backends import Backends
from llmops.config import load_config


def main(sql: str) -> None:
    with Backends(load_config(None)) as backends:
        rows = backends.clickhouse().query(sql)
    json.dump(rows, sys.stdout, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
