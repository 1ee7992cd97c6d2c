#!/usr/bin/env bash
# bench/compare.sh — shardkv vs etcd vs Redis, same workload, same machine, one run.
#
# Workload (every system): 100-byte values, 10,000 distinct keys chosen uniformly at random,
# closed-loop clients (each sends one request and waits for its answer), 1 and 64 clients;
# first puts, then gets. Gets are linearizable for etcd (default Range, i.e. not
# `serializable`) and shardkv (its default); Redis reads its single node. Each cell runs for
# $DURATION seconds (default 15).
#
#   etcd 3.4 (Debian etcd-server): 3 members on 127.0.0.1 (distinct ports), TLS on both the
#     client and the peer URLs with client-certificate auth (CA and certs made here with
#     openssl), default fsync, data dirs in a temp dir. Load: bench/etcd_load.py, a small
#     grpcio (asyncio) generator that speaks etcd's v3 gRPC API with hand-encoded
#     Put/Range messages; one TLS connection per client, connections round-robin over the
#     three members, clients spread over `nproc` processes. Debian packages no etcd
#     `benchmark` tool and there is no Go toolchain here to build one; `etcdctl check perf`
#     measures only puts with fixed client counts.
#   Redis 7 (Debian redis-server): one node on 127.0.0.1, TLS with client-cert auth,
#     appendonly yes + appendfsync always, then a fresh node with appendfsync everysec; RDB
#     snapshots off. Load: redis-benchmark -t set / -t get, -d 100, -r 10000, --csv; its
#     request count is sized from a short probe run so each cell lasts about $DURATION s.
#   shardkv: `shardkv bench --local 3x3 --connections per-client` (3 hosts x 3 shards x 3
#     replicas on 127.0.0.101-103, QUIC + mTLS, fsync) for --mix put=100 and then --mix
#     put=0,get=100 (preloads all keys). Every client has its own QUIC endpoint and its own
#     connection to each host, as independent application processes do (etcd's and Redis'
#     clients here have one connection each, too). shardkv-shared: the same with
#     `--connections shared`, one client whose connections all workers share (the tasks of
#     one process), for comparison.
#     The binary is copied into the temp dir first, so a rebuild during the run can't change it.
#   pipelined (the Redis protocol, a second table): redis-benchmark -t set,get -c 50 -P 16
#     -n $PIPELINED_REQUESTS (default 200000) -d 100 -r 10000 --csv against a plaintext Redis
#     node on 127.0.0.1 (appendonly yes + appendfsync always, then a fresh node with everysec;
#     RDB off) and, with --cluster, against the RESP listeners of a 3 hosts x 3 shards x 3
#     replicas shardkv cluster started with `shardkv up` on 127.0.0.101-103 (`[resp] tls =
#     false`, loopback only; Raft between the hosts still over QUIC + mTLS, fsync). Every SET
#     is a Raft write acknowledged after a majority's fsync; every GET a linearizable read.
#     Plaintext RESP on both sides (so these figures do not compare with the TLS table above);
#     50 connections, 16 commands in flight on each. Redis is still a single node without
#     replication: the ceiling, not a peer.
#
# What makes the comparison unfair (read the numbers with this in mind):
#   * Everything shares 2 cores, so the load generator competes with the servers for CPU, and
#     the generators differ. shardkv's is Rust inside `shardkv bench` (its CPU is counted with
#     its cluster and is not reported on its own). etcd's is Python + grpcio: measured here at
#     ~160 us of CPU per request, i.e. ~0.3 cores with 1 client and ~0.7-0.8 cores with 64
#     clients, while the 3 etcd members got ~1.1-1.2 cores. The machine is saturated at 64
#     clients, so this generator costs etcd throughput. Expect etcd's 64-client figures to be
#     low next to a Go or Rust generator (an estimate, not measured: perhaps by tens of %).
#     (uvloop, one process instead of two, and blocking calls on threads were tried: none was
#     cheaper.) Debian packages no etcd `benchmark` tool, there is no Go toolchain here, and
#     `etcdctl check perf` only offers fixed put rates. redis-benchmark (C) costs ~0.1-1 core.
#     The "gen cores" and "server cores" columns show these costs for every cell.
#   * Latencies are measured by three different tools (all closed loop, per request;
#     redis-benchmark rounds to its histogram's buckets).
#   * Redis is a single node: no replication, no consensus. It is the speed ceiling, not a peer.
#   * etcd keeps all keys in one Raft group (one leader). shardkv has 3 Raft groups whose
#     leaders can sit on different hosts. Both serve linearizable reads by quorum ReadIndex
#     (etcd's default; raft-rs's default ReadOnlyOption::Safe), not by leases.
#   * etcd's followers forward puts to the leader. Clients here connect to all members round
#     robin, as etcd's own benchmark tool does. etcd also keeps every revision (MVCC).
#   * etcd and Redis use TCP + TLS with client certs. shardkv uses QUIC (TLS 1.3) + mTLS.
#   * shardkv starts a fresh cluster for the put run and for the get run (its own tool does).
#     etcd and Redis keep one cluster for both, and the gets follow a full preload.
#   * The peers run back to back, etcd then shardkv, and Redis after them, so that the two
#     systems compared get the closest minutes: this VM's speed changes by up to a third
#     between runs minutes apart (docs/bench.md, 2026-12-03 evening). Compare ratios within
#     one run, and keep several.
#   * All data dirs are on the same disk. Any other load on the machine (e.g. a cargo build)
#     skews every figure. Before each cell the script samples CPU use for 1 s and notes it in
#     the row when it is over 15%.
#
# Usage: bench/compare.sh    (needs root for apt-get unless the packages are already installed)
# Env:   DURATION=15  CLIENTS="1 64"
#        SYSTEMS="etcd shardkv shardkv-shared redis-always redis-everysec pipelined idle"
#        IDLE_SHARDS=1000  IDLE_SECONDS=30
#        PIPELINED_REQUESTS=200000
#        SHARDKV=target/release/shardkv  BENCH_VENV=~/.cache/shardkv-bench/venv  KEEP_TMP=1
# Output: the table on stdout and bench/results-<date>.md (Markdown). With KEEP_TMP=1 the temp dir
# (raw JSON/CSV per cell, server logs) is kept. Takes ~10 minutes with DURATION=15.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-"1 64"}
SYSTEMS=${SYSTEMS:-"etcd shardkv shardkv-shared redis-always redis-everysec pipelined idle"}
PIPELINED_REQUESTS=${PIPELINED_REQUESTS:-200000}
SHARDKV=${SHARDKV:-$ROOT/target/release/shardkv}
BENCH_VENV=${BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/shardkv-bench/venv}
VALUE_SIZE=100
KEYS=10000
NPROC=$(nproc)

