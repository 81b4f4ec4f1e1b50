#!/usr/bin/env bash
# One region against many on the same three stores: put throughput and WAL fsyncs.
# Each round starts a fresh PD-mode cluster (release build: one rdb-pd node, three stores with
# metrics) twice, alternating which goes first: once with every key in region 1, once split
# into REGIONS regions (a power of two) before measuring. Both preload KEYS keys, then run
# `rdb-cli --regions bench --workload put` (256-byte values, uniform keys, CLIENTS/CONNS) for
# SECONDS, routed by PD's region map. Prints every run (with how many region leaders each store
# held), then per setup the median ops/s, p50, p99, WAL fsyncs per second summed over the
# stores (rdb_raft_log_fsync_seconds_count), writes stamped again per 1,000 puts
# (rdb_write_restamps_total; "-" for a build without it), and the regions each had.
# Usage:
#   bash scripts/bench-regions.sh [ROUNDS=3] [SECONDS=10] [REGIONS=8] [CLIENTS=256] [CONNS=16]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
secs=${2:-10}
regions=${3:-8}
clients=${4:-256}
conns=${5:-16}
keys=16000
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
rdb_bench_bin

work=$(mktemp -d -t rdb-bench-regions.XXXXXX)
pids=()
trap rdb_bench_cleanup EXIT
results="$work/results"

# Halving splits stop at REGIONS regions of KEYS/REGIONS keys with this threshold.
split_keys=$(( keys * 5 / regions / 4 ))
never=1000000000000

stop_all() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
start_stores() { # start_stores DIR SPLIT_KEYS
  local i
  for i in 1 2 3; do
    "$bin/rdb-server" --pd "$pd" --addr "${addrs[$((i - 1))]}" --peer-addr "${paddrs[$((i - 1))]}" \
      --data-dir "$1/store$i" \
      --metrics-addr "${maddrs[$((i - 1))]}" --region-split-keys "$2" --split-check-ms 200 \
      2>>"$1/store$i.log" &
    pids+=($!)
  done
}
region_count() {
  "$bin/rdb-cli" --pd "$pd" --timeout-ms 2000 -o json region list 2>/dev/null |
    python3 -c 'import json,sys; rs=json.load(sys.stdin)["regions"]; print(len(rs) if all(r.get("leader") for r in rs) else 0)'
}
fsyncs() {
  local u
  for u in "${maddrs[@]}"; do curl -sf "http://$u/metrics" || true; done |
    awk '/^rdb_raft_log_fsync_seconds_count/ {n += $2} END {printf "%d\n", n}'
}
restamps() {
  local u
  for u in "${maddrs[@]}"; do curl -sf "http://$u/metrics" || true; done |
    awk '/^rdb_write_restamps_total/ {n += $2; seen = 1} END {if (seen) printf "%d\n", n; else print "-"}'
}

