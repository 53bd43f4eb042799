# The 3-member variant of scale-side-by-side.sh (MEMBERS=3), sourced by it, not run: a wiped
# member rejoins a loaded cluster while it takes random puts.
#
# Per side (etcd, then keel): start a 3-member cluster on fresh data dirs; bulk-load KEYS keys in
# order; PUTS random puts (the baseline); then, while random puts run in chunks of CHUNK_PUTS,
# stop one follower (SIGTERM), `member remove` it, wipe its data dir, `member add` it back under
# the same name and peer URL, and start it with --initial-cluster-state existing. The rejoined
# member has caught up once its revision reaches the revision the others had one poll
# (POLL_S) earlier. The loads go to the two members that stay.
#
# Expects ROOT, WORK, KEYS, PUTS, VAL_SIZE, CONNS, CLIENTS, ETCD_QUOTA_BYTES and bench-lib.sh.

CHUNK_PUTS=${CHUNK_PUTS:-5000}
POLL_S=${POLL_S:-0.2}
CATCHUP_TIMEOUT=${CATCHUP_TIMEOUT:-600}
ETCD3_PORT=${ETCD3_PORT:-24800}
KEEL3_PORT=${KEEL3_PORT:-24820}
# Member i (1-3) serves clients on PORT+i and peers on PORT+100+i.

