#!/usr/bin/env bash
# bench/ab.sh — A/B two shardkv binaries on this machine: the same `shardkv bench` run with
# each, alternating A B B A ... so that the machine's drift (this VM's speed changes by up to
# 2x from one hour to the next) falls on both alike; prints every run, then each binary's mean
# throughput and p99 and B's change against A.
#
#   bash bench/ab.sh A_BINARY B_BINARY [ROUNDS] [-- shardkv bench arguments]
#
# ROUNDS (default 3) pairs of runs. The bench arguments default to 64 independent clients'
# linearizable gets on a throwaway local cluster:
#   --local 3x3 --clients 64 --mix put=0,get=100 --duration 8s
# (`--json` is added). The binaries are copied into a temp dir first, so a rebuild during the
# run cannot change them. Figures are only comparable within one invocation.
set -euo pipefail

die() { echo "ab.sh: $*" >&2; exit 2; }

[[ $# -ge 2 ]] || die "usage: bash bench/ab.sh A_BINARY B_BINARY [ROUNDS] [-- bench args]"
A=$1 B=$2
shift 2
ROUNDS=3
if [[ $# -gt 0 && $1 != "--" ]]; then
  ROUNDS=$1
  shift
fi
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive whole number, not '$ROUNDS'"
[[ $# -gt 0 && $1 == "--" ]] && shift
ARGS=("$@")
[[ ${#ARGS[@]} -gt 0 ]] || ARGS=(--local 3x3 --clients 64 --mix put=0,get=100 --duration 8s)
for bin in "$A" "$B"; do
  [[ -x $bin ]] || die "no executable at $bin"
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cp "$A" "$TMP/a"
cp "$B" "$TMP/b"

# One run of binary $1 (a or b): appends "ops_per_s p99_us" to $TMP/$1.runs.
run() {
  local out
  out=$("$TMP/$1" bench "${ARGS[@]}" --json 2>"$TMP/$1.err") ||
    die "$1 ($([[ $1 == a ]] && echo "$A" || echo "$B")) failed: $(tail -3 "$TMP/$1.err")"
  python3 -c '
import json, sys
runs = json.load(sys.stdin)
if len(runs) != 1:
    sys.exit("ab.sh compares one bench run per invocation; got %d (one --clients value only)" % len(runs))
r = runs[0]["report"]
print("%.0f %d" % (r["ops_per_s"], r["p99_us"]))
' <<<"$out" >>"$TMP/$1.runs"
  echo "$1 $(tail -1 "$TMP/$1.runs" | awk '{printf "%8d ops/s  p99 %6d us", $1, $2}')"
}

echo "A = $A"
echo "B = $B"
echo "bench ${ARGS[*]}, $ROUNDS rounds"
for ((i = 0; i < ROUNDS; i++)); do
  if ((i % 2 == 0)); then run a; run b; else run b; run a; fi
done
awk '
  FNR == 1 { which = (FILENAME ~ /a\.runs$/) ? "a" : "b" }
  { ops[which] += $1; p99[which] += $2; n[which]++ }
  END {
    for (w in n) { ops[w] /= n[w]; p99[w] /= n[w] }
    printf "mean A %8.0f ops/s  p99 %6.0f us\n", ops["a"], p99["a"]
    printf "mean B %8.0f ops/s  p99 %6.0f us\n", ops["b"], p99["b"]
    printf "B vs A: throughput %+.1f%%, p99 %+.1f%%\n", 100 * (ops["b"] / ops["a"] - 1), 100 * (p99["b"] / p99["a"] - 1)
  }' "$TMP/a.runs" "$TMP/b.runs"
