#!/usr/bin/env bash
# TLS cost, side by side: put throughput and latency against etcd 3.4 and keel, each plain
# (http://) and with client TLS (https://, --client-cert-auth, the client presenting a
# certificate), one server at a time. Certificates are made here with openssl.
#
# Usage: benches/tls-side-by-side.sh
# Environment (all optional):
#   TOTAL=20000   puts per load      CLIENTS=100  CONNS=10  VAL_SIZE=256  KEY_SPACE=100000
#   ETCD_BIN=etcd  KEEL_BIN=$CARGO_TARGET_DIR/release/keel  SKIP_BUILD=1  KEEP=1
#   PORT=24790 PEER_PORT=24800
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR=$PWD/$TARGET_DIR   # the loads run from $WORK
TOTAL=${TOTAL:-20000}
CLIENTS=${CLIENTS:-100}
CONNS=${CONNS:-10}
VAL_SIZE=${VAL_SIZE:-256}
KEY_SPACE=${KEY_SPACE:-100000}
PORT=${PORT:-24790}
PEER_PORT=${PEER_PORT:-24800}
ETCD_BIN=${ETCD_BIN:-etcd}
KEEL_BIN=${KEEL_BIN:-$TARGET_DIR/release/keel}
BENCH_BIN=$TARGET_DIR/release/keel-bench

WORK=$(mktemp -d /tmp/keel-tls-bench.XXXXXX)
SERVER_PID=""
log() { printf '==> %s\n' "$*" >&2; }
stop_server() {
  if [[ -n "$SERVER_PID" ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
cleanup() {
  stop_server
  if [[ "${KEEP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$ROOT" && cargo build --release -p keel-benches -p keel-server --bin keel --bin keel-bench) >&2
fi

# A CA, a server certificate for 127.0.0.1, a client certificate.
# shellcheck source=benches/bench-certs.sh
source "$ROOT/benches/bench-certs.sh"
make_bench_certs "$WORK"
cd "$WORK"

# run SIDE BIN SCHEME: starts the server, runs the put load, prints its RESULT line.
run() {
  local side=$1 bin=$2 scheme=$3
  local url="$scheme://127.0.0.1:$PORT" data="$WORK/$side-$scheme.data"
  local tls_server=() tls_client=()
  if [[ $scheme == https ]]; then
    tls_server=(--cert-file server.pem --key-file server.key --trusted-ca-file ca.pem --client-cert-auth)
    tls_client=(--cacert ca.pem --cert client.pem --key client.key)
  fi
  "$bin" --name bench --data-dir "$data" --listen-client-urls "$url" --advertise-client-urls "$url" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "bench=http://127.0.0.1:$PEER_PORT" "${tls_server[@]}" >"$data.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 60); do
    if "$BENCH_BIN" --endpoints "$url" "${tls_client[@]}" --total 1 --timeout-secs 2 \
        range probe --consistency s 2>/dev/null | grep -q 'errors=0'; then break; fi
    sleep 0.5
  done
  local result
  result=$("$BENCH_BIN" --endpoints "$url" "${tls_client[@]}" --conns "$CONNS" --clients "$CLIENTS" \
    --total "$TOTAL" put --key-size 8 --val-size "$VAL_SIZE" --key-space-size "$KEY_SPACE" \
    | grep '^RESULT' | tail -1)
  stop_server
  printf '%-5s %-5s %s\n' "$side" "$scheme" "$result"
}

printf 'puts: TOTAL=%s clients=%s conns=%s val-size=%s\n' "$TOTAL" "$CLIENTS" "$CONNS" "$VAL_SIZE"
for side in etcd keel; do
  bin=$ETCD_BIN; [[ $side == keel ]] && bin=$KEEL_BIN
  for scheme in http https; do run "$side" "$bin" "$scheme"; done
done
