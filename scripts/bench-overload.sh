#!/usr/bin/env bash
# Overload check on release binaries: a three-node cluster takes a put load far past what it can
# serve (CLIENTS closed-loop clients, 512 by default) for SECONDS (60), and the script prints how
# often leadership changed meanwhile (term and "became leader" lines per node). Raft traffic has
# its own queue ahead of client requests, so heartbeats do not wait behind them: expect none.
#   bash scripts/bench-overload.sh [CLIENTS=512] [SECONDS=60]
# RDB_RELEASE_BIN=DIR uses the binaries in DIR instead of building them (to compare builds).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
clients=${1:-512}
secs=${2:-60}
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
rdb_bench_bin
work=$(mktemp -d -t rdb-overload.XXXXXX)
pids=()
trap rdb_bench_cleanup EXIT
rdb_start_bench_cluster "$work" info
terms() { "$bin/rdb-cli" --endpoints "$endpoints" -o json status 2>/dev/null \
  | python3 -c "import json,sys; print(' '.join(str(n.get('term', '?')) for n in json.load(sys.stdin)))"; }
leaders() { cat "$work"/n*.log | grep -c "became leader" || true; }
before_terms=$(terms); before_leaders=$(leaders)
echo "terms before: $before_terms"
"$bin/rdb-cli" --endpoints "$endpoints" -o json bench --workload put --clients "$clients" \
  --connections 16 --keys 100000 --duration-secs "$secs" 2>/dev/null | tail -n 1
after_terms=$(terms); after_leaders=$(leaders)
echo "terms after:  $after_terms"
echo "elections won during the load: $(( after_leaders - before_leaders ))"
