#!/usr/bin/env bash
# benches/run.sh — every figure of BENCHMARKS.md with one command.
#
#   benches/run.sh                      # full run (~10 s per HTTP load scenario)
#   PULSE_BENCH_SECS=3 benches/run.sh   # quicker
#
# 1. Criterion benches: `--bench engine` and `--bench log` (in-process).
# 2. Builds `pulse`, `pulse-load` and `http-ceiling` in release, then HTTP scenarios, each
#    against a server in a fresh temp data dir, started with --trusted-proxies 127.0.0.1/32:
#      ceiling_single, ceiling_batch50  http-ceiling (answers 202, does nothing): the naive
#                                       client+HTTP baseline, same client settings as below
#      ingest_single                    single-event requests at --max
#      ingest_batch50                   50-event batches at --max
#      realtime_idle                    realtime polled every 1 ms, no ingest
#      realtime_under_load              realtime polled every 1 ms during single-event --max
#      realtime_under_half_load         the same at half the rate ingest_single reached
#      restart_1m                       ~1M events in batches of 50, SIGTERM, restart: spawn
#                                       to /readyz 200 (checkpoints off: the whole log replayed)
#      restart                          for each of PULSE_BENCH_RESTART_SIZES events in the window
#                                       (batches of 50, a new visitor per request), then a tail of
#                                       a 60th of them after the last checkpoint (30 s of the rate
#                                       that fills 30 minutes): spawn to /readyz 200 after SIGTERM
#                                       and after SIGKILL, from the checkpoint and with checkpoints
#                                       off (whole log); realtime answers compared with before
#      checkpoint_1m_visitors           1M distinct visitors (single events): checkpoint size,
#                                       write time and the longest ingest pause, then collect
#                                       latency of a steady load with a checkpoint a second
#      bytes_per_visitor                server RSS delta over 1M new distinct visitors
#      collect_patch_burst              `patch-burst`: collect latency idle, then while the
#                                       website is PATCHed 50 times a second (p99 ratio)
#      soak_baseline, soak_adversary    a steady collect load (PULSE_BENCH_SOAK_RATE events/s on
#                                       16 connections from 127.0.0.1) against a server with
#                                       --max-connections 256 --memory-limit 64MiB, first alone,
#                                       then while pulse-adversary holds idle, slow-header and
#                                       stalled-body connections from 127.0.0.2: collect p99 and
#                                       errors of each (the adversary's counts in
#                                       soak_adversary_connections)
#      streams_baseline, streams_ingest single-event --max ingest without, then with
#                                       PULSE_BENCH_STREAMS (1000) live streams open on the
#                                       website (`stream-holder`): server RSS and CPU of each;
#                                       RSS idle before and with the streams open (streams_idle)
# 3. With PULSE_BENCH_BASE=<commit>: benches/ab.sh, single-event ingest of `pulse` at that commit
#    against this checkout's and the ceiling, interleaved over PULSE_BENCH_AB_ROUNDS rounds.
# Each prints one summary line and writes JSON to target/bench-results/<UTC stamp>/<name>.json
# (and a line to target/bench-results/results.jsonl). Exits non-zero if any scenario fails.
#
# Knobs (environment): PULSE_BENCH_SECS (10) per load scenario, PULSE_BENCH_CONNECTIONS (32),
# PULSE_BENCH_THREADS (1, pulse-load runtime threads), PULSE_BENCH_RESTART_EVENTS (1000000),
# PULSE_BENCH_VISITORS (1000000), PULSE_BENCH_RESTART_SIZES ("1000000 10000000 20000000"),
# PULSE_BENCH_SOAK_RATE (2000), PULSE_BENCH_ADVERSARY (extra
# pulse-adversary flags, e.g. "--idle 1000"), PULSE_BENCH_SKIP_CRITERION (unset; 1 skips step 1),
# PULSE_BENCH_ONLY (unset; space-separated scenario names to run, e.g. "soak"; skips step 1),
# PULSE_BENCH_BASE (unset; a commit to A/B single-event ingest against, step 3),
# PULSE_BENCH_AB_ROUNDS (5), PULSE_BENCH_STREAMS (1000), CARGO_BUILD_JOBS (2).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${PULSE_BENCH_SECS:-10}
CONNS=${PULSE_BENCH_CONNECTIONS:-32}
THREADS=${PULSE_BENCH_THREADS:-1}
RESTART_EVENTS=${PULSE_BENCH_RESTART_EVENTS:-1000000}
RESTART_SIZES=${PULSE_BENCH_RESTART_SIZES:-"1000000 10000000 20000000"}
VISITORS=${PULSE_BENCH_VISITORS:-1000000}
SOAK_RATE=${PULSE_BENCH_SOAK_RATE:-2000}
STREAMS=${PULSE_BENCH_STREAMS:-1000}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=target/bench-results
OUT=$RESULTS/$STAMP
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/pulse-bench.XXXXXX")
BIN=target/release

