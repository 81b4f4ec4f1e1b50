#!/usr/bin/env bash
# Compares two builds' put throughput side by side: for each run and each row, a fresh
# three-node cluster of build A, then one of build B (interleaved, so drift in disk and CPU
# steal hits both alike), SECONDS of `rdb-cli bench` each. Prints every run and the medians,
# with the largest peak resident set (VmHWM) of a run's three nodes.
# Usage:
#   bash scripts/bench-ab.sh DIR_A DIR_B [RUNS=3] [SECONDS=10] [ROWS="64/8 256/16"]
# ROWS are [WORKLOAD:]CLIENTS/CONNECTIONS, e.g. "1/1 16/4 64/8 256/16 get:64/8"; the workload
# is put unless named (get: linearizable gets of preloaded keys).
# DIR_A and DIR_B hold release `rdb-server` and `rdb-cli` binaries (e.g. a copy of
# target/release from before a change, and target/release after it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir_a=${1:?usage: bench-ab.sh DIR_A DIR_B [RUNS] [SECONDS]}
dir_b=${2:?usage: bench-ab.sh DIR_A DIR_B [RUNS] [SECONDS]}
runs=${3:-3}
secs=${4:-10}
rows=${5:-"64/8 256/16"}
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

results=$(mktemp -t rdb-ab.XXXXXX)
one() { # BIN_DIR LABEL WORKLOAD ROW_ARGS...
  local dir=$1 label=$2 workload=$3 work
  shift 3
  bin=$dir
  work=$(mktemp -d -t rdb-ab-run.XXXXXX)
  pids=()
  rdb_start_bench_cluster "$work" warning
  local line
  line=$("$bin/rdb-cli" --endpoints "$endpoints" -o json bench --duration-secs "$secs" "$@" 2>/dev/null | tail -n 1)
  # The largest peak resident set of the three nodes (VmHWM), in KiB.
  local rss=0 p hwm
  for p in "${pids[@]}"; do
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    (( ${hwm:-0} > rss )) && rss=${hwm:-0}
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
  echo "$label $workload $rss $line" | tee -a "$results"
}

for r in $(seq 1 "$runs"); do
  for row in $rows; do
    workload=put
    if [[ $row == *:* ]]; then
      workload=${row%%:*}
      row=${row#*:}
    fi
    extra=()
    [[ $workload == put ]] || extra=(--preload)
    set -- ${row/\// }
    one "$dir_a" "A" "$workload" --workload "$workload" --clients "$1" --connections "$2" --keys 100000 "${extra[@]}"
    one "$dir_b" "B" "$workload" --workload "$workload" --clients "$1" --connections "$2" --keys 100000 "${extra[@]}"
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, workload, rss, js = (line.split(" ", 3) + ["", "", ""])[:4]
    if not js.startswith("{"):
        continue
    r = json.loads(js)
    r["rss_mib"] = int(rss) / 1024
    rows.setdefault((workload, r["clients"], r["connections"], label), []).append(r)
for (w, c, n, label), rs in sorted(rows.items()):
    ops = [r["ops_per_sec"] for r in rs]
    print("MEDIAN %s %s %d/%d ops/s %8.0f  p50 %6.2f ms  p99 %6.2f ms  errors %d  peak RSS %.0f MiB"
          "  (runs: %s)" % (
        label, w, c, n, statistics.median(ops), statistics.median(r["p50_ms"] for r in rs),
        statistics.median(r["p99_ms"] for r in rs),
        sum(r["errors"] for r in rs), statistics.median(r["rss_mib"] for r in rs),
        ", ".join("%.0f" % o for o in ops)))
PY
rm -f "$results"
