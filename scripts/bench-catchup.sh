#!/usr/bin/env bash
# Measures follower catch-up on release binaries: a follower is killed (-9), WRITES puts of
# VALUE_BYTES land on the other two, the follower restarts, and the time until it has applied
# everything the leader had applied when it restarted is printed. With WRITES above the snapshot
# threshold (10,000 by default) the leader's log is compacted meanwhile and the follower catches
# up from a snapshot.
#   bash scripts/bench-catchup.sh [WRITES=10000] [VALUE_BYTES=256] [LOAD_CLIENTS=0]
# LOAD_CLIENTS > 0 keeps that many clients writing during the catch-up, and the peak RSS of the
# leader and the follower (sampled every 100 ms) is printed: e.g. a follower that missed 1 GB
# while writes go on:  bash scripts/bench-catchup.sh 262144 4096 64
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
writes=${1:-10000}
value=${2:-256}
load=${3:-0}
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
rdb_bench_bin
work=$(mktemp -d -t rdb-catchup.XXXXXX)
declare -A pid
loader=""
cleanup() {
  [ -n "$loader" ] && kill "$loader" 2>/dev/null || true
  for p in "${pid[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
rdb_write_config "$work" 3
printf '[settings]\nlog_level = "info"\n' >> "$work/cluster.toml"
start() { "$bin/rdb-server" --config "$work/cluster.toml" --node-id "$1" 2>>"$work/n$1.log" & pid[$1]=$!; }
for i in 1 2 3; do start "$i"; done
all=$(rdb_endpoints "$work/cluster.toml")
status_json() { "$bin/rdb-cli" --endpoints "$1" --timeout-ms 1000 -o json status 2>/dev/null || true; }
# A node that does not answer yet has no such field: print nothing.
field() { python3 -c "import json,sys; r=[n for n in json.load(sys.stdin) if $1]; print(r[0].get('$2', '') if r else '')"; }
until [ -n "$(status_json "$all" | field 'n.get("role")=="leader"' node_id)" ]; do sleep 0.1; done
leader=$(status_json "$all" | field 'n.get("role")=="leader"' node_id)
f=$(( leader % 3 + 1 ))
kill -9 "${pid[$f]}"; wait "${pid[$f]}" 2>/dev/null || true
echo "follower $f down; writing $writes puts of $value bytes"
"$bin/rdb-cli" --endpoints "$all" -o json bench --workload put --ops "$writes" --keys "$writes" \
  --value-size "$value" --clients 64 --connections 8 2>/dev/null | tail -n 1
if [ "$load" -gt 0 ]; then
  "$bin/rdb-cli" --endpoints "$all" -o json bench --workload put --duration-secs 600 \
    --keys "$writes" --value-size "$value" --clients "$load" --connections 8 \
    >"$work/load.json" 2>/dev/null &
  loader=$!
  sleep 1
fi
le=$(rdb_endpoint_of "$work/cluster.toml" "$leader")
target=$(status_json "$le" | field True applied_index)
first=$(status_json "$le" | field True first_index)
echo "leader applied $target, log starts at $first, leader data $(du -sm "$work/node$leader" | cut -f1) MiB"
rss() { ps -o rss= -p "$1" 2>/dev/null | tr -d ' ' || echo 0; }
peak_l=0; peak_f=0
t0=$(rdb_now_ms)
start "$f"
fe=$(rdb_endpoint_of "$work/cluster.toml" "$f")
until [ "$(status_json "$fe" | field True applied_index)" -ge "$target" ] 2>/dev/null; do
  [ $(( $(rdb_now_ms) - t0 )) -lt 300000 ] || { echo "no catch-up within 300 s" >&2; exit 1; }
  r=$(rss "${pid[$leader]}"); [ "${r:-0}" -gt "$peak_l" ] && peak_l=$r
  r=$(rss "${pid[$f]}"); [ "${r:-0}" -gt "$peak_f" ] && peak_f=$r
  sleep 0.1
done
echo "follower $f caught up to $target in $(( $(rdb_now_ms) - t0 )) ms (process start included)$(grep -q 'installing snapshot' "$work/n$f.log" && echo ', via a snapshot')"
echo "peak RSS during catch-up: leader $(( peak_l / 1024 )) MiB, follower $(( peak_f / 1024 )) MiB"
if [ -n "$loader" ]; then
  now=$(status_json "$le" | field True applied_index)
  echo "writes went on: the leader applied $(( now - target )) more entries meanwhile"
fi
