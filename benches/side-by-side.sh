#!/usr/bin/env bash
# Runs the same loads against real etcd 3.4 and against keel, one server at a time on this
# machine, and prints a side-by-side table (throughput, latency percentiles, errors, peak RSS).
#
# Usage: benches/side-by-side.sh            (from anywhere)
# Environment (all optional):
#   TOTAL=100000          requests per load
#   CONNS=10              gRPC connections for the 100-client loads
#   VAL_SIZE=256  KEY_SPACE=100000
#   ONLY=etcd|keel        run one side only (default: both)
#   SKIP_BUILD=1          reuse existing release binaries
#   STEP_TIMEOUT=900      seconds allowed per load before it is killed (counts as failed)
#   ETCD_PORT=23790 ETCD_PEER_PORT=23800 KEEL_PORT=23791 KEEL_PEER_PORT=23801
#   ETCD_BIN=etcd  KEEL_BIN=$CARGO_TARGET_DIR/release/keel
#   KEEP=1                keep the work directory (data dirs, logs) after the run
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TOTAL=${TOTAL:-100000}
CONNS=${CONNS:-10}
VAL_SIZE=${VAL_SIZE:-256}
KEY_SPACE=${KEY_SPACE:-100000}
ONLY=${ONLY:-both}
STEP_TIMEOUT=${STEP_TIMEOUT:-900}
ETCD_PORT=${ETCD_PORT:-23790}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-23800}
KEEL_PORT=${KEEL_PORT:-23791}
KEEL_PEER_PORT=${KEEL_PEER_PORT:-23801}
ETCD_BIN=${ETCD_BIN:-etcd}
KEEL_BIN=${KEEL_BIN:-$TARGET_DIR/release/keel}
BENCH_BIN=$TARGET_DIR/release/keel-bench
READY_TIMEOUT=30

WORK=$(mktemp -d /tmp/keel-side-by-side.XXXXXX)
SERVER_PID=""

log() { printf '==> %s\n' "$*" >&2; }

stop_server() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}

