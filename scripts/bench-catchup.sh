#!/usr/bin/env bash
# Measures follower catch-up on release binaries: a follower is killed (-9), WRITES puts land
# on the other two, the follower restarts, and the time until it has applied everything the
# leader applied is printed. With WRITES above the snapshot threshold (10,000 by default) the
# leader's log is compacted meanwhile and the follower catches up from a snapshot.
#   bash scripts/bench-catchup.sh [WRITES=10000]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
writes=${1:-10000}
bash "$root/scripts/setup.sh"
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
rdb_build_release
bin=$RDB_RELEASE_BIN
work=$(mktemp -d -t rdb-catchup.XXXXXX)
declare -A pid
cleanup() { for p in "${pid[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
rdb_write_config "$work" 3
printf '[settings]\nlog_level = "info"\n' >> "$work/cluster.toml"
start() { "$bin/rdb-server" --config "$work/cluster.toml" --node-id "$1" 2>>"$work/n$1.log" & pid[$1]=$!; }
for i in 1 2 3; do start "$i"; done
all=$(rdb_endpoints "$work/cluster.toml")
status_json() { "$bin/rdb-cli" --endpoints "$1" --timeout-ms 1000 -o json status 2>/dev/null || true; }
field() { python3 -c "import json,sys; r=[n for n in json.load(sys.stdin) if $1]; print(r[0]['$2'] if r else '')"; }
until [ -n "$(status_json "$all" | field 'n.get("role")=="leader"' node_id)" ]; do sleep 0.1; done
leader=$(status_json "$all" | field 'n.get("role")=="leader"' node_id)
f=$(( leader % 3 + 1 ))
kill -9 "${pid[$f]}"; wait "${pid[$f]}" 2>/dev/null || true
echo "follower $f down; writing $writes puts"
"$bin/rdb-cli" --endpoints "$all" -o json bench --workload put --ops "$writes" --clients 64 --connections 8 2>/dev/null | tail -n 1
target=$(status_json "$(rdb_endpoint_of "$work/cluster.toml" "$leader")" | field True applied_index)
first=$(status_json "$(rdb_endpoint_of "$work/cluster.toml" "$leader")" | field True first_index)
echo "leader applied $target, log starts at $first"
t0=$(rdb_now_ms)
start "$f"
fe=$(rdb_endpoint_of "$work/cluster.toml" "$f")
until [ "$(status_json "$fe" | field True applied_index)" -ge "$target" ] 2>/dev/null; do
  [ $(( $(rdb_now_ms) - t0 )) -lt 60000 ] || { echo "no catch-up within 60 s" >&2; exit 1; }
  sleep 0.01
done
echo "follower $f caught up to $target in $(( $(rdb_now_ms) - t0 )) ms (process start included)$(grep -q 'installing snapshot' "$work/n$f.log" && echo ', via a snapshot')"
