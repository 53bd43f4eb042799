#!/usr/bin/env bash
# Backup benchmark: loads KEYS keys into one single-member server (real etcd 3.4, then keel, one
# at a time on this machine), then takes `etcdctl snapshot save` of the loaded store while
# random puts go on. Measures the time to save, the file's size, the server's RSS added during
# the save (peak VmRSS sampled every 20 ms, less VmRSS just before) and the p99 of the puts
# that ran alongside. The puts run in chunks of CHUNK_PUTS back to back until the save is done
# (at least one chunk); the worst chunk's p99 is reported, against the worst of BASE_CHUNKS
# chunks run without a save (as scale-rejoin.sh does for a rejoin). The file is then checked
# (`etcdctl snapshot status` for etcd's, `keelutl snapshot status` for keel's).
#
# Usage: benches/snapshot-side-by-side.sh                        (default 1M keys)
#        KEYS=20000 SKIP_BUILD=1 benches/snapshot-side-by-side.sh   (smoke run)
# Environment (all optional):
#   KEYS=1000000          keys bulk-loaded in order (8-byte keys, VAL_SIZE-byte values)
#   CHUNK_PUTS=2000       random puts per chunk; BASE_CHUNKS=3 chunks without a save first
#   VAL_SIZE=256  CONNS=10  CLIENTS=100
#   ONLY=etcd|keel        run one side only (default: both)
#   SKIP_BUILD=1          reuse existing release binaries
#   STEP_TIMEOUT=3600     seconds allowed per load before it is killed (counts as failed)
#   ETCD_PORT=24600 KEEL_PORT=24610   client port; the peer port is PORT+100
#   ETCD_QUOTA_BYTES=8589934592       etcd's --quota-backend-bytes
#   ETCD_BIN=etcd  KEEL_BIN=$CARGO_TARGET_DIR/release/keel
#   KEEP=1                keep the work directory (data dirs, backups, logs, full reports)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
KEYS=${KEYS:-1000000}
CHUNK_PUTS=${CHUNK_PUTS:-2000}
BASE_CHUNKS=${BASE_CHUNKS:-3}
VAL_SIZE=${VAL_SIZE:-256}
CONNS=${CONNS:-10}
CLIENTS=${CLIENTS:-100}
ONLY=${ONLY:-both}
STEP_TIMEOUT=${STEP_TIMEOUT:-3600}
ETCD_PORT=${ETCD_PORT:-24600}
KEEL_PORT=${KEEL_PORT:-24610}
ETCD_QUOTA_BYTES=${ETCD_QUOTA_BYTES:-8589934592}
KEELUTL_BIN=${KEELUTL_BIN:-$TARGET_DIR/release/keelutl}
WORK=$(mktemp -d /tmp/keel-snapshot.XXXXXX)
# shellcheck source=bench-lib.sh
source "$ROOT/benches/bench-lib.sh"

cleanup_on_exit

LOADS=(bulk put-alone put-during)
CHUNK_METRICS=(chunks p99_ms p999_ms errors)
SCALARS=(save_s file_mib rss_before_mib rss_peak_mib rss_added_mib)

