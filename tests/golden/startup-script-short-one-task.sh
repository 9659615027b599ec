#!/bin/bash
# parallel-engine VM start-up: pull the worker image and the task image, run the worker container.
#
# Rendered by parallel_engine.backends.gce.startup.render_startup_script (the worker image is
# pinned by digest). The worker (`python -m parallel_engine.worker`, in that image) speaks
# docs/worker-protocol.md; this script only starts it and, if it cannot start or dies without
# finishing, deletes its own VM so none idles until maxRunDuration. No Storage call here.
# This VM runs task task-b.2.
set -euo pipefail

PE_WORKER_IMAGE=us-docker.pkg.dev/my-project/pe/parallel-engine-worker@sha256:cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd
PE_IMAGE=us-docker.pkg.dev/my-project/pe/job@sha256:abababababababababababababababababababababababababababababababab
PE_REGISTRIES=us-docker.pkg.dev
PE_PULL_POLICY=always
PE_COMPUTE=https://compute.googleapis.com
PE_SELF_DELETE=0
PE_WORK_BASE=/var/lib/parallel-engine-worker
PE_RUN_ID=20250101-120000-abcde
PE_SETTINGS='{"bucket": "my-bucket", "compute_endpoint": "https://compute.googleapis.com", "docker_network": "host", "heartbeat_s": 30.0, "http_tries": 8, "idle_s": 60.0, "image": "us-docker.pkg.dev/my-project/pe/job@sha256:abababababababababababababababababababababababababababababababab", "list_page_size": 1000, "log_interval_s": 30.0, "poll_s": 10.0, "prefix": "", "pull_policy": "always", "pull_tries": 5, "registry": "us-docker.pkg.dev", "retry_base_s": 1.0, "retry_max_s": 30.0, "run_id": "20250101-120000-abcde", "self_delete": false, "stop_grace_s": 10, "storage_endpoint": "https://storage.googleapis.com", "task_timeout_s": 3600.0, "tasks": [["task-b", 2]], "work_dir": "/var/lib/parallel-engine-worker", "worker_image": "us-docker.pkg.dev/my-project/pe/parallel-engine-worker@sha256:cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"}'

MD="http://${GCE_METADATA_HOST:-metadata.google.internal}/computeMetadata/v1"
WORKER=""
TERMINATING=0

log() { printf '%s parallel-engine-start: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

md_get() { curl -sf --retry 5 --retry-connrefused --max-time 30 -H 'Metadata-Flavor: Google' "$MD/$1"; }

# One Compute call with the metadata token: DELETE this VM.
self_delete() {
  local token project zone name
  if ((!PE_SELF_DELETE)); then return 0; fi
  token=$(md_get instance/service-accounts/default/token | grep -o '"access_token": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/') || token=""
  project=$(md_get project/project-id) || project=""
  zone=$(md_get instance/zone) || zone=""
  name=$(md_get instance/name) || name=""
  if [[ -z $token || -z $project || -z $zone || -z $name ]]; then
    log "cannot delete this VM (no metadata): maxRunDuration will"
    return 0
  fi
  log "deleting this VM ($name)"
  curl -sf --retry 5 --max-time 60 -X DELETE -H @- \
    "$PE_COMPUTE/compute/v1/projects/$project/zones/${zone##*/}/instances/$name" >/dev/null \
    <<<"Authorization: Bearer $token" || log "self-delete failed: maxRunDuration will delete this VM"
}

# A shutdown (preemption, deletion, stop): the worker container hears it through `docker run`.
on_term() {
  if ((TERMINATING)); then return 0; fi
  TERMINATING=1
  if [[ -n $WORKER ]]; then docker kill -s TERM "$WORKER" >/dev/null 2>&1 || true; fi
}
trap on_term TERM INT HUP

pull() { # IMAGE POLICY [TRIES]: images are pinned by digest
  case $2 in
    never) return 0 ;;
    if-missing) if docker image inspect "$1" >/dev/null 2>&1; then return 0; fi ;;
  esac
  local try
  for ((try = 1; try <= ${3:-1}; try++)); do
    if docker pull -q "$1" >/dev/null 2>&1; then return 0; fi
    sleep "$try"
  done
  return 1
}