CHILDREN=()
cleanup() {
  local pid
  for pid in "${CHILDREN[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${CHILDREN[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=benches/harness.sh
. benches/harness.sh

step() { printf '\n== %s\n' "$*"; }
now_ns() { date +%s%N; }
record() { # name file: keep the JSON and append it as one line to results.jsonl
  tr -d '\n' <"$2" | sed 's/  */ /g' >>"$RESULTS/results.jsonl"
  echo >>"$RESULTS/results.jsonl"
  cp "$2" "$OUT/$1.json" 2>/dev/null || true
}

# start_server NAME DATA_DIR [LISTEN] [BINARY] [FLAGS...]: sets SERVER_PID and SERVER_ADDR.
start_server() {
  local name=$1 dir=$2 listen=${3:-127.0.0.1:0} binary=${4:-pulse}
  shift $(($# < 4 ? $# : 4))
  local args=(--listen "$listen")
  if [ "$binary" = pulse ]; then
    args+=(--data-dir "$dir" --trusted-proxies 127.0.0.1/32 "$@")
  fi
  "$BIN/$binary" "${args[@]}" >"$TMP/$name.out" 2>"$TMP/$name.err" &
  SERVER_PID=$!
  CHILDREN+=("$SERVER_PID")
  wait_for_address "$name ($binary)" "$SERVER_PID" "$TMP/$name.out" "$TMP/$name.err"
}

# stop_server NAME: SIGTERM, wait (30 s at most), fail unless it exits 0.
stop_server() {
  local name=$1 pid=$SERVER_PID rc=0
  kill -TERM "$pid"
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -gt $deadline ]; then
      echo "$name: server $pid did not stop after SIGTERM" >&2
      kill -KILL "$pid" 2>/dev/null || true
      return 1
    fi
    sleep 0.01
  done
  wait "$pid" || rc=$?
  local kept=() p
  for p in "${CHILDREN[@]}"; do
    [ "$p" = "$pid" ] || kept+=("$p")
  done
  CHILDREN=("${kept[@]}")
  if [ $rc -ne 0 ]; then
    echo "$name: server exited with $rc:" >&2
    tail -20 "$TMP/$name.err" >&2
    return 1
  fi
}

# load NAME ARGS...: one pulse-load run against SERVER_ADDR with the shared settings.
load() {
  local name=$1
  shift
  "$BIN/pulse-load" --addr "$SERVER_ADDR" --server-pid "$SERVER_PID" --threads "$THREADS" \
    --label "$name" --progress-secs 0 --json "$TMP/$name.json" "$@" || return 1
  record "$name" "$TMP/$name.json"
}

FAILED=()
scenario() { # name function
  case " ${PULSE_BENCH_ONLY:-$1} " in
    *" $1 "*) ;;
    *) return 0 ;;
  esac
  step "$1"
  if ! "$2"; then
    echo "FAILED: $1" >&2
    FAILED+=("$1")
  fi
}

# --- 1. criterion ---------------------------------------------------------------------------
if [ -z "${PULSE_BENCH_SKIP_CRITERION:-}" ] && [ -z "${PULSE_BENCH_ONLY:-}" ]; then
  step "criterion: engine"
  cargo bench -p pulse-benches --bench engine -- --warm-up-time 1 --measurement-time 3 \
    | tee "$OUT/criterion-engine.txt"
  step "criterion: log"
  cargo bench -p pulse-benches --bench log -- --warm-up-time 1 --measurement-time 4 \
    | tee "$OUT/criterion-log.txt"
