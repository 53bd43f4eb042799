#!/usr/bin/env bash
# What auth and TLS cost, keel and etcd 3.4 side by side: puts and linearizable ranges with
# auth off, auth on, TLS on and auth+TLS on, and Authenticate calls per second; one fresh
# single-member server per (round, server, mode), rounds interleaved so a noisy machine hits
# every cell alike. Small by default; see benches/README.md ("Auth and TLS") for figures.
#
#   auth:  simple tokens (the default); a non-root user holding readwrite on every key, so
#          each put is checked at arrival and at apply, each range when served.
#   tls:   https:// with --client-cert-auth, the client presenting a certificate (P-256,
#          made here with openssl).
#
# Usage: benches/auth-side-by-side.sh
# Environment (all optional):
#   ROUNDS=3  TOTAL=20000 requests per load  CLIENTS=16  CONNS=4  KEY_SPACE=100000
#   AUTH_TOTAL=100 Authenticate calls per load (bcrypt cost 10 on both servers)
#   MODES="off auth tls auth+tls"  SERVERS="keel etcd"  SKIP_BUILD=1  KEEP=1
#   PORT=24791 PEER_PORT=24801  ETCD_BIN=etcd  KEEL_BIN=$CARGO_TARGET_DIR/release/keel
#   BASE_BIN=another keel binary, measured as server "base" when SERVERS names it (a before/
#   after comparison in one interleaved run: SERVERS="keel base etcd")
#
# Output: one line per load, then a summary per (server, mode, op): the median requests/s
# over the rounds with the lowest and highest, the median server CPU per request (from
# /proc/PID/stat: user+system time of the server process over the load divided by the
# requests, less the one login an auth load starts with; far less sensitive to other
# processes on the machine than requests/s), and the cost against the same server's "off"
# medians. A busy machine moves requests/s by 2-5x between rounds; read the CPU column.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ROUNDS=${ROUNDS:-3}
TOTAL=${TOTAL:-20000}
AUTH_TOTAL=${AUTH_TOTAL:-100}
CLIENTS=${CLIENTS:-16}
CONNS=${CONNS:-4}
KEY_SPACE=${KEY_SPACE:-100000}
MODES=${MODES:-off auth tls auth+tls}
SERVERS=${SERVERS:-keel etcd}
PORT=${PORT:-24791}
PEER_PORT=${PEER_PORT:-24801}
ETCD_BIN=${ETCD_BIN:-etcd}
KEEL_BIN=${KEEL_BIN:-$TARGET_DIR/release/keel}
BASE_BIN=${BASE_BIN:-}
BENCH=$TARGET_DIR/release/keel-bench
TICKS=$(getconf CLK_TCK)

