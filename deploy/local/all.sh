#!/usr/bin/env bash
# All six local servers at once: Redis, Kafka, ZooKeeper, ClickHouse, PostgreSQL, OPA.
#   all.sh start    start each (already running = no-op); stops at the first failure
#   all.sh stop     stop each (in reverse order); never fails on one that is not running
#   all.sh status   one line per server; exit 3 when any is stopped
#   all.sh check    exit 2 when a prerequisite of any server is missing
# LLMOPS_SERVERS="redis opa" limits the set.
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LLMOPS_LOG_TAG=all

here="$LLMOPS_REPO_ROOT/deploy/local"
read -r -a servers <<<"${LLMOPS_SERVERS:-redis kafka zookeeper clickhouse postgres opa}"

case "${1:-}" in
    start)
        for s in "${servers[@]}"; do
            t0=$(date +%s%N)
            bash "$here/$s.sh" start
            log "$s: start took $(( ($(date +%s%N) - t0) / 1000000 )) ms"
        done
        ;;
    stop)
        rc=0
        for ((i = ${#servers[@]} - 1; i >= 0; i--)); do
            bash "$here/${servers[i]}.sh" stop || rc=1
        done
        exit "$rc"
        ;;
    status)
        rc=0
        for s in "${servers[@]}"; do bash "$here/$s.sh" status || rc=3; done
        exit "$rc"
        ;;
    check)
        rc=0
        for s in "${servers[@]}"; do bash "$here/$s.sh" check || rc=2; done
        exit "$rc"
        ;;
    restart)
        bash "$here/all.sh" stop && bash "$here/all.sh" start
        ;;
    *)
        echo "usage: $(basename "$0") {start|stop|status|check|restart}" >&2
        exit 64
        ;;
esac
