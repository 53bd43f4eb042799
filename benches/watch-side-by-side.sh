#!/usr/bin/env bash
# Watch and lease side by side: single-member etcd 3.4 and keel, alternating for ROUNDS rounds,
# each server started afresh for each group of loads:
#
#   watch-10k        10k watchers / 100 streams / 10 conns, 100 puts paced at 10/s (latency)
#   watch-10k-burst  the same watchers, 100 puts unpaced, 1 in flight (fan-out throughput)
#   watch-100k       100k watchers / 100 streams / 10 conns, 10 puts paced at 1/s
#   lease-ka         1000 leases, 100k keepalives over 10 streams
#   mem-100k         fresh server: VmRSS per watcher and per stream, 100k watchers / 1000 streams
#   mem-1m           fresh server, only with MEM_1M=1: 1M watchers / 1000 streams (heavy)
#
# and prints a table of medians (min-max over the rounds) with the keel/etcd ratio.
#
# Usage: benches/watch-side-by-side.sh     (from anywhere)
# Environment (all optional):
#   ROUNDS=3  ONLY=etcd|keel  SKIP_BUILD=1  KEEP=1  STEP_TIMEOUT=900
#   MEM_1M=1            add the 1M-watcher memory run (once per side per round)
#   ONLY_LOADS="mem-1m" run only these loads (space-separated names from the list above)
#   SETTLE_SECS=5       quiet time before each memory reading
#   ETCD_PORT=24300 KEEL_PORT=24310   client port; the peer port is PORT+100
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ROUNDS=${ROUNDS:-3}
ONLY=${ONLY:-both}
MEM_1M=${MEM_1M:-0}
SETTLE_SECS=${SETTLE_SECS:-5}
ETCD_PORT=${ETCD_PORT:-24300}
KEEL_PORT=${KEEL_PORT:-24310}
mkdir -p "$TARGET_DIR"
WORK=$(mktemp -d "$TARGET_DIR/watch-side-by-side.XXXXXX")
# shellcheck source=benches/bench-lib.sh
source "$ROOT/benches/bench-lib.sh"

cleanup_on_exit

LOADS=(watch-10k watch-10k-burst watch-100k lease-ka mem-100k)
if [[ "$MEM_1M" == 1 ]]; then LOADS+=(mem-1m); fi
if [[ -n "${ONLY_LOADS:-}" ]]; then read -r -a LOADS <<<"$ONLY_LOADS"; fi

# wanted LOAD: whether LOAD is in this run.
wanted() { [[ " ${LOADS[*]} " == *" $1 "* ]]; }

# start_single SIDE PORT: one fresh member; sets SERVER_PID and EP, or fails.
start_single() {
  local side=$1 port=$2
  start_member "$side" single "$port" $((port + 100)) "single=http://127.0.0.1:$((port + 100))" \
    || return 1
  SERVER_PID=$LAST_PID
  EP="127.0.0.1:$port"
  wait_ready "$EP" "$SERVER_PID"
}

# watch_load OUT WATCHERS PUTS RATE: one fan-out run against $EP.
watch_load() {
  run_load "$1" --endpoints "$EP" --conns 10 watch --watchers "$2" --streams 100 --puts "$3" \
    --rate "$4" --pid "$SERVER_PID"
}

# mem_load OUT WATCHERS: one memory run against a fresh server.
mem_load() {
  run_load "$1" --endpoints "$EP" --conns 10 watch-mem --pid "$SERVER_PID" --watchers "$2" \
    --streams 1000 --settle-secs "$SETTLE_SECS"
}

run_round() {
  local round=$1 side=$2 port=$3 load out
  out="$WORK/r$round.$side"
  for load in "${LOADS[@]}"; do echo "RESULT not-run" >"$out.$load.result"; done
  if wanted watch-10k || wanted watch-10k-burst || wanted watch-100k || wanted lease-ka; then
    log "round $round: $side: watch fan-out and lease keepalive"
    if start_single "$side" "$port"; then
      if wanted watch-10k; then
        log "round $round: $side: watch-10k"; watch_load "$out.watch-10k" 10000 100 10
      fi
      if wanted watch-10k-burst; then
        log "round $round: $side: watch-10k-burst"; watch_load "$out.watch-10k-burst" 10000 100 0
      fi
      if wanted watch-100k; then
        log "round $round: $side: watch-100k"; watch_load "$out.watch-100k" 100000 10 1
      fi
      if wanted lease-ka; then
        log "round $round: $side: lease-ka"
        run_load "$out.lease-ka" --endpoints "$EP" --conns 10 --clients 50 --total 100000 \
          lease-keepalive --leases 1000 --streams 10
      fi
    fi
    stop_all
  fi
  local mem
  for mem in mem-100k:100000 mem-1m:1000000; do
    wanted "${mem%%:*}" || continue
    log "round $round: $side: ${mem%%:*} (fresh server)"
    if start_single "$side" "$port"; then mem_load "$out.${mem%%:*}" "${mem##*:}"; fi
    stop_all
  done
}

# row LOAD METRIC LABEL
row() {
  local e k
  e=$(summarize etcd "$1" "$2" "$ROUNDS")
  k=$(summarize keel "$1" "$2" "$ROUNDS")
  printf '%-16s %-18s %24s %24s %8s\n' "$1" "${3:-$2}" "$e" "$k" "$(ratio "$e" "$k")"
}

table() {
  local load
  printf '\nsingle member, %s round(s), median (min-max); keel/etcd ratio of medians\n' "$ROUNDS"
  printf '%-16s %-18s %24s %24s %8s\n' load metric "etcd 3.4" keel keel/etcd
  printf '%s\n' "----------------------------------------------------------------------------------------------"
  for load in watch-10k watch-10k-burst watch-100k; do
    wanted "$load" || continue
    for metric in events_per_s p50_ms p99_ms max_ms missed duplicate out_of_order server_cpu_s; do
      row "$load" "$metric"
    done
  done
  if wanted lease-ka; then
    for metric in rps p50_ms p99_ms errors; do row lease-ka "$metric"; done
  fi
  for load in mem-100k mem-1m; do
    wanted "$load" || continue
    for metric in bytes_per_watcher bytes_per_stream rss_watchers_mib create_s; do
      row "$load" "$metric"
    done
  done
  printf '\nwatch loads: 10 conns, 100 streams, watchers on one prefix; latency from put send to\n'
  printf 'event receipt; server_cpu_s: server CPU while writing and draining. mem: VmRSS after\n'
  printf '%s s of quiet, 1000 streams over 10 conns.\n' "$SETTLE_SECS"
}

build
[[ -x "$BENCH_BIN" ]] || { log "missing $BENCH_BIN"; exit 1; }
for ((round = 1; round <= ROUNDS; round++)); do
  if [[ "$ONLY" != keel ]]; then run_round "$round" etcd "$ETCD_PORT"; fi
  if [[ "$ONLY" != etcd ]]; then
    if [[ -x "$KEEL_BIN" ]]; then run_round "$round" keel "$KEEL_PORT"; else log "no $KEEL_BIN"; fi
  fi
done
table
