# bench/pipelined.sh — the pipelined Redis-protocol cells of bench/compare.sh, which sources
# this file and provides its settings and helpers (WORK, KEYS, PIPELINED_REQUESTS, PROWS, log,
# die, stop_pids, pick_ports, other_load, ...). Not meant to run on its own.

udp_port_free() { ! ss -Huln "sport = :$1" | grep -q .; }

cluster_ports() {  # a base port for a 3-host cluster: UDP base+1..3 (QUIC), TCP base+11..13 free
  local base i ok
  for _ in $(seq 1 50); do
    base=$((20000 + RANDOM % 12000)); ok=1
    for i in 1 2 3; do
      udp_port_free $((base + i)) && port_free $((base + 10 + i)) || { ok=0; break; }
    done
    ((ok)) && { echo "$base"; return; }
  done
  die "no free ports for a 3-host shardkv cluster"
}

pipelined_cell() {  # pipelined_cell TARGET REDIS-BENCHMARK-ARGS...: one SET and one GET row
  local target=$1; shift
  local out=$WORK/pipelined-$target.csv
  log "pipelined: $target: redis-benchmark -t set,get -c 50 -P 16 -n $PIPELINED_REQUESTS"
  redis-benchmark "$@" -t set,get -c 50 -P 16 -n "$PIPELINED_REQUESTS" -d "$VALUE_SIZE" \
    -r "$KEYS" --csv >"$out" 2>"$WORK/pipelined-$target.err" ||
    { cat "$WORK/pipelined-$target.err" >&2; die "redis-benchmark against $target failed"; }
  python3 - "$out" "$target" >>"$PROWS" <<'EOF'
import csv, sys
lines = open(sys.argv[1]).read().splitlines()
# --cluster prints the masters it found before the CSV header.
start = next(i for i, l in enumerate(lines) if l.startswith('"test"'))
for r in csv.DictReader(lines[start:]):
    print("%s\t%s\t%.0f\t%.3f" % (sys.argv[2], r["test"].lower(), float(r["rps"]),
          float(r["p50_latency_ms"])))
EOF
}

pipelined_redis() {  # pipelined_redis always|everysec: a plaintext node, stopped by its PID
  local mode=$1 port d pid
  port=$(pick_ports 1)
  d=$WORK/pipelined-redis-$mode; mkdir -p "$d"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$d" --logfile "$d/redis.log" \
    --appendonly yes --appendfsync "$mode" --save '' </dev/null >/dev/null 2>&1 &
  pid=$!; PIDS+=("$pid")
  for _ in $(seq 1 50); do
    redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG && break
    alive "$pid" || die "redis died: $(tail -5 "$d/redis.log")"; sleep 0.2
  done
  redis-cli -h 127.0.0.1 -p "$port" ping | grep -q PONG || die "redis never answered"
  pipelined_cell "redis-$mode" -h 127.0.0.1 -p "$port"
  stop_pids "$pid"
}

pipelined_shardkv() {  # a `shardkv up` cluster with plaintext RESP listeners on loopback
  local d=$WORK/pipelined-shardkv base i pid
  mkdir -p "$d"
  base=$(cluster_ports)
  {
    printf '[cluster]\nname = "compare-resp"\nshards = 3\nreplicas = 3\n\n'
    printf '[storage]\nmap_size = "4GiB"\n\n[resp]\ntls = false\n\n'
    for i in 1 2 3; do
      printf '[[host]]\nid = %d\naddr = "127.0.0.10%d:%d"\ndata_dir = "data/host-%d"\n' \
        "$i" "$i" $((base + i)) "$i"
      printf 'resp = "127.0.0.10%d:%d"\n\n' "$i" $((base + 10 + i))
    done
  } >"$d/cluster.toml"
  # own session/process group, so we can stop `up` and the hosts it spawned, and only those
  (cd "$d" && exec setsid "$WORK/shardkv" --config "$d/cluster.toml" up \
    </dev/null >"$d/up.out" 2>"$d/up.log") &
  pid=$!; PIDS+=("$pid"); PGIDS+=("$pid")
  local cli=(redis-cli -h 127.0.0.101 -p $((base + 11)))
  for _ in $(seq 1 150); do
    "${cli[@]}" cluster info 2>/dev/null | grep -q 'cluster_state:ok' &&
      "${cli[@]}" -c set compare-probe 1 2>/dev/null | grep -q OK && break
    alive "$pid" || die "shardkv up died: $(tail -5 "$d/up.log")"; sleep 0.2
  done
  "${cli[@]}" cluster info | grep -q 'cluster_state:ok' || die "shardkv's RESP cluster never became ok"
  # A fresh cluster hands each shard to its preferred host (one per host here) within a few
  # seconds, and redis-benchmark --cluster reads the masters once: start after the hand-overs,
  # once every host leads a shard and the masters stayed the same for 2 s (at most ~20 s).
  local masters prev="" same=0
  for _ in $(seq 1 100); do
    masters=$("${cli[@]}" cluster nodes 2>/dev/null | awk '$3 ~ /master/ && NF > 8 {print $1, $9}' | sort)
    if [[ -n "$masters" && "$masters" == "$prev" ]]; then same=$((same + 1)); else same=0; fi
    prev=$masters
    (($(wc -l <<<"$masters") == 3 && same >= 10)) && break
    alive "$pid" || die "shardkv up died: $(tail -5 "$d/up.log")"; sleep 0.2
  done
  log "shardkv (RESP) up: pid $pid, RESP ports $((base + 11))-$((base + 13)); $(wc -l <<<"$masters") hosts lead shards"
  pipelined_cell shardkv-resp --cluster -h 127.0.0.101 -p $((base + 11))
  stop_group "$pid"
  wait "$pid" 2>/dev/null || true
}

run_pipelined() {
  local busy
  busy=$(other_load)
  [[ -z "$busy" ]] || log "pipelined: $busy"
  pipelined_redis always
  pipelined_redis everysec
  pipelined_shardkv
}

