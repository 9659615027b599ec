#!/usr/bin/env bash
# Make a Docker engine and the offline base image (python:3.11-slim) available for tests and CI.
#
# - An engine that already answers `docker info` is reused as it is.
# - Otherwise one is started only where that is allowed: as root AND with CI=true (or 1, yes) or
#   PE_START_DOCKER=1. It runs with the bridge and iptables off (containers use
#   `--network none` or `--network host`), its data root under /var/lib/parallel-engine.
# - No registry is reachable here, so where it may change the machine the base image is made
#   locally with debootstrap (once: the rootfs is kept and reused) and tagged with the name
#   code/Dockerfile uses. Elsewhere a missing base image is pulled; a failed pull is a loud
#   warning (the docker tests that need it skip), not an error.
#
# Idempotent: a second run finds everything in place and changes nothing. Every wait is bounded.
# Environment: PE_START_DOCKER=1 (opt in), CI=true|1|yes (opt in), PE_STATE_DIR (default
# /var/lib/parallel-engine), PE_DOCKER_WAIT_S (default 60), PE_BASE_IMAGE (default python:3.11-slim),
# PE_DEBOOTSTRAP_ATTEMPTS (default 3), PE_RETRY_BACKOFF_S (default 15: 15 s, then 30 s, ...).
# Sourcing it (`source scripts/ensure-docker.sh`) defines the functions without running main.
set -euo pipefail

STATE_DIR=${PE_STATE_DIR:-/var/lib/parallel-engine}
DATA_ROOT="$STATE_DIR/docker"
DOCKERD_LOG="$STATE_DIR/dockerd.log"
DOCKERD_PID="$STATE_DIR/dockerd.pid"
ROOTFS="$STATE_DIR/rootfs-bookworm"
ROOTFS_STAMP="$STATE_DIR/rootfs-bookworm.complete"  # outside the rootfs: not part of the image
DEBOOTSTRAP_LOG="$STATE_DIR/debootstrap.log"
BASE_IMAGE=${PE_BASE_IMAGE:-python:3.11-slim}
IMPORTED_IMAGE=parallel-engine/debian-python:bookworm
WAIT_S=${PE_DOCKER_WAIT_S:-60}
DEBOOTSTRAP_ATTEMPTS=${PE_DEBOOTSTRAP_ATTEMPTS:-3}
DEBOOTSTRAP_TIMEOUT_S=${PE_DEBOOTSTRAP_TIMEOUT_S:-1200}  # one attempt; the slowest seen here was 9 min
RETRY_BACKOFF_S=${PE_RETRY_BACKOFF_S:-15}
APT_TIMEOUT_S=${PE_APT_TIMEOUT_S:-900}
POLICY_RC_D=${PE_POLICY_RC_D:-/usr/sbin/policy-rc.d}
# apt retries each download 5 times and waits (bounded) for a dpkg lock another apt holds.
APT_OPTIONS=(-o Acquire::Retries=5 -o DPkg::Lock::Timeout=300 -o Acquire::http::Timeout=60)

CHANGES=()        # what this run did to the machine, printed at the end
APT_UPDATED=0

say() { printf '[ensure-docker] %s\n' "$*"; }
loud() {
    printf '\n' >&2
    printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
    for line in "$@"; do printf '!!! %s\n' "$line" >&2; done
    printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n' >&2
}
die() { loud "$@"; summary; exit 1; }
now() { date +%s; }
elapsed() { echo "$(( $(now) - $1 ))s"; }

