#!/usr/bin/env bash
# Put throughput with auth off and on (simple tokens; a non-root user with readwrite on every
# key, so each put is permission-checked at arrival and at apply), keel and etcd 3.4 side by
# side, one single-member server at a time. Small by default; figures on a shared machine
# are noisy, so run it more than once.
#
# Usage: benches/auth-side-by-side.sh
# Environment (all optional): TOTAL=20000 puts per load, CLIENTS=16, CONNS=4,
#   PORT=24791 PEER_PORT=24801, ETCD_BIN=etcd, KEEL_BIN=$CARGO_TARGET_DIR/release/keel
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TOTAL=${TOTAL:-20000}
CLIENTS=${CLIENTS:-16}
CONNS=${CONNS:-4}
PORT=${PORT:-24791}
PEER_PORT=${PEER_PORT:-24801}
ETCD_BIN=${ETCD_BIN:-etcd}
KEEL_BIN=${KEEL_BIN:-$TARGET_DIR/release/keel}
BENCH=$TARGET_DIR/release/keel-bench
WORK=$(mktemp -d /tmp/keel-auth-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
EP=127.0.0.1:$PORT
E="etcdctl --endpoints=$EP"

load() { # extra flags...
  "$BENCH" put --endpoints "$EP" --conns "$CONNS" --clients "$CLIENTS" --total "$TOTAL" \
    --key-space-size 100000 "$@" 2>&1 | awk '/^RESULT/ { for (i = 1; i <= NF; i++) if ($i ~ /^(rps|p99_ms|errors)=/) printf "%s ", $i }'
}

printf '%-5s %-4s %s\n' server auth result
for impl in keel etcd; do
  bin=$KEEL_BIN; [ "$impl" = etcd ] && bin=$ETCD_BIN
  "$bin" --data-dir "$WORK/$impl" --listen-client-urls "http://$EP" --advertise-client-urls "http://$EP" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$PEER_PORT" >"$WORK/$impl.log" 2>&1 &
  pid=$!
  until $E endpoint health >/dev/null 2>&1; do sleep 0.2; done
  "$BENCH" put --endpoints "$EP" --conns "$CONNS" --clients "$CLIENTS" --total 3000 >/dev/null 2>&1 # warm-up
  printf '%-5s %-4s %s\n' "$impl" off "$(load)"
  $E user add root:rootpw >/dev/null
  $E user grant-role root root >/dev/null 2>&1 || true
  $E role add rw >/dev/null
  $E role grant-permission rw readwrite '' --from-key >/dev/null
  $E user add bench:benchpw >/dev/null
  $E user grant-role bench rw >/dev/null
  $E auth enable >/dev/null
  printf '%-5s %-4s %s\n' "$impl" on "$(load --user bench:benchpw)"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
