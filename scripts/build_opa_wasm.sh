#!/usr/bin/env bash
# Compile the policy bundle deploy/opa/policies to WebAssembly for the governance service's
# embedded engine (llmops/policy/wasm.py) and write deploy/opa/wasm/bundle.tar.gz.
#
#   scripts/build_opa_wasm.sh            # rebuild the committed bundle; commit the result
#   scripts/build_opa_wasm.sh OUT.tar.gz # write elsewhere (scripts/check_opa_wasm.sh does)
#
# Entrypoints are the rules annotated `# METADATA` / `# entrypoint: true` in the Rego (the
# OPA engine reads the same annotations from the server), so nothing is listed here.
# The output is byte-for-byte reproducible for the same sources and OPA version (entries
# stamped 1970, gzip without a timestamp), which is what makes the staleness check a plain
# comparison. The .manifest revision is copied from deploy/opa/policies/.manifest: bump it
# when the policies change, since every decision records it.
# Env: LLMOPS_OPA_BIN (the opa binary; default ~/go/bin/opa or PATH).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$repo_root/deploy/opa/wasm/bundle.tar.gz}"
[[ "$out" = /* ]] || out="$PWD/$out"

opa=""
for c in "${LLMOPS_OPA_BIN:-}" "$HOME/go/bin/opa" "$(command -v opa 2>/dev/null || true)"; do
  if [[ -n "$c" && -x "$c" ]]; then opa="$c"; break; fi
done
if [[ -z "$opa" ]]; then
  echo "build_opa_wasm: opa not found (install: bash deploy/local/install.sh opa)" >&2
  exit 2
fi

mkdir -p "$(dirname "$out")"
tmp="$(mktemp "$(dirname "$out")/.bundle.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
# Relative paths keep the checkout's location out of the bundle.
(cd "$repo_root/deploy/opa/policies" && "$opa" build --target wasm --bundle . --output "$tmp")
previous_revision=""
if [[ -f "$out" ]] && ! cmp -s "$tmp" "$out"; then
  previous_revision="$(tar -xzOf "$out" /.manifest 2>/dev/null 2>/dev/null | sed -n 's/.*"revision":"\([^"]*\)".*/\1/p' || true)"
fi
mv "$tmp" "$out"
chmod 644 "$out"
trap - EXIT
revision="$(tar -xzOf "$out" /.manifest 2>/dev/null | sed -n 's/.*"revision":"\([^"]*\)".*/\1/p')"
echo "build_opa_wasm: wrote $out (revision $revision, $("$opa" version | sed -n 's/^Version: /opa /p'))"
if [[ -n "$previous_revision" && "$previous_revision" == "$revision" ]]; then
  echo "build_opa_wasm: WARNING: the policies changed but the revision is still $revision;" \
    "bump it in deploy/opa/policies/.manifest (decisions record it)" >&2
fi
