#!/usr/bin/env bash
# What a linearizable range costs one keel server, counted per range, after an idle period and
# right after a put load, several rounds on the same server (benches/README.md, "Why keel's
# range rate was bimodal"). One line per range load:
#
#   rps, cpu_us     requests/s; the server's user+system CPU per range (/proc/PID/stat)
#   others          CPU used meanwhile by neither the server nor keel-bench, % of all cores
#   lockwait        futex waits on glibc's internal locks (FUTEX_WAIT_PRIVATE, op 128): with
#                   glibc malloc, waits for its arena lock
#   park            futex waits of Rust's std (FUTEX_WAIT_BITSET_PRIVATE, op 137): tokio
#                   workers parking, std Mutex/Condvar waits
#   wake            futex wakes (FUTEX_WAKE_PRIVATE, op 129), both kinds
#   epoll, send, recv, write, writev, cs   epoll_wait, sendto, recvfrom, write, writev calls
#                   (TLS responses leave by write) and context switches
#   mig             CPU migrations of the server's threads
#   threads         how the server's CPU split over its threads during the load, in %, busiest
#                   first (threads under 1 % left out): the two busiest are the tokio workers
#                   (tokio names its blocking threads, the WAL writer's among them, alike)
#   reads/round     linearizable reads per ReadIndex round (keel_server_linearizable_reads_total
#                   over keel_server_read_index_rounds_total, from /metrics)
#   req/turn        ranges per driver-loop turn (keel_driver_turns_total)
#
# The syscall counts come from `perf stat` on syscall tracepoints (needs perf and root, or a
# low perf_event_paranoid; without it they print as "-"). Counting tracepoints costs the server
# little; run the same loads without perf (PERF=0) to check rps.
#
# Usage: benches/range-modes.sh
# Environment (all optional):
#   MODE=off|auth|tls|auth+tls  ROUNDS=3  TOTAL=20000 ranges per load  CLIENTS=16  CONNS=4
#   KEY_SPACE=100000 (random keys of put's encoding; 0: the one key "foo")  IDLE_SECS=6
#   PUTS=20000 puts before each "after-put" range load  PERF=1  SKIP_BUILD=1  KEEP=1
#   PORT=24791 PEER_PORT=24801  KEEL_BIN=$CARGO_TARGET_DIR/release/keel
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
MODE=${MODE:-off}
ROUNDS=${ROUNDS:-3}
TOTAL=${TOTAL:-20000}
CLIENTS=${CLIENTS:-16}
CONNS=${CONNS:-4}
KEY_SPACE=${KEY_SPACE:-100000}
IDLE_SECS=${IDLE_SECS:-6}
PUTS=${PUTS:-20000}
PERF=${PERF:-1}
PORT=${PORT:-24791}
PEER_PORT=${PEER_PORT:-24801}
KEEL_BIN=${KEEL_BIN:-$TARGET_DIR/release/keel}
BENCH=$TARGET_DIR/release/keel-bench
TICKS=$(getconf CLK_TCK)

WORK=$(mktemp -d /tmp/keel-range-modes.XXXXXX)
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ "${KEEP:-0}" == 1 ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$ROOT" && cargo build --release -p keel-benches -p keel-server --bin keel --bin keel-bench) >&2
fi
if [[ $PERF == 1 ]] && ! perf stat -e syscalls:sys_enter_futex true >/dev/null 2>&1; then
  echo "# perf cannot count syscall tracepoints here; syscall columns print as -" >&2
  PERF=0
fi

scheme=http server_tls=() CLIENT_TLS=() CURL_TLS=() USER_ARGS=()
if [[ $MODE == tls || $MODE == auth+tls ]]; then
  # shellcheck source=benches/bench-certs.sh
  source "$ROOT/benches/bench-certs.sh"
  make_bench_certs "$WORK"
  scheme=https
  server_tls=(--cert-file "$WORK/server.pem" --key-file "$WORK/server.key"
    --trusted-ca-file "$WORK/ca.pem" --client-cert-auth)
  CLIENT_TLS=(--cacert "$WORK/ca.pem" --cert "$WORK/client.pem" --key "$WORK/client.key")
  CURL_TLS=(--cacert "$WORK/ca.pem" --cert "$WORK/client.pem" --key "$WORK/client.key")