# launch3 SIDE BASE I STATE CLUSTER: starts member mI on its data dir as it is; sets LAST_PID and
# adds it to PIDS.
launch3() {
  local side=$1 base=$2 i=$3 state=$4 cluster=$5 extra=()
  local port=$(($2 + $3)) peer=$(($2 + 100 + $3))
  [[ $side == etcd ]] && extra=(--quota-backend-bytes "$ETCD_QUOTA_BYTES")
  "$(side_bin "$side")" --name "m$i" --data-dir "$WORK/$side.m$i.data" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$cluster" --initial-cluster-state "$state" \
    --initial-cluster-token "keel-bench-$side" \
    --heartbeat-interval "$HEARTBEAT_MS" --election-timeout "$ELECTION_MS" "${extra[@]}" \
    >>"$WORK/$side.m$i.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# event OUT WHAT: appends "Unix-seconds WHAT" to OUT.events (kept with KEEP=1, to set beside
# the members' logs and the chunks' timelines).
event() { echo "$(date +%s.%N) $2" >>"$1.events"; }

ctl() { ETCDCTL_API=3 timeout 10 etcdctl --dial-timeout 2s --command-timeout 8s "$@"; }

# status_field EP KEY: a number from `endpoint status -w json` (revision, leader, member_id).
status_field() {
  ctl --endpoints "$1" endpoint status -w json 2>/dev/null |
    grep -o "\"$2\":[0-9]*" | head -1 | cut -d: -f2
}

# caught_up_wait REJOINED_EP OTHER_EPS: polls (every POLL_S) until the rejoined member's
# revision reaches what the others had one poll earlier; prints the seconds it took, or "failed".
# `keel-bench catch-up` asks Maintenance.Status over one connection per member: three `etcdctl
# endpoint status` processes per poll cost ~13 ms of CPU each, a fifth of a core at five polls
# a second, taken from the servers being measured.
caught_up_wait() {
  local rejoined=$1 others=$2 poll_ms
  poll_ms=$(awk -v s="$POLL_S" 'BEGIN { printf "%d", s * 1000 }')
  "$BENCH_BIN" --endpoints "$others" catch-up --rejoined "$rejoined" --poll-ms "$poll_ms" \
    --give-up-secs "$CATCHUP_TIMEOUT" 2>>"$WORK/catchup.err" || echo failed
}

# during_loop OUT EPS: random puts in chunks until OUT.done exists (run in the background).
during_loop() {
  local out=$1 eps=$2 i=0
  while [[ ! -e $out.done ]]; do
    i=$((i + 1))
    run_load "$out.$i" --endpoints "$eps" --conns "$CONNS" --clients "$CLIENTS" \
      --timeline "$out.$i.timeline" --total "$CHUNK_PUTS" put --key-space-size "$KEYS" --key-size 8 --val-size "$VAL_SIZE"
  done
}

# window_p99 OUT FROM TO: the p99 latency (ms) of the puts of every chunk sent between the
# events FROM and TO (patterns matched in OUT's events file), or "-".
window_p99() {
  local out=$1 from to
  from=$(awk -v p="$2" '$0 ~ p { print $1; exit }' "${out%.during}.events" 2>/dev/null)
  to=$(awk -v p="$3" '$0 ~ p { print $1; exit }' "${out%.during}.events" 2>/dev/null)
  if [[ -z $from || -z $to ]]; then echo -; return 0; fi
  cat "$out".[0-9]*.timeline 2>/dev/null | awk -v a="$from" -v b="$to" '$1 >= a && $1 <= b { print $2 }' |
    sort -g | awk '{ v[NR] = $1 } END { if (NR) { i = int(NR * 0.99); if (i < 1) i = 1; print v[i] } else print "-" }'
}

# summarize_during OUT: one RESULT line over the chunks: puts, rps (puts over the chunks' summed
# time), the chunks' median and worst p99, errors; and the p99 over all puts sent while the
# member was away and caught up (`p99_rejoin_ms`: its stop to caught-up) and while it was
# brought back (`p99_xfer_ms`: its `member add` to caught-up: the leader's snapshot for it, the
# transfer, the install and the log's tail).
summarize_during() {
  local out=$1 f p99s med rejoin xfer
  rejoin=$(window_p99 "$out" "stopping m" "caught up")
  xfer=$(window_p99 "$out" "re-added m" "caught up")
  for f in "$out".[0-9]*.result; do
    [[ -e $f ]] || continue
    echo "$(field "$f" total) $(field "$f" rps) $(field "$f" p99_ms) $(field "$f" errors)"
  done | awk 'NF == 4 && $2 > 0' >"$out.chunks"
  if [[ ! -s $out.chunks ]]; then echo "RESULT failed" >"$out.result"; return 0; fi
  p99s=$(awk '{ print $3 }' "$out.chunks" | sort -g | tr '\n' ' ')
  med=$(echo "$p99s" | awk '{ print (NF % 2) ? $((NF + 1) / 2) : ($(NF / 2) + $(NF / 2 + 1)) / 2 }')
  awk -v med="$med" -v max="${p99s%% }" -v rejoin="$rejoin" -v xfer="$xfer" '
    { n++; puts += $1; secs += $1 / $2; errs += $4 }
    END {
      sub(/.* /, "", max)
      printf "RESULT op=put chunks=%d total=%d rps=%.1f p99_ms=%.3f p99_max_ms=%.3f", n, puts,
        puts / secs, med, max
      printf " p99_rejoin_ms=%s p99_xfer_ms=%s errors=%d\n", rejoin, xfer, errs
    }' "$out.chunks" >"$out.result"
}

# rejoin SIDE BASE VICTIM CLUSTER_OTHERS OTHER_EPS OUT: removes, wipes and re-adds mVICTIM while
# the during loop runs; writes OUT.catchup_s.
rejoin() {
  local side=$1 base=$2 v=$3 others=$4 eps=$5 out=$6 id peer
  peer="http://127.0.0.1:$((base + 100 + v))"
  sleep 1 # the load runs before the member goes
  log "$side: stopping m$v, removing it, wiping its data dir"
  event "$out" "stopping m$v"
  stop_pid "${VICTIM_PID}"
  event "$out" "stopped m$v"
  id=$(ctl --endpoints "$eps" member list 2>/dev/null | awk -F', ' -v n="m$v" '$3 == n { print $1 }')
  if [[ -z $id ]] || ! ctl --endpoints "$eps" member remove "$id" >/dev/null; then
    log "$side: member remove of m$v failed"; echo failed >"$out.catchup_s"; return 0
  fi
  rm -rf "$WORK/$side.m$v.data" && mkdir -p "$WORK/$side.m$v.data"
  # etcd refuses an add ("unhealthy cluster", its strict reconfiguration check) until every
  # voting member has been connected for 5 s: a short run reaches this sooner; retry for 10 s.
  local tries=0
  until ctl --endpoints "$eps" member add "m$v" --peer-urls="$peer" >"$out.add" 2>&1; do
    if ((++tries > 20)) || ! grep -q "unhealthy cluster" "$out.add"; then
      log "$side: member add failed: $(tail -1 "$out.add")"; echo failed >"$out.catchup_s"; return 0
    fi
    sleep 0.5
  done
  log "$side: m$v re-added; starting it with --initial-cluster-state existing"
  event "$out" "re-added m$v"
  launch3 "$side" "$base" "$v" existing "$others,m$v=$peer"
  caught_up_wait "127.0.0.1:$((base + v))" "$eps" >"$out.catchup_s"
  event "$out" "m$v caught up"
  log "$side: m$v caught up after $(cat "$out.catchup_s") s"
}

run_side3() {
  local side=$1 base=$2 i cluster="" all="" pids=() out="$WORK/$1"
  for i in 1 2 3; do cluster+="${cluster:+,}m$i=http://127.0.0.1:$((base + 100 + i))"; done
  for i in 1 2 3; do
    if port_busy $((base + i)) || port_busy $((base + 100 + i)); then
      log "port $((base + i)) or $((base + 100 + i)) is in use; set ${side^^}3_PORT"; return 0
    fi
    rm -rf "$WORK/$side.m$i.data" && mkdir -p "$WORK/$side.m$i.data"
    launch3 "$side" "$base" "$i" new "$cluster"
    pids+=("$LAST_PID"); all+="${all:+,}127.0.0.1:$((base + i))"
  done
  if ! wait_ready "$all" "${pids[@]}"; then stop_all; return 0; fi
  # The victim is a follower (m3 unless m3 leads); the loads go to the two others.
  local leader v=3 eps="" others=""
  leader=$(status_field "127.0.0.1:$((base + 1))" leader)
  [[ "$(status_field "127.0.0.1:$((base + 3))" member_id)" == "$leader" ]] && v=2
  VICTIM_PID=${pids[$((v - 1))]}
  for i in 1 2 3; do
    ((i == v)) && continue
    eps+="${eps:+,}127.0.0.1:$((base + i))"
    others+="${others:+,}m$i=http://127.0.0.1:$((base + 100 + i))"
  done
  local common=(--endpoints "$eps" --conns "$CONNS" --clients "$CLIENTS")
  log "$side: bulk load of $KEYS keys in order (3 members)"
  run_load "$out.bulk" "${common[@]}" --total "$KEYS" put --sequential-keys \
    --key-space-size "$KEYS" --key-size 8 --val-size "$VAL_SIZE"
  log "$side: $PUTS random puts (baseline)"
  run_load "$out.put" "${common[@]}" --total "$PUTS" put --key-space-size "$KEYS" --key-size 8 \
    --val-size "$VAL_SIZE"
  log "$side: random puts in chunks of $CHUNK_PUTS while m$v is wiped and rejoins"
  during_loop "$out.during" "$eps" &
  local loop=$!
  PIDS+=("$loop")
  rejoin "$side" "$base" "$v" "$others" "$eps" "$out"
  touch "$out.during.done"
  wait "$loop" 2>/dev/null || true
  summarize_during "$out.during"
  for i in 1 2 3; do
    du -sb "$WORK/$side.m$i.data" | awk '{ printf "%.1f ", $1 / 1048576 }'
  done >"$out.disk_mib"
  stop_all
}

table3() {
  local load m side
  printf '\n%-10s %-12s %12s %12s %8s\n' load metric etcd keel keel/etcd
  printf '%s\n' "--------------------------------------------------------------"
  for load in bulk put during; do
    local ms=(rps p50_ms p99_ms p999_ms errors)
    [[ $load == during ]] && ms=(rps p99_ms p99_max_ms p99_rejoin_ms p99_xfer_ms errors chunks)
    for m in "${ms[@]}"; do
      local e k
      e=$(metric etcd "$load" "$m"); k=$(metric keel "$load" "$m")
      printf '%-10s %-12s %12s %12s %8s\n' "$load" "$m" "$e" "$k" "$(ratio "$e" "$k")"
    done
  done
  local e k
  e=$(value etcd catchup_s); k=$(value keel catchup_s)
  printf '%-10s %-12s %12s %12s %8s\n' rejoin catchup_s "$e" "$k" "$(ratio "$e" "$k")"
  printf '\n3 members. KEYS=%s loaded in order, PUTS=%s random puts (put), then random puts in\n' \
    "$KEYS" "$PUTS"
  printf 'chunks of %s while a follower is stopped, removed, wiped, re-added and restarted\n' \
    "$CHUNK_PUTS"
  printf '(during: rps over the chunks; p99_ms their median p99, p99_max_ms the worst chunk;\n'
  printf 'p99_rejoin_ms over every put sent from the stop to the caught-up poll, p99_xfer_ms from\n'
  printf 'the member add to it).\n'
  printf 'catchup_s: from the restart of the wiped member until its revision reaches the others'"'"'.\n'
  printf 'data dirs (MiB) after the rejoin: etcd %s, keel %s\n\n' "$(value etcd disk_mib)" \
    "$(value keel disk_mib)"
  for side in etcd keel; do
    for load in bulk put during; do
      echo "RESULT side=$side members=3 measurement=$load $(cut -d' ' -f2- "$WORK/$side.$load.result")"
    done
    echo "RESULT side=$side members=3 measurement=catchup_s value=$(value "$side" catchup_s)"
  done
  printf 'Full reports: %s (kept only with KEEP=1)\n' "$WORK"
}
