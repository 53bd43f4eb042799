#!/usr/bin/env bash
# Scale benchmark: loads KEYS keys into one single-member server (real etcd 3.4, then keel, one
# at a time on this machine), then measures random puts and random linearizable reads on the
# loaded store, the server's RSS and data-dir size after the load, and the restart time after
# kill -9 on the same data dir. Prints a side-by-side table and `RESULT` lines.
#
# Usage: benches/scale-side-by-side.sh              (from anywhere; default 1M keys)
#        KEYS=5000000 benches/scale-side-by-side.sh (the big variant)
#        KEYS=20000 PUTS=5000 SKIP_BUILD=1 benches/scale-side-by-side.sh   (smoke run)
# Environment (all optional):
#   KEYS=1000000          keys bulk-loaded in order (8-byte keys, VAL_SIZE-byte values)
#   PUTS=50000            random puts, then as many random linearizable ranges, on the loaded store
#   VAL_SIZE=256  CONNS=10  CLIENTS=100
#   ONLY=etcd|keel        run one side only (default: both)
#   SKIP_BUILD=1          reuse existing release binaries
#   STEP_TIMEOUT=3600     seconds allowed per load before it is killed (counts as failed)
#   RESTART_TIMEOUT=120   seconds allowed for a restart before it counts as failed
#   ETCD_PORT=24500 KEEL_PORT=24510   client port; the peer port is PORT+100
#   ETCD_QUOTA_BYTES=8589934592       etcd's --quota-backend-bytes (its 2 GiB default is too
#                                     small for KEYS=5000000)
#   ETCD_BIN=etcd  KEEL_BIN=$CARGO_TARGET_DIR/release/keel
#   KEEP=1                keep the work directory (data dirs, logs, full reports)
#   MEMBERS=3             the 3-member variant instead (benches/scale-rejoin.sh): bulk load and
#                         baseline puts, then a wiped follower rejoins during random puts;
#                         CHUNK_PUTS=5000 POLL_S=0.2 CATCHUP_TIMEOUT=600
#                         ETCD3_PORT=24800 KEEL3_PORT=24820 (member i: client PORT+i, peer
#                         PORT+100+i)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
KEYS=${KEYS:-1000000}
PUTS=${PUTS:-50000}
VAL_SIZE=${VAL_SIZE:-256}
CONNS=${CONNS:-10}
CLIENTS=${CLIENTS:-100}
ONLY=${ONLY:-both}
STEP_TIMEOUT=${STEP_TIMEOUT:-3600}
RESTART_TIMEOUT=${RESTART_TIMEOUT:-120}
ETCD_PORT=${ETCD_PORT:-24500}
KEEL_PORT=${KEEL_PORT:-24510}
ETCD_QUOTA_BYTES=${ETCD_QUOTA_BYTES:-8589934592}
MEMBERS=${MEMBERS:-1}
WORK=$(mktemp -d /tmp/keel-scale.XXXXXX)
# shellcheck source=bench-lib.sh
source "$ROOT/benches/bench-lib.sh"

cleanup_on_exit

LOADS=(bulk put range-l)
SCALARS=(rss_mib disk_mib restart_s)

# launch SIDE PORT: starts the single member on $WORK/SIDE.data as it is (fresh or not); sets
# SERVER_PID and adds it to PIDS. Same flags as bench-lib's start_member.
launch() {
  local side=$1 port=$2 peer=$(($2 + 100)) extra=()
  [[ $side == etcd ]] && extra=(--quota-backend-bytes "$ETCD_QUOTA_BYTES")
  "$(side_bin "$side")" --name single --data-dir "$WORK/$side.data" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "single=http://127.0.0.1:$peer" --initial-cluster-state new \
    --initial-cluster-token "keel-bench-$side" \
    --heartbeat-interval "$HEARTBEAT_MS" --election-timeout "$ELECTION_MS" "${extra[@]}" \
    >>"$WORK/$side.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
}

# loaded_key_readable EP: whether a linearizable etcdctl get returns key 0 of the load (eight
# zero bytes, the first key of the store; base64 AAAAAAAAAAA=).
loaded_key_readable() {
  ETCDCTL_API=3 timeout 3 etcdctl --endpoints "$1" --dial-timeout 1s --command-timeout 2s \
    get "" --from-key --limit 1 -w json 2>/dev/null | grep -q '"key":"AAAAAAAAAAA="'
}

# restart SIDE PORT OUT: kill -9, start on the same data dir, seconds until loaded_key_readable
# (polled every 50 ms) into OUT, or "failed".
restart() {
  local side=$1 port=$2 out=$3 start deadline
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  echo failed >"$out"
  start=$(date +%s%N)
  launch "$side" "$port"
  deadline=$((SECONDS + RESTART_TIMEOUT))
  while ((SECONDS < deadline)); do
    if loaded_key_readable "127.0.0.1:$port"; then
      awk -v ns=$(($(date +%s%N) - start)) 'BEGIN { printf "%.2f\n", ns / 1e9 }' >"$out"
      return 0
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { log "$side exited while restarting"; return 0; }
    sleep 0.05
  done
  log "$side: key 0 not readable within ${RESTART_TIMEOUT}s of the restart"
}

