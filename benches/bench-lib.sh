# Shared by cluster-side-by-side.sh and watch-side-by-side.sh (sourced, not run).
#
# Expects ROOT, TARGET_DIR and WORK to be set. Starts etcd and keel members with the same etcd
# flags, remembers every pid it started in PIDS, and stops exactly those (stop_all, called from
# the caller's EXIT trap). Results are `RESULT key=value ...` lines written by keel-bench.

READY_TIMEOUT=${READY_TIMEOUT:-30}
STEP_TIMEOUT=${STEP_TIMEOUT:-900}
HEARTBEAT_MS=${HEARTBEAT_MS:-100}
ELECTION_MS=${ELECTION_MS:-1000}
ETCD_BIN=${ETCD_BIN:-etcd}
KEEL_BIN=${KEEL_BIN:-$TARGET_DIR/release/keel}
BENCH_BIN=$TARGET_DIR/release/keel-bench
PIDS=()

log() { printf '==> %s\n' "$*" >&2; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

build() {
  [[ "${SKIP_BUILD:-0}" == 1 ]] && return 0
  log "building keel-bench and keel (release, CARGO_TARGET_DIR=$TARGET_DIR)"
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p keel-benches) >&2
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p keel-server --bin keel) >&2 \
    || log "keel failed to build; its column will say so"
}

# side_bin SIDE: the server binary for etcd or keel.
side_bin() {
  if [[ $1 == etcd ]]; then command -v "$ETCD_BIN"; else echo "$KEEL_BIN"; fi
}

# start_member SIDE NAME CLIENT_PORT PEER_PORT INITIAL_CLUSTER: starts one member in the
# background with a fresh data dir; sets LAST_PID and adds it to PIDS. Call it directly, never
# in $(...): a subshell's PIDS would be lost to the EXIT trap.
start_member() {
  local side=$1 name=$2 port=$3 peer=$4 cluster=$5
  local data="$WORK/$side.$name.data" bin
  bin=$(side_bin "$side")
  if port_busy "$port" || port_busy "$peer"; then
    log "port $port or $peer is already in use; refusing to benchmark somebody else's server"
    return 1
  fi
  rm -rf "$data" && mkdir -p "$data"
  "$bin" --name "$name" --data-dir "$data" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$cluster" --initial-cluster-state new \
    --initial-cluster-token "keel-bench-$side" \
    --heartbeat-interval "$HEARTBEAT_MS" --election-timeout "$ELECTION_MS" \
    >>"$WORK/$side.$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# put_foo ENDPOINT: writes the key the range loads read (VAL_SIZE bytes) with etcdctl.
put_foo() {
  local value
  value=$(printf "%${VAL_SIZE:-256}s" "" | tr ' ' v)
  if ! ETCDCTL_API=3 timeout 10 etcdctl --endpoints "$1" put foo "$value" >/dev/null 2>&1; then
    log "could not write key foo with etcdctl; the ranges will read a missing key"
  fi
}

# wait_ready ENDPOINTS PIDS...: waits until a linearizable put through the first endpoint
# succeeds (a leader exists and commits) and every endpoint answers a serializable read.
wait_ready() {
  local endpoints=$1; shift
  local deadline=$((SECONDS + READY_TIMEOUT)) ep ok pid
  while ((SECONDS < deadline)); do
    for pid in "$@"; do
      if ! kill -0 "$pid" 2>/dev/null; then log "a member (pid $pid) exited during startup"; return 1; fi
    done
    ok=1
    if ! timeout 5 "$BENCH_BIN" --endpoints "${endpoints%%,*}" --total 1 --timeout-secs 2 \
        put --key-size 8 2>/dev/null | grep -q 'errors=0'; then ok=0; fi
    for ep in ${endpoints//,/ }; do
      if ((ok)) && ! timeout 5 "$BENCH_BIN" --endpoints "$ep" --total 1 --timeout-secs 2 \
          range probe --consistency s 2>/dev/null | grep -q 'errors=0'; then ok=0; fi
    done
    if ((ok)); then return 0; fi
    sleep 0.5
  done
  log "not ready within ${READY_TIMEOUT}s (endpoints $endpoints)"
  return 1
}

# stop_pid PID: TERM, then KILL after 5 s; only pids this script started.
stop_pid() {
  local pid=$1
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

stop_all() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$pid"; done
  PIDS=()
}

# cleanup_on_exit: on exit, stops every server started (stop_all) and removes $WORK unless
# KEEP=1; an interrupt or TERM exits with 130 (through the same clean-up).
cleanup_on_exit() {
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  stop_all
  if [[ "${KEEP:-0}" == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}

# run_load OUT_PREFIX ARGS...: runs keel-bench with a deadline, keeps the full report in
# OUT_PREFIX.out and the RESULT line (or "RESULT failed") in OUT_PREFIX.result.
run_load() {
  local out=$1; shift
  if timeout "$STEP_TIMEOUT" "$BENCH_BIN" "$@" >"$out.out" 2>&1; then
    grep '^RESULT' "$out.out" | tail -1 >"$out.result" || echo "RESULT failed" >"$out.result"
  else
    log "$(basename "$out") failed or timed out (last lines below)"; tail -3 "$out.out" >&2
    echo "RESULT failed" >"$out.result"
  fi
}

# field FILE KEY: prints KEY's value from a RESULT line, or nothing.
field() {
  [[ -r $1 ]] || return 0
  tr ' ' '\n' <"$1" | awk -F= -v k="$2" '$1 == k { print $2 }'
}

# summarize SIDE LOAD KEY ROUNDS: "median (min-max)" of KEY over the rounds' RESULT files, a
# bare value when only one round produced it, else round 1's "failed"/"not-run" (or "-").
summarize() {
  local side=$1 load=$2 key=$3 rounds=$4 r v values=()
  for ((r = 1; r <= rounds; r++)); do
    v=$(field "$WORK/r$r.$side.$load.result" "$key")
    [[ -n "$v" ]] && values+=("$v")
  done
  if ((${#values[@]} == 0)); then
    awk '{ print ($2 ~ /=/) ? "-" : $2; exit }' "$WORK/r1.$side.$load.result" 2>/dev/null \
      || echo "-"
    return 0
  fi
  printf '%s\n' "${values[@]}" | sort -g | awk '
    { v[NR] = $1 }
    END {
      med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      if (NR == 1) printf "%s", fmt(med); else printf "%s (%s-%s)", fmt(med), fmt(v[1]), fmt(v[NR])
    }
    function fmt(x) { return (x == int(x) || x >= 100) ? sprintf("%.0f", x) : sprintf("%.3g", x) }'
}

# ratio A B: B / A with two decimals ("-" when either is missing or A is 0).
ratio() {
  local a=${1%% *} b=${2%% *}
  awk -v a="$a" -v b="$b" 'BEGIN {
    if (a + 0 == 0 || a !~ /^[0-9.e+-]+$/ || b !~ /^[0-9.e+-]+$/) print "-"
    else printf "%.2fx\n", b / a }'
}
