#!/usr/bin/env bash
# Open Policy Agent server (v1.22.3, `go install`ed into ~/go/bin) as a plain process on
# 127.0.0.1:${LLMOPS_OPA_PORT:-18181}, serving the bundle in deploy/opa/policies (its .manifest
# revision shows up in decision logs and /v1/status).
# Readiness: GET /health answers 200.   usage: opa.sh {start|stop|status|check|restart}
# Env: LLMOPS_OPA_BUNDLE (bundle dir), LLMOPS_OPA_BIN (binary), LLMOPS_OPA_LOG_LEVEL (default
# error: info logs two lines per request), LLMOPS_OPA_DECISION_LOGS=1 logs every decision.
# Clients get the bundle revision with `?provenance=true` on /v1/data queries.
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LLMOPS_LOG_TAG=opa

OPA_DIR="$LLMOPS_LOCAL_DIR/opa"
OPA_PID="$OPA_DIR/run/opa.pid"
OPA_LOG="$OPA_DIR/logs/opa.log"
OPA_BUNDLE="${LLMOPS_OPA_BUNDLE:-$LLMOPS_REPO_ROOT/deploy/opa/policies}"
INSTALL_HINT="bash deploy/local/install.sh opa   (go install github.com/open-policy-agent/opa@$LLMOPS_OPA_VERSION)"

find_opa() {
    local c
    for c in "${LLMOPS_OPA_BIN:-}" "$LLMOPS_GOBIN/opa" "$(command -v opa 2>/dev/null || true)"; do
        if [[ -n "$c" && -x "$c" ]]; then OPA_BIN="$c"; return 0; fi
    done
    return 1
}

ready() {
    [[ "$(http_get_status "$LLMOPS_HOST" "$LLMOPS_OPA_PORT" /health)" == 200 ]]
}

check() {
    find_opa || missing "opa not found in \$LLMOPS_OPA_BIN, $LLMOPS_GOBIN or PATH. Install: $INSTALL_HINT"
    [[ -d "$OPA_BUNDLE" ]] || missing "policy bundle directory $OPA_BUNDLE not found"
}

start() {
    if ready; then
        log "already running on $LLMOPS_HOST:$LLMOPS_OPA_PORT"
        return 0
    fi
    refuse_if_running "$OPA_PID" opa "$LLMOPS_OPA_PORT"
    port_open "$LLMOPS_OPA_PORT" && die "port $LLMOPS_OPA_PORT is taken by something that does not answer /health"
    find_opa
    server_dir opa >/dev/null
    local version
    version="$("$OPA_BIN" version 2>/dev/null | sed -n 's/^Version: //p')"
    [[ "v$version" == "$LLMOPS_OPA_VERSION" ]] || log "warning: $OPA_BIN is $version, deploy/local pins $LLMOPS_OPA_VERSION"
    # Fail fast (with OPA's own message) on a policy that does not compile.
    "$OPA_BIN" check --bundle "$OPA_BUNDLE" >"$OPA_DIR/logs/check.log" 2>&1 || {
        show_log "$OPA_DIR/logs/check.log"; die "the policy bundle $OPA_BUNDLE does not compile"; }
    local args=(run --server --addr "$LLMOPS_HOST:$LLMOPS_OPA_PORT" --bundle "$OPA_BUNDLE"
        --log-format json --log-level "${LLMOPS_OPA_LOG_LEVEL:-error}" --skip-version-check)
    [[ "${LLMOPS_OPA_DECISION_LOGS:-0}" == 1 ]] && args+=(--set decision_logs.console=true)
    log "starting $OPA_BIN $version on $LLMOPS_HOST:$LLMOPS_OPA_PORT (bundle $OPA_BUNDLE)"
    spawn "$OPA_PID" "$OPA_LOG" "$OPA_BIN" "${args[@]}"
    local t0=$SECONDS
    if ! wait_for "$LLMOPS_START_TIMEOUT" "OPA /health on $LLMOPS_HOST:$LLMOPS_OPA_PORT" ready; then
        show_log "$OPA_LOG"
        pid_alive "$OPA_PID" opa && kill "$(cat "$OPA_PID")" 2>/dev/null
        die "OPA did not become ready within ${LLMOPS_START_TIMEOUT}s"
    fi
    log "ready in $((SECONDS - t0))s: http://$LLMOPS_HOST:$LLMOPS_OPA_PORT (pid $(cat "$OPA_PID"))"
}

stop() {
    stop_pidfile "$OPA_PID" opa "$LLMOPS_OPA_PORT" 20
}

status() {
    if ready; then
        echo "opa: running on $LLMOPS_HOST:$LLMOPS_OPA_PORT$(pid_alive "$OPA_PID" opa && echo ", pid $(cat "$OPA_PID")")"
    else
        echo "opa: stopped"
        return 3
    fi
}

dispatch start stop status check "$@"
