#!/usr/bin/env bash
# Restart to serving: a three-node cluster (release build) is loaded with about MB megabytes of
# data, then ROUNDS times every node is killed with SIGKILL and started again, and the script
# times from the restart until a linearizable get is answered (polled with 200 ms attempts).
# Prints each round, the median, the data size and each node's RSS once serving.
# Usage:
#   bash scripts/bench-restart.sh [ROUNDS=3] [MB=1024]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
mb=${2:-1024}
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
rdb_bench_bin

work=$(mktemp -d -t rdb-restart.XXXXXX)
pids=()
trap rdb_bench_cleanup EXIT

rdb_start_bench_cluster "$work" warning
cli=("$bin/rdb-cli" --endpoints "$endpoints")
# 1 KiB values in batches of 200 random keys out of 100 M, so nearly every key is new.
requests=$(( mb * 1024 / 200 ))
echo "loading about $mb MB ($requests batch puts of 200 x 1 KiB)"
"${cli[@]}" -o json bench --workload put --batch 200 --value-size 1024 --keys 100000000 \
  --clients 16 --connections 4 --ops "$requests" | tail -n 1
"${cli[@]}" put restart-probe here >/dev/null
echo "data per node: $(for i in 1 2 3; do du -sm "$work/node$i" | cut -f1; done | paste -sd/ -) MiB"

times=()
for r in $(seq 1 "$rounds"); do
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  start=$(rdb_now_ms)
  for i in 1 2 3; do
    "$bin/rdb-server" --config "$work/cluster.toml" --node-id "$i" 2>>"$work/n$i.log" &
    pids+=($!)
  done
  until "${cli[@]}" --timeout-ms 200 get restart-probe >/dev/null 2>&1; do :; done
  took=$(( $(rdb_now_ms) - start ))
  times+=("$took")
  rss=$(for p in "${pids[@]}"; do awk '/VmRSS/ {printf "%d\n", $2 / 1024}' "/proc/$p/status"; done | paste -sd/ -)
  echo "round $r: kill -9 of all three to a linearizable get: $took ms (RSS $rss MiB)"
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR] = $1} END {print "median: " a[int((NR + 1) / 2)] " ms"}'
