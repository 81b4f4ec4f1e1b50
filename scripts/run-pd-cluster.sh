#!/usr/bin/env bash
# Sets up the machine, builds rdb, and runs a local PD-mode cluster in the foreground: one
# rdb-pd node (client port 2399, data in ./rdb-pd-data) and three stores (clients on
# 127.0.0.1:20161-20163, peers on 20171-20173, data and logs in ./rdb-data/store*), which
# bootstrap region 1 and split it as it grows (defaults: 960,000 keys or 96 MiB; pass
# --region-split-keys N to split sooner).
# Ctrl-C stops all four processes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup.sh"
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
rdb_build

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

pd=127.0.0.1:2399
stores=(127.0.0.1:20161 127.0.0.1:20162 127.0.0.1:20163)
peers=(127.0.0.1:20171 127.0.0.1:20172 127.0.0.1:20173)
mkdir -p rdb-data
"$RDB_BIN/rdb-pd" 2>rdb-data/pd.log &
pids+=($!)
for i in 1 2 3; do
  "$RDB_BIN/rdb-server" --pd "$pd" --addr "${stores[$((i - 1))]}" --peer-addr "${peers[$((i - 1))]}" \
    --data-dir "rdb-data/store$i" "$@" \
    2>"rdb-data/store$i.log" &
  pids+=($!)
done
echo "rdb: PD on $pd, stores on ${stores[*]}; logs in ./rdb-data/*.log (Ctrl-C to stop)"

deadline=$(( $(rdb_now_ms) + 20000 ))
region_led() { # region 1 is bootstrapped and PD knows its leader
  "$RDB_BIN/rdb-cli" --pd "$pd" --timeout-ms 1000 -o json region list 2>/dev/null |
    python3 -c 'import json,sys; rs=json.load(sys.stdin)["regions"]; sys.exit(0 if rs and all(r.get("leader") for r in rs) else 1)'
}
until region_led; do
  [ "$(rdb_now_ms)" -lt "$deadline" ] || { echo "rdb: no region with a leader within 20 s; see the logs" >&2; exit 1; }
  sleep 0.2
done
"$RDB_BIN/rdb-cli" --pd "$pd" store list
"$RDB_BIN/rdb-cli" --pd "$pd" region list
endpoints=$(IFS=,; echo "${stores[*]}")
echo
echo "try:  export RDB_ENDPOINTS=$endpoints"
echo "      $RDB_BIN/rdb-cli put hello world && $RDB_BIN/rdb-cli get hello"
echo "      $RDB_BIN/rdb-cli --pd $pd region list"
wait