T_START=$(date +%s)
STAMP=$(date +%Y-%m-%d)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shardkv-compare.XXXXXX")
ROWS=$WORK/rows.tsv    # system clients op ops_s p50_ms p99_ms errors gen_cores server_cores note
: >"$ROWS"
PROWS=$WORK/pipelined.tsv  # target op ops_s p50_ms (redis-benchmark -c 50 -P 16)
: >"$PROWS"
IROWS=$WORK/idle.tsv  # host shards cpu_percent note (idle shards, bench/idle.sh)
: >"$IROWS"

# ---------------------------------------------------------------- process bookkeeping
PIDS=()      # every long-running process we started (servers, benches)
PGIDS=()     # process groups we created with setsid (shardkv bench + its hosts)

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

alive() {  # running (a zombie child that we have not reaped yet counts as gone)
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n "$st" && "$st" != Z ]]
}

stop_pids() {  # stop_pids PID...: SIGTERM to all, wait up to 15 s, then SIGKILL; reap our children
  local pid i left
  for pid in "$@"; do alive "$pid" && kill -TERM "$pid" 2>/dev/null || true; done
  for i in $(seq 1 150); do
    left=0
    for pid in "$@"; do alive "$pid" && left=1; done
    ((left)) || break
    sleep 0.1
  done
  for pid in "$@"; do
    if alive "$pid"; then log "pid $pid ignored SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
  done
}

