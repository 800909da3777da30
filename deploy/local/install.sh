#!/usr/bin/env bash
# Idempotent installer of everything deploy/local/*.sh needs, for a developer machine or a fresh
# Debian 12 CI machine (run as root, or as a user with sudo). Each step prints what it does and
# is skipped when its result is already present, so a warm run takes seconds.
#
#   apt      redis-server, clickhouse-server, clickhouse-client (Debian's 18.16), postgresql-15 +
#            postgresql-client-15, and Java 17 + Maven when missing. Services are NOT started by
#            apt (a temporary policy-rc.d forbids it) and never needed: deploy/local starts its
#            own processes (the postgresql-15 package still creates Debian's `main` cluster in
#            /var/lib/postgresql/15/main; deploy/local/postgres.sh never uses it).
#   kafka    Apache Kafka 4.4.0 jars + runtime deps from Maven Central into
#            deploy/local/kafka/target/lib (cached in ~/.m2)
#   zookeeper  Apache ZooKeeper 3.9.5 jars the same way, into deploy/local/zookeeper/target/lib
#            (ClickHouse's Replicated tables need it; Kafka does not)
#   opa      go install github.com/open-policy-agent/opa@v1.22.3   -> ~/go/bin/opa
#   buf      go install github.com/bufbuild/buf/cmd/buf@v1.75.0    -> ~/go/bin/buf
#   ghz      go install github.com/bojand/ghz/cmd/ghz@v0.121.0     -> ~/go/bin/ghz (load probes)
#   helm     go install helm.sh/helm/v4/cmd/helm@v4.3.2             -> ~/go/bin/helm (deploy/helm)
#   probe    go install github.com/grpc-ecosystem/grpc-health-probe@v0.4.63
#            -> ~/go/bin/grpc-health-probe (the chart's health probe, tested against a mesh)
#
# Usage: deploy/local/install.sh [apt|kafka|zookeeper|opa|buf|ghz|helm|probe ...]   (default: all)
# Env:   LLMOPS_SKIP_APT=1 skips the apt step (e.g. packages baked into an image).
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LLMOPS_LOG_TAG=install

SUDO=()
if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 && SUDO=(sudo) || SUDO=()
fi

step_time() { # NAME START_SECONDS
    log "step $1 done in $(($(date +%s) - $2))s"
}

