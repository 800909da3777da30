# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts sourcing it
# Shared helpers for deploy/local/*.sh: paths, ports, logging, pid files, readiness waits.
# Sourced, never executed. Every server script follows the same contract:
#   <name>.sh start   idempotent; a server already answering on its port is a no-op success;
#                     otherwise start it and wait for a real readiness probe (or fail showing
#                     the last lines of its log)
#   <name>.sh stop    idempotent; stops the process this script started (pid file)
#   <name>.sh status  exit 0 when the server answers, 3 when it does not
#   <name>.sh check   exit 0 when everything needed to start it is installed; otherwise print
#                     what is missing and exit 2 (tests/infra.py uses this to skip or fail)

set -euo pipefail

LLMOPS_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LLMOPS_LOCAL_DIR="${LLMOPS_LOCAL_DIR:-$LLMOPS_REPO_ROOT/.llmops/local}"
LLMOPS_HOST=127.0.0.1

# Ports (fixed conventions; tests/infra.py and llmops/config.py use the same defaults).
LLMOPS_REDIS_PORT="${LLMOPS_REDIS_PORT:-16379}"
LLMOPS_KAFKA_PORT="${LLMOPS_KAFKA_PORT:-19092}"
LLMOPS_KAFKA_CONTROLLER_PORT="${LLMOPS_KAFKA_CONTROLLER_PORT:-$((LLMOPS_KAFKA_PORT + 1))}"
LLMOPS_CLICKHOUSE_PORT="${LLMOPS_CLICKHOUSE_PORT:-19000}"
LLMOPS_CLICKHOUSE_HTTP_PORT="${LLMOPS_CLICKHOUSE_HTTP_PORT:-18123}"
LLMOPS_CLICKHOUSE_INTERSERVER_PORT="${LLMOPS_CLICKHOUSE_INTERSERVER_PORT:-19009}"
LLMOPS_OPA_PORT="${LLMOPS_OPA_PORT:-18181}"
LLMOPS_ZOOKEEPER_PORT="${LLMOPS_ZOOKEEPER_PORT:-12181}"

# Pinned versions (install.sh installs exactly these).
LLMOPS_KAFKA_VERSION=4.4.0
LLMOPS_ZOOKEEPER_VERSION=3.9.5
LLMOPS_OPA_VERSION=v1.22.3
LLMOPS_BUF_VERSION=v1.75.0
LLMOPS_GHZ_VERSION=v0.121.0
LLMOPS_HELM_VERSION=v4.3.2
LLMOPS_HEALTH_PROBE_VERSION=v0.4.63

LLMOPS_GOBIN="${GOBIN:-${GOPATH:-$HOME/go}/bin}"

# Seconds `start` waits for readiness before failing.
LLMOPS_START_TIMEOUT="${LLMOPS_START_TIMEOUT:-60}"

_ts() { date -u +%H:%M:%S; }
log() { printf '[%s %s] %s\n' "$(_ts)" "${LLMOPS_LOG_TAG:-local}" "$*" >&2; }
die() { printf '[%s %s] ERROR: %s\n' "$(_ts)" "${LLMOPS_LOG_TAG:-local}" "$*" >&2; exit 1; }
# Exit 2 = a prerequisite is not installed (distinguished from a failure to start).
missing() { printf '[%s %s] NOT INSTALLED: %s\n' "$(_ts)" "${LLMOPS_LOG_TAG:-local}" "$*" >&2; exit 2; }

# server_dir NAME -> creates and prints <state>/<name> with data/ logs/ run/ etc/ inside.
server_dir() {
    local d="$LLMOPS_LOCAL_DIR/$1"
    mkdir -p "$d/data" "$d/logs" "$d/run" "$d/etc"
    printf '%s\n' "$d"
}

# port_open PORT [HOST] -> 0 when something accepts TCP connections there.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/${2:-$LLMOPS_HOST}/$1" 2>/dev/null
}

# wait_for TIMEOUT_S DESCRIPTION CMD... -> polls CMD every 0.2 s until it succeeds.
wait_for() {
    local timeout_s="$1" desc="$2"; shift 2
    local deadline=$((SECONDS + timeout_s))
    while ! "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${timeout_s}s waiting for $desc"
            return 1
        fi
        sleep 0.2
    done
}

# wait_port_closed PORT TIMEOUT_S
wait_port_closed() {
    local deadline=$((SECONDS + $2))
    while port_open "$1"; do
        ((SECONDS >= deadline)) && return 1
        sleep 0.2
    done
}

