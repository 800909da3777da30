#!/usr/bin/env bash
# Check that the committed Wasm policy bundle (deploy/opa/wasm/bundle.tar.gz) was compiled
# from the Rego in deploy/opa/policies as it is now (as scripts/check_protos.sh does for the
# protobuf stubs).
#
#   scripts/check_opa_wasm.sh    # exit 0 when fresh, 1 when stale or missing
#
# Rebuilds into a temporary file with scripts/build_opa_wasm.sh (reproducible output) and
# compares bytes. On a difference it names the changed files inside the bundle; the fix is
# `scripts/build_opa_wasm.sh` and committing the result. A missing opa binary is a warning
# locally and an error when CI=true or LLMOPS_REQUIRE_INFRA=1.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
committed="$repo_root/deploy/opa/wasm/bundle.tar.gz"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

set +e
"$repo_root/scripts/build_opa_wasm.sh" "$tmp/bundle.tar.gz" >"$tmp/build.log" 2>&1
rc=$?
set -e
if ((rc == 2)); then
  if [[ "${CI:-}" == "true" || "${LLMOPS_REQUIRE_INFRA:-}" == "1" ]]; then
    echo "check_opa_wasm: FAIL: $(cat "$tmp/build.log")" >&2
    exit 1
  fi
  echo "check_opa_wasm: WARNING: $(cat "$tmp/build.log"); skipping the check" >&2
  exit 0
elif ((rc != 0)); then
  cat "$tmp/build.log" >&2
  echo "check_opa_wasm: FAIL: the policies in deploy/opa/policies do not build" >&2
  exit 1
fi

if [[ ! -f "$committed" ]]; then
  echo "check_opa_wasm: FAIL: deploy/opa/wasm/bundle.tar.gz is missing. Run scripts/build_opa_wasm.sh and commit it." >&2
  exit 1
fi
if cmp -s "$tmp/bundle.tar.gz" "$committed"; then
  echo "check_opa_wasm: deploy/opa/wasm/bundle.tar.gz is up to date"
  exit 0
fi

mkdir -p "$tmp/fresh" "$tmp/committed"
tar -xzf "$tmp/bundle.tar.gz" -C "$tmp/fresh" 2>/dev/null
tar -xzf "$committed" -C "$tmp/committed" 2>/dev/null || true
changed="$(diff -rq "$tmp/committed" "$tmp/fresh" 2>&1 | sed -e "s|$tmp/committed/||g" -e "s|$tmp/fresh/||g" || true)"
echo "check_opa_wasm: FAIL: deploy/opa/wasm/bundle.tar.gz is stale (compiled from other policies" \
  "or another opa version). Run scripts/build_opa_wasm.sh and commit it. Differences:" >&2
echo "${changed:-  (same files, different bytes: another opa version?)}" | sed 's/^/  /' >&2
exit 1