fi

# --- 2. HTTP ----------------------------------------------------------------------------------
step "build (release)"
cargo build --release -p pulse-server -p pulse-benches --bin pulse --bin pulse-load \
  --bin http-ceiling --bin patch-burst --bin pulse-adversary --bin stream-holder

ceiling() { # batch
  start_server "ceiling_$1" "" 127.0.0.1:0 http-ceiling || return 1
  # http-ceiling answers 202 to everything, so there is no website to create or realtime to poll.
  load "ceiling_$1" --max --batch "$2" --connections "$CONNS" --duration "$SECS" \
    --realtime-poll-ms 0 || return 1
  stop_server "ceiling_$1"
}
ceiling_single() { ceiling single 1; }
ceiling_batch50() { ceiling batch50 50; }

# One server for the ingest and realtime scenarios, in the order below (the window fills up).
MAIN_STARTED=""
main_server() {
  [ -n "$MAIN_STARTED" ] && return 0
  start_server main "$TMP/main" || return 1
  MAIN_PID=$SERVER_PID MAIN_ADDR=$SERVER_ADDR MAIN_STARTED=1
  "$BIN/pulse-load" --addr "$SERVER_ADDR" --wait-ready --timeout-secs 30 >/dev/null
}
use_main() { main_server && SERVER_PID=$MAIN_PID && SERVER_ADDR=$MAIN_ADDR; }
ingest_single() {
  use_main || return 1
  load ingest_single --create-website --max --batch 1 --connections "$CONNS" --duration "$SECS" \
    --realtime-poll-ms 10
}
ingest_batch50() {
  use_main || return 1
  load ingest_batch50 --max --batch 50 --connections "$CONNS" --duration "$SECS" \
    --realtime-poll-ms 10
}
realtime_idle() {
  use_main || return 1
  load realtime_idle --rate 0 --realtime-poll-ms 1 --duration "$SECS"
}
realtime_under_load() {
  use_main || return 1
  load realtime_under_load --max --batch 1 --connections "$CONNS" --duration "$SECS" \
    --realtime-poll-ms 1
}
realtime_under_half_load() {
  use_main || return 1
  # Half the single-event rate ingest_single reached: busy but not saturated, so requests do
  # not queue behind each other as they must at --max (Little's law).
  local rate
  rate=$(awk -v r="$(json_num "$TMP/ingest_single.json" events_per_sec)" \
    'BEGIN { printf "%.0f", (r > 0 ? r : 20000) / 2 }')
  load realtime_under_half_load --rate "$rate" --batch 1 --connections "$CONNS" \
    --duration "$SECS" --realtime-poll-ms 1 || return 1
  stop_server main
}

restart_1m() {
  start_server restart "$TMP/restart" 127.0.0.1:0 pulse --checkpoint-interval-secs 0 || return 1
  "$BIN/pulse-load" --addr "$SERVER_ADDR" --wait-ready --timeout-secs 30 >/dev/null || return 1
  load restart_load --create-website --max --batch 50 --connections 8 \
    --events "$RESTART_EVENTS" --duration 0 --realtime-poll-ms 0 || return 1
  local addr=$SERVER_ADDR t0 t1 stop_ms ready_ms
  t0=$(now_ns)
  stop_server restart || return 1
  t1=$(now_ns)
  stop_ms=$(((t1 - t0) / 1000000))
  # Spawn on the same address and poll /readyz at once (every 2 ms, retrying refused connects).
  t0=$(now_ns)
  "$BIN/pulse" --listen "$addr" --data-dir "$TMP/restart" --trusted-proxies 127.0.0.1/32 \
    --checkpoint-interval-secs 0 >"$TMP/restart2.out" 2>"$TMP/restart2.err" &
  SERVER_PID=$!
  CHILDREN+=("$SERVER_PID")
  "$BIN/pulse-load" --addr "$addr" --wait-ready --timeout-secs 60 >"$TMP/ready.json" || return 1
  t1=$(now_ns)
  ready_ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e6 }')
  local replayed replay_ms
  replayed=$(json_num "$TMP/ready.json" events)
  replay_ms=$(json_num "$TMP/ready.json" duration_ms)
  printf '{"label":"restart_1m","events_loaded":%s,"events_replayed":%s,"shutdown_ms":%s,"restart_to_ready_ms":%s,"server_replay_ms":%s,"readyz":%s}\n' \
    "$(json_num "$TMP/restart_load.json" events_accepted)" "$replayed" "$stop_ms" "$ready_ms" \
    "$replay_ms" "$(cat "$TMP/ready.json")" >"$TMP/restart_1m.json"
  record restart_1m "$TMP/restart_1m.json"
  echo "[restart_1m] $replayed events replayed; spawn to /readyz 200 in $ready_ms ms" \
    "(server's own replay $replay_ms ms); SIGTERM to exit $stop_ms ms"
  [ "${replayed:-0}" -ge "$RESTART_EVENTS" ] || { echo "replayed fewer events than loaded" >&2; return 1; }
  stop_server restart2
}

