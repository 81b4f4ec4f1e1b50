#!/usr/bin/env bash
# What a node's memory is made of. Each run starts a fresh three-node cluster (release build),
# puts 256-byte values over KEYS keys at 64 clients / 8 connections for SECONDS, then runs
# linearizable gets at 64/8 for SECONDS, and reports for every node: its resident set (VmRSS,
# with the anonymous and file-backed parts of /proc/PID/smaps_rollup), its peak (VmHWM), its
# threads, what RocksDB holds (rdb_rocksdb_memory_bytes: block cache, memtables, table
# readers) and the rest of the resident set. The servers inherit the environment, so an
# allocator's knobs can be compared: `MALLOC_ARENA_MAX=2 bash scripts/bench-memory.sh`.
# Usage:
#   bash scripts/bench-memory.sh [SECONDS=20] [KEYS=100000] [RUNS=1]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-20}
keys=${2:-100000}
runs=${3:-1}
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
rdb_bench_bin

work=$(mktemp -d -t rdb-bench-memory.XXXXXX)
pids=()
trap rdb_bench_cleanup EXIT

mib() { awk -v b="$1" 'BEGIN {printf "%.0f", b / 1048576}'; }
# The value of metric line NAME (with its labels) at URL, 0 when absent.
metric() {
  curl -sf "$1" | awk -v n="$2" '$1 == n {v = $2} END {printf "%.0f\n", v + 0}'
}
kib_field() { awk -v f="$2:" '$1 == f {print $2 * 1024}' "$1" 2>/dev/null || echo 0; }

echo "bench-memory: $runs run(s), put then get 64/8 for ${secs}s each over $keys keys ($work)"
printf '%-4s %-5s %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s\n' run node "rss" anon file peak threads cache memtbl readers rocks rest
for r in $(seq 1 "$runs"); do
  dir="$work/run$r"
  mkdir -p "$dir"
  pids=()
  rdb_start_bench_cluster "$dir" warning
  "$bin/rdb-cli" --endpoints "$endpoints" bench --workload put --clients 64 --connections 8 \
    --keys "$keys" --duration-secs "$secs" >/dev/null 2>&1
  "$bin/rdb-cli" --endpoints "$endpoints" bench --workload get --clients 64 --connections 8 \
    --keys "$keys" --duration-secs "$secs" >/dev/null 2>&1
  # The memory gauges are sampled every 5 s.
  sleep 6
  for i in 1 2 3; do
    p=${pids[$(( i - 1 ))]}
    url=${metrics_urls[$(( i - 1 ))]}
    rss=$(kib_field "/proc/$p/status" VmRSS)
    peak=$(kib_field "/proc/$p/status" VmHWM)
    threads=$(awk '$1 == "Threads:" {print $2}' "/proc/$p/status")
    anon=$(kib_field "/proc/$p/smaps_rollup" Anonymous)
    file=$(( rss - anon ))
    cache=$(metric "$url" 'rdb_rocksdb_memory_bytes{part="block_cache"}')
    memtables=$(metric "$url" 'rdb_rocksdb_memory_bytes{part="memtables"}')
    readers=$(metric "$url" 'rdb_rocksdb_memory_bytes{part="table_readers"}')
    rocks=$(( cache + memtables + readers ))
    printf '%-4s %-5s %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s\n' "$r" "n$i" \
      "$(mib "$rss")" "$(mib "$anon")" "$(mib "$file")" "$(mib "$peak")" "$threads" \
      "$(mib "$cache")" "$(mib "$memtables")" "$(mib "$readers")" "$(mib "$rocks")" \
      "$(mib $(( rss - rocks )))"
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
done
echo "(MiB; file = the resident set's file-backed part: the binary and libraries mapped)"