run_side() {
  local side=$1 port=$2 ep="127.0.0.1:$2" out="$WORK/$1"
  if port_busy "$port" || port_busy $((port + 100)); then
    log "port $port or $((port + 100)) is already in use; set ${side^^}_PORT"; return 0
  fi
  rm -rf "$WORK/$side.data" && mkdir -p "$WORK/$side.data"
  launch "$side" "$port"
  if ! wait_ready "$ep" "$SERVER_PID"; then tail -5 "$WORK/$side.log" >&2; stop_all; return 0; fi
  local common=(--endpoints "$ep" --conns "$CONNS" --clients "$CLIENTS")
  log "$side: bulk load of $KEYS keys in order"
  run_load "$out.bulk" "${common[@]}" --total "$KEYS" put --sequential-keys \
    --key-space-size "$KEYS" --key-size 8 --val-size "$VAL_SIZE"
  awk '/^VmRSS:/ { printf "%.1f\n", $2 / 1024 }' "/proc/$SERVER_PID/status" >"$out.rss_mib" \
    2>/dev/null || true
  du -sb "$WORK/$side.data" | awk '{ printf "%.1f\n", $1 / 1048576 }' >"$out.disk_mib"
  log "$side: $PUTS random puts"
  run_load "$out.put" "${common[@]}" --total "$PUTS" put --key-space-size "$KEYS" --key-size 8 \
    --val-size "$VAL_SIZE"
  log "$side: $PUTS linearizable ranges of random loaded keys"
  run_load "$out.range-l" "${common[@]}" --total "$PUTS" range random --consistency l \
    --key-space-size "$KEYS" --key-size 8
  if grep -q 'returned 0 key-value pairs' "$out.range-l.out"; then
    log "$side: WARNING: every range came back empty"
  fi
  log "$side: kill -9 and restart on the same data dir"
  restart "$side" "$port" "$out.restart_s"
  stop_all
}

# value SIDE NAME: a scalar measurement, or "-".
value() { if [[ -s "$WORK/$1.$2" ]]; then cat "$WORK/$1.$2"; else echo -; fi; }

# metric SIDE LOAD KEY: KEY from a load's RESULT line, else "failed"/"not-run".
metric() {
  local v
  v=$(field "$WORK/$1.$2.result" "$3")
  if [[ -n "$v" ]]; then echo "$v"; else awk '{ print $2 }' "$WORK/$1.$2.result"; fi
}

table() {
  local load m side
  printf '\n%-10s %-10s %12s %12s %8s\n' load metric etcd keel keel/etcd
  printf '%s\n' "------------------------------------------------------------"
  for load in "${LOADS[@]}"; do
    for m in rps p50_ms p99_ms p999_ms errors; do
      local e k
      e=$(metric etcd "$load" "$m"); k=$(metric keel "$load" "$m")
      printf '%-10s %-10s %12s %12s %8s\n' "$load" "$m" "$e" "$k" "$(ratio "$e" "$k")"
    done
  done
  for m in "${SCALARS[@]}"; do
    local e k
    e=$(value etcd "$m"); k=$(value keel "$m")
    printf '%-10s %-10s %12s %12s %8s\n' server "$m" "$e" "$k" "$(ratio "$e" "$k")"
  done
  printf '\nKEYS=%s loaded in order, then PUTS=%s random puts and as many random linearizable\n' \
    "$KEYS" "$PUTS"
  printf 'ranges; %s clients over %s conns, val-size %s. rss/disk: VmRSS and du -sb of the\n' \
    "$CLIENTS" "$CONNS" "$VAL_SIZE"
  printf 'data dir after the bulk load; restart_s: kill -9 to the first etcdctl get of key 0.\n\n'
  for side in etcd keel; do
    for load in "${LOADS[@]}"; do
      echo "RESULT side=$side measurement=$load $(cut -d' ' -f2- "$WORK/$side.$load.result")"
    done
    for m in "${SCALARS[@]}"; do
      echo "RESULT side=$side measurement=$m value=$(value "$side" "$m")"
    done
  done
  printf 'Full reports: %s (kept only with KEEP=1)\n' "$WORK"
}

build
[[ -x "$BENCH_BIN" ]] || { log "missing $BENCH_BIN"; exit 1; }
command -v etcdctl >/dev/null || { log "etcdctl is needed for the restart check"; exit 1; }
if [[ $MEMBERS == 3 ]]; then
  # shellcheck source=scale-rejoin.sh
  source "$ROOT/benches/scale-rejoin.sh"
  LOADS=(bulk put during)
  RUN=run_side3 ETCD_PORT=$ETCD3_PORT KEEL_PORT=$KEEL3_PORT
elif [[ $MEMBERS == 1 ]]; then
  RUN=run_side
else
  log "MEMBERS must be 1 or 3"; exit 1
fi
for side in etcd keel; do
  for load in "${LOADS[@]}"; do echo "RESULT not-run" >"$WORK/$side.$load.result"; done
done
if [[ "$ONLY" != keel ]]; then $RUN etcd "$ETCD_PORT"; fi
if [[ "$ONLY" != etcd ]]; then
  if [[ -x "$KEEL_BIN" ]]; then $RUN keel "$KEEL_PORT"; else log "no keel binary at $KEEL_BIN"; fi
fi
if [[ $MEMBERS == 3 ]]; then table3; else table; fi