# launch SIDE PORT: starts the single member on a fresh $WORK/SIDE.data; sets SERVER_PID and
# adds it to PIDS. Same flags as scale-side-by-side.sh.
launch() {
  local side=$1 port=$2 peer=$(($2 + 100)) extra=()
  [[ $side == etcd ]] && extra=(--quota-backend-bytes "$ETCD_QUOTA_BYTES")
  rm -rf "$WORK/$side.data" && mkdir -p "$WORK/$side.data"
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

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# sample_rss PID OUT: writes the peak VmRSS (KiB) seen every 20 ms to OUT until killed.
sample_rss() {
  local pid=$1 out=$2 peak=0 now
  while kill -0 "$pid" 2>/dev/null; do
    now=$(rss_kib "$pid")
    if ((now > peak)); then peak=$now; echo "$peak" >"$out"; fi
    sleep 0.02
  done
}

# save SIDE EP: etcdctl snapshot save, timed; the file is checked afterwards.
save() {
  local side=$1 ep=$2 out="$WORK/$1" start
  start=$(date +%s%N)
  if ETCDCTL_API=3 timeout "$STEP_TIMEOUT" etcdctl --endpoints "$ep" --command-timeout 3600s \
      snapshot save "$WORK/$side.backup.db" >"$out.save.log" 2>&1; then
    awk -v ns=$(($(date +%s%N) - start)) 'BEGIN { printf "%.2f\n", ns / 1e9 }' >"$out.save_s"
  else
    log "$side: snapshot save failed (last lines below)"; tail -3 "$out.save.log" >&2
  fi
}

run_side() {
  local side=$1 port=$2 ep="127.0.0.1:$2" out="$WORK/$1" sampler load_pid
  if port_busy "$port" || port_busy $((port + 100)); then
    log "port $port or $((port + 100)) is already in use; set ${side^^}_PORT"; return 0
  fi
  launch "$side" "$port"
  if ! wait_ready "$ep" "$SERVER_PID"; then tail -5 "$WORK/$side.log" >&2; stop_all; return 0; fi
  local common=(--endpoints "$ep" --conns "$CONNS" --clients "$CLIENTS")
  local puts=(put --key-space-size "$KEYS" --key-size 8 --val-size "$VAL_SIZE")
  log "$side: bulk load of $KEYS keys in order"
  run_load "$out.bulk" "${common[@]}" --total "$KEYS" put --sequential-keys \
    --key-space-size "$KEYS" --key-size 8 --val-size "$VAL_SIZE"
  log "$side: $BASE_CHUNKS chunks of $CHUNK_PUTS random puts, no save (baseline)"
  local n
  for ((n = 1; n <= BASE_CHUNKS; n++)); do
    run_load "$out.alone$n" "${common[@]}" --total "$CHUNK_PUTS" "${puts[@]}"
  done
  worst "$out" alone "$out.put-alone.result"
  local before save_pid
  before=$(rss_kib "$SERVER_PID")
  awk -v k="$before" 'BEGIN { printf "%.1f\n", k / 1024 }' >"$out.rss_before_mib"
  echo "$before" >"$out.rss_peak_kib"
  log "$side: snapshot save, chunks of $CHUNK_PUTS random puts until it is done"
  sample_rss "$SERVER_PID" "$out.rss_peak_kib" &
  sampler=$!
  save "$side" "$ep" &
  save_pid=$!
  n=0
  while :; do
    n=$((n + 1))
    run_load "$out.during$n" "${common[@]}" --total "$CHUNK_PUTS" "${puts[@]}"
    kill -0 "$save_pid" 2>/dev/null || break
  done
  wait "$save_pid" || true
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  worst "$out" during "$out.put-during.result"
  awk -v k="$(cat "$out.rss_peak_kib")" 'BEGIN { printf "%.1f\n", k / 1024 }' >"$out.rss_peak_mib"
  awk -v p="$(cat "$out.rss_peak_kib")" -v b="$before" 'BEGIN { printf "%.1f\n", (p - b) / 1024 }' \
    >"$out.rss_added_mib"
  if [[ -s "$WORK/$side.backup.db" ]]; then
    du -b "$WORK/$side.backup.db" | awk '{ printf "%.1f\n", $1 / 1048576 }' >"$out.file_mib"
    if [[ $side == etcd ]]; then
      ETCDCTL_API=3 etcdctl snapshot status "$WORK/$side.backup.db" -w table >"$out.status" 2>&1 || true
    else
      "$KEELUTL_BIN" snapshot status "$WORK/$side.backup.db" -w table >"$out.status" 2>&1 || true
    fi
    log "$side: the backup's status:"; cat "$out.status" >&2
  fi
  stop_all
}

# worst OUT NAME RESULT: a RESULT line for the chunks OUT.NAME<n>.result: how many, the worst
# p99 and p99.9, the errors summed ("RESULT failed" if a chunk failed).
worst() {
  local out=$1 name=$2 result=$3 f chunks=0 p99=0 p999=0 errors=0 v
  for f in "$out.$name"*.result; do
    v=$(field "$f" p99_ms)
    if [[ -z $v ]]; then echo "RESULT failed" >"$result"; return 0; fi
    chunks=$((chunks + 1))
    p99=$(awk -v a="$p99" -v b="$v" 'BEGIN { print (b > a) ? b : a }')
    v=$(field "$f" p999_ms)
    p999=$(awk -v a="$p999" -v b="$v" 'BEGIN { print (b > a) ? b : a }')
    errors=$((errors + $(field "$f" errors)))
  done
  echo "RESULT op=put chunks=$chunks p99_ms=$p99 p999_ms=$p999 errors=$errors" >"$result"
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
  printf '\n%-10s %-14s %12s %12s %8s\n' load metric etcd keel keel/etcd
  printf '%s\n' "----------------------------------------------------------------"
  for load in "${LOADS[@]}"; do
    local metrics=(rps p50_ms p99_ms p999_ms errors)
    [[ $load == bulk ]] || metrics=("${CHUNK_METRICS[@]}")
    for m in "${metrics[@]}"; do
      local e k
      e=$(metric etcd "$load" "$m"); k=$(metric keel "$load" "$m")
      printf '%-10s %-14s %12s %12s %8s\n' "$load" "$m" "$e" "$k" "$(ratio "$e" "$k")"
    done
  done
  for m in "${SCALARS[@]}"; do
    local e k
    e=$(value etcd "$m"); k=$(value keel "$m")
    printf '%-10s %-14s %12s %12s %8s\n' save "$m" "$e" "$k" "$(ratio "$e" "$k")"
  done
  printf '\nKEYS=%s loaded in order; chunks of %s random puts: %s alone, then back to back\n' \
    "$KEYS" "$CHUNK_PUTS" "$BASE_CHUNKS"
  printf 'during `etcdctl snapshot save` (worst chunk shown); %s clients over %s conns,\n' \
    "$CLIENTS" "$CONNS"
  printf 'val-size %s.\n' "$VAL_SIZE"
  printf 'rss_added: peak VmRSS during the save (20 ms samples) less VmRSS just before it.\n\n'
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
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p keel-server --bin keelutl) >&2
fi
[[ -x "$BENCH_BIN" ]] || { log "missing $BENCH_BIN"; exit 1; }
command -v etcdctl >/dev/null || { log "etcdctl is needed for snapshot save"; exit 1; }
for side in etcd keel; do
  for load in "${LOADS[@]}"; do echo "RESULT not-run" >"$WORK/$side.$load.result"; done
done
if [[ "$ONLY" != keel ]]; then run_side etcd "$ETCD_PORT"; fi
if [[ "$ONLY" != etcd ]]; then
  if [[ -x "$KEEL_BIN" ]]; then run_side keel "$KEEL_PORT"; else log "no keel binary at $KEEL_BIN"; fi
fi
table