# show_log FILE [N] -> the last N lines of a server log, for failure messages.
show_log() {
    local f="$1" n="${2:-40}"
    if [[ -s "$f" ]]; then
        printf -- '----- last %s lines of %s -----\n' "$n" "$f" >&2
        tail -n "$n" "$f" >&2
        printf -- '-----\n' >&2
    else
        printf -- '(log %s is empty or missing)\n' "$f" >&2
    fi
}

# pid_alive PIDFILE [CMDLINE_SUBSTRING] -> 0 when the pid in the file runs (and its command
# line contains the substring, so a recycled pid is not mistaken for our server).
pid_alive() {
    local pidfile="$1" want="${2:-}" pid
    [[ -s "$pidfile" ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    # A zombie (exited, not yet reaped: our daemons are re-parented to PID 1, which may reap
    # late) is not running.
    [[ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]] || return 1
    if [[ -n "$want" ]]; then
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$want" || return 1
    fi
}

# refuse_if_running PIDFILE CMDLINE_SUBSTRING PORT -> die when our pid file names a live server
# that does not answer on PORT (still starting, wedged, or started with other ports): a second
# instance on the same state dir would corrupt its data or orphan the first one.
refuse_if_running() {
    if pid_alive "$1" "$2"; then
        die "pid $(tr -dc '0-9' <"$1") from $1 is running but does not answer on port $3;" \
            "stop it first ($(basename "$0") stop) or use another LLMOPS_LOCAL_DIR for other ports"
    fi
}

# stop_pidfile PIDFILE CMDLINE_SUBSTRING PORT [GRACE_S]
# SIGTERM, wait up to GRACE_S for the process to exit, then SIGKILL. Success when not running.
stop_pidfile() {
    local pidfile="$1" want="$2" port="$3" grace="${4:-30}" pid
    if ! pid_alive "$pidfile" "$want"; then
        rm -f "$pidfile"
        if port_open "$port"; then
            log "port $port answers but not from a process this script started" \
                "(no live pid in $pidfile); leaving it alone"
        else
            log "not running"
        fi
        return 0
    fi
    pid="$(tr -dc '0-9' <"$pidfile")"
    log "stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + grace))
    while pid_alive "$pidfile"; do
        if ((SECONDS >= deadline)); then
            log "pid $pid still alive after ${grace}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f "$pidfile"
    wait_port_closed "$port" 10 || log "warning: port $port still answers after stop"
    log "stopped"
}

# spawn PIDFILE LOGFILE CMD... -> run CMD detached in its own session (survives the caller),
# stdout/stderr appended to LOGFILE, pid written to PIDFILE.
spawn() {
    local pidfile="$1" logfile="$2"; shift 2
    printf '\n===== %s starting: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$logfile"
    setsid nohup "$@" >>"$logfile" 2>&1 </dev/null &
    echo $! >"$pidfile"
}

# find_python -> a Python that can import the modules given as arguments (the repo venv first).
find_python() {
    local py
    for py in "${LLMOPS_PYTHON:-}" "$LLMOPS_REPO_ROOT/.venv/bin/python" "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}" python3; do
        [[ -n "$py" ]] || continue
        command -v "$py" >/dev/null 2>&1 || continue
        if (($# == 0)) || "$py" -c "import $(IFS=,; echo "$*")" >/dev/null 2>&1; then
            printf '%s\n' "$py"
            return 0
        fi
    done
    return 1
}

# http_get_status HOST PORT PATH -> prints the HTTP status code of GET PATH (no curl needed).
http_get_status() {
    timeout 3 bash -c '
        exec 3<>/dev/tcp/$0/$1 || exit 1
        printf "GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n" "$2" "$0" >&3
        IFS=" " read -r _ code _ <&3 || exit 1
        printf "%s\n" "$code"
    ' "$1" "$2" "$3" 2>/dev/null
}

# http_get_body HOST PORT PATH -> prints the body of GET PATH.
http_get_body() {
    timeout 5 bash -c '
        exec 3<>/dev/tcp/$0/$1 || exit 1
        printf "GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n" "$2" "$0" >&3
        sed "1,/^\r\{0,1\}$/d" <&3
    ' "$1" "$2" "$3" 2>/dev/null
}

# dispatch START STOP STATUS CHECK "$@" -> the common command line of every server script.
dispatch() {
    local start_fn="$1" stop_fn="$2" status_fn="$3" check_fn="$4"; shift 4
    case "${1:-}" in
        start) "$check_fn" && "$start_fn" ;;
        stop) "$stop_fn" ;;
        status) "$status_fn" ;;
        check) "$check_fn" ;;
        restart) "$stop_fn" && "$check_fn" && "$start_fn" ;;
        *) echo "usage: $(basename "$0") {start|stop|status|check|restart}" >&2; exit 64 ;;
    esac
}
