# benches/harness.sh — shell functions shared by run.sh and ab.sh (sourced, not run): reading a
# server's announced address and numbers out of pulse-load's JSON reports.

# json_num FILE FIELD [N]: the value of the Nth (default first) numeric FIELD in a pretty-printed
# JSON file.
json_num() { sed -n "s/.*\"$2\": *\([0-9.eE+-]*\).*/\1/p" "$1" | sed -n "${3:-1}p"; }

# wait_for_address NAME PID OUT ERR: waits (30 s at most) for the `listening on ADDR` line the
# server with PID writes to the file OUT, and sets SERVER_ADDR. On failure prints NAME and the
# server's stderr (the file ERR) and returns 1.
wait_for_address() {
  local name=$1 pid=$2 out=$3 err=$4
  local deadline=$((SECONDS + 30))
  SERVER_ADDR=""
  while [ -z "$SERVER_ADDR" ]; do
    SERVER_ADDR=$(sed -n 's/^listening on //p' "$out")
    if ! kill -0 "$pid" 2>/dev/null || [ $SECONDS -gt $deadline ]; then
      echo "$name: the server did not start:" >&2
      cat "$err" >&2
      return 1
    fi
    [ -n "$SERVER_ADDR" ] || sleep 0.01
  done
}
