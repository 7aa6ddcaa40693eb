#!/usr/bin/env bash
# benches/ab.sh — same-run A/B of single-event ingest: `http-ceiling` and one or more `pulse`
# binaries, interleaved, so every candidate sees the same machine noise.
#
#   benches/ab.sh before=/tmp/old/target/release/pulse after=target/release/pulse
#   PULSE_AB_ROUNDS=5 PULSE_AB_SECS=5 PULSE_AB_BATCH=1 benches/ab.sh [LABEL=]BINARY...
#
# Each round runs the ceiling, then every BINARY in order, each against a fresh data directory
# with --trusted-proxies 127.0.0.1/32, driven by `pulse-load --max` (32 connections, 1 thread).
# Prints one line per run: requests/s and the CPU each side spent per request (from /proc).
# Builds `pulse-load` and `http-ceiling` in release first. Compare medians, not single rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/harness.sh
. benches/harness.sh

[ $# -ge 1 ] || { echo "usage: benches/ab.sh [LABEL=]PULSE_BINARY..." >&2; exit 2; }
ROUNDS=${PULSE_AB_ROUNDS:-3}
SECS=${PULSE_AB_SECS:-5}
BATCH=${PULSE_AB_BATCH:-1}
BIN=target/release
cargo build --release -q -p pulse-benches --bin pulse-load --bin http-ceiling

TMP=$(mktemp -d "${TMPDIR:-/tmp}/pulse-ab.XXXXXX")
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

# run LABEL BINARY: one --max load against BINARY (the ceiling when LABEL is `ceiling`).
run() {
  local label=$1 binary=$2 dir
  dir=$(mktemp -d "$TMP/run.XXXXXX")
  local load_args=(--realtime-poll-ms 0)
  if [ "$label" = ceiling ]; then
    "$binary" --listen 127.0.0.1:0 >"$dir/out" 2>"$dir/err" &
  else
    "$binary" --listen 127.0.0.1:0 --data-dir "$dir/data" --trusted-proxies 127.0.0.1/32 \
      >"$dir/out" 2>"$dir/err" &
    load_args=(--create-website --realtime-poll-ms 10)
  fi
  SERVER_PID=$!
  wait_for_address "$label ($binary)" "$SERVER_PID" "$dir/out" "$dir/err" || return 1
  "$BIN/pulse-load" --addr "$SERVER_ADDR" --server-pid "$SERVER_PID" --threads 1 --progress-secs 0 \
    --max --batch "$BATCH" --connections 32 --duration "$SECS" "${load_args[@]}" \
    --json "$dir/report.json" >/dev/null
  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID" || { echo "$label: server exited non-zero" >&2; return 1; }
  SERVER_PID=""
  # The report lists the server's figures before the client's.
  awk -v label="$label" -v rps="$(json_num "$dir/report.json" requests_per_sec)" \
    -v server="$(json_num "$dir/report.json" cpu_cores 1)" \
    -v client="$(json_num "$dir/report.json" cpu_cores 2)" \
    'BEGIN { printf "%-40s %9.0f req/s  server %6.2f us/req  client %5.2f us/req\n", label, rps,
             server * 1e6 / rps, client * 1e6 / rps }'
}

for round in $(seq "$ROUNDS"); do
  echo "-- round $round"
  run ceiling "$BIN/http-ceiling"
  for candidate in "$@"; do
    if [[ $candidate == *=* ]]; then
      run "${candidate%%=*}" "${candidate#*=}"
    else
      run "$candidate" "$candidate"
    fi
  done
done
