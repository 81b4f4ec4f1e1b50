#!/usr/bin/env bash
# Measures rdb-pd's timestamp oracle: a fresh three-node PD group of release binaries on
# 127.0.0.1 (free ports, data in a temp dir, fsync on), then `rdb-cli bench --workload tso` at
# 1, 64 and 256 callers, RUNS times each, printing each run's JSON line and the median row.
# Callers share one PdClient per connection, which batches their requests (one Tso call with
# count = n for every caller waiting); the server answers each batch after one ReadIndex round.
# Usage:
#   bash scripts/bench-tso.sh [RUNS=3] [SECONDS=10]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}
secs=${2:-10}
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
rdb_bench_bin

work=$(mktemp -d -t rdb-bench-tso.XXXXXX)
pids=()
trap rdb_bench_cleanup EXIT
rdb_write_config "$work" 3
printf '[settings]\nlog_level = "warning"\n' >> "$work/cluster.toml"
for i in 1 2 3; do
  "$bin/rdb-pd" --config "$work/cluster.toml" --node-id "$i" 2>"$work/pd$i.log" &
  pids+=($!)
done
pd=$(rdb_endpoints "$work/cluster.toml")
until "$bin/rdb-cli" --pd "$pd" --timeout-ms 500 -o json member list 2>/dev/null | grep -q '"leader_id":[1-9]'; do
  sleep 0.2
done

cat > "$work/median.py" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in sys.stdin if l.startswith("{")]
if not rows:
    sys.exit("no results")
m = lambda k: statistics.median(r[k] for r in rows)
r = rows[0]
print("MEDIAN tso %3d/%-3d timestamps/s %9.0f  p50 %6.2f ms  p99 %6.2f ms  errors %d  (runs: %s)" % (
    r["clients"], r["connections"], m("ops_per_sec"), m("p50_ms"), m("p99_ms"),
    sum(x["errors"] for x in rows), ", ".join("%.0f" % x["ops_per_sec"] for x in rows)))
PY
row() {
  local out=()
  for _ in $(seq 1 "$runs"); do
    out+=("$("$bin/rdb-cli" --pd "$pd" -o json bench --workload tso --duration-secs "$secs" "$@" 2>/dev/null | tail -n 1)")
    echo "${out[-1]}"
  done
  printf '%s\n' "${out[@]}" | python3 "$work/median.py"
}
row --clients 1 --connections 1
row --clients 64 --connections 8
row --clients 256 --connections 16
