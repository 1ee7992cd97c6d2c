# bench/idle.sh — the idle-shards cell of bench/compare.sh, which sources this file and
# provides its settings and helpers (WORK, IROWS, log, die, alive, stop_group, cluster_ports
# of bench/pipelined.sh, ...). Not meant to run on its own: `SYSTEMS=idle bash bench/compare.sh`.
#
# A `shardkv up` cluster of 3 hosts x $IDLE_SHARDS shards x 3 replicas on 127.0.0.111-113
# (so every host holds a replica of every shard), left alone, twice: with `[raft] hibernate =
# false` (every group ticks and heartbeats, as before hibernation existed), then with the
# default. Once it has settled (every data shard's replica hibernates, per
# shardkv_raft_hibernating; without hibernation, after $IDLE_SETTLE seconds) each host's CPU
# time (utime + stime from /proc/PID/stat) is sampled over $IDLE_SECONDS seconds. The meta
# group stays awake (every host reads the map from it each second), as it does in use.

IDLE_SHARDS=${IDLE_SHARDS:-1000}
IDLE_SECONDS=${IDLE_SECONDS:-30}
IDLE_SETTLE=${IDLE_SETTLE:-120}

idle_asleep() {  # idle_asleep METRICS-ADDR: how many data shards' replicas there hibernate
  { curl -s "http://$1/metrics" 2>/dev/null || true; } |
    awk '/^shardkv_raft_hibernating\{/ && $1 !~ /shard="0"/ {n += $2} END {print n + 0}'
}

idle_cpu_ticks() {  # idle_cpu_ticks PID: utime + stime so far, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}

run_idle() {
  idle_cell false
  idle_cell true
}

idle_cell() {  # idle_cell true|false: one cluster, [raft] hibernate = $1
  local hibernate=$1 d=$WORK/idle-$1 base i pid hosts=() host asleep deadline t0 t1 started
  mkdir -p "$d"
  base=$(cluster_ports)
  {
    printf '[cluster]\nname = "compare-idle"\nshards = %d\nreplicas = 3\n\n' "$IDLE_SHARDS"
    printf '[raft]\nhibernate = %s\n\n[storage]\nmap_size = "8GiB"\n\n' "$hibernate"
    for i in 1 2 3; do
      printf '[[host]]\nid = %d\naddr = "127.0.0.11%d:%d"\ndata_dir = "data/host-%d"\n' \
        "$i" "$i" $((base + i)) "$i"
      printf 'metrics = "127.0.0.11%d:%d"\n\n' "$i" $((base + 10 + i))
    done
  } >"$d/cluster.toml"
  log "idle: 3 hosts x $IDLE_SHARDS shards x 3 replicas, hibernate = $hibernate; waiting for them to settle"
  started=$(date +%s)
  (cd "$d" && exec setsid "$WORK/shardkv" --config "$d/cluster.toml" up \
    </dev/null >"$d/up.out" 2>"$d/up.log") &
  pid=$!; PIDS+=("$pid"); PGIDS+=("$pid")
  for _ in $(seq 1 150); do
    mapfile -t hosts < <(ps -o pid= --ppid "$pid" | tr -d ' ')
    ((${#hosts[@]} == 3)) && break
    alive "$pid" || die "shardkv up died: $(tail -5 "$d/up.log")"; sleep 0.2
  done
  ((${#hosts[@]} == 3)) || die "shardkv up did not start 3 hosts"
  deadline=$((started + IDLE_SETTLE + 300))
  local settled=""
  while (($(date +%s) < deadline)); do
    alive "$pid" || die "shardkv up died: $(tail -5 "$d/up.log")"
    asleep=0
    for i in 1 2 3; do
      asleep=$((asleep + $(idle_asleep "127.0.0.11$i:$((base + 10 + i))")))
    done
    if ((asleep == 3 * IDLE_SHARDS)); then settled="hibernate = true: all $asleep replicas asleep"; break; fi
    if [[ $hibernate == false ]] && (($(date +%s) - started >= IDLE_SETTLE)); then
      settled="hibernate = false; measured after ${IDLE_SETTLE} s"; break
    fi
    sleep 1
  done
  [[ -n "$settled" ]] || die "the idle cluster did not settle (hibernating: $asleep of $((3 * IDLE_SHARDS)))"
  log "idle: $settled; $(($(date +%s) - started)) s after start; sampling CPU for ${IDLE_SECONDS} s"
  local before=()
  for host in "${hosts[@]}"; do before+=("$(idle_cpu_ticks "$host")"); done
  t0=$(date +%s.%N)
  sleep "$IDLE_SECONDS"
  t1=$(date +%s.%N)
  for i in 0 1 2; do
    host=${hosts[$i]}
    awk -v a="${before[$i]}" -v b="$(idle_cpu_ticks "$host")" -v hz="$(getconf CLK_TCK)" \
      -v t0="$t0" -v t1="$t1" -v n=$((i + 1)) -v shards="$IDLE_SHARDS" -v note="$settled" \
      'BEGIN {printf "host %d\t%d\t%.2f\t%s\n", n, shards, 100 * (b - a) / hz / (t1 - t0), note}' >>"$IROWS"
  done
  stop_group "$pid"
  wait "$pid" 2>/dev/null || true
}