cleanup() {
  stop_server
  if [[ "${KEEP:-0}" == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

build() {
  [[ "${SKIP_BUILD:-0}" == 1 ]] && return 0
  log "building keel-bench (release)"
  (cd "$ROOT" && cargo build --release -p keel-benches) >&2
  if [[ "$ONLY" != etcd ]]; then
    log "building keel (release)"
    (cd "$ROOT" && cargo build --release -p keel-server --bin keel) >&2 \
      || log "keel failed to build; its column will say so"
  fi
}

# start_server NAME BINARY CLIENT_PORT PEER_PORT: starts one single-member server, waits until
# it answers a serializable read. Returns non-zero if it does not come up.
start_server() {
  local name=$1 bin=$2 port=$3 peer=$4
  local data="$WORK/$name.data"
  if port_busy "$port" || port_busy "$peer"; then
    log "port $port or $peer is already in use; set ${name^^}_PORT / ${name^^}_PEER_PORT"
    return 1
  fi
  mkdir -p "$data"
  "$bin" --name bench --data-dir "$data" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "bench=http://127.0.0.1:$peer" >"$WORK/$name.log" 2>&1 &
  SERVER_PID=$!
  local deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      log "$name exited during startup; last log lines:"; tail -5 "$WORK/$name.log" >&2
      SERVER_PID=""; return 1
    fi
    if timeout 5 "$BENCH_BIN" --endpoints "127.0.0.1:$port" --total 1 --timeout-secs 2 \
        range probe --consistency s 2>/dev/null | grep -q 'errors=0'; then
      return 0
    fi
    sleep 0.5
  done
  log "$name did not become ready within ${READY_TIMEOUT}s"
  return 1
}

# run_load SIDE LABEL ARGS...: runs keel-bench, keeps its full report, records the RESULT line.
run_load() {
  local side=$1 label=$2; shift 2
  local out="$WORK/$side.$label.out"
  log "$side: $label"
  if timeout "$STEP_TIMEOUT" "$BENCH_BIN" "$@" >"$out" 2>&1; then
    grep '^RESULT' "$out" | tail -1 >"$WORK/$side.$label.result"
    if grep -q 'returned 0 key-value pairs' "$out"; then
      log "$side: $label: WARNING: every range came back empty"
    fi
  else
    log "$side: $label failed or timed out (last lines below)"; tail -3 "$out" >&2
    echo "RESULT failed" >"$WORK/$side.$label.result"
  fi
}

LOADS=(put-1 put-100 range-l-100 range-s-100)

run_side() {
  local side=$1 bin=$2 port=$3 peer=$4
  local ep="127.0.0.1:$port"
  for load in "${LOADS[@]}"; do echo "RESULT not-run" >"$WORK/$side.$load.result"; done
  echo "n/a" >"$WORK/$side.rss"
  if ! start_server "$side" "$bin" "$port" "$peer"; then return 0; fi
  local put=(put --key-size 8 --val-size "$VAL_SIZE" --key-space-size "$KEY_SPACE")
  run_load "$side" put-1 --endpoints "$ep" --conns 1 --clients 1 --total "$TOTAL" "${put[@]}"
  run_load "$side" put-100 --endpoints "$ep" --conns "$CONNS" --clients 100 --total "$TOTAL" \
    "${put[@]}"
  # The ranges read one small key, as etcd's performance docs do.
  if ! ETCDCTL_API=3 timeout 10 etcdctl --endpoints "$ep" put foo "$(head -c "$VAL_SIZE" /dev/zero \
      | tr '\0' v)" >/dev/null 2>&1; then
    log "$side: could not write key foo with etcdctl; the ranges will read a missing key"
  fi
  run_load "$side" range-l-100 --endpoints "$ep" --conns "$CONNS" --clients 100 \
    --total "$TOTAL" range foo --consistency l
  run_load "$side" range-s-100 --endpoints "$ep" --conns "$CONNS" --clients 100 \
    --total "$TOTAL" range foo --consistency s
  if [[ -r "/proc/$SERVER_PID/status" ]]; then
    awk '/^VmHWM:/ { printf "%.1f MiB\n", $2 / 1024 }' "/proc/$SERVER_PID/status" >"$WORK/$side.rss"
  fi
  stop_server
}

# field FILE KEY: prints KEY=value from a RESULT line, or "-".
field() {
  local v
  v=$(tr ' ' '\n' <"$1" | awk -F= -v k="$2" '$1 == k { print $2 }')
  if [[ -n "$v" ]]; then echo "$v"; else awk '{ print $2 }' "$1"; fi
}

table() {
  printf '\n%-14s %-10s %14s %14s\n' load metric etcd keel
  printf '%s\n' "------------------------------------------------------"
  for load in "${LOADS[@]}"; do
    for metric in rps p50_ms p99_ms p999_ms errors; do
      printf '%-14s %-10s %14s %14s\n' "$load" "$metric" \
        "$(field "$WORK/etcd.$load.result" "$metric")" "$(field "$WORK/keel.$load.result" "$metric")"
    done
  done
  printf '%-14s %-10s %14s %14s\n' server peak_rss "$(cat "$WORK/etcd.rss")" "$(cat "$WORK/keel.rss")"
  printf '\nTOTAL=%s per load, val-size=%s, key-space=%s, 100-client loads over %s conns.\n' \
    "$TOTAL" "$VAL_SIZE" "$KEY_SPACE" "$CONNS"
  printf 'Full reports: %s (kept only with KEEP=1)\n' "$WORK"
}

build
[[ -x "$BENCH_BIN" ]] || { log "missing $BENCH_BIN"; exit 1; }
for side in etcd keel; do
  for load in "${LOADS[@]}"; do echo "RESULT not-run" >"$WORK/$side.$load.result"; done
  echo "n/a" >"$WORK/$side.rss"
done
if [[ "$ONLY" != keel ]]; then
  run_side etcd "$(command -v "$ETCD_BIN")" "$ETCD_PORT" "$ETCD_PEER_PORT"
fi
if [[ "$ONLY" != etcd ]]; then
  if [[ -x "$KEEL_BIN" ]]; then
    run_side keel "$KEEL_BIN" "$KEEL_PORT" "$KEEL_PEER_PORT"
  else
    log "no keel binary at $KEEL_BIN"
  fi
fi
table
