#!/usr/bin/env bash
# Versioned keys under sustained overwrites (specs/018-versions): a three-node cluster
# (release build, default settings: 10,000 revisions of history kept) takes OPS single-key
# overwrites of 100,000 keys (256-byte values) in CHUNKS equal parts; after each part the script
# prints every node's data directory size, so a bound shows as sizes that stop growing. Then it
# reads the keys for SECS seconds at the newest revision and at a revision 5,000 back (inside
# the history kept), and prints both benchmarks' figures.
# Usage:
#   bash scripts/bench-history.sh [OPS=10000000] [CHUNKS=5] [SECS=10]
# RDB_RELEASE_BIN=DIR uses the binaries in DIR instead of building.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ops=${1:-10000000}
chunks=${2:-5}
secs=${3:-10}
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
rdb_bench_bin

work=$(mktemp -d -t rdb-history.XXXXXX)
pids=()
trap rdb_bench_cleanup EXIT

rdb_start_bench_cluster "$work" warning
cli=("$bin/rdb-cli" --endpoints "$endpoints")
sizes() { for i in 1 2 3; do du -sm "$work/node$i" | cut -f1; done | paste -sd/ -; }
bench=(bench --keys 100000 --value-size 256 --clients 64 --connections 8)

echo "preloading 100,000 keys"
"${cli[@]}" -o json "${bench[@]}" --workload put --ops 100000 | tail -n 1 >/dev/null
echo "after the preload: $(sizes) MiB per node"
per=$(( ops / chunks ))
done_ops=0
for c in $(seq 1 "$chunks"); do
  start=$(rdb_now_ms)
  "${cli[@]}" -o json "${bench[@]}" --workload put --ops "$per" --seed "$c" | tail -n 1 >/dev/null
  done_ops=$(( done_ops + per ))
  secs_taken=$(( ($(rdb_now_ms) - start) / 1000 ))
  echo "after $done_ops overwrites (${secs_taken} s for this part): $(sizes) MiB per node"
done
last=$("${cli[@]}" -o json put history-probe x | python3 -c 'import json,sys; print(json.load(sys.stdin)["revision"])')
past=$(( last - 5000 ))
echo "last revision $last; reads at the newest revision, then at $past"
"${cli[@]}" "${bench[@]}" --workload get --duration-secs "$secs"
"${cli[@]}" "${bench[@]}" --workload get --duration-secs "$secs" --revision "$past"
echo "at the end: $(sizes) MiB per node"