fi
URL="$scheme://127.0.0.1:$PORT"
RANGE_ARGS=(range foo)
[[ $KEY_SPACE != 0 ]] && RANGE_ARGS=(range x --key-space-size "$KEY_SPACE")

"$KEEL_BIN" --name bench --data-dir "$WORK/data" --listen-client-urls "$URL" \
  --advertise-client-urls "$URL" --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "bench=http://127.0.0.1:$PEER_PORT" "${server_tls[@]}" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
  if "$BENCH" --endpoints "$URL" "${CLIENT_TLS[@]}" --total 1 --timeout-secs 2 \
      range probe --consistency s 2>/dev/null | grep -q 'errors=0'; then break; fi
  sleep 0.2
done
ctl=(etcdctl "--endpoints=$URL" "${CLIENT_TLS[@]}")
"${ctl[@]}" put foo bar >/dev/null
if [[ $MODE == auth || $MODE == auth+tls ]]; then
  for args in "user add root:rootpw" "user grant-role root root" "role add rw" \
    "role grant-permission rw readwrite '' --from-key" "user add bench:benchpw" \
    "user grant-role bench rw" "auth enable"; do
    eval "${ctl[*]} $args" >/dev/null
  done
  USER_ARGS=(--user bench:benchpw)
fi

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"; }
# thread_ticks: one line per server thread, "TID NS": its time on a CPU (schedstat), in ns.
thread_ticks() {
  local t
  for t in /proc/"$SERVER_PID"/task/*; do
    awk -v tid="${t##*/}" '{ print tid, $1 }' "$t/schedstat" 2>/dev/null || true
  done
}
# thread_split BEFORE AFTER: the threads' shares of the server's CPU between two thread_ticks,
# busiest first, those of 1 % or more: "62/36/1".
thread_split() {
  awk 'NR == FNR { t0[$1] = $2; next }
    { d = $2 - t0[$1]; total += d; w[++n] = d }
    END {
      if (total <= 0) { print "-"; exit }
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (w[j] > w[i]) { x = w[i]; w[i] = w[j]; w[j] = x }
      for (i = 1; i <= n && 100 * w[i] / total >= 0.5; i++) s = s (i > 1 ? "/" : "") sprintf("%.0f", 100 * w[i] / total)
      print s
    }' <(echo "$1") <(echo "$2")
}
# The whole machine's busy ticks, all cores (user, nice, system, irq, softirq, steal).
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

# metric NAME: its value on the server's /metrics (0 if it has none: an older keel).
metric() {
  curl -s "${CURL_TLS[@]}" "$URL/metrics" | awk -v n="$1" '$1 == n { v = $2 } END { print v + 0 }'
}

# load TOTAL ARGS...: one keel-bench load; sets RPS, CPU_US (per request, less one login) and
# OTHERS: the CPU that neither the server nor keel-bench used meanwhile (other processes), in %
# of all cores. A busy neighbour halves the rate without changing the server's CPU per request.
load() {
  local total=$1 before after busy0 busy1 t0 t1 line bench_s
  shift
  before=$(cpu_ticks) busy0=$(busy_ticks) t0=$(date +%s%N)
  line=$(/usr/bin/time -f 'BENCH_CPU %U %S' "$BENCH" --endpoints "$URL" "${CLIENT_TLS[@]}" \
    --conns "$CONNS" --clients "$CLIENTS" --total "$total" "${USER_ARGS[@]}" "$@" 2>&1 |
    grep -E '^(RESULT|BENCH_CPU)') || true
  after=$(cpu_ticks) busy1=$(busy_ticks) t1=$(date +%s%N)
  RPS=$(echo "$line" | grep '^RESULT' | tr ' ' '\n' | awk -F= '$1 == "rps" { printf "%.0f", $2 }')
  CPU_US=$((((after - before) * 1000000 / TICKS - LOGIN_US) / total))
  bench_s=$(echo "$line" | awk '$1 == "BENCH_CPU" { print $2 + $3 }')
  OTHERS=$(awk -v b=$((busy1 - busy0)) -v s=$((after - before)) -v c="${bench_s:-0}" \
    -v hz="$TICKS" -v ns=$((t1 - t0)) -v n="$(nproc)" \
    'BEGIN { o = (b - s) / hz - c; if (o < 0) o = 0; printf "%.0f", 100 * o / (ns / 1e9 * n) }')
}

