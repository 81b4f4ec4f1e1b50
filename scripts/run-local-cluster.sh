#!/usr/bin/env bash
# Sets up the machine, builds rdb, and runs a local three-node cluster in the foreground from
# scripts/local-cluster.toml (client ports 2379, 2479, 2579; data in ./rdb-data/).
# Ctrl-C stops all three nodes. Pass --single for the one-node default instead.
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

if [ "${1:-}" = "--single" ]; then
  echo "rdb: single node on 127.0.0.1:2379, data in ./rdb-data/single (Ctrl-C to stop)"
  "$RDB_BIN/rdb-server" &
  pids+=($!)
  endpoints=127.0.0.1:2379
else
  config="$root/scripts/local-cluster.toml"
  mkdir -p rdb-data
  for i in 1 2 3; do
    "$RDB_BIN/rdb-server" --config "$config" --node-id "$i" 2>"rdb-data/node$i.log" &
    pids+=($!)
  done
  endpoints=$(rdb_endpoints "$config")
  echo "rdb: three nodes from $config, logs in ./rdb-data/node*.log (Ctrl-C to stop)"
fi

deadline=$(( $(rdb_now_ms) + 15000 ))
until RDB_ENDPOINTS=$endpoints "$RDB_BIN/rdb-cli" --timeout-ms 1000 status 2>/dev/null | grep -q leader; do
  [ "$(rdb_now_ms)" -lt "$deadline" ] || { echo "rdb: no leader within 15 s; see the logs" >&2; exit 1; }
  sleep 0.2
done
RDB_ENDPOINTS=$endpoints "$RDB_BIN/rdb-cli" status
echo
echo "try:  export RDB_ENDPOINTS=$endpoints"
echo "      $RDB_BIN/rdb-cli put hello world && $RDB_BIN/rdb-cli get hello"
wait