# ---------------------------------------------------------------------------------------------
install_apt() {
    local t0; t0=$(date +%s)
    if [[ "${LLMOPS_SKIP_APT:-0}" == 1 ]]; then log "apt: skipped (LLMOPS_SKIP_APT=1)"; return 0; fi
    local want=() pkg
    # command -> package (the package names Debian 12 ships)
    command -v redis-server >/dev/null 2>&1 || want+=(redis-server)
    [[ -x /usr/bin/clickhouse-server || -x /usr/sbin/clickhouse-server ]] || want+=(clickhouse-server)
    command -v clickhouse-client >/dev/null 2>&1 || want+=(clickhouse-client)
    # PostgreSQL by major version path (Debian's /usr/bin/psql is a wrapper for any version).
    [[ -x /usr/lib/postgresql/15/bin/postgres ]] || want+=(postgresql-15)
    [[ -x /usr/lib/postgresql/15/bin/psql ]] || want+=(postgresql-client-15)
    command -v java >/dev/null 2>&1 || want+=(openjdk-17-jre-headless)
    command -v mvn >/dev/null 2>&1 || want+=(maven)
    if ((${#want[@]} == 0)); then
        log "apt: redis-server, clickhouse-server, clickhouse-client, postgresql-15, java, mvn already installed"
        step_time apt "$t0"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${want[*]} by hand"
    if ((EUID != 0)) && ((${#SUDO[@]} == 0)); then
        die "need root (or sudo) to apt-get install ${want[*]}"
    fi
    # Forbid maintainer scripts from starting the services: we run our own processes on our
    # own ports, and on a machine without systemd invoke-rc.d would only fail noisily.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        added_policy=1
    fi
    log "apt: apt-get update"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    for pkg in "${want[@]}"; do
        apt-cache show "$pkg" >/dev/null 2>&1 || die "apt: package $pkg is not in this machine's apt sources"
    done
    log "apt: apt-get install -y ${want[*]}"
    local rc=0
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${want[@]}" || rc=$?
    ((added_policy)) && "${SUDO[@]}" rm -f "$policy"
    ((rc == 0)) || die "apt-get install failed (exit $rc)"
    # Debian's packages may have started (or tried to start) their own instances on the default
    # ports when a service manager was present; we do not use them.
    step_time apt "$t0"
}

# ---------------------------------------------------------------------------------------------
KAFKA_POM="$LLMOPS_REPO_ROOT/deploy/local/kafka/pom.xml"
KAFKA_LIB="${LLMOPS_KAFKA_LIB:-$LLMOPS_REPO_ROOT/deploy/local/kafka/target/lib}"
ZOOKEEPER_POM="$LLMOPS_REPO_ROOT/deploy/local/zookeeper/pom.xml"
ZOOKEEPER_LIB="${LLMOPS_ZOOKEEPER_LIB:-$LLMOPS_REPO_ROOT/deploy/local/zookeeper/target/lib}"

# maven_jars NAME WHAT POM LIB JAR -> the jars POM names, copied into LIB (from ~/.m2 once
# fetched); skipped when LIB holds JAR and was filled from this very POM.
maven_jars() {
    local name="$1" what="$2" pom="$3" lib="$4" jar="$5" t0; t0=$(date +%s)
    command -v java >/dev/null 2>&1 || die "$name: java not found (apt-get install openjdk-17-jre-headless)"
    command -v mvn >/dev/null 2>&1 || die "$name: mvn not found (apt-get install maven)"
    local stamp want_stamp
    want_stamp="$(sha256sum "$pom" | cut -d' ' -f1)"
    stamp="$(cat "$lib/.pom.sha256" 2>/dev/null || true)"
    if [[ "$stamp" == "$want_stamp" && -f "$lib/$jar" ]]; then
        log "$name: $lib is up to date with ${pom#"$LLMOPS_REPO_ROOT"/} ($what)"
        step_time "$name" "$t0"
        return 0
    fi
    # Copy into a fresh directory and swap it in, so a stale jar of another version never
    # lingers on the class path.
    local tmp="$lib.tmp.$$"
    rm -rf "$tmp"
    log "$name: mvn dependency:copy-dependencies ($what; jars cached in ~/.m2)"
    if ! mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DoutputDirectory="$tmp" \
        -Dmdep.overWriteIfNewer=true; then
        rm -rf "$tmp"
        die "$name: maven failed to fetch the $what jars"
    fi
    [[ -f "$tmp/$jar" ]] || die "$name: $jar missing after copy"
    printf '%s\n' "$want_stamp" >"$tmp/.pom.sha256"
    rm -rf "$lib"
    mkdir -p "$(dirname "$lib")"
    mv "$tmp" "$lib"
    log "$name: $(find "$lib" -name '*.jar' | wc -l) jars in $lib"
    step_time "$name" "$t0"
}

install_kafka() {
    maven_jars kafka "Kafka $LLMOPS_KAFKA_VERSION" "$KAFKA_POM" "$KAFKA_LIB" \
        "kafka_2.13-$LLMOPS_KAFKA_VERSION.jar"
}

install_zookeeper() {
    maven_jars zookeeper "ZooKeeper $LLMOPS_ZOOKEEPER_VERSION" "$ZOOKEEPER_POM" "$ZOOKEEPER_LIB" \
        "zookeeper-$LLMOPS_ZOOKEEPER_VERSION.jar"
}

# ---------------------------------------------------------------------------------------------
# go_install_module NAME MODULE_PATH PACKAGE VERSION: `go install PACKAGE@VERSION` unless the
# binary is already that version, read from what Go recorded in it (`go version -m`): the
# tools' own version flags do not always say (ghz says "dev", helm "v4.3").
go_install_module() {
    local name="$1" module="$2" package="$3" version="$4" t0; t0=$(date +%s)
    local bin="$LLMOPS_GOBIN/$name"
    if [[ -x "$bin" ]] && go version -m "$bin" 2>/dev/null | grep -qE "^\s+mod\s+$module\s+$version(\s|$)"; then
        log "$name: $bin is already $version"
        step_time "$name" "$t0"
        return 0
    fi
    command -v go >/dev/null 2>&1 || die "$name: go not found; install Go >= 1.21"
    log "$name: go install $package@$version (into $LLMOPS_GOBIN)"
    mkdir -p "$LLMOPS_GOBIN"
    GOBIN="$LLMOPS_GOBIN" CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" go install "$package@$version" \
        || die "$name: go install $package@$version failed"
    go version -m "$bin" | grep -qE "^\s+mod\s+$module\s+$version(\s|$)" || die "$name: $bin is not $version"
    step_time "$name" "$t0"
}

install_opa() {
    go_install_module opa github.com/open-policy-agent/opa github.com/open-policy-agent/opa "$LLMOPS_OPA_VERSION"
}

install_ghz() {
    go_install_module ghz github.com/bojand/ghz github.com/bojand/ghz/cmd/ghz "$LLMOPS_GHZ_VERSION"
}

install_helm() {
    go_install_module helm helm.sh/helm/v4 helm.sh/helm/v4/cmd/helm "$LLMOPS_HELM_VERSION"
}

install_probe() {
    go_install_module grpc-health-probe github.com/grpc-ecosystem/grpc-health-probe \
        github.com/grpc-ecosystem/grpc-health-probe "$LLMOPS_HEALTH_PROBE_VERSION"
}

install_buf() {
    go_install_module buf github.com/bufbuild/buf github.com/bufbuild/buf/cmd/buf "$LLMOPS_BUF_VERSION"
}

# ---------------------------------------------------------------------------------------------
main() {
    local steps=("$@") t0; t0=$(date +%s)
    ((${#steps[@]})) || steps=(apt kafka zookeeper opa buf ghz helm probe)
    local s
    for s in "${steps[@]}"; do
        case "$s" in
            apt) install_apt ;;
            kafka) install_kafka ;;
            zookeeper) install_zookeeper ;;
            opa) install_opa ;;
            buf) install_buf ;;
            ghz) install_ghz ;;
            helm) install_helm ;;
            probe) install_probe ;;
            *) die "unknown step '$s' (apt|kafka|zookeeper|opa|buf|ghz|helm|probe)" ;;
        esac
    done
    log "all done in $(($(date +%s) - t0))s; binaries: opa/buf/ghz/helm/grpc-health-probe in $LLMOPS_GOBIN, Kafka jars in $KAFKA_LIB, ZooKeeper jars in $ZOOKEEPER_LIB"
    case ":$PATH:" in *":$LLMOPS_GOBIN:"*) ;; *) log "note: $LLMOPS_GOBIN is not on PATH (deploy/local finds opa there anyway)";; esac
}

main "$@"