base=${TMPDIR:-$PE_WORK_BASE}
if [[ -n $base ]] && mkdir -p "$base" 2>/dev/null; then WORK=$(mktemp -d "$base/worker.XXXXXX"); else WORK=$(mktemp -d); fi
chmod 711 "$WORK"
export DOCKER_CONFIG="$WORK/docker-config"  # COS: HOME is read-only
mkdir -p "$DOCKER_CONFIG"
if [[ -n $PE_REGISTRIES ]]; then
  docker-credential-gcr configure-docker --registries="$PE_REGISTRIES" >/dev/null 2>&1 || log "docker-credential-gcr configure-docker failed"
fi

# Both images at once, and the worker starts as soon as its own image is there: the task image
# (maybe many GB) goes on pulling meanwhile, so BOOT_TIMEOUT never waits for it. The worker
# writes its record first and heartbeats while it pulls the task image itself (docker joins two
# pulls of one digest); a failed pull is the worker's to record (`infra`, the registry's message).
pull "$PE_IMAGE" "$PE_PULL_POLICY" &
if ! pull "$PE_WORKER_IMAGE" if-missing 3; then
  log "cannot pull the worker image $PE_WORKER_IMAGE"
  self_delete
  exit 1
fi

printf '%s' "$PE_SETTINGS" >"$WORK/settings.json"
socket=/var/run/docker.sock
if [[ ${DOCKER_HOST:-} == unix://* ]]; then socket=${DOCKER_HOST#unix://}; fi
log "run $PE_RUN_ID: starting the worker ($PE_WORKER_IMAGE), work folder $WORK"
# Detached; its log (a file in the work folder) followed onto the console by `tail`, which
# ignores the shutdown's SIGTERM (sent to every process of the VM, the worker included) and ends
# after this script, once it printed the last lines. The end is polled (docker's own client
# dies on SIGTERM).
: >"$WORK/worker.log"
(trap '' TERM INT HUP; exec tail -n +1 -F --pid=$$ "$WORK/worker.log" 2>/dev/null) &
WORKER=$(docker run -d --network host --pull never \
  -v "$socket:/var/run/docker.sock" -e DOCKER_HOST=unix:///var/run/docker.sock \
  -v "$WORK:$WORK" -e TMPDIR="$WORK" -e PE_WORKER_LOG="$WORK/worker.log" \
  -e GCE_METADATA_HOST="${GCE_METADATA_HOST:-metadata.google.internal}" \
  "$PE_WORKER_IMAGE" "$WORK/settings.json") || {
  log "the worker container did not start"
  self_delete
  exit 1
}
# One `docker wait` for the worker's exit code (a poll of `docker inspect` every 0.2 s cost a
# CPU core on a 2-core host running 8 VMs). bash's own `wait` keeps TERM handled at once: a
# trap interrupts it, not docker's. Anything but a 0 from `docker wait` (it was signalled at
# shutdown, the engine dropped it or restarts) is checked against the container's state: exited
# gives its code, "no such container" is reported; an engine that does not answer, or a worker
# still running, is waited for again. An unknown never ends the wait.
rc=""
while [[ -z $rc ]]; do
  docker wait "$WORKER" >"$WORK/worker.exit" 2>/dev/null &
  waiter=$!
  until wait "$waiter"; do kill -0 "$waiter" 2>/dev/null || break; done
  rc=$(<"$WORK/worker.exit") || rc=""
  if [[ $rc != 0 ]]; then
    rc=""
    if out=$(docker inspect "$WORKER" 2>&1); then
      state=$(grep -o '"Status": *"[a-z]*"\|"ExitCode": *-\?[0-9]*' <<<"$out" | tr -d '" ' | tr '\n' ' ') || state=""
    elif [[ $out == *"No such"* ]]; then
      state="gone"
    else
      state=""
    fi
    case $state in
      Status:exited*ExitCode:[0-9-]* | Status:dead*ExitCode:[0-9-]*) rc=${state##*ExitCode:} rc=${rc%% *} ;;
      gone) rc="unknown: its container is gone" ;;
    esac
    if [[ -z $rc ]]; then sleep 1 & wait $! || true; fi
  fi
done
if [[ $rc != 0 ]] && ((!TERMINATING)); then
  log "the worker stopped unexpectedly (exit status $rc)"
  self_delete
fi
docker rm -f "$WORKER" >/dev/null 2>&1 || true
rm -rf "$WORK" 2>/dev/null || true
