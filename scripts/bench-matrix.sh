#!/usr/bin/env bash
# Runs the benchmark matrix of BENCHMARKS.md against a fresh three-node cluster of release
# binaries on 127.0.0.1 (free ports, data in a temp dir, fsync on), RUNS times per row, and
# prints each run's JSON line and the median row. Usage:
#   bash scripts/bench-matrix.sh [RUNS=3] [SECONDS=10]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}
secs=${2:-10}
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
rdb_bench_bin

work=$(mktemp -d -t rdb-bench.XXXXXX)
pids=()
trap rdb_bench_cleanup EXIT
rdb_start_bench_cluster "$work" warning

bench() { "$bin/rdb-cli" --endpoints "$endpoints" -o json bench --duration-secs "$secs" "$@" 2>/dev/null | tail -n 1; }
echo "preloading 100000 keys of 256 B"
"$bin/rdb-cli" --endpoints "$endpoints" -o json bench --workload put --ops 1 --preload --keys 100000 --clients 64 --connections 8 >/dev/null 2>&1

cat > "$work/median.py" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in sys.stdin if l.startswith("{")]
if not rows:
    sys.exit("no results")
m = lambda k: statistics.median(r[k] for r in rows)
r = rows[0]
print("MEDIAN %-5s %-12s %3d/%-3d ops/s %8.0f  p50 %6.2f ms  p99 %6.2f ms  errors %d  (runs: %s)" % (
    r["workload"], r.get("consistency", ""), r["clients"], r["connections"], m("ops_per_sec"),
    m("p50_ms"), m("p99_ms"), sum(x["errors"] for x in rows),
    ", ".join("%.0f" % x["ops_per_sec"] for x in rows)))
PY
median() { python3 "$work/median.py"; }

row() {
  local out=()
  for _ in $(seq 1 "$runs"); do out+=("$(bench "$@")"); echo "${out[-1]}"; done
  printf '%s\n' "${out[@]}" | median
}
row --workload put --clients 1 --connections 1 --keys 100000
row --workload put --clients 16 --connections 4 --keys 100000
row --workload put --clients 64 --connections 8 --keys 100000
row --workload put --clients 256 --connections 16 --keys 100000
row --workload get --clients 64 --connections 8 --keys 100000
row --workload get --clients 64 --connections 8 --keys 100000 --serializable

for i in 1 2 3; do
  rss=$(ps -o rss= -p "${pids[$((i-1))]}" | tr -d ' ')
  echo "node $i: RSS $((rss / 1024)) MiB, data dir $(du -sm "$work/node$i" | cut -f1) MiB"
done