WORK=$(mktemp -d /tmp/keel-auth-bench.XXXXXX)
SERVER_PID=""
stop_server() {
  if [[ -n "$SERVER_PID" ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
cleanup() {
  stop_server
  if [[ "${KEEP:-0}" == 1 ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$ROOT" && cargo build --release -p keel-benches -p keel-server --bin keel --bin keel-bench) >&2
fi

# A CA, a server certificate for 127.0.0.1, a client certificate.
# shellcheck source=benches/bench-certs.sh
source "$ROOT/benches/bench-certs.sh"
make_bench_certs "$WORK"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# bench OP ARGS...: one load; prints "rps=… p99_ms=… errors=… cpu_us=…".
bench() {
  local op=$1 total=$2
  shift 2
  local before after line
  before=$(cpu_ticks "$SERVER_PID")
  line=$("$BENCH" --endpoints "$URL" "${CLIENT_TLS[@]}" --conns "$CONNS" --clients "$CLIENTS" \
    --total "$total" "$@" 2>&1 | grep '^RESULT' | tail -1) || true
  after=$(cpu_ticks "$SERVER_PID")
  # With --user, keel-bench logs in once before its load: that login's bcrypt (LOGIN_US,
  # measured by the authenticate load) is not the requests' cost.
  local login_us=0
  [[ " $* " == *" --user "* && $op != authenticate ]] && login_us=$LOGIN_US
  local cpu_us=$((((after - before) * 1000000 / TICKS - login_us) / total))
  echo "$line" | awk -v op="$op" -v cpu="$cpu_us" '{
    for (i = 1; i <= NF; i++) if ($i ~ /^(rps|p99_ms|errors)=/) f[substr($i, 1, index($i, "=") - 1)] = substr($i, index($i, "=") + 1)
    printf "%-12s rps=%s p99_ms=%s errors=%s cpu_us=%s\n", op, f["rps"], f["p99_ms"], f["errors"], cpu }'
}

# run ROUND SERVER MODE: a fresh server in MODE, its loads, one line per load.
run() {
  local round=$1 side=$2 mode=$3 bin=$KEEL_BIN scheme=http
  [[ $side == etcd ]] && bin=$ETCD_BIN
  [[ $side == base ]] && bin=$BASE_BIN
  local server_tls=() user=()
  CLIENT_TLS=()
  if [[ $mode == tls || $mode == auth+tls ]]; then
    scheme=https
    server_tls=(--cert-file "$WORK/server.pem" --key-file "$WORK/server.key"
      --trusted-ca-file "$WORK/ca.pem" --client-cert-auth)
    CLIENT_TLS=(--cacert "$WORK/ca.pem" --cert "$WORK/client.pem" --key "$WORK/client.key")
  fi
  URL="$scheme://127.0.0.1:$PORT"
  local data="$WORK/data-$round-$side-$mode"
  "$bin" --name bench --data-dir "$data" --listen-client-urls "$URL" --advertise-client-urls "$URL" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "bench=http://127.0.0.1:$PEER_PORT" "${server_tls[@]}" >"$data.log" 2>&1 &
  SERVER_PID=$!
  local ctl=(etcdctl "--endpoints=$URL" "${CLIENT_TLS[@]}")
  for _ in $(seq 100); do
    if "$BENCH" --endpoints "$URL" "${CLIENT_TLS[@]}" --total 1 --timeout-secs 2 \
        range probe --consistency s 2>/dev/null | grep -q 'errors=0'; then break; fi
    sleep 0.2
  done
  if [[ $mode == auth || $mode == auth+tls ]]; then
    for args in "user add root:rootpw" "user grant-role root root" "role add rw" \
      "role grant-permission rw readwrite '' --from-key" "user add bench:benchpw" \
      "user grant-role bench rw" "auth enable"; do
      eval "${ctl[*]} $args" >/dev/null 2>&1 || true
    done
    user=(--user bench:benchpw)
  fi
  LOGIN_US=0
  bench warm-up 3000 "${user[@]}" put --key-space-size "$KEY_SPACE" >/dev/null
  if [[ ${#user[@]} -gt 0 ]]; then
    local line
    line=$(bench authenticate "$AUTH_TOTAL" "${user[@]}" authenticate)
    printf '%-5s %-5s %-9s %s\n' "$round" "$side" "$mode" "$line"
    LOGIN_US=$(echo "$line" | sed -n 's/.*cpu_us=\([0-9]*\).*/\1/p')
  fi
  printf '%-5s %-5s %-9s %s\n' "$round" "$side" "$mode" \
    "$(bench put "$TOTAL" "${user[@]}" put --key-space-size "$KEY_SPACE")"
  printf '%-5s %-5s %-9s %s\n' "$round" "$side" "$mode" \
    "$(bench range-l "$TOTAL" "${user[@]}" range x --key-space-size "$KEY_SPACE")"
  stop_server
}

echo "# rounds=$ROUNDS total=$TOTAL auth_total=$AUTH_TOTAL clients=$CLIENTS conns=$CONNS key_space=$KEY_SPACE"
echo "# nproc=$(nproc) loadavg=$(cut -d' ' -f1-3 /proc/loadavg) keel=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') etcd=$("$ETCD_BIN" --version | awk 'NR==1 {print $3}')"
printf '%-5s %-5s %-9s %-12s %s\n' round server mode op result | tee "$WORK/lines"
for round in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    for side in $SERVERS; do
      run "$round" "$side" "$mode" | tee -a "$WORK/lines"
    done
  done
done
echo "# loadavg at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

# Summary: medians over the rounds, and the cost against the same server's "off".
echo
echo "summary (median over $ROUNDS rounds; rps [min-max]; cost = 1 - rps/rps_off; cpu_us per request, + against off)"
awk '
  NR > 1 && $4 != "" {
    key = $2 " " $3 " " $4
    for (i = 5; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    n[key]++; rps[key, n[key]] = v["rps"]; cpu[key, n[key]] = v["cpu_us"]; keys[key] = 1
  }
  function median(arr, key, count,   i, j, t, a) {
    for (i = 1; i <= count; i++) a[i] = arr[key, i] + 0
    for (i = 1; i <= count; i++) for (j = i + 1; j <= count; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    lo = a[1]; hi = a[count]
    return count % 2 ? a[(count + 1) / 2] : (a[count / 2] + a[count / 2 + 1]) / 2
  }
  END {
    printf "%-5s %-9s %-12s %10s %19s %8s %8s %9s\n", "server", "mode", "op", "rps", "[min-max]", "cost", "cpu_us", "+cpu_us"
    for (key in keys) { split(key, k, " "); m[key] = median(rps, key, n[key]); l[key] = lo; h[key] = hi; c[key] = median(cpu, key, n[key]) }
    for (key in keys) {
      split(key, k, " "); off = k[1] " off " k[3]
      cost = (off in m && m[off] > 0 && k[3] != "authenticate") ? sprintf("%.0f%%", 100 * (1 - m[key] / m[off])) : "-"
      extra = (off in c && k[3] != "authenticate") ? sprintf("%+d", c[key] - c[off]) : "-"
      printf "%-5s %-9s %-12s %10.0f %19s %8s %8d %9s\n", k[1], k[2], k[3], m[key], sprintf("[%.0f-%.0f]", l[key], h[key]), cost, c[key], extra
    }
  }' "$WORK/lines" | { read -r header; echo "$header"; sort -k3,3 -k1,1 -k2,2; }