# realtime_answer ADDR WEBSITE FILE: the realtime answer (humans and with bots) into FILE.
realtime_answer() {
  { curl -sf "http://$1/api/websites/$2/realtime?include_bots=false" &&
    curl -sf "http://$1/api/websites/$2/realtime?include_bots=true"; } >"$3"
}

# metric ADDR NAME: one unlabelled sample of /metrics.
metric() { curl -sf "http://$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'; }

# wait_checkpoint_since ADDR START_NS: waits (120 s at most) for a checkpoint made after START_NS.
wait_checkpoint_since() {
  local deadline=$((SECONDS + 120)) age since
  while [ $SECONDS -le $deadline ]; do
    age=$(metric "$1" pulse_checkpoint_age_seconds)
    since=$(awk -v a="$2" -v b="$(now_ns)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    if [ -n "$age" ] && awk -v a="$age" -v s="$since" 'BEGIN { exit !(a < s) }'; then
      return 0
    fi
    sleep 0.2
  done
  echo "no checkpoint within 120 s" >&2
  return 1
}

# restart_once LABEL DIR SIGNAL INTERVAL EVENTS TAIL: stops the server at SERVER_ADDR with
# SIGNAL (TERM or KILL), spawns it on the same address with --checkpoint-interval-secs INTERVAL,
# times spawn to /readyz 200, and compares the realtime answer with $TMP/before.json.
restart_once() {
  local label=$1 dir=$2 signal=$3 interval=$4 events=$5 tail=$6 addr=$SERVER_ADDR
  if [ "$signal" = TERM ]; then
    stop_server "$label" || return 1
  else
    kill -KILL "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  local t0 t1 ready_ms
  t0=$(now_ns)
  "$BIN/pulse" --listen "$addr" --data-dir "$dir" --trusted-proxies 127.0.0.1/32 \
    --checkpoint-interval-secs "$interval" >"$TMP/$label.out" 2>"$TMP/$label.err" &
  SERVER_PID=$!
  CHILDREN+=("$SERVER_PID")
  "$BIN/pulse-load" --addr "$addr" --wait-ready --timeout-secs 120 >"$TMP/ready.json" || return 1
  t1=$(now_ns)
  ready_ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e6 }')
  realtime_answer "$addr" load-test "$TMP/after.json" || return 1
  local identical=true loaded=false
  cmp -s "$TMP/before.json" "$TMP/after.json" || identical=false
  grep -q '"loaded":true' "$TMP/ready.json" && loaded=true
  printf '{"label":"%s","events_in_window":%s,"tail_events":%s,"signal":"%s","checkpoint_loaded":%s,"restart_to_ready_ms":%s,"events_replayed":%s,"answers_identical":%s,"readyz":%s}\n' \
    "$label" "$events" "$tail" "$signal" "$loaded" "$ready_ms" \
    "$(json_num "$TMP/ready.json" events)" "$identical" "$(cat "$TMP/ready.json")" \
    >"$TMP/$label.json"
  record "$label" "$TMP/$label.json"
  echo "[$label] $events events, SIG$signal, checkpoint loaded: $loaded: spawn to /readyz 200" \
    "in $ready_ms ms, $(json_num "$TMP/ready.json" events) events replayed, answers identical:" \
    "$identical"
  [ "$identical" = true ] || { echo "$label: the realtime answer changed" >&2; return 1; }
}

# restart: for each size, fill the window, let a checkpoint cover it, add a tail, then restart
# four ways on the same data (checkpoint and whole log, after SIGTERM and SIGKILL).
restart() {
  local n tail dir
  for n in $RESTART_SIZES; do
    tail=$((n / 60))
    dir="$TMP/restart_$n"
    start_server "restart_$n" "$dir" 127.0.0.1:0 pulse --checkpoint-interval-secs 5 || return 1
    "$BIN/pulse-load" --addr "$SERVER_ADDR" --wait-ready --timeout-secs 30 >/dev/null || return 1
    load "restart_${n}_load" --create-website --max --batch 50 --connections 8 --events "$n" \
      --visitors "$((n / 50))" --duration 0 --realtime-poll-ms 0 || return 1
    local loaded_at
    loaded_at=$(now_ns)
    wait_checkpoint_since "$SERVER_ADDR" "$loaded_at" || return 1
    load "restart_${n}_tail" --max --batch 50 --connections 8 --events "$tail" \
      --visitors "$((tail / 50 + 1))" --first-visitor "$((n / 50))" --duration 0 \
      --realtime-poll-ms 0 || return 1
    realtime_answer "$SERVER_ADDR" load-test "$TMP/before.json" || return 1
    restart_once "restart_${n}_checkpoint_term" "$dir" TERM 3600 "$n" "$tail" || return 1
    restart_once "restart_${n}_checkpoint_kill" "$dir" KILL 3600 "$n" "$tail" || return 1
    restart_once "restart_${n}_full_term" "$dir" TERM 0 "$n" "$tail" || return 1
    restart_once "restart_${n}_full_kill" "$dir" KILL 0 "$n" "$tail" || return 1
    stop_server "restart_${n}_end" || return 1
    rm -rf "$dir"
  done
}

# checkpoint_1m_visitors: what a checkpoint of 1M active visitors costs, and what ingest sees.
checkpoint_1m_visitors() {
  start_server ckpt_1m "$TMP/ckpt_1m" 127.0.0.1:0 pulse --checkpoint-interval-secs 1 || return 1
  "$BIN/pulse-load" --addr "$SERVER_ADDR" --wait-ready --timeout-secs 30 >/dev/null || return 1
  load ckpt_1m_load --create-website --max --batch 1 --connections "$CONNS" --events "$VISITORS" \
    --duration 0 --visitors "$VISITORS" --bot-share 0 --realtime-poll-ms 0 || return 1
  local loaded_at
  loaded_at=$(now_ns)
  wait_checkpoint_since "$SERVER_ADDR" "$loaded_at" || return 1
  local bytes write_s pause_s
  bytes=$(metric "$SERVER_ADDR" pulse_checkpoint_bytes)
  write_s=$(metric "$SERVER_ADDR" pulse_checkpoint_write_duration_seconds)
  pause_s=$(metric "$SERVER_ADDR" pulse_checkpoint_longest_pause_seconds)
  # A steady single-event load (returning visitors) while a checkpoint is written every second.
  load ckpt_1m_during --rate 5000 --batch 1 --connections "$CONNS" --duration "$SECS" \
    --visitors "$VISITORS" --bot-share 0 --realtime-poll-ms 0 || return 1
  local pause_during_s
  pause_during_s=$(metric "$SERVER_ADDR" pulse_checkpoint_longest_pause_seconds)
  printf '{"label":"checkpoint_1m_visitors","active_visitors":%s,"checkpoint_bytes":%s,"write_seconds":%s,"longest_pause_seconds":%s,"longest_pause_seconds_under_load":%s}\n' \
    "$(json_num "$TMP/ckpt_1m_load.json" active_visitors)" "$bytes" "$write_s" "$pause_s" \
    "$pause_during_s" >"$TMP/checkpoint_1m_visitors.json"
  record checkpoint_1m_visitors "$TMP/checkpoint_1m_visitors.json"
  echo "[checkpoint_1m_visitors] $(json_num "$TMP/ckpt_1m_load.json" active_visitors) visitors:" \
    "checkpoint $bytes bytes, written in $write_s s, longest ingest pause $pause_s s" \
    "($pause_during_s s during the steady load)"
  stop_server ckpt_1m
}

bytes_per_visitor() {
  start_server bytes "$TMP/bytes" || return 1
  "$BIN/pulse-load" --addr "$SERVER_ADDR" --wait-ready --timeout-secs 30 >/dev/null || return 1
  # Warm up (connections, allocator, rings full) with 10k visitors, then measure 1M new ones.
  load bytes_warmup --create-website --max --batch 1 --connections "$CONNS" --events 10000 \
    --duration 0 --visitors 10000 --bot-share 0 --realtime-poll-ms 0 || return 1
  local before after v_before v_after
  before=$(awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status")
  v_before=$(json_num "$TMP/bytes_warmup.json" active_visitors)
  load bytes_load --max --batch 1 --connections "$CONNS" --events "$VISITORS" \
    --duration 0 --visitors "$VISITORS" --first-visitor 10000 --bot-share 0 --realtime-poll-ms 0 || return 1
  after=$(awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status")
  v_after=$(json_num "$TMP/bytes_load.json" active_visitors)
  if grep -q '"approximate": true' "$TMP/bytes_load.json"; then
    echo "the server switched to approximate counting (memory limit): not an exact window" >&2
    return 1
  fi
  local per
  per=$(awk -v a="$before" -v b="$after" -v x="$v_before" -v y="$v_after" \
    'BEGIN { printf "%.1f", (b - a) * 1024 / (y - x) }')
  printf '{"label":"bytes_per_visitor","rss_kib_before":%s,"rss_kib_after":%s,"active_visitors_before":%s,"active_visitors_after":%s,"rss_bytes_per_visitor":%s}\n' \
    "$before" "$after" "$v_before" "$v_after" "$per" >"$TMP/bytes_per_visitor.json"
  record bytes_per_visitor "$TMP/bytes_per_visitor.json"
  echo "[bytes_per_visitor] server RSS $before -> $after KiB for $v_before -> $v_after active" \
    "visitors: $per bytes per visitor (RSS delta, not engine accounting)"
  stop_server bytes
}

collect_patch_burst() {
  # A data dir on the repository's disk, not a possible tmpfs: a PATCH's cost is its fsyncs.
  # Every probe comes from 127.0.0.1, so the per-address rate limit is off.
  local dir=$PWD/target/bench-patch-burst
  rm -rf "$dir"
  PULSE_RATE_LIMIT_PER_IP=0 start_server patch_burst "$dir" || return 1
  "$BIN/patch-burst" --addr "$SERVER_ADDR" --phase-secs "$SECS" --patch-per-sec 50 \
    --json "$TMP/collect_patch_burst.json" || return 1
  record collect_patch_burst "$TMP/collect_patch_burst.json"
  stop_server patch_burst
}

soak() {
  start_server soak "$TMP/soak" 127.0.0.1:0 pulse --max-connections 256 --memory-limit 64MiB \
    || return 1
  "$BIN/pulse-load" --addr "$SERVER_ADDR" --wait-ready --timeout-secs 30 >/dev/null || return 1
  # 16 connections: well inside the per-address cap (32 of 256) that 127.0.0.1 is subject to too.
  load soak_baseline --create-website --rate "$SOAK_RATE" --connections 16 --duration "$SECS" \
    --realtime-poll-ms 100 || return 1
  # shellcheck disable=SC2086 # PULSE_BENCH_ADVERSARY is a list of flags
  "$BIN/pulse-adversary" --addr "$SERVER_ADDR" --source 127.0.0.2 --duration 0 \
    --json "$TMP/soak_adversary_connections.json" ${PULSE_BENCH_ADVERSARY:-} \
    >"$TMP/adversary.out" &
  local adversary=$! rc=0
  CHILDREN+=("$adversary")
  sleep 2 # the adversary opens its connections and the server starts shedding them
  load soak_adversary --rate "$SOAK_RATE" --connections 16 --duration "$SECS" \
    --realtime-poll-ms 100 || rc=1
  kill -TERM "$adversary"
  wait "$adversary" || rc=1
  cat "$TMP/adversary.out"
  record soak_adversary_connections "$TMP/soak_adversary_connections.json"
  stop_server soak || rc=1
  return $rc
}

streams() {
  # 2 GiB: the stream share (2%) holds 1,000 streams of 24 KiB and the pool (4096) twice that.
  # Everything comes from 127.0.0.1, a trusted proxy here, so the per-address cap is not in play.
  start_server streams "$TMP/streams" 127.0.0.1:0 pulse --memory-limit 2GiB \
    --max-connections 4096 || return 1
  "$BIN/pulse-load" --addr "$SERVER_ADDR" --wait-ready --timeout-secs 30 >/dev/null || return 1
  load streams_baseline --create-website --max --batch 1 --connections "$CONNS" \
    --duration "$SECS" --realtime-poll-ms 0 || return 1
  local before with rc=0 holder
  before=$(awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status")
  "$BIN/stream-holder" --addr "$SERVER_ADDR" --website load-test --streams "$STREAMS" \
    --duration-secs $((SECS + 6)) --json "$TMP/streams_holder.json" >"$TMP/holder.out" &
  holder=$!
  CHILDREN+=("$holder")
  sleep 3 # the holder opens its streams
  with=$(awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status")
  load streams_ingest --max --batch 1 --connections "$CONNS" --duration "$SECS" \
    --realtime-poll-ms 0 || rc=1
  wait "$holder" || rc=1
  cat "$TMP/holder.out"
  record streams_holder "$TMP/streams_holder.json"
  printf '{"label":"streams_idle","streams":%s,"rss_kib_before":%s,"rss_kib_with_streams":%s,"rss_bytes_per_stream":%s}\n' \
    "$(json_num "$TMP/streams_holder.json" streams_opened)" "$before" "$with" \
    "$(awk -v a="$before" -v b="$with" -v n="$STREAMS" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')" \
    >"$TMP/streams_idle.json"
  record streams_idle "$TMP/streams_idle.json"
  echo "[streams_idle] server RSS $before -> $with KiB with $STREAMS streams open"
  stop_server streams || rc=1
  return $rc
}

scenario ceiling_single ceiling_single
scenario ceiling_batch50 ceiling_batch50
scenario ingest_single ingest_single
scenario ingest_batch50 ingest_batch50
scenario realtime_idle realtime_idle
scenario realtime_under_load realtime_under_load
scenario realtime_under_half_load realtime_under_half_load
scenario restart_1m restart_1m
scenario restart restart
scenario checkpoint_1m_visitors checkpoint_1m_visitors
scenario bytes_per_visitor bytes_per_visitor
scenario collect_patch_burst collect_patch_burst
scenario soak soak
scenario streams streams

# --- 3. A/B against an older commit (only with PULSE_BENCH_BASE) ------------------------------
# Builds `pulse` at that commit in a temporary worktree (its own target dir under target/, so a
# rerun reuses the build) and runs benches/ab.sh: the ceiling, the old and the new binary,
# interleaved over several rounds so each sees the same machine noise.
ab_base() {
  local base=$PULSE_BENCH_BASE worktree="$TMP/base"
  local target_dir="$PWD/target/ab-base"
  git worktree add --detach "$worktree" "$base" >/dev/null || return 1
  (cd "$worktree" && CARGO_TARGET_DIR="$target_dir" cargo build --release -q -p pulse-server \
    --bin pulse) || { git worktree remove --force "$worktree"; return 1; }
  git worktree remove --force "$worktree"
  cp "$target_dir/release/pulse" "$TMP/pulse-base"
  PULSE_AB_ROUNDS=${PULSE_BENCH_AB_ROUNDS:-5} benches/ab.sh "before=$TMP/pulse-base" \
    "after=$BIN/pulse" | tee "$OUT/ab.txt"
}
if [ -n "${PULSE_BENCH_BASE:-}" ]; then
  scenario "ab against $PULSE_BENCH_BASE" ab_base
fi

step "results in $OUT"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "failed scenarios: ${FAILED[*]}" >&2
  exit 1
fi
echo "all scenarios passed"