stop_group() {  # stop_group PGID: the group we made with setsid (no one else is in it)
  local pg=$1 i
  kill -0 -- "-$pg" 2>/dev/null || return 0
  kill -TERM -- "-$pg" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 -- "-$pg" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$pg" 2>/dev/null || true
}

cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${PGIDS[@]+"${PGIDS[@]}"}"; do stop_group "$p"; done
  stop_pids "${PIDS[@]+"${PIDS[@]}"}"
  if [[ -n "${KEEP_TMP:-}" ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- prerequisites
need_pkgs=()
command -v etcd >/dev/null || need_pkgs+=(etcd-server)
command -v etcdctl >/dev/null || need_pkgs+=(etcd-client)
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
command -v redis-benchmark >/dev/null || need_pkgs+=(redis-tools)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v python3 >/dev/null || need_pkgs+=(python3 python3-venv)
if ((${#need_pkgs[@]})); then
  log "installing ${need_pkgs[*]}"
  [[ $(id -u) == 0 ]] || die "need root to apt-get install ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${need_pkgs[@]}" >"$WORK/apt.log" 2>&1 ||
    { apt-get update -q >>"$WORK/apt.log" 2>&1 && apt-get install -y -q "${need_pkgs[@]}" >>"$WORK/apt.log" 2>&1; } ||
    { cat "$WORK/apt.log" >&2; die "apt-get install failed"; }
fi
# Debian's postinst may have started system services on machines with systemd; we never use
# them (our ports differ) and we don't stop them: they are not ours.

if [[ " $SYSTEMS " == *" etcd "* ]]; then
  if ! "$BENCH_VENV/bin/python" -c 'import grpc' 2>/dev/null; then
    log "creating Python venv with grpcio in $BENCH_VENV"
    python3 -m venv "$BENCH_VENV"
    "$BENCH_VENV/bin/pip" install -q grpcio >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log" >&2; die "pip install grpcio failed"; }
  fi
fi
if [[ " $SYSTEMS " =~ \ (shardkv|shardkv-shared|pipelined|idle)\  ]]; then
  if [[ ! -x "$SHARDKV" && "$SHARDKV" == "$ROOT/target/release/shardkv" ]]; then
    log "building shardkv (cargo build --release; a few minutes on a fresh clone)"
    (cd "$ROOT" && cargo build --release -q) || die "cargo build --release failed"
  fi
  [[ -x "$SHARDKV" ]] || die "no shardkv binary at $SHARDKV (cargo build --release)"
  cp "$SHARDKV" "$WORK/shardkv"
fi

port_free() { ! ss -Htln "sport = :$1" | grep -q .; }
pick_ports() {  # pick_ports COUNT: COUNT consecutive free TCP ports from a random base
  local n=$1 base p ok
  for _ in $(seq 1 50); do
    base=$((20000 + RANDOM % 20000)); ok=1
    for ((p = base; p < base + n; p++)); do port_free "$p" || { ok=0; break; }; done
    ((ok)) && { echo "$base"; return; }
  done
  die "no free ports"
}

# ---------------------------------------------------------------- certificates (openssl)
CERTS=$WORK/certs
mkdir -p "$CERTS"
(
  cd "$CERTS"
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
  openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=compare-bench-ca" -out ca.crt 2>/dev/null
  mk() {  # mk NAME CN EXT
    openssl ecparam -name prime256v1 -genkey -noout -out "$1.key.ec" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in "$1.key.ec" -out "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr" 2>/dev/null
    printf '%b' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -sha256 \
      -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  }
  # server + peer cert (peers authenticate each other with it, so both EKUs)
  mk server localhost "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
  mk client bench-client "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n"
)

# ---------------------------------------------------------------- results helpers
ticks() {  # ticks PID...: user+system clock ticks used so far
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat"))); done
  echo "$t"
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
other_load() {  # warn when something else (e.g. a cargo build) is using the CPU before a cell
  local a b busy
  a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
  # fields: cpu user nice system idle iowait irq softirq steal ...
  busy=$(( (b[1]+b[2]+b[3]+b[6]+b[7]+b[8]) - (a[1]+a[2]+a[3]+a[6]+a[7]+a[8]) ))
  local total=$(( busy + (b[4]+b[5]) - (a[4]+a[5]) ))
  if ((total > 0 && busy * 100 / total > 15)); then
    log "WARNING: the machine was $((busy * 100 / total))% busy just before this cell (our servers idle): figures will be skewed"
    echo "busy $((busy * 100 / total))% before"
  fi
  return 0
}

note_last() {  # note_last N TEXT: add TEXT to the note of the last N rows
  [[ -n "$2" ]] || return 0
  python3 - "$ROWS" "$1" "$2" <<'EOF'
import sys
path, n, text = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
for r in rows[-n:]:
    r[-1] = (r[-1] + "; " if r[-1] else "") + text
open(path, "w").write("".join("\t".join(r) + "\n" for r in rows))
EOF
}

# ---------------------------------------------------------------- etcd
run_etcd() {
  local base i names cluster eps d pid
  base=$(pick_ports 6)
  names=(m1 m2 m3); cluster=""; eps=""
  for i in 0 1 2; do
    cluster+="${cluster:+,}${names[i]}=https://127.0.0.1:$((base + 3 + i))"
    eps+="${eps:+,}127.0.0.1:$((base + i))"
  done
  for i in 0 1 2; do
    d=$WORK/etcd/${names[i]}; mkdir -p "$d"
    etcd --name "${names[i]}" --data-dir "$d/data" \
      --listen-client-urls "https://127.0.0.1:$((base + i))" \
      --advertise-client-urls "https://127.0.0.1:$((base + i))" \
      --listen-peer-urls "https://127.0.0.1:$((base + 3 + i))" \
      --initial-advertise-peer-urls "https://127.0.0.1:$((base + 3 + i))" \
      --initial-cluster "$cluster" --initial-cluster-token "compare-$$" --initial-cluster-state new \
      --cert-file "$CERTS/server.crt" --key-file "$CERTS/server.key" \
      --trusted-ca-file "$CERTS/ca.crt" --client-cert-auth \
      --peer-cert-file "$CERTS/server.crt" --peer-key-file "$CERTS/server.key" \
      --peer-trusted-ca-file "$CERTS/ca.crt" --peer-client-cert-auth \
      --logger zap --log-outputs "$d/etcd.log" </dev/null >"$d/stdout.log" 2>&1 &
    pid=$!; PIDS+=("$pid"); ETCD_PIDS+=("$pid")
  done
  log "etcd members started: pids ${ETCD_PIDS[*]}, client ports $base-$((base + 2))"
  local ctl=(etcdctl --endpoints "$(sed 's#\([^,]*\)#https://\1#g' <<<"$eps")"
    --cacert "$CERTS/ca.crt" --cert "$CERTS/client.crt" --key "$CERTS/client.key")
  for i in $(seq 1 60); do
    ETCDCTL_API=3 "${ctl[@]}" endpoint health >/dev/null 2>&1 && break
    for pid in "${ETCD_PIDS[@]}"; do alive "$pid" || die "etcd pid $pid died; see logs (KEEP_TMP=1)"; done
    sleep 0.5
  done
  ETCDCTL_API=3 "${ctl[@]}" endpoint health >/dev/null 2>&1 || die "etcd never became healthy"
  ETCDCTL_API=3 "${ctl[@]}" endpoint status -w table >&2 || true

  local py=("$BENCH_VENV/bin/python" "$HERE/etcd_load.py" --endpoints "$eps"
    --cacert "$CERTS/ca.crt" --cert "$CERTS/client.crt" --key "$CERTS/client.key"
    --value-size "$VALUE_SIZE" --keys "$KEYS" --procs "$NPROC" --duration "$DURATION")
  local op c out busy
  for op in put get; do
    if [[ $op == get ]]; then
      log "etcd: preloading $KEYS keys"
      "${py[@]}" --op preload --clients 64 >"$WORK/etcd-preload.json"
    fi
    for c in $CLIENTS; do
      busy=$(other_load)
      log "etcd: $op x $c clients, ${DURATION}s"
      out=$WORK/etcd-$op-$c.json
      "${py[@]}" --op "$op" --clients "$c" --server-pids "$(IFS=,; echo "${ETCD_PIDS[*]}")" >"$out"
      python3 - "$out" "$op" "$c" >>"$ROWS" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("etcd\t%s\t%s\t%.0f\t%.3f\t%.3f\t%d\t%.2f\t%.2f\t%s" % (sys.argv[3], sys.argv[2], r["ops_per_s"],
      r["p50_us"] / 1000, r["p99_us"] / 1000, r["errors"], r["gen_cpu_cores"], r["server_cpu_cores"],
      ("errors: " + "; ".join(r["error_samples"])) if r["errors"] else ""))
EOF
      note_last 1 "$busy"
    done
  done
  ETCDCTL_API=3 "${ctl[@]}" endpoint status -w table >&2 || true
  stop_pids "${ETCD_PIDS[@]}"
}

# ---------------------------------------------------------------- redis
run_redis() {  # run_redis always|everysec
  local mode=$1 port d pid
  port=$(pick_ports 1)
  d=$WORK/redis-$mode; mkdir -p "$d"
  cat >"$d/redis.conf" <<EOF
bind 127.0.0.1
protected-mode yes
port 0
tls-port $port
tls-cert-file $CERTS/server.crt
tls-key-file $CERTS/server.key
tls-ca-cert-file $CERTS/ca.crt
tls-auth-clients yes
daemonize no
dir $d
logfile $d/redis.log
save ""
appendonly yes
appendfsync $mode
EOF
  redis-server "$d/redis.conf" </dev/null >/dev/null 2>&1 &
  pid=$!; PIDS+=("$pid")
  local cli=(redis-cli -h 127.0.0.1 -p "$port" --tls --cacert "$CERTS/ca.crt"
    --cert "$CERTS/client.crt" --key "$CERTS/client.key")
  for _ in $(seq 1 50); do "${cli[@]}" ping 2>/dev/null | grep -q PONG && break; alive "$pid" || die "redis died: $(tail -5 "$d/redis.log")"; sleep 0.2; done
  "${cli[@]}" ping | grep -q PONG || die "redis never answered"
  log "redis ($mode) started: pid $pid, TLS port $port"
  local rb=(redis-benchmark -h 127.0.0.1 -p "$port" --tls --cacert "$CERTS/ca.crt"
    --cert "$CERTS/client.crt" --key "$CERTS/client.key" -d "$VALUE_SIZE" -r "$KEYS" --csv)
  local op c probe rps n out t t0 t1 busy
  for op in set get; do
    for c in $CLIENTS; do
      busy=$(other_load)
      # probe ~1 s worth to size the real run to ~$DURATION s
      probe=$((c == 1 ? 2000 : 20000))
      rps=$("${rb[@]}" -t "$op" -c "$c" -n "$probe" | awk -F'"' 'NR==2{print int($4)}')
      n=$((rps * DURATION)); ((n < probe)) && n=$probe
      log "redis-$mode: $op x $c clients, $n requests (probe: $rps/s)"
      out=$WORK/redis-$mode-$op-$c.csv
      t=$WORK/redis-$mode-$op-$c.time
      t0=$(ticks "$pid")
      /usr/bin/time -f '%U %S %e' -o "$t" "${rb[@]}" -t "$op" -c "$c" -n "$n" >"$out"
      t1=$(ticks "$pid")
      python3 - "$out" "$t" "$mode" "$op" "$c" "$((t1 - t0))" "$(getconf CLK_TCK)" >>"$ROWS" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
r = rows[0]
u, s, e = map(float, open(sys.argv[2]).read().split()[-3:])
op = {"set": "put", "get": "get"}[sys.argv[4]]
srv = int(sys.argv[6]) / int(sys.argv[7])
print("redis-%s\t%s\t%s\t%.0f\t%.3f\t%.3f\t0\t%.2f\t%.2f\t" % (sys.argv[3], sys.argv[5], op, float(r["rps"]),
      float(r["p50_latency_ms"]), float(r["p99_latency_ms"]), (u + s) / e if e else 0, srv / e if e else 0))
EOF
      note_last 1 "$busy"
    done
  done
  log "redis ($mode) dbsize: $("${cli[@]}" dbsize)"
  stop_pids "$pid"
}

# ---------------------------------------------------------------- shardkv
run_shardkv() {  # run_shardkv per-client|shared: how the bench's clients connect
  local conns=$1 name mix op out pid clist busy n
  name=shardkv; [[ $conns == shared ]] && name=shardkv-shared
  clist=$(tr ' ' ',' <<<"$CLIENTS")
  for op in put get; do
    if [[ $op == put ]]; then mix=put=100; else mix=put=0,get=100; fi
    busy=$(other_load)
    log "$name: --local 3x3 --connections $conns $op x clients $clist, ${DURATION}s each"
    out=$WORK/$name-$op.json
    # own session/process group, so we can stop it and the hosts it spawned, and only those
    (cd "$WORK" && exec setsid /usr/bin/time -f '%U %S %e' -o "$WORK/$name-$op.time" \
      "$WORK/shardkv" bench --local 3x3 --connections "$conns" --clients "$clist" --duration "${DURATION}s" \
      --mix "$mix" --value-size "$VALUE_SIZE" --keys "$KEYS" --json \
      </dev/null >"$out" 2>"$WORK/$name-$op.log") &
    pid=$!; PIDS+=("$pid"); PGIDS+=("$pid")
    wait "$pid" || { tail -20 "$WORK/$name-$op.log" >&2; die "shardkv bench failed"; }
    python3 - "$out" "$op" "$WORK/$name-$op.time" "$name" >>"$ROWS" <<'EOF'
import json, sys
u, s, e = map(float, open(sys.argv[3]).read().split()[-3:])
for e_ in json.load(open(sys.argv[1])):
    r = e_["report"]
    note = "bench+3 hosts: %.2f cores avg over the whole invocation" % ((u + s) / e)
    if r["errors"]:
        note += "; errors: " + "; ".join(map(str, r["error_samples"]))[:200]
    print("%s\t%d\t%s\t%.0f\t%.3f\t%.3f\t%d\t-\t-\t%s" % (sys.argv[4], r["clients"], sys.argv[2], r["ops_per_s"],
          r["p50_us"] / 1000, r["p99_us"] / 1000, r["errors"], note))
EOF
    n=$(wc -w <<<"$CLIENTS"); note_last "$n" "$busy"
    log "$name bench + its 3 hosts used $(awk '{printf "%.2f cores", ($1+$2)/$3}' "$WORK/$name-$op.time") on average"
  done
}

# The pipelined Redis-protocol cells (run_pipelined) live beside this script.
# shellcheck source=bench/pipelined.sh
source "$(dirname "${BASH_SOURCE[0]}")/pipelined.sh"
# The idle-shards cell (run_idle) too.
# shellcheck source=bench/idle.sh
source "$(dirname "${BASH_SOURCE[0]}")/idle.sh"

# ---------------------------------------------------------------- run
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
MACHINE="$(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n), $NPROC cores ($CPU_MODEL), $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -r)"
VERSIONS="etcd $(etcd --version 2>/dev/null | awk '/etcd Version/{print $3}'), redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), grpcio $("$BENCH_VENV/bin/python" -c 'import grpc; print(grpc.__version__)' 2>/dev/null || echo -), shardkv $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo ?)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+dirty')"
log "machine: $MACHINE"
log "versions: $VERSIONS"
log "work dir: $WORK; ${DURATION}s per cell; clients: $CLIENTS; systems: $SYSTEMS"

ETCD_PIDS=()
for s in $SYSTEMS; do
  log "---- $s (load average $(loadavg))"
  case $s in
    etcd) run_etcd ;;
    redis-always) run_redis always ;;
    redis-everysec) run_redis everysec ;;
    shardkv) run_shardkv per-client ;;
    shardkv-shared) run_shardkv shared ;;
    pipelined) run_pipelined ;;
    idle) run_idle ;;
    *) die "unknown system $s" ;;
  esac