summary() {
    if ((${#CHANGES[@]} == 0)); then
        say "changes made to this machine: none"
    else
        say "changes made to this machine:"
        for change in "${CHANGES[@]}"; do say "  - $change"; done
    fi
}

engine_answers() { timeout 15 docker info >/dev/null 2>&1; }

describe_engine() {
    local host=${DOCKER_HOST:-unix:///var/run/docker.sock}
    docker info --format "{{.Name}}: Docker {{.ServerVersion}} ({{.OperatingSystem}}), storage driver {{.Driver}}, data root {{.DockerRootDir}} at $host" 2>/dev/null \
        || echo "engine at $host"
}

in_ci() {
    case "${CI:-}" in
        [Tt][Rr][Uu][Ee] | 1 | [Yy][Ee][Ss]) return 0 ;;
        *) return 1 ;;
    esac
}

may_change_machine() {
    [[ $(id -u) -eq 0 ]] && { in_ci || [[ ${PE_START_DOCKER:-} == "1" ]]; }
}

apt_install() {
    # Install the given packages; the service is never started by the package (policy-rc.d),
    # because Debian's default dockerd would create a bridge and iptables rules.
    local started policy_created=0
    started=$(now)
    export DEBIAN_FRONTEND=noninteractive
    if ((APT_UPDATED == 0)); then
        say "apt-get update"
        timeout "$APT_TIMEOUT_S" apt-get "${APT_OPTIONS[@]}" update -q \
            || die "apt-get update failed (or took over ${APT_TIMEOUT_S}s): cannot install $*"
        APT_UPDATED=1
    fi
    if [[ ! -e $POLICY_RC_D ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC_D"
        chmod 755 "$POLICY_RC_D"
        policy_created=1
    fi
    say "apt-get install -y --no-install-recommends $*"
    if ! timeout "$APT_TIMEOUT_S" apt-get "${APT_OPTIONS[@]}" install -y -q --no-install-recommends "$@"; then
        ((policy_created)) && rm -f "$POLICY_RC_D"
        die "apt-get install $* failed (or took over ${APT_TIMEOUT_S}s)"
    fi
    ((policy_created)) && rm -f "$POLICY_RC_D"
    CHANGES+=("installed Debian packages: $* (service not started by the package)")
    say "installed $* in $(elapsed "$started")"
}

dockerd_alive() {
    [[ -s $DOCKERD_PID ]] && kill -0 "$(cat "$DOCKERD_PID")" 2>/dev/null
}

wait_for_engine() {
    # Succeeds once `docker info` answers; fails early if our dockerd died, or after WAIT_S.
    local deadline=$(( $(now) + WAIT_S ))
    while (( $(now) < deadline )); do
        engine_answers && return 0
        if [[ -n ${1:-} ]] && ! kill -0 "$1" 2>/dev/null; then
            return 1
        fi
        sleep 1
    done
    return 1
}

start_dockerd() {
    # Start dockerd with the given storage driver; succeed once it answers.
    local driver=$1 pid started
    started=$(now)
    say "starting dockerd (storage driver $driver, data root $DATA_ROOT, log $DOCKERD_LOG)"
    printf '\n===== %s: ensure-docker.sh starts dockerd --storage-driver=%s =====\n' "$(date -Is)" "$driver" >>"$DOCKERD_LOG"
    setsid nohup dockerd \
        --iptables=false --ip6tables=false --bridge=none \
        --storage-driver="$driver" \
        --data-root "$DATA_ROOT" \
        --pidfile "$DOCKERD_PID" \
        >>"$DOCKERD_LOG" 2>&1 </dev/null 9>&- &  # 9>&-: the daemon must not inherit our lock
    pid=$!
    if wait_for_engine "$pid"; then
        CHANGES+=("started dockerd (pid $pid, storage driver $driver, bridge and iptables off, data root $DATA_ROOT); stop it with: kill \$(cat $DOCKERD_PID)")
        say "dockerd answers after $(elapsed "$started")"
        return 0
    fi
    if kill -0 "$pid" 2>/dev/null; then
        say "dockerd (pid $pid) did not answer within ${WAIT_S}s; stopping it"
        kill "$pid" 2>/dev/null || true
        sleep 2
    fi
    say "dockerd with storage driver $driver failed after $(elapsed "$started"); last log lines:"
    tail -n 15 "$DOCKERD_LOG" | sed 's/^/[ensure-docker]     /' || true
    return 1
}

ensure_engine() {
    if engine_answers; then
        say "reusing the Docker engine that already answers: $(describe_engine)"
        return 0
    fi
    if ! may_change_machine; then
        local why="not running as root"
        [[ $(id -u) -eq 0 ]] && why="CI is not true, 1 or yes, and PE_START_DOCKER=1 is not set"
        loud "NO DOCKER ENGINE ANSWERS, and this script will not start one ($why)." \
            "Tests marked 'docker' WILL BE SKIPPED (and fail the session in CI)." \
            "To opt in, as root:  PE_START_DOCKER=1 bash scripts/ensure-docker.sh" \
            "or start your own Docker engine and make sure 'docker info' answers."
        summary
        exit 0
    fi

    mkdir -p "$STATE_DIR"
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
    command -v docker >/dev/null 2>&1 || die "docker.io is installed but no 'docker' client is on PATH"

    if dockerd_alive; then
        say "a dockerd we started earlier (pid $(cat "$DOCKERD_PID")) is running but not answering; waiting up to ${WAIT_S}s"
        wait_for_engine "$(cat "$DOCKERD_PID")" && { say "reusing it: $(describe_engine)"; return 0; }
        die "our dockerd (pid $(cat "$DOCKERD_PID")) does not answer; see $DOCKERD_LOG, stop it and re-run"
    fi
    rm -f "$DOCKERD_PID"

    if start_dockerd overlay2; then
        :
    elif start_dockerd vfs; then
        loud "overlay2 did not work on this machine: dockerd runs with the SLOW vfs storage driver" \
            "(every layer is a full copy; see $DOCKERD_LOG for why overlay2 failed)."
        CHANGES+=("fell back to the vfs storage driver because overlay2 failed")
    else
        die "COULD NOT START A DOCKER ENGINE (tried storage drivers overlay2 and vfs)." \
            "See $DOCKERD_LOG. Docker tests cannot run on this machine as it is."
    fi
    say "engine: $(describe_engine)"
}

build_rootfs() {
    # debootstrap, tried DEBOOTSTRAP_ATTEMPTS times with a growing pause (a mirror's hiccup is
    # common); the cache dir keeps what earlier attempts downloaded.
    local started attempt=1 pause=$RETRY_BACKOFF_S
    started=$(now)
    mkdir -p "$STATE_DIR/debootstrap-cache"
    : >"$DEBOOTSTRAP_LOG"
    while :; do
        if [[ -e $ROOTFS ]]; then
            say "removing an incomplete rootfs (an interrupted run or a failed attempt): $ROOTFS"
            rm -rf "$ROOTFS"
        fi
        say "debootstrap --variant=minbase bookworm $ROOTFS, attempt $attempt/$DEBOOTSTRAP_ATTEMPTS (log $DEBOOTSTRAP_LOG; this took 30 s to 9 min here)"
        printf '\n===== %s: attempt %s =====\n' "$(date -Is)" "$attempt" >>"$DEBOOTSTRAP_LOG"
        if timeout "$DEBOOTSTRAP_TIMEOUT_S" debootstrap --variant=minbase \
                --include=python3,python3-pip,python-is-python3 \
                --cache-dir="$STATE_DIR/debootstrap-cache" \
                bookworm "$ROOTFS" >>"$DEBOOTSTRAP_LOG" 2>&1; then
            break
        fi
        tail -n 20 "$DEBOOTSTRAP_LOG" >&2 || true
        if ((attempt >= DEBOOTSTRAP_ATTEMPTS)); then
            rm -rf "$ROOTFS"
            die "debootstrap failed $attempt times (each bounded by ${DEBOOTSTRAP_TIMEOUT_S}s) in $(elapsed "$started"); see $DEBOOTSTRAP_LOG"
        fi
        say "debootstrap attempt $attempt failed; retrying in ${pause}s (downloads so far are kept in $STATE_DIR/debootstrap-cache)"
        sleep "$pause"
        attempt=$((attempt + 1))
        pause=$((pause * 2))
    done
    # pip must be usable in a Dockerfile (PEP 668 would refuse `pip install` system-wide).
    rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED
    # Make the image small and deterministic enough: drop apt's downloaded lists and archives.
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    date -Is >"$ROOTFS_STAMP"
    CHANGES+=("built a Debian bookworm rootfs with Python in $ROOTFS (reused by later runs)")
    say "rootfs built in $(elapsed "$started")"
}

ensure_base_image() {
    local started
    if timeout 60 docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "base image $BASE_IMAGE is present: skipped"
        return 0
    fi
    started=$(now)
    if ! timeout 60 docker image inspect "$IMPORTED_IMAGE" >/dev/null 2>&1; then
        if ! may_change_machine; then
            say "base image $BASE_IMAGE is missing; trying docker pull (needs a reachable registry; at most 300s)"
            if timeout 300 docker pull "$BASE_IMAGE"; then
                CHANGES+=("pulled $BASE_IMAGE")
                return 0
            fi
            loud "BASE IMAGE $BASE_IMAGE IS MISSING and could not be pulled." \
                "Tests marked 'docker' that need it WILL BE SKIPPED (and fail the session in CI)." \
                "To build it offline with debootstrap, as root:  PE_START_DOCKER=1 bash scripts/ensure-docker.sh"
            return 0
        fi
        command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
        mkdir -p "$STATE_DIR"
        if [[ -f $ROOTFS_STAMP && -d $ROOTFS ]]; then
            say "reusing the completed rootfs $ROOTFS (built $(cat "$ROOTFS_STAMP"))"
        else
            build_rootfs
        fi
        local import_started
        import_started=$(now)
        say "importing $ROOTFS as $IMPORTED_IMAGE"
        tar -C "$ROOTFS" -c . | timeout 600 docker import \
            --change 'ENV LANG=C.UTF-8' \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["python3"]' \
            - "$IMPORTED_IMAGE" >/dev/null \
            || die "docker import of $ROOTFS failed (or took over 600 s): see $DOCKERD_LOG;" \
                   "to rebuild the rootfs, rm $ROOTFS_STAMP, then run this script again"
        CHANGES+=("imported image $IMPORTED_IMAGE")
        say "imported in $(elapsed "$import_started")"
    fi
    timeout 120 docker tag "$IMPORTED_IMAGE" "$BASE_IMAGE" || die "docker tag $IMPORTED_IMAGE $BASE_IMAGE failed: check \`docker info\` and $DOCKERD_LOG, then run this script again"
    CHANGES+=("tagged $IMPORTED_IMAGE as $BASE_IMAGE")
    say "base image $BASE_IMAGE ready in $(elapsed "$started"): $(timeout 120 docker run --rm --network none "$BASE_IMAGE" python --version 2>&1)"
}

ensure_registry() {
    # The emulated cloud's image registry is Debian's docker-registry (distribution 2.8), run by
    # the emulator itself on 127.0.0.1; the package's own service is never started (policy-rc.d).
    if command -v docker-registry >/dev/null 2>&1 || [[ -x /usr/bin/docker-registry ]]; then
        return 0
    fi
    if ! may_change_machine; then
        loud "docker-registry is not installed: the emulated cloud runs without an image registry" \
            "(tests that build and pull images through it fail). As root: apt-get install docker-registry"
        return 0
    fi
    apt_install docker-registry
    CHANGES+=("installed docker-registry (its service is not started)")
}

main() {
    local started
    started=$(now)
    if [[ $(id -u) -eq 0 ]]; then
        # Two concurrent runs (e.g. parallel CI jobs) must not start two engines.
        mkdir -p "$STATE_DIR"
        exec 9>"$STATE_DIR/ensure-docker.lock"
        flock -w 900 9 || die "another ensure-docker.sh has held $STATE_DIR/ensure-docker.lock for 15 minutes" \
            "(see: fuser -v $STATE_DIR/ensure-docker.lock)"
    fi
    ensure_engine
    ensure_base_image
    ensure_registry
    say "done in $(elapsed "$started"); engine: $(describe_engine)"
    summary
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