one() { # one LABEL: a fresh cluster, split into REGIONS regions when LABEL is "many"
  local label=$1 dir="$work/$1-$RANDOM" pd_port pd_peer
  mkdir -p "$dir"
  read -r pd_port pd_peer a1 a2 a3 m1 m2 m3 r1 r2 r3 <<<"$(rdb_free_ports 11)"
  pd=127.0.0.1:$pd_port
  addrs=(127.0.0.1:$a1 127.0.0.1:$a2 127.0.0.1:$a3)
  maddrs=(127.0.0.1:$m1 127.0.0.1:$m2 127.0.0.1:$m3)
  paddrs=(127.0.0.1:$r1 127.0.0.1:$r2 127.0.0.1:$r3)
  printf 'cluster_id = 5\n[[nodes]]\nid = 1\nclient_addr = "%s"\npeer_addr = "127.0.0.1:%s"\ndata_dir = "%s/pd"\n[settings]\nlog_level = "warn"\n' \
    "$pd" "$pd_peer" "$dir" > "$dir/pd.toml"
  "$RDB_RELEASE_BIN/rdb-pd" --config "$dir/pd.toml" 2>"$dir/pd.log" &
  pids+=($!)
  start_stores "$dir" "$never"
  until [ "$(region_count)" -ge 1 ]; do sleep 0.2; done
  "$bin/rdb-cli" --pd "$pd" --regions bench --workload put --keys "$keys" --preload --ops 1 \
    --clients 64 --connections 8 >/dev/null
  if [ "$label" = many ]; then
    # Restart the stores with a threshold that halves region 1 down to REGIONS regions.
    for p in "${pids[@]:1}"; do kill "$p" 2>/dev/null || true; done
    wait "${pids[@]:1}" 2>/dev/null || true
    pids=("${pids[0]}")
    start_stores "$dir" "$split_keys"
    local deadline=$(( $(rdb_now_ms) + 120000 ))
    until [ "$(region_count)" -ge "$regions" ]; do
      [ "$(rdb_now_ms)" -lt "$deadline" ] || { echo "no $regions regions within 120 s" >&2; exit 1; }
      sleep 0.5
    done
  fi
  local n f0 f1 s0 s1 line
  n=$(region_count)
  f0=$(fsyncs)
  s0=$(restamps)
  line=$("$bin/rdb-cli" --pd "$pd" --regions -o json bench --workload put --keys "$keys" \
    --clients "$clients" --connections "$conns" --duration-secs "$secs" 2>/dev/null | tail -n 1)
  f1=$(fsyncs)
  s1=$(restamps)
  local stamped=-
  [ "$s0" = - ] || stamped=$((s1 - s0))
  # How the regions' leaders sat on the three stores during the run (after it, as PD saw it).
  leaders=$("$bin/rdb-cli" --pd "$pd" --timeout-ms 2000 -o json region list 2>/dev/null | python3 -c '
import collections, json, sys
c = collections.Counter(r["leader"]["store_id"] for r in json.load(sys.stdin)["regions"] if r.get("leader"))
print("/".join(str(c[s]) for s in sorted(c)))')
  echo "$label $n $((f1 - f0)) $stamped $line" >> "$results"
  echo "$label regions=$n leaders_per_store=$leaders fsyncs=$((f1 - f0)) restamps=$stamped $line"
  stop_all
}

echo "bench-regions: $rounds rounds of ${secs}s, put $clients/$conns, 1 vs $regions regions ($work)"
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then one one; one many; else one many; one one; fi
done

python3 - "$results" "$secs" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, n, syncs, stamped, js = line.split(" ", 4)
    if not js.startswith("{"):
        continue
    r = json.loads(js)
    r["regions"], r["fsyncs"] = int(n), int(syncs)
    r["restamps"] = None if stamped == "-" else int(stamped)
    rows.setdefault(label, []).append(r)
med = statistics.median
print("| setup | regions | put ops/s (median; runs) | p50 ms | p99 ms | WAL fsyncs/s (3 stores) | restamps / 1,000 puts | errors |")
print("|---|---|---|---|---|---|---|---|")
for label in ("one", "many"):
    rs = rows.get(label, [])
    if not rs:
        continue
    ops = [r["ops_per_sec"] for r in rs]
    rate = med(r["fsyncs"] * r["ops_per_sec"] / r["ops"] for r in rs if r["ops"])
    counted = [1000 * r["restamps"] / r["ops"] for r in rs if r["restamps"] is not None and r["ops"]]
    restamped = "%.1f" % med(counted) if counted else "-"
    print("| %s | %s | %.0f (%s) | %.2f | %.2f | %.0f | %s | %d |" % (
        label, "/".join(str(r["regions"]) for r in rs), med(ops), ", ".join("%.0f" % o for o in ops),
        med(r["p50_ms"] for r in rs), med(r["p99_ms"] for r in rs), rate, restamped,
        sum(r["errors"] for r in rs)))
PY