# With --user, keel-bench logs in once per load: that bcrypt is not the requests' cost.
LOGIN_US=0
if [[ ${#USER_ARGS[@]} -gt 0 ]]; then
  load 20 authenticate
  LOGIN_US=$CPU_US
  echo "# one login (bcrypt cost 10) costs the server ${LOGIN_US} µs; taken off each load"
fi
load 3000 put --key-space-size 100000

# ranges LABEL: one range load with its counts, one line.
ranges() {
  local label=$1 perf_pid="" reads0 rounds0 turns0 counts="-"
  reads0=$(metric keel_server_linearizable_reads_total)
  rounds0=$(metric keel_server_read_index_rounds_total)
  turns0=$(metric keel_driver_turns_total)
  if [[ $PERF == 1 ]]; then
    perf stat -x, -o "$WORK/perf.out" \
      -e syscalls:sys_enter_futex --filter 'op == 128' \
      -e syscalls:sys_enter_futex --filter 'op == 137' \
      -e syscalls:sys_enter_futex --filter 'op == 129' \
      -e syscalls:sys_enter_epoll_wait,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom \
      -e syscalls:sys_enter_write,syscalls:sys_enter_writev \
      -e context-switches -e cpu-migrations -p "$SERVER_PID" &
    perf_pid=$!
    sleep 0.3
  fi
  local threads0 threads1
  threads0=$(thread_ticks)
  load "$TOTAL" "${RANGE_ARGS[@]}"
  threads1=$(thread_ticks)
  if [[ -n $perf_pid ]]; then
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    counts=$(awk -F, -v t="$TOTAL" '
      BEGIN { split("lockwait park wake epoll send recv write writev cs mig", name, " ") }
      /^[0-9]/ { i++; printf "%s=%.3f ", name[i], $1 / t }' "$WORK/perf.out")
  fi
  sleep 0.3 # the node's counts reach /metrics on the next tick
  local reads rounds turns
  reads=$(($(metric keel_server_linearizable_reads_total) - reads0))
  rounds=$(($(metric keel_server_read_index_rounds_total) - rounds0))
  turns=$(($(metric keel_driver_turns_total) - turns0))
  printf '%-5s %-4s %-10s rps=%-6s cpu_us=%-3s others=%-3s %s threads=%s reads/round=%s req/turn=%s\n' \
    "$ROUND" "$MODE" "$label" "$RPS" "$CPU_US" "$OTHERS%" "$counts" \
    "$(thread_split "$threads0" "$threads1")" \
    "$(awk -v a="$reads" -v b="$rounds" 'BEGIN { printf (b ? "%.2f" : "-"), a / b }')" \
    "$(awk -v a="$TOTAL" -v b="$turns" 'BEGIN { printf (b ? "%.2f" : "-"), a / b }')"
}

echo "# mode=$MODE rounds=$ROUNDS total=$TOTAL clients=$CLIENTS conns=$CONNS key_space=$KEY_SPACE idle=${IDLE_SECS}s"
echo "# nproc=$(nproc) loadavg=$(cut -d' ' -f1-3 /proc/loadavg) keel=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
for ROUND in $(seq "$ROUNDS"); do
  load "$PUTS" put --key-space-size 100000
  ranges after-put
  sleep "$IDLE_SECS"
  ranges after-idle
done
echo "# loadavg at the end: $(cut -d' ' -f1-3 /proc/loadavg); server RSS $(awk '/VmRSS/ { print $2 " " $3 }' "/proc/$SERVER_PID/status")"
