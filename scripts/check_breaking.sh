#!/usr/bin/env bash
# Breaking-change check of the v1 contracts (buf breaking, FILE rules from buf.yaml).
#
# Every commit that touched protos/ is compared with its parent, and the working tree with
# HEAD. Checking each step, rather than one diff against "main as it was", needs no knowledge
# of which commits have landed, and still catches a change that removes or renumbers a field
# in one commit and hides it in the next. A commit whose parent had no protos/ (v1 itself)
# is the baseline. A deliberate break belongs in a new package (llmops.v2), not in v1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
buf="$(command -v buf || echo "$HOME/go/bin/buf")"
[[ -x "$buf" ]] || { echo "check_breaking: buf not found (scripts/test.sh installs it)" >&2; exit 1; }

status=0
checked=0
if ! git diff --quiet HEAD -- protos/ 2>/dev/null; then
  "$buf" breaking --against '.git#ref=HEAD' || { echo "  ^ working tree vs HEAD" >&2; status=1; }
  checked=$((checked + 1))
fi
for commit in $(git rev-list --max-count=200 HEAD -- protos/); do
  parent="$(git rev-parse -q --verify "$commit^" || true)"
  [[ -n "$parent" ]] && git cat-file -e "$parent:protos/llmops/v1" 2>/dev/null || continue
  if ! "$buf" breaking ".git#ref=$commit" --against ".git#ref=$parent"; then
    echo "  ^ $(git log -1 --format='%h %s' "$commit") breaks the v1 contract" >&2
    status=1
  fi
  checked=$((checked + 1))
done
echo "check_breaking: $checked contract change(s) checked against their parents"
exit "$status"
