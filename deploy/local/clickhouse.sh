#!/usr/bin/env bash
# ClickHouse server (Debian 12's clickhouse-server 18.16) as a plain process on 127.0.0.1:
# native ${LLMOPS_CLICKHOUSE_PORT:-19000}, HTTP ${LLMOPS_CLICKHOUSE_HTTP_PORT:-18123}.
# Config: the packaged /etc/clickhouse-server/{config,users}.xml copied into the state dir with
# paths, ports and listen address rewritten (deploy/local/clickhouse_config.py); Replicated
# tables use the ZooKeeper of deploy/local/zookeeper.sh (${LLMOPS_ZOOKEEPER_PORT:-12181}), which
# the server does not need to start.
# Readiness: HTTP `SELECT 1` answers 1.   usage: clickhouse.sh {start|stop|status|check|restart}
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LLMOPS_LOG_TAG=clickhouse

CH_SRC_CONFIG="${LLMOPS_CLICKHOUSE_SRC_CONFIG:-/etc/clickhouse-server}"
CH_DIR="$LLMOPS_LOCAL_DIR/clickhouse"
CH_PID="$CH_DIR/run/clickhouse-server.pid"
CH_LOG="$CH_DIR/logs/clickhouse-server.log"
CH_ERRLOG="$CH_DIR/logs/clickhouse-server.err.log"
CH_LAUNCH_LOG="$CH_DIR/logs/launcher.log"
INSTALL_HINT="bash deploy/local/install.sh apt   (apt-get install -y clickhouse-server clickhouse-client)"

# Sets CH_CMD to the server command (separate binary, or the `clickhouse server` multi-binary).
find_server() {
    local c
    for c in "${LLMOPS_CLICKHOUSE_SERVER_BIN:-}" /usr/sbin/clickhouse-server /usr/bin/clickhouse-server; do
        if [[ -n "$c" && -x "$c" ]]; then CH_CMD=("$c"); return 0; fi
    done
    if c="$(command -v clickhouse-server 2>/dev/null)"; then CH_CMD=("$c"); return 0; fi
    if c="$(command -v clickhouse 2>/dev/null)"; then CH_CMD=("$c" server); return 0; fi
    return 1
}

ready() {
    [[ "$(http_get_body "$LLMOPS_HOST" "$LLMOPS_CLICKHOUSE_HTTP_PORT" '/?query=SELECT%201' | tr -d '[:space:]')" == 1 ]]
}

check() {
    find_server || missing "clickhouse-server not found. Install: $INSTALL_HINT"
    [[ -f "$CH_SRC_CONFIG/config.xml" && -f "$CH_SRC_CONFIG/users.xml" ]] \
        || missing "$CH_SRC_CONFIG/config.xml or users.xml not found. Install: $INSTALL_HINT"
    find_python >/dev/null || missing "python3 not found (needed to write the config)"
}

start() {
    if ready; then
        log "already running on $LLMOPS_HOST:$LLMOPS_CLICKHOUSE_PORT (http $LLMOPS_CLICKHOUSE_HTTP_PORT)"
        return 0
    fi
    refuse_if_running "$CH_PID" clickhouse "$LLMOPS_CLICKHOUSE_PORT"
    local p
    for p in "$LLMOPS_CLICKHOUSE_PORT" "$LLMOPS_CLICKHOUSE_HTTP_PORT" "$LLMOPS_CLICKHOUSE_INTERSERVER_PORT"; do
        port_open "$p" && die "port $p is taken by something that is not a ready ClickHouse"
    done
    find_server
    server_dir clickhouse >/dev/null
    "$(find_python)" "$LLMOPS_REPO_ROOT/deploy/local/clickhouse_config.py" \
        --src "$CH_SRC_CONFIG" --dest "$CH_DIR/etc" --data "$CH_DIR/data" --logs "$CH_DIR/logs" \
        --tcp-port "$LLMOPS_CLICKHOUSE_PORT" --http-port "$LLMOPS_CLICKHOUSE_HTTP_PORT" \
        --interserver-port "$LLMOPS_CLICKHOUSE_INTERSERVER_PORT" \
        --zookeeper-port "$LLMOPS_ZOOKEEPER_PORT" \
        || die "could not write the ClickHouse config"
    log "starting ${CH_CMD[*]} (native $LLMOPS_CLICKHOUSE_PORT, http $LLMOPS_CLICKHOUSE_HTTP_PORT, data $CH_DIR/data)"
    rm -f "$CH_PID"
    printf '\n===== %s starting\n' "$(date -u +%FT%TZ)" >>"$CH_LAUNCH_LOG"
    # --daemon forks and writes the pid file itself; early errors go to the launcher log.
    (cd "$CH_DIR" && "${CH_CMD[@]}" --config-file="$CH_DIR/etc/config.xml" --pid-file="$CH_PID" --daemon \
        >>"$CH_LAUNCH_LOG" 2>&1 </dev/null) || {
        show_log "$CH_LAUNCH_LOG"; show_log "$CH_ERRLOG"; die "clickhouse-server failed to launch"; }
    local t0=$SECONDS
    if ! wait_for "$LLMOPS_START_TIMEOUT" "ClickHouse SELECT 1 on http port $LLMOPS_CLICKHOUSE_HTTP_PORT" ready; then
        show_log "$CH_LAUNCH_LOG" 10
        show_log "$CH_ERRLOG"
        show_log "$CH_LOG" 20
        die "ClickHouse did not become ready within ${LLMOPS_START_TIMEOUT}s"
    fi
    log "ready in $((SECONDS - t0))s: clickhouse://default@$LLMOPS_HOST:$LLMOPS_CLICKHOUSE_PORT/default (pid $(cat "$CH_PID" 2>/dev/null))"
}

stop() {
    stop_pidfile "$CH_PID" clickhouse "$LLMOPS_CLICKHOUSE_PORT" 60
}

status() {
    if ready; then
        local v
        v="$(http_get_body "$LLMOPS_HOST" "$LLMOPS_CLICKHOUSE_HTTP_PORT" '/?query=SELECT%20version()' | tr -d '[:space:]')"
        echo "clickhouse: running (version $v) native $LLMOPS_HOST:$LLMOPS_CLICKHOUSE_PORT http $LLMOPS_CLICKHOUSE_HTTP_PORT$(pid_alive "$CH_PID" clickhouse && echo ", pid $(cat "$CH_PID")")"
    else
        echo "clickhouse: stopped"
        return 3
    fi
}

dispatch start stop status check "$@"
