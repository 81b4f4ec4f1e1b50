#!/usr/bin/env bash
# Sustained put throughput of two builds: does it hold up as a cluster keeps running? For each
# repetition and each build (alternating, A first in odd repetitions), one fresh three-node
# cluster takes RUNS back-to-back `rdb-cli bench` put runs of SECONDS each (64 clients over 8
# connections, 100,000 keys, 256-byte values) with no pause between them. Prints every run's
# ops/s in order (and the servers' CPU seconds per 1,000 puts), then per build the first run and
# the medians of the last half of the runs. Disk speed drifts on shared machines: compare
# series of the same repetition, and look at the CPU figures, which drift less.
# Usage:
#   bash scripts/bench-sustained.sh DIR_A DIR_B [RUNS=6] [SECONDS=10] [REPEATS=2]
# DIR_A and DIR_B hold release `rdb-server` and `rdb-cli` binaries (e.g. a copy of
# target/release from before a change, and target/release after it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir_a=${1:?usage: bench-sustained.sh DIR_A DIR_B [RUNS] [SECONDS] [REPEATS]}
dir_b=${2:?usage: bench-sustained.sh DIR_A DIR_B [RUNS] [SECONDS] [REPEATS]}
runs=${3:-6}
secs=${4:-10}
repeats=${5:-2}
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

results=$(mktemp -t rdb-sustained.XXXXXX)
work=""
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "$work" ] && rm -rf "$work"
  rm -f "$results"
}
trap cleanup EXIT

series() { # BIN_DIR LABEL
  local label=$2 i line ops t0 t1 all="" cpu=""
  bin=$1
  work=$(mktemp -d -t rdb-sustained-run.XXXXXX)
  pids=()
  rdb_start_bench_cluster "$work" warning
  for i in $(seq 1 "$runs"); do
    t0=$(rdb_cpu_ticks "${pids[@]}")
    line=$("$bin/rdb-cli" --endpoints "$endpoints" -o json bench --workload put --clients 64 \
      --connections 8 --keys 100000 --duration-secs "$secs" 2>/dev/null | tail -n 1)
    t1=$(rdb_cpu_ticks "${pids[@]}")
    read -r ops c < <(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(round(r["ops_per_sec"]), "%.3f" % ((int(sys.argv[2]) / float(sys.argv[3])) * 1000 / max(r["ops"], 1)))' \
      "$line" "$(( t1 - t0 ))" "$(getconf CLK_TCK)")
    all+="$ops "
    cpu+="$c,"
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  rm -rf "$work"
  work=""
  echo "$label $all cpu ${cpu%,}" | tee -a "$results"
}

echo "put 64/8, $runs runs of $secs s on one cluster per series, $repeats series per build"
for r in $(seq 1 "$repeats"); do
  if [ $(( r % 2 )) -eq 1 ]; then series "$dir_a" A; series "$dir_b" B; else series "$dir_b" B; series "$dir_a" A; fi
done

python3 - "$results" <<'PY'
import statistics, sys
by = {}
cpu_by = {}
for line in open(sys.argv[1]):
    label, rest = line.split(" ", 1)
    ops, _, cpu = rest.partition(" cpu ")
    by.setdefault(label, []).append([int(o) for o in ops.split()])
    cpu_by.setdefault(label, []).append([float(c) for c in cpu.split(",")])
for label in sorted(by):
    first = [s[0] for s in by[label]]
    late = [o for s in by[label] for o in s[len(s) // 2:]]
    late_cpu = [c for s in cpu_by[label] for c in s[len(s) // 2:]]
    print("%s: first run %s; last half of the runs: median %d ops/s (%s), CPU s per 1k puts %.3f" % (
        label, ", ".join(map(str, first)), statistics.median(late), ", ".join(map(str, late)),
        statistics.median(late_cpu)))
PY