done

# ---------------------------------------------------------------- table
ELAPSED=$(($(date +%s) - T_START))
OUT_MD=$HERE/results-$STAMP.md
if [[ ! -s "$ROWS" ]]; then  # only the pipelined systems ran
  printf '# shardkv benchmarks (bench/compare.sh)\n\n- Machine: %s\n- Versions: %s\n- Whole run: %s s.\n' \
    "$MACHINE" "$VERSIONS" "$ELAPSED" >"$WORK/table.md"
else python3 - "$ROWS" "$MACHINE" "$VERSIONS" "$DURATION" "$ELAPSED" >"$WORK/table.md" <<'EOF'
import sys
rows_path, machine, versions, duration, elapsed = sys.argv[1:6]
rows = [l.rstrip("\n").split("\t") for l in open(rows_path) if l.strip()]
order = {"etcd": 0, "shardkv": 1, "shardkv-shared": 2, "redis-always": 3, "redis-everysec": 4}
opord = {"put": 0, "get": 1}
rows.sort(key=lambda r: (opord[r[2]], int(r[1]), order.get(r[0], 9)))
print("# shardkv vs etcd vs Redis (bench/compare.sh)\n")
print("- Machine: %s" % machine)
print("- Versions: %s" % versions)
print("- Workload: 100-byte values, 10,000 keys, closed-loop clients, %s s per cell; "
      "gets linearizable (etcd, shardkv); etcd 3 members + TLS/mTLS; shardkv 3 hosts x 3 shards x 3 replicas "
      "+ QUIC/mTLS, every client its own connections (shardkv-shared: one client's connections shared by all); "
      "Redis 1 node + TLS/mTLS + AOF. Whole run: %s s." % (duration, elapsed))
