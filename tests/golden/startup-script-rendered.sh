#!/bin/bash
# parallel-engine worker for Container-Optimized OS: runs attempts of one run on this VM.
#
# Rendered by parallel_engine.backends.gce.startup.render_startup_script; the protocol it speaks with the
# orchestrator is docs/worker-protocol.md. It needs only what COS ships: bash, coreutils, curl,
# docker and docker-credential-gcr (no python, jq or gsutil). Its logs: the serial console, or
# `journalctl -u google-startup-scripts` on the VM.
#
# Shape: settings (rendered) | prelude (metadata, token, Storage, work dir, image) |
#        run_one_attempt (claim held: pull, argv, docker run, logs, timeout, preemption,
#        outputs, status, event) | the picking loop (rendered tasks or claim by listing) |
#        self-delete. A background beater rewrites the VM's record (runs/<run>/workers/<vm>)
#        and the attempt's heartbeat every HEARTBEAT; a background watcher waits for preemption.
set -euo pipefail
export LC_ALL=C  # bytes are bytes: argv, object names and percent-encoding do not depend on a locale

# ---- settings (rendered) ----
PE_RUN_ID=20250101-120000-abcde
PE_BUCKET=my-bucket
PE_ROOT=''
PE_IMAGE=us-docker.pkg.dev/my-project/pe/job@sha256:abababababababababababababababababababababababababababababababab
PE_REGISTRIES=us-docker.pkg.dev  # hosts docker-credential-gcr answers for (comma-separated)
PE_PULL_POLICY=always
PE_STORAGE=https://storage.googleapis.com
PE_COMPUTE=https://compute.googleapis.com
PE_HEARTBEAT_S=30
PE_LOG_INTERVAL_US=30000000
PE_TASK_TIMEOUT_S=3600
PE_TASK_TIMEOUT_US=3600000000
PE_TICK_MS=1000
PE_DOCKER_NETWORK=host
PE_WORK_BASE=/var/lib/parallel-engine-worker
PE_SELF_DELETE=0
PE_POLL_S=10
PE_IDLE_US=60000000
PE_STOP_GRACE_S=10
PE_PULL_TRIES=5
PE_HTTP_TRIES=8
PE_CURL_RETRIES=3
PE_RETRY_BASE_MS=1000
PE_RETRY_MAX_MS=30000
PE_LIST_PAGE=1000
PE_DOCKER_ARGS=( --gpus all )
PE_MODE=rendered  # run exactly these attempts (task.attempt), each claimed first
PE_TASKS=( 1.1 task-b.2 c.d.3 )
# ---- end settings ----

# ---- prelude ----------------------------------------------------------------------------
MD="http://${GCE_METADATA_HOST:-metadata.google.internal}/computeMetadata/v1"
RUN_KEY="${PE_ROOT}runs/${PE_RUN_ID}/"
OPEN_PREFIX="${RUN_KEY}open/"
ATTEMPT_NAME_RE='^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.[1-9][0-9]*$'  # an open/ name: task.attempt
TERMINATING=0     # SIGTERM seen: the VM is shutting down (preempted, deleted or stopped)
STOP_ALL=0        # claim nothing more (image unusable, VM going away)
DONE=0            # the work is over: a SIGTERM now only means "exit"
HTTP_CODE=000
HTTP_TRIES=0
REPLY=""
CURSOR=""         # claim mode: the open/ name a sweep starts from
WORK=""
VM_NAME=""
TOKEN_REFRESH_AT=0
WATCHER=""
BEATER=""
WORKER_KEY=""     # runs/<run>/workers/<vm>: this VM's record (see worker_record)
IMAGE_READY=0
PULL_ERROR=""
CLAIMED=()
CLAIMS_WON=0
CLAIMS_TAKEN=0    # creates answered 412: the attempt was someone else's
declare -A TAKEN=()  # open/ names known to be claimed (a claim is forever): never tried again

