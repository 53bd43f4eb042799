#!/usr/bin/env bash
# Three-member clusters side by side: starts a 3-member etcd 3.4 cluster and a 3-member keel
# cluster on loopback (one side at a time, fresh data dirs, same heartbeat and election timeout,
# fsync on), runs the same keel-bench loads against each, alternating etcd and keel for ROUNDS
# rounds, and prints a table of medians (min-max over the rounds).
#
# Usage: benches/cluster-side-by-side.sh          (from anywhere)
# Environment (all optional):
#   ROUNDS=3               rounds; each round starts both clusters afresh, etcd first
#   TOTAL=20000            requests per load (put-1 uses TOTAL_1)
#   TOTAL_1=2000           puts for the single-client load
#   VAL_SIZE=256 KEY_SPACE=100000
#   HEARTBEAT_MS=100 ELECTION_MS=1000   both sides (etcd's defaults)
#   ONLY=etcd|keel         one side only
#   SKIP_BUILD=1           reuse the release binaries in CARGO_TARGET_DIR
#   STEP_TIMEOUT=900       seconds per load before it is killed (counts as failed)
#   ETCD_PORT=24100 KEEL_PORT=24110   member i (1-3) serves clients on PORT+i, peers on PORT+100+i
#   KEEP=1                 keep the work directory (data dirs, logs, full reports)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ROUNDS=${ROUNDS:-3}
TOTAL=${TOTAL:-20000}
TOTAL_1=${TOTAL_1:-2000}
VAL_SIZE=${VAL_SIZE:-256}
KEY_SPACE=${KEY_SPACE:-100000}
ONLY=${ONLY:-both}
ETCD_PORT=${ETCD_PORT:-24100}
KEEL_PORT=${KEEL_PORT:-24110}
mkdir -p "$TARGET_DIR"
WORK=$(mktemp -d "$TARGET_DIR/cluster-side-by-side.XXXXXX")
# shellcheck source=benches/bench-lib.sh
source "$ROOT/benches/bench-lib.sh"

cleanup_on_exit

LOADS=(put-1 put-100 put-1000 range-l-100 range-s-100)

# start_cluster SIDE BASE_PORT: three members; sets ENDPOINTS (client endpoints, comma-separated).
start_cluster() {
  local side=$1 base=$2 i cluster="" pids=()
  ENDPOINTS=""
  for i in 1 2 3; do cluster+="${cluster:+,}m$i=http://127.0.0.1:$((base + 100 + i))"; done
  for i in 1 2 3; do
    ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$((base + i))"
    start_member "$side" "m$i" $((base + i)) $((base + 100 + i)) "$cluster" || return 1
    pids+=("$LAST_PID")
  done
  wait_ready "$ENDPOINTS" "${pids[@]}"
}

run_round() {
  local round=$1 side=$2 base=$3 load
  for load in "${LOADS[@]}"; do echo "RESULT not-run" >"$WORK/r$round.$side.$load.result"; done
  log "round $round: starting 3-member $side"
  if ! start_cluster "$side" "$base"; then stop_all; return 0; fi
  local ep=$ENDPOINTS out="$WORK/r$round.$side"
  local put=(put --key-size 8 --val-size "$VAL_SIZE" --key-space-size "$KEY_SPACE")
  log "round $round: $side: put-1"
  run_load "$out.put-1" --endpoints "$ep" --conns 1 --clients 1 --total "$TOTAL_1" "${put[@]}"
  log "round $round: $side: put-100"
  run_load "$out.put-100" --endpoints "$ep" --conns 10 --clients 100 --total "$TOTAL" "${put[@]}"
  log "round $round: $side: put-1000"
  run_load "$out.put-1000" --endpoints "$ep" --conns 100 --clients 1000 --total "$TOTAL" \
    "${put[@]}"
  # The ranges read one small key, as etcd's performance docs do.
  put_foo "${ep%%,*}"
  log "round $round: $side: range-l-100, range-s-100"
  run_load "$out.range-l-100" --endpoints "$ep" --conns 10 --clients 100 --total "$TOTAL" \
    range foo --consistency l
  run_load "$out.range-s-100" --endpoints "$ep" --conns 10 --clients 100 --total "$TOTAL" \
    range foo --consistency s
  for load in range-l-100 range-s-100; do
    if grep -q 'returned 0 key-value pairs' "$out.$load.out"; then
      log "round $round: $side: WARNING: $load came back empty"
    fi
  done
  stop_all
}

table() {
  local rounds=$1 load metric e k
  printf '\n3-member clusters, %s round(s), median (min-max); keel/etcd ratio of medians\n' "$rounds"
  printf '%-12s %-8s %24s %24s %8s\n' load metric "etcd 3.4" keel keel/etcd
  printf '%s\n' "------------------------------------------------------------------------------"
  for load in "${LOADS[@]}"; do
    for metric in rps p50_ms p99_ms p999_ms errors; do
      e=$(summarize etcd "$load" "$metric" "$rounds")
      k=$(summarize keel "$load" "$metric" "$rounds")
      printf '%-12s %-8s %24s %24s %8s\n' "$load" "$metric" "$e" "$k" "$(ratio "$e" "$k")"
    done
  done
  printf '\nput-1: %s puts, 1 client; put-100: %s puts, 100 clients / 10 conns; put-1000: %s puts,' \
    "$TOTAL_1" "$TOTAL" "$TOTAL"
  printf ' 1000 clients / 100 conns; ranges: %s reads of one key, 100 clients.\n' "$TOTAL"
  printf 'Clients spread over all three members. heartbeat %s ms, election %s ms, fsync on.\n' \
    "$HEARTBEAT_MS" "$ELECTION_MS"
}

build
[[ -x "$BENCH_BIN" ]] || { log "missing $BENCH_BIN"; exit 1; }
for ((round = 1; round <= ROUNDS; round++)); do
  if [[ "$ONLY" != keel ]]; then run_round "$round" etcd "$ETCD_PORT"; fi
  if [[ "$ONLY" != etcd ]]; then
    if [[ -x "$KEEL_BIN" ]]; then run_round "$round" keel "$KEEL_PORT"; else log "no $KEEL_BIN"; fi
  fi
done
table "$ROUNDS"