print()
print("| system | clients | op | ops/s | p50 ms | p99 ms | errors | gen cores | server cores | note |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
for r in rows:
    print("| %s |" % " | ".join(r + [""] * (10 - len(r))))
by = {(r[0], r[1], r[2]): r for r in rows}
print()
print("## shardkv / etcd\n")
print("| shardkv | clients | op | throughput ratio | p50 ratio | p99 ratio |")
print("|---|---:|---|---:|---:|---:|")
for (s, c, op), r in sorted(by.items(), key=lambda kv: (opord[kv[0][2]], int(kv[0][1]), kv[0][0])):
    if s not in ("shardkv", "shardkv-shared") or ("etcd", c, op) not in by:
        continue
    e = by[("etcd", c, op)]
    f = lambda a, b: ("%.2fx" % (float(a) / float(b))) if float(b) > 0 else "-"
    conns = "per-client" if s == "shardkv" else "shared"
    print("| %s | %s | %s | %s | %s | %s |" % (conns, c, op, f(r[3], e[3]), f(r[4], e[4]), f(r[5], e[5])))
def get(s, c, op, i):
    r = by.get((s, c, op))
    return float(r[i]) if r else None
checks = []
for op, label, times in (("put", "write", 4), ("get", "linearizable read", 8)):
    sk, et = get("shardkv", "64", op, 3), get("etcd", "64", op, 3)
    if sk and et:
        checks.append(("64 clients: %s throughput >= %dx etcd" % (label, times), "%.2fx" % (sk / et),
                       sk >= times * et))
    sk, et = get("shardkv", "64", op, 5), get("etcd", "64", op, 5)
    if sk and et:
        checks.append(("64 clients: %s p99 <= etcd's" % label, "%.2f vs %.2f ms" % (sk, et), sk <= et))
sk, et = get("shardkv", "1", "put", 4), get("etcd", "1", "put", 4)
if sk and et:
    checks.append(("1 client: put p50 <= 0.6x etcd's", "%.3f vs %.3f ms" % (sk, et), sk <= 0.6 * et))
if checks:
    print()
    print("## Issue 14 targets (this run; independent clients)\n")
    print("| target | measured | met |")
    print("|---|---|---|")
    for t, m, ok in checks:
        print("| %s | %s | %s |" % (t, m, "yes" if ok else "**no**"))
print()
print("Throughput ratio > 1 and latency ratios < 1 favour shardkv. "
      "'gen cores': CPU used by the load generator (etcd: Python/grpcio; Redis: redis-benchmark); "
      "'server cores': CPU used by the servers (3 etcd members; the Redis node) in the same window. "
      "shardkv's generator runs inside `shardkv bench` together with its cluster and is not split out; "
      "the note gives their joint average over the whole invocation (cluster start, preload, both client counts).")
EOF
fi
if [[ -s "$PROWS" ]]; then
  python3 - "$PROWS" "$PIPELINED_REQUESTS" >>"$WORK/table.md" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
order = {"shardkv-resp": 0, "redis-always": 1, "redis-everysec": 2}
rows.sort(key=lambda r: ({"set": 0, "get": 1}.get(r[1], 9), order.get(r[0], 9)))
by = {(r[0], r[1]): float(r[2]) for r in rows}
print()
print("## Redis protocol, pipelined (redis-benchmark -t set,get -c 50 -P 16 -n %s -d 100 -r 10000)\n"
      % sys.argv[2])
print("shardkv: 3 hosts x 3 shards x 3 replicas, `redis-benchmark --cluster` against the RESP "
      "listeners (plaintext on loopback); SET = a Raft write on a majority's disk, GET = a "
      "linearizable read. Redis: one plaintext node with AOF.\n")
print("| target | op | ops/s | p50 ms | vs redis-always |")
print("|---|---|---:|---:|---:|")
for r in rows:
    base = by.get(("redis-always", r[1]))
    ratio = ("%.2fx" % (float(r[2]) / base)) if base else "-"
    print("| %s | %s | %s | %s | %s |" % (r[0], r[1], r[2], r[3], ratio))
checks = []
for op in ("set", "get"):
    sk, rd = by.get(("shardkv-resp", op)), by.get(("redis-always", op))
    if sk and rd:
        checks.append(("%s >= half of Redis appendfsync=always" % op.upper(), "%.2fx" % (sk / rd),
                       sk >= rd / 2))
if checks:
    print()
    print("### Issue 13 targets (this run)\n")
    print("| target | measured | met |")
    print("|---|---|---|")
    for t, m, ok in checks:
        print("| %s | %s | %s |" % (t, m, "yes" if ok else "**no**"))
EOF
fi
if [[ -s "$IROWS" ]]; then
  python3 - "$IROWS" "$IDLE_SECONDS" >>"$WORK/table.md" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print()
print("## Idle shards (bench/idle.sh: 3 hosts x %s shards x 3 replicas, nothing asked, CPU over %s s)\n"
      % (rows[0][1], sys.argv[2]))
print("| host | replicas | CPU, % of one core | state |")
print("|---|---:|---:|---|")
for r in rows:
    print("| %s | %s | %s | %s |" % (r[0], r[1], r[2], r[3]))
asleep = [float(r[2]) for r in rows if r[3].startswith("hibernate = true")]
worst = max(asleep) if asleep else float("nan")
print()
print("### Issue 14 target (this run)\n")
print("| target | measured | met |")
print("|---|---|---|")
print("| %s idle shards per host: < 2%% of one core per host | %.2f%% (busiest host, hibernating) | %s |"
      % (rows[0][1], worst, "yes" if worst < 2 else "**no**"))
EOF
fi
cp "$WORK/table.md" "$OUT_MD"
echo
cat "$WORK/table.md"
echo
log "wrote $OUT_MD; total ${ELAPSED}s"