log() { printf '%s parallel-engine-worker: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

on_term() { TERMINATING=1; if ((DONE)); then exit 0; fi; }
trap on_term TERM INT HUP

now_us() { local t=$EPOCHREALTIME; REPLY=$((10#${t/./})); }

# Sleep that a trapped signal interrupts at once (a foreground sleep would delay the trap).
nap() { sleep "$1" & wait "$!" || true; }

ms_to_s() { printf -v REPLY '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

# Polling with a growing step: 20 ms, 40 ms, ... up to PE_TICK_MS, so a short container or
# upload is noticed at once and a long one costs few wake-ups. STEP_MS is the caller's local.
nap_step() {
  ms_to_s "$STEP_MS"
  nap "$REPLY"
  STEP_MS=$((STEP_MS * 2))
  if ((STEP_MS > PE_TICK_MS)); then STEP_MS=$PE_TICK_MS; fi
}

# Exponential backoff with jitter for try number $1 (1-based), capped at PE_RETRY_MAX_MS.
backoff() {
  local ms=$PE_RETRY_BASE_MS n=$1
  while ((n > 1 && ms < PE_RETRY_MAX_MS)); do ms=$((ms * 2)); n=$((n - 1)); done
  if ((ms > PE_RETRY_MAX_MS)); then ms=$PE_RETRY_MAX_MS; fi
  ms=$((ms / 2 + RANDOM % (ms / 2 + 1)))
  ms_to_s "$ms"
  nap "$REPLY"
}

# Percent-encode $1 for a URL path segment or query value (every byte but A-Za-z0-9._~-).
urlenc() {
  local s=$1 out="" c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      [A-Za-z0-9._~-]) out+=$c ;;
      *) printf -v c '%%%02X' "'$c"; out+=$c ;;
    esac
  done
  REPLY=$out
}

# $1 as a JSON string (control characters other than \n \r \t become spaces).
json_str() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  s=${s//[$'\001'-$'\037']/ }
  REPLY="\"$s\""
}

# The metadata server: GET $1 (path under computeMetadata/v1) to stdout, retried.
md_get() {
  local try=1
  while :; do
    if curl -sf --connect-timeout 5 --max-time 30 -H 'Metadata-Flavor: Google' "$MD/$1"; then return 0; fi
    if ((try >= 8 || TERMINATING)); then return 1; fi
    backoff "$try"
    try=$((try + 1))
  done
}

# The VM's service-account token, kept in a header file (never on a command line or in a log).
# Refreshed 60 s (or half its life, when shorter) before `expires_in` runs out, and on a 401.
refresh_token() {
  local json expires=3599 margin_us
  json=$(md_get instance/service-accounts/default/token) || return 1
  if [[ ! $json =~ \"access_token\"[[:space:]]*:[[:space:]]*\"([^\"]+)\" ]]; then return 1; fi
  # Written aside and renamed: a background upload may be reading it, or refreshing it too.
  printf 'Authorization: Bearer %s\n' "${BASH_REMATCH[1]}" >"$WORK/auth.$BASHPID"
  mv -f "$WORK/auth.$BASHPID" "$WORK/auth"
  if [[ $json =~ \"expires_in\"[[:space:]]*:[[:space:]]*([0-9]+) ]]; then expires=${BASH_REMATCH[1]}; fi
  margin_us=$((expires * 500000))
  if ((margin_us > 60000000)); then margin_us=60000000; fi
  now_us
  TOKEN_REFRESH_AT=$((REPLY + expires * 1000000 - margin_us))
  log "service-account token fetched (expires in ${expires} s)"
}

ensure_token() {
  now_us
  if ((REPLY < TOKEN_REFRESH_AT)); then return 0; fi
  refresh_token
}

# One Google API call: http METHOD URL OUTFILE [curl options...]. Sets HTTP_CODE and
# HTTP_TRIES (how many requests it took). 0 on 2xx; 1 on any other final answer.
# 401 (a new token), 408, 429, 5xx and network failures are retried with backoff, on top of
# curl's own --retry (HTTP_CURL_RETRIES=N before the call overrides PE_CURL_RETRIES).
http() {
  local method=$1 url=$2 out=$3 try=1 code curl_retries=${HTTP_CURL_RETRIES:-$PE_CURL_RETRIES}
  shift 3
  while :; do
    code=000
    HTTP_TRIES=$try
    if ensure_token; then
      code=$(curl -sS -o "$out" -w '%{http_code}' -X "$method" --connect-timeout 10 \
        --speed-limit 1 --speed-time 120 --retry "$curl_retries" \
        -H @"$WORK/auth" "$@" "$url" 2>>"$WORK/curl.err") || true
      [[ $code =~ ^[0-9]{3}$ ]] || code=000
    fi
    HTTP_CODE=$code
    case $code in
      2??) return 0 ;;
      401) TOKEN_REFRESH_AT=0 ;;
      408 | 429 | 5?? | 000) ;;
      *) return 1 ;;
    esac
    if ((try >= PE_HTTP_TRIES)); then
      log "giving up on $method ${url%%\?*} after $try tries (HTTP $code)"
      return 1
    fi
    backoff "$try"
    try=$((try + 1))
  done
}

# ---- Storage (JSON API; object names percent-encoded, `/` included) ----
gcs_get() { # KEY OUTFILE: download; 0 if found
  urlenc "$1"
  http GET "$PE_STORAGE/storage/v1/b/$BUCKET_ENC/o/$REPLY?alt=media" "$2"
}

gcs_put() { # KEY FILE [CONTENT_TYPE [REPLYFILE]]: replace KEY with FILE's bytes (a media upload, streamed)
  urlenc "$1"
  http POST "$PE_STORAGE/upload/storage/v1/b/$BUCKET_ENC/o?uploadType=media&name=$REPLY" "${4:-/dev/null}" \
    -T "$2" -H 'Expect:' -H "Content-Type: ${3:-application/octet-stream}"
}

gcs_put_text() { # KEY TEXT [CONTENT_TYPE]
  printf '%s' "$2" >"$WORK/put.$BASHPID"
  gcs_put "$1" "$WORK/put.$BASHPID" "${3:-text/plain}"
}

# Create KEY holding TEXT only if it does not exist: a multipart upload with ifGenerationMatch=0
# (Storage honours the precondition there). 0 created; 1 exists (HTTP 412); 2 failed.
gcs_create() {
  local boundary="pe-boundary-$RANDOM$RANDOM$RANDOM"
  json_str "$1"
  {
    printf -- '--%s\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{"name": %s}\r\n' "$boundary" "$REPLY"
    printf -- '--%s\r\nContent-Type: text/plain\r\n\r\n%s\r\n--%s--\r\n' "$boundary" "$2" "$boundary"
  } >"$WORK/create.body"
  if http POST "$PE_STORAGE/upload/storage/v1/b/$BUCKET_ENC/o?uploadType=multipart&ifGenerationMatch=0" /dev/null \
    -H "Content-Type: multipart/related; boundary=$boundary" --data-binary @"$WORK/create.body"; then
    return 0
  fi
  if [[ $HTTP_CODE == 412 ]]; then return 1; fi
  return 2
}

# ---- Compute ----
self_delete() {
  local project zone
  if ((!PE_SELF_DELETE)) || [[ -z $WORK ]]; then return 0; fi
  project=$(md_get project/project-id) || return 0
  zone=$(md_get instance/zone) || return 0
  zone=${zone##*/}
  urlenc "$project"
  log "work done: deleting this VM ($VM_NAME)"
  DONE=1
  if http DELETE "$PE_COMPUTE/compute/v1/projects/$REPLY/zones/$zone/instances/$VM_NAME" /dev/null; then
    return 0
  fi
  log "self-delete failed (HTTP $HTTP_CODE): maxRunDuration will delete this VM"
}

on_exit() {
  local rc=$?
  set +e
  if [[ -n $WATCHER ]]; then kill "$WATCHER" 2>/dev/null; fi
  if [[ -n $BEATER ]]; then kill "$BEATER" 2>/dev/null; fi
  if ((!DONE && !TERMINATING)) && [[ -n $VM_NAME ]]; then
    log "the worker stopped unexpectedly (exit status $rc)"
    self_delete
  fi
  if [[ -n $WORK ]]; then rm -rf "$WORK"; fi
}
trap on_exit EXIT

# ---- the preemption watch: a flag file the attempt loop checks every tick ----
preempted_now() {
  local value
  value=$(curl -sf --max-time 5 --retry 2 -H 'Metadata-Flavor: Google' "$MD/instance/preempted") || return 1
  [[ $value == TRUE ]]
}

watch_preemption() {
  local value
  trap - TERM INT HUP EXIT
  while :; do
    value=$(curl -sf --max-time 5 -H 'Metadata-Flavor: Google' "$MD/instance/preempted") || value=""
    if [[ $value == TRUE ]]; then : >"$WORK/preempted"; return 0; fi
    # Blocks until the value changes (or 60 s pass, covering a change between the two reads).
    value=$(curl -sf --max-time 70 -H 'Metadata-Flavor: Google' \
      "$MD/instance/preempted?wait_for_change=true&timeout_sec=60") || { sleep 1; continue; }
    if [[ $value == TRUE ]]; then : >"$WORK/preempted"; return 0; fi
  done
}

# ---- the VM's record and heartbeat ----
# runs/<run>/workers/<vm> holds the attempt this VM claimed last ("task.attempt"; "-" before its
# first claim, and always in rendered mode). In claim mode it is written before each claim, so
# the orchestrator knows which attempt a VM that vanished may hold without reading every claim.
# In both modes the beater rewrites it every HEARTBEAT, so a worker that died or hangs while its
# VM runs shows as a record that stopped changing. The lock keeps a beat from putting back an
# older content after a newer one.
worker_record() { # TEXT: 0 when recorded
  local rc=0
  {
    flock 9
    printf '%s' "$1" >"$WORK/record"
    gcs_put "$WORKER_KEY" "$WORK/record" text/plain || rc=$?
  } 9>"$WORK/record.lock"
  return "$rc"
}

# The beater (in the background): the record, and the heartbeat of the attempt in flight
# ($WORK/running holds its key prefix), every HEARTBEAT until the main script is gone.
beat_loop() {
  local main=$1 keybase
  trap - TERM INT HUP EXIT
  while kill -0 "$main" 2>/dev/null; do
    {
      flock 9
      gcs_put "$WORKER_KEY" "$WORK/record" text/plain || true
    } 9>"$WORK/record.lock"
    keybase=$(<"$WORK/running") || keybase=""
    if [[ -n $keybase ]]; then gcs_put_text "${keybase}heartbeat" "$EPOCHREALTIME" || true; fi
    nap "$PE_HEARTBEAT_S"
  done
}

# A private work folder: under the machine's TMPDIR when it names one (COS sets none: there,
# under PE_WORK_BASE, which is on disk), else a temporary folder.
make_work_dir() {
  local base=${TMPDIR:-$PE_WORK_BASE}
  if [[ -n $base ]] && mkdir -p "$base" 2>/dev/null; then
    WORK=$(mktemp -d "$base/worker.XXXXXX" 2>/dev/null) || WORK=""
  fi
  if [[ -z $WORK ]]; then WORK=$(mktemp -d); fi
  chmod 700 "$WORK"
  if [[ $WORK == *:* ]]; then
    log "work folder $WORK has a ':' (docker -v cannot mount it)"
    return 1
  fi
}

# The image, pulled once per VM (by digest when the orchestrator rendered one).
ensure_image() {
  local try=1 rc
  if ((IMAGE_READY)); then return 0; fi
  if [[ -n $PULL_ERROR ]]; then return 1; fi
  case $PE_PULL_POLICY in
    never) IMAGE_READY=1; return 0 ;;
    if-missing)
      if docker image inspect "$PE_IMAGE" >/dev/null 2>&1; then IMAGE_READY=1; return 0; fi ;;
  esac
  while :; do
    log "pulling $PE_IMAGE (try $try of $PE_PULL_TRIES)"
    docker pull "$PE_IMAGE" >"$WORK/pull.out" 2>"$WORK/pull.err" &
    rc=0
    wait_pid "$!" || rc=$?
    if ((rc == 0)); then IMAGE_READY=1; return 0; fi
    PULL_ERROR=$(grep -v '^[[:space:]]*$' "$WORK/pull.err" | tail -n 1) || true
    PULL_ERROR=${PULL_ERROR:-"docker pull exited with status $rc"}
    log "pull failed: $PULL_ERROR"
    if ((try >= PE_PULL_TRIES || TERMINATING)); then return 1; fi
    backoff "$try"
    try=$((try + 1))
  done
}

# ---- one attempt --------------------------------------------------------------------------
# State of the attempt in flight (globals: the log uploads need them).
TASK=""
ATTEMPT=""
A=""          # its local folder
KEYBASE=""    # runs/<run>/tasks/<task>/<attempt>/
CID=""
STARTED=""
LOG_SIZES=""

heartbeat() { gcs_put_text "${KEYBASE}heartbeat" "$EPOCHREALTIME" || true; }

# Wait for PID (the beater keeps beating); its exit status. On SIGTERM the PID is killed (a
# pull is not worth finishing on a VM that goes away), unless $2 is "keep" (uploads are).
wait_pid() {
  local pid=$1 STEP_MS=20
  while kill -0 "$pid" 2>/dev/null; do
    if ((TERMINATING)) && [[ ${2:-} != keep ]]; then kill "$pid" 2>/dev/null || true; break; fi
    nap_step
  done
  wait "$pid"
}

upload_logs() { # [final]: the container's stdout/stderr so far (only what changed, unless final)
  local sizes stream
  if [[ ${1:-} == final && -n $CID ]]; then
    docker logs "$CID" >"$A/stdout.log" 2>"$A/stderr.log" || true
  fi
  sizes="$(stat -c %s "$A/stdout.log" "$A/stderr.log" 2>/dev/null | tr '\n' ' ')" || true
  if [[ ${1:-} != final && $sizes == "$LOG_SIZES" ]]; then return 0; fi
  LOG_SIZES=$sizes
  for stream in stdout stderr; do
    # A snapshot: the live file keeps growing while curl sends it.
    cp "$A/$stream.log" "$A/$stream.snapshot" 2>/dev/null || : >"$A/$stream.snapshot"
    gcs_put "${KEYBASE}$stream.log" "$A/$stream.snapshot" 'text/plain; charset=utf-8' || true
  done
}

# Every regular file under the output folder, one object each. An output that cannot be stored
# (a name Storage refuses, an upload failing after its retries, a file gone before it was sent)
# is never dropped silently: the first such file's reason goes to $A/lost, and finish() turns a
# success into `failed` with it.
upload_outputs() {
  local file rel quoted
  : >"$A/skipped"
  : >"$A/lost"
  while IFS= read -r -d '' file; do
    rel=${file#"$A/outputs/"}
    if gcs_put "${KEYBASE}outputs/$rel" "$file" "" "$A/upload.reply"; then continue; fi
    printf -v quoted '%q' "$rel"
    log "upload of output $quoted failed (HTTP $HTTP_CODE)"
    if [[ ! -s $A/lost ]]; then
      storage_message "$A/upload.reply"
      if ((HTTP_TRIES > 1)); then REPLY="after $HTTP_TRIES tries${REPLY:+: $REPLY}"; fi
      printf 'output %s could not be stored (HTTP %s)%s' "$quoted" "$HTTP_CODE" "${REPLY:+ $REPLY}" >"$A/lost"
    fi
  done < <(find "$A/outputs" -type f -print0)
  list_skipped >>"$A/skipped"
  if [[ -s $A/skipped ]] && ! gcs_put "${KEYBASE}skipped" "$A/skipped"; then
    log "upload of the list of skipped outputs failed"
    if [[ ! -s $A/lost ]]; then
      printf 'the list of skipped outputs could not be stored (HTTP %s)' "$HTTP_CODE" >"$A/lost"
    fi
  fi
  : >"$A/outputs.done"
}

# The message of a Storage error reply in file $1 (JSON), or "" (no jq on COS: grep).
storage_message() {
  REPLY=$(grep -o '"message": *"[^"\\]*"' "$1" 2>/dev/null | head -n 1 | sed 's/^"message": *"//; s/"$//') || REPLY=""
}

# Entries of the outputs folder that are neither files nor folders are never read or followed;
# each is listed (kind, path, a link's target: NUL-separated) so that collect can say so.
list_skipped() {
  local file rel kind target
  while IFS= read -r -d '' file; do
    rel=${file#"$A/outputs/"}
    target=
    if [[ -L $file ]]; then
      kind='link'
      target=$(readlink -- "$file") || target=
    elif [[ -p $file ]]; then kind='fifo'
    elif [[ -S $file ]]; then kind='socket'
    elif [[ -b $file || -c $file ]]; then kind='device'
    else kind='other'
    fi
    printf '%s\0%s\0%s\0' "$kind" "$rel" "$target"
  done < <(find "$A/outputs" -mindepth 1 ! -type f ! -type d -print0)
}

# finish STATE EXIT_CODE REASON: logs, outputs, status.json, then the event marker.
finish() {
  local state=$1 code=${2:-null} reason=$3 finished stamp worker task shown
  finished=$EPOCHREALTIME
  upload_logs final
  # Outputs may be large: uploaded in the background (ignoring the shutdown's SIGTERM, the VM
  # gives ~30 s) while the heartbeat goes on.
  (trap '' TERM; upload_outputs) &
  wait_pid "$!" keep || true
  if [[ $state == succeeded ]]; then
    if [[ -s $A/lost ]]; then
      state=failed reason=$(<"$A/lost")
    elif [[ ! -e $A/outputs.done ]]; then
      state=failed reason="the upload of the outputs stopped before every file was stored"
    fi
  fi
  shown=$reason
  if ((${#reason} > 2000)); then
    reason=${reason:0:2000}
    while [[ $reason == *[$'\x80'-$'\xff'] ]]; do reason=${reason%?}; done  # no cut UTF-8 sequence
    reason+="..."
  fi
  json_str "$reason"
  reason=$REPLY
  json_str "$VM_NAME"
  worker=$REPLY
  json_str "$TASK"
  task=$REPLY
  printf '{"task_id": %s, "attempt": %d, "state": "%s", "exit_code": %s, "started_at": %s, "finished_at": %s, "worker": %s, "reason": %s}\n' \
    "$task" "$ATTEMPT" "$state" "$code" "$STARTED" "$finished" "$worker" "$reason" >"$A/status.json"
  gcs_put "${KEYBASE}status.json" "$A/status.json" application/json || log "could not write status.json for $TASK.$ATTEMPT"
  printf -v stamp '%017.6f' "$EPOCHREALTIME"
  gcs_put_text "${RUN_KEY}events/$stamp-$TASK.$ATTEMPT" "$state" || log "could not write the event for $TASK.$ATTEMPT"
  log "$TASK.$ATTEMPT: $state${2:+ (exit code $2)}${shown:+: $shown}"
}

# stop the container: `docker stop` (SIGTERM, then SIGKILL after PE_STOP_GRACE_S), or kill.
stop_container() {
  if [[ $1 == kill ]]; then
    docker kill "$CID" >/dev/null 2>&1 || true
  else
    docker stop -t "$PE_STOP_GRACE_S" "$CID" >/dev/null 2>&1 || true
  fi
}

run_one_attempt() { # TASK ATTEMPT (claimed): the beater beats for it while it runs
  printf '%s' "${RUN_KEY}tasks/$1/$2/" >"$WORK/running"
  attempt_body "$@"
  : >"$WORK/running"
}

attempt_body() {
  local items=() args=() mode rc code waiter follower deadline=0 next_log stopping="" why=""
  local timed_out=0 preempted=0 STEP_MS=20
  TASK=$1
  ATTEMPT=$2
  A="$WORK/attempts/$TASK.$ATTEMPT"
  KEYBASE="${RUN_KEY}tasks/$TASK/$ATTEMPT/"
  CID=""
  LOG_SIZES=""
  STARTED=$EPOCHREALTIME
  mkdir -p "$A/outputs"
  chmod 777 "$A/outputs"  # the image's user may not be root
  : >"$A/stdout.log"
  : >"$A/stderr.log"
  log "$TASK.$ATTEMPT: claimed"
  heartbeat

  if ! ensure_image; then
    if ((TERMINATING)); then
      if preempted_now; then finish preempted "" "the VM was preempted before the image was pulled"; fi
      STOP_ALL=1
      return 0
    fi
    cp "$WORK/pull.err" "$A/stderr.log" 2>/dev/null || true
    finish infra "" "image pull failed: $PULL_ERROR"
    STOP_ALL=1  # an image this VM cannot pull fails every attempt: leave them to other workers
    return 0
  fi

  # argv: runs/<run>/command/<task> (full command: item 0 replaces the entrypoint), else
  # runs/<run>/argv/<task> (appended to the image's entrypoint). NUL-separated, never parsed.
  if gcs_get "${RUN_KEY}command/$TASK" "$A/argv"; then
    mode="command"
  elif [[ $HTTP_CODE == 404 ]] && gcs_get "${RUN_KEY}argv/$TASK" "$A/argv"; then
    mode=argv
  else
    finish infra "" "cannot read the task's argv from the bucket (HTTP $HTTP_CODE)"
    return 0
  fi
  mapfile -t -d '' items <"$A/argv"

  args=(run -d --pull never --cidfile "$A/cid" --network "$PE_DOCKER_NETWORK"
    --label "parallel-engine-run=$PE_RUN_ID" --label "parallel-engine-task=$TASK"
    --label "parallel-engine-attempt=$ATTEMPT" -v "$A/outputs:/pe/output"
    -e "PE_RUN_ID=$PE_RUN_ID" -e "PE_TASK_ID=$TASK" -e "PE_ATTEMPT=$ATTEMPT" -e PE_OUTPUT_DIR=/pe/output)
  # Tasks may call Google APIs as the VM's service account: they need the metadata server.
  if [[ -n ${GCE_METADATA_HOST:-} ]]; then args+=(-e "GCE_METADATA_HOST=$GCE_METADATA_HOST"); fi
  if [[ -n ${GCE_METADATA_IP:-} ]]; then args+=(-e "GCE_METADATA_IP=$GCE_METADATA_IP"); fi
  args+=("${PE_DOCKER_ARGS[@]}")
  if [[ $mode == command ]]; then
    if ((${#items[@]} == 0)); then
      finish failed "" "the task's command is empty"
      return 0
    fi
    args+=(--entrypoint "${items[0]}" "$PE_IMAGE" "${items[@]:1}")
  else
    args+=("$PE_IMAGE" "${items[@]}")
  fi

  rc=0
  docker "${args[@]}" >"$A/run.out" 2>"$A/run.err" || rc=$?
  if [[ -s $A/cid ]]; then CID=$(<"$A/cid"); fi
  if ((rc != 0)); then
    why=$(grep -v '^[[:space:]]*$' "$A/run.err" | tail -n 1) || true
    why=${why:-"docker run exited with status $rc"}
    if [[ -n $CID ]]; then upload_logs final; docker rm -f "$CID" >/dev/null 2>&1 || true; CID=""; fi
    if ((TERMINATING)); then
      # The shutdown's SIGTERM reached `docker run` too (status 143): not the task's failure.
      if [[ -e $WORK/preempted ]] || preempted_now; then
        finish preempted "" "the VM was preempted"
      else  # deleted or stopped: as below, no status (a started container's logs went up above)
        log "$TASK.$ATTEMPT: the VM is shutting down: no status written"
      fi
      STOP_ALL=1
      return 0
    fi
    if ((rc == 125)); then
      finish infra "" "docker run failed: $why"
    else
      finish failed "$rc" "$why"
    fi
    return 0
  fi
  now_us
  if [[ -n $PE_TASK_TIMEOUT_S ]]; then deadline=$((REPLY + PE_TASK_TIMEOUT_US)); fi
  next_log=$((REPLY + PE_LOG_INTERVAL_US))
  docker logs -f "$CID" >"$A/stdout.log" 2>"$A/stderr.log" &
  follower=$!
  docker wait "$CID" >"$A/exit" 2>/dev/null &
  waiter=$!

  while kill -0 "$waiter" 2>/dev/null; do
    now_us
    if [[ -z $stopping ]]; then
      if [[ -e $WORK/preempted ]]; then
        preempted=1; stopping="stop"
        log "$TASK.$ATTEMPT: the VM is being preempted: stopping the container"
      elif ((TERMINATING)); then
        stopping="stop"
      elif ((deadline > 0 && REPLY >= deadline)); then
        timed_out=1; stopping="kill"
        log "$TASK.$ATTEMPT: timed out after $PE_TASK_TIMEOUT_S s: killing the container"
      fi
      if [[ -n $stopping ]]; then
        stop_container "$stopping"
        continue
      fi
    fi
    if ((REPLY >= next_log)); then upload_logs; next_log=$((REPLY + PE_LOG_INTERVAL_US)); fi
    nap_step
  done
  wait "$waiter" || true
  code=$(<"$A/exit") || code=""
  if [[ ! $code =~ ^[0-9]+$ ]]; then
    # The waiter was stopped by the shutdown's SIGTERM, not by the container's end.
    if [[ -z $stopping ]]; then stopping=stop; stop_container stop; fi
    code=$(docker wait "$CID" 2>/dev/null) || code=""
  fi
  kill "$follower" 2>/dev/null || true
  wait "$follower" 2>/dev/null || true
  if ((TERMINATING && !preempted)) && [[ $code != 0 ]] && preempted_now; then preempted=1; fi
  [[ $code =~ ^[0-9]+$ ]] || code=""

  if [[ $code == 0 ]]; then
    finish succeeded 0 ""
  elif [[ -z $code ]] && ((!TERMINATING)); then
    finish infra "" "the container's exit code is unknown (docker wait failed)"
  elif ((timed_out)); then
    finish timeout "$code" "timed out after $PE_TASK_TIMEOUT_S s"
  elif ((preempted)); then
    finish preempted "$code" "the VM was preempted"
  elif ((TERMINATING)); then
    # Deleted or stopped while running: no status (the orchestrator calls it lost or
    # cancelled, it knows which); the logs so far are kept.
    upload_logs final
    log "$TASK.$ATTEMPT: the VM is shutting down: no status written"
  else
    finish failed "$code" "exit code ${code:-unknown}"
  fi
  docker rm -f "$CID" >/dev/null 2>&1 || true
  CID=""
  rm -rf "$A"
  if ((TERMINATING || preempted)); then STOP_ALL=1; fi
}

# ---- picking attempts ---------------------------------------------------------------------
# claim TASK ATTEMPT: 0 ours, 1 someone else's, 2 error. The claim holds this VM's name: when a
# create had to be retried and then got 412, the first try may have gone through with its
# answer lost, so the holder is read back. A 412 on the first try is never ours, even with our
# name in it (this VM booted again: that attempt ran, or was lost, in the previous boot).
claim() {
  local key="${RUN_KEY}claims/$1.$2" rc=0
  # Claim mode only: with rendered attempts the orchestrator knows what this VM may hold, and
  # reads the record for its heartbeat alone (the beater keeps rewriting it).
  if [[ $PE_MODE == claim ]] && ! worker_record "$1.$2"; then return 2; fi
  HTTP_CURL_RETRIES=0 gcs_create "$key" "$VM_NAME" || rc=$?
  if ((rc == 1 && HTTP_TRIES > 1)) && gcs_get "$key" "$WORK/holder" && [[ $(<"$WORK/holder") == "$VM_NAME" ]]; then
    rc=0
  fi
  case $rc in
    0) CLAIMS_WON=$((CLAIMS_WON + 1)) ;;
    1) CLAIMS_TAKEN=$((CLAIMS_TAKEN + 1)) ;;
  esac
  return "$rc"
}

run_rendered() {
  local entry task attempt rc
  for entry in "${PE_TASKS[@]}"; do
    if ((STOP_ALL || TERMINATING)); then break; fi
    task=${entry%.*}
    attempt=${entry##*.}
    rc=0
    claim "$task" "$attempt" || rc=$?
    case $rc in
      0) run_one_attempt "$task" "$attempt" ;;
      1) log "$entry: claimed by another worker" ;;
      *) log "$entry: could not claim (HTTP $HTTP_CODE)" ;;
    esac
  done
}

# One pass over open/ from name $1 (inclusive) to the end, page by page. Stops at the first
# attempt it claims: 0 (CURSOR = its name, CLAIMED = task and attempt); 1 when none could be
# claimed; 2 on a listing error.
sweep() {
  local start=$1 token="" url name rel task attempt rc
  local -a names
  while :; do
    urlenc "$OPEN_PREFIX"
    url="$PE_STORAGE/storage/v1/b/$BUCKET_ENC/o?prefix=$REPLY&maxResults=$PE_LIST_PAGE&fields=items(name),nextPageToken"
    if [[ -n $start ]]; then urlenc "$start"; url+="&startOffset=$REPLY"; fi
    if [[ -n $token ]]; then urlenc "$token"; url+="&pageToken=$REPLY"; fi
    http GET "$url" "$WORK/list.json" || return 2
    mapfile -t names < <(grep -o '"name": *"[^"\\]*"' "$WORK/list.json" | sed 's/^"name": *"//; s/"$//')
    for name in "${names[@]}"; do
      rel=${name#"$OPEN_PREFIX"}
      if [[ $name == "$rel" || ! $rel =~ $ATTEMPT_NAME_RE ]]; then continue; fi
      if [[ -n ${TAKEN[$rel]:-} ]]; then continue; fi
      task=${rel%.*}
      attempt=${rel##*.}
      rc=0
      claim "$task" "$attempt" || rc=$?
      case $rc in
        0)
          TAKEN[$rel]=1
          CURSOR=$name
          CLAIMED=("$task" "$attempt")
          return 0 ;;
        1) TAKEN[$rel]=1 ;;
        *) log "$rel: could not claim (HTTP $HTTP_CODE)" ;;
      esac
      if ((STOP_ALL || TERMINATING)); then return 1; fi
    done
    token=$(grep -o '"nextPageToken": *"[^"]*"' "$WORK/list.json" | sed 's/^"nextPageToken": *"//; s/"$//') || token=""
    if [[ -z $token ]]; then return 1; fi
  done
}

run_claiming() {
  local rc idle_since=0
  CURSOR=""
  while ((!STOP_ALL && !TERMINATING)); do
    rc=0
    sweep "$CURSOR" || rc=$?
    if ((rc == 0)); then
      run_one_attempt "${CLAIMED[@]}"
      idle_since=0
      continue
    fi
    if ((rc == 1)) && [[ -n $CURSOR ]]; then CURSOR=""; continue; fi  # wrap around once
    now_us
    if ((idle_since == 0)); then idle_since=$REPLY; fi
    if ((REPLY - idle_since >= PE_IDLE_US)); then break; fi
    nap "$PE_POLL_S"
  done
}

# ---- main ---------------------------------------------------------------------------------
main() {
  urlenc "$PE_BUCKET"
  BUCKET_ENC=$REPLY
  VM_NAME=$(md_get instance/name)
  make_work_dir
  export DOCKER_CONFIG="$WORK/docker-config"  # COS: HOME is read-only
  mkdir -p "$DOCKER_CONFIG"
  log "run $PE_RUN_ID, image $PE_IMAGE, mode $PE_MODE, store gs://$PE_BUCKET/${PE_ROOT}, work folder $WORK"
  if ! refresh_token; then
    log "no service-account token from the metadata server: the VM needs a service account with Storage access"
    exit 1
  fi
  if [[ -n $PE_REGISTRIES ]]; then
    docker-credential-gcr configure-docker --registries="$PE_REGISTRIES" >/dev/null 2>"$WORK/credential.err" ||
      log "docker-credential-gcr configure-docker failed: $(tail -n 1 "$WORK/credential.err")"
  fi
  WORKER_KEY="${RUN_KEY}workers/$VM_NAME"
  : >"$WORK/running"
  if ! worker_record "-"; then
    log "cannot write gs://$PE_BUCKET/$WORKER_KEY (HTTP $HTTP_CODE): the VM's service account needs Storage write access (SCOPES, IAM)"
    exit 1
  fi
  beat_loop "$$" &
  BEATER=$!
  watch_preemption &
  WATCHER=$!
  if [[ $PE_MODE == rendered ]]; then run_rendered; else run_claiming; fi
  log "claimed $CLAIMS_WON attempt(s); $CLAIMS_TAKEN were taken by other workers first"
  if ((TERMINATING)); then
    log "the VM is shutting down: exiting"
    DONE=1
    return 0
  fi
  self_delete
  DONE=1
}

main "$@"
