#!/usr/bin/env bash
# Replica repair and rebalance under load (specs/015-scheduling): how long PD takes to restore
# full replication after a store holding SIZE_MB of data is lost, how long a new store takes to
# get its share, and the put throughput clients see before, during and after each.
#
# One rdb-pd node (a store is down after 3 s of silence, gone after 10 s: [pd]
# store_down_after_secs = 3, max_store_down_secs = 10, short to keep runs short; the defaults
# are 30 s and 30 min) and four stores (regions split at about 1/14 of the data, as 96 MiB
# regions split 1.3 GB). `rdb-cli --regions bench --preload` writes SIZE_MB * 4/3 of values, so
# that each store holds about SIZE_MB (three replicas on four stores); PD balances them. Then:
#   before     put for SECONDS
#   repair     one store is killed with -9 and never comes back; put runs from the kill until
#              every region has three voters on live stores again (the time includes the 10 s
#              PD waits before it counts the store gone)
#   after      put for SECONDS
#   rebalance  a fifth, empty store joins; put runs until PD has moved it its share (every live
#              store's region count within 2 of the others and no operator running)
# Every put phase is `rdb-cli --regions bench --workload put` with CLIENTS clients over 8
# connections, VALUE_SIZE-byte values on the preloaded keys (uniform), so the data's size stays
# the same. A phase that ends on an event is stopped with SIGINT (the bench prints what it did).
# Prints each phase, then a table, then the longest silence PD saw of a running store (store
# heartbeats go every 2 s from each store's PD worker, however busy its task: 3 s / 10 s are
# enough only because of that; a run whose longest silence nears 3 s needs them longer).
# Disk: the stores keep snapshot files of their regions (`snap/r<ID>`, two of about 100 MB each
# for a 512 MB run) beside their data; 512 MB took up to 11 GB (1 GB: over 15 GB free).
#
# Usage:
#   bash scripts/bench-repair.sh [--bin-dir DIR] [--size-mb N] [--seconds S] [--clients C]
#                                [--value-size B]
# --bin-dir  binaries to run (default target/release; build them first:
#            cargo build --release --workspace --bins)
# --size-mb  data on each store, so on the lost one (default 1024; e.g. 50 with debug binaries
#            to check the script works)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
bin=$root/target/release
size_mb=1024
secs=10
clients=64
value=256
while [ $# -gt 0 ]; do
  case $1 in
    --bin-dir) bin=$2; shift 2 ;;
    --size-mb) size_mb=$2; shift 2 ;;
    --seconds) secs=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --value-size) value=$2; shift 2 ;;
    *) echo "bench-repair: unknown argument $1 (see the usage at the top of the script)" >&2; exit 2 ;;
  esac
done
for b in rdb-pd rdb-server rdb-cli; do
  [ -x "$bin/$b" ] || { echo "bench-repair: no $bin/$b: build it first (or pass --bin-dir)" >&2; exit 2; }
done
# rdb_regions_tiled and rdb_store_id run rdb-cli from RDB_BIN; wait_for polls every 0.5 s, so
# that the polling takes little from the stores and the bench.
RDB_BIN=$bin
RDB_WAIT_EVERY=0.5

work=$(mktemp -d -t rdb-bench-repair.XXXXXX)
declare -A pid
# The verify scripts' EXIT trap: kills every process in `pid`, keeps the logs on failure.
trap rdb_verify_cleanup EXIT
read -r pd_port pd_peer s1 s2 s3 s4 s5 p1 p2 p3 p4 p5 <<<"$(rdb_free_ports 12)"
pd=127.0.0.1:$pd_port
store_addr=(127.0.0.1:$s1 127.0.0.1:$s2 127.0.0.1:$s3 127.0.0.1:$s4 127.0.0.1:$s5)
store_peer=(127.0.0.1:$p1 127.0.0.1:$p2 127.0.0.1:$p3 127.0.0.1:$p4 127.0.0.1:$p5)
# The data: SIZE_MB * 4/3 in all, in keys of 14 bytes (bench-NNNNNNNN) and VALUE_SIZE bytes.
total=$(( size_mb * 1024 * 1024 * 4 / 3 ))
keys=$(( total / (value + 14) ))
split_size=$(( total / 14 ))
pdcli() { "$bin/rdb-cli" --pd "$pd" --timeout-ms 5000 "$@"; }
start_store() { # start_store N
  "$bin/rdb-server" --pd "$pd" --addr "${store_addr[$(($1 - 1))]}" \
    --peer-addr "${store_peer[$(($1 - 1))]}" --data-dir "$work/store$1" \
    --region-split-size "$split_size" --split-check-ms 2000 >>"$work/store$1.log" 2>&1 &
  pid[store$1]=$!
}
# Succeeds when UP stores are up, hold regions within SPREAD of each other, and no operator
# runs (PD's balancers leave stores one apart alone). A store that PD counts down for a moment
# is not left out of the count.
settled() { # settled SPREAD UP
  pdcli -o json store list | python3 -c '
import json, sys
c = [s["region_count"] for s in json.load(sys.stdin) if s["state"] == "up"]
ok = len(c) == int(sys.argv[2]) and max(c) - min(c) <= int(sys.argv[1])
sys.exit(0 if ok else 1)' "$1" "$2" || return 1
  pdcli -o json operator list | python3 -c '
import json, sys
sys.exit(0 if not any(o["status"] == "running" for o in json.load(sys.stdin)) else 1)'
}
# Regions with a peer on store ID and their approximate bytes: "N BYTES".
held_by() { # held_by ID
  pdcli -o json region list | python3 -c '
import json, sys
rs = [r for r in json.load(sys.stdin)["regions"]
      if any(p["store_id"] == int(sys.argv[1]) for p in r["peers"])]
print(len(rs), sum(r["approximate_size"] for r in rs))' "$1"
}
bench() { # bench ARGS...: one put phase, its JSON summary on stdout
  "$bin/rdb-cli" --pd "$pd" --regions -o json bench --workload put --keys "$keys" \
    --value-size "$value" --clients "$clients" --connections 8 "$@" 2>>"$work/bench.log" | tail -n 1
}
# Runs a put phase from now until CMD... succeeds (checked every 0.5 s, at most LIMIT_S
# seconds), then stops it with SIGINT; sets `phase_json` (the bench's summary) and `phase_s`.
phase_until() { # phase_until LIMIT_S CMD...
  local limit=$1 started b out=$work/phase.json
  shift
  started=$(rdb_now_ms)
  "$bin/rdb-cli" --pd "$pd" --regions -o json bench --workload put --keys "$keys" \
    --value-size "$value" --clients "$clients" --connections 8 --duration-secs 100000 \
    >"$out" 2>>"$work/bench.log" &
  b=$!
  pid[bench]=$b
  wait_for $(( limit * 1000 )) "$@" || fail "$1 not done within $limit s"
  phase_s=$(python3 -c "print(($(rdb_now_ms) - $started) / 1000)")
  kill -INT "$b"
  wait "$b" || fail "the bench failed: $(tail -n 5 "$work/bench.log")"
  unset "pid[bench]"
  phase_json=$(tail -n 1 "$out")
}
# PD's view of the store heartbeats, polled every second in the background ("MS ID STATE
# SILENT_MS" lines): the longest silence of a running store, and how often one counted down.
watch_beats() {
  while :; do
    pdcli -o json store list 2>/dev/null | python3 -c '
import json, sys, time
for s in json.load(sys.stdin):
    print(int(time.time() * 1000), s["id"], s["state"], s["last_heartbeat_ms_ago"])' \
      >>"$work/beats.txt" || true
    sleep 1
  done
}
results="$work/results"
record() { # record PHASE SECONDS JSON: one row of the table
  echo "$1 $2 $3" >> "$results"
  python3 -c '
import json, sys
r = json.loads(sys.argv[3])
print("%-10s %7.1f s  %8.0f put/s  p50 %6.2f ms  p99 %7.2f ms  errors %d" % (
    sys.argv[1], float(sys.argv[2]), r["ops_per_sec"], r["p50_ms"], r["p99_ms"], r["errors"]))' "$@"
}

echo "bench-repair: $size_mb MB per store, put $clients/8 of $value-byte values, $bin ($work)"
rdb_pd_config "$work/pd.toml" 12 "$pd" "127.0.0.1:$pd_peer" "$work/pd"
printf '[pd]\nstore_down_after_secs = 3\nmax_store_down_secs = 10\n[settings]\nlog_level = "warn"\n' \
  >> "$work/pd.toml"
"$bin/rdb-pd" --config "$work/pd.toml" >>"$work/pd.log" 2>&1 &
pid[pd]=$!
for i in 1 2 3 4; do start_store "$i"; done
wait_for 30000 rdb_regions_tiled "$pd" 1 || fail "region 1 was not bootstrapped with a leader"
watch_beats &
pid[beats]=$!

# Load, then let PD spread the regions over the four stores.
begin
bench --preload --ops 1 >/dev/null || fail "the preload failed: $(tail -n 5 "$work/bench.log")"
wait_for 1800000 settled 2 4 || fail "the regions did not settle on four stores: $(pdcli store list)"
pass "loaded $keys keys ($(( total / 1048576 )) MB), $(pdcli -o json region list |
  python3 -c 'import json,sys; print(len(json.load(sys.stdin)["regions"]))') regions, balanced"
pdcli store list

# Before.
json=$(bench --duration-secs "$secs") || fail "the bench failed: $(tail -n 5 "$work/bench.log")"
record before "$secs" "$json"

# Repair: the fourth store is lost for good.
lost=$(rdb_store_id "$pd" "${store_addr[3]}")
read -r lost_regions lost_bytes <<<"$(held_by "$lost")"
killed_at=$(rdb_now_ms)
kill -9 "${pid[store4]}"; wait "${pid[store4]}" 2>/dev/null || true; unset "pid[store4]"
phase_until 3600 rdb_replicated_without "$pd" "$lost"
record repair "$phase_s" "$phase_json"
echo "           the lost store (PD id $lost) held $lost_regions regions, $(( lost_bytes / 1048576 )) MB: all back to 3 voters $phase_s s after the kill"

# After.
json=$(bench --duration-secs "$secs") || fail "the bench failed: $(tail -n 5 "$work/bench.log")"
record after "$secs" "$json"

# Rebalance onto a new, empty store.
start_store 5
registered() { rdb_store_id "$pd" "${store_addr[4]}" >/dev/null; }
wait_for 30000 registered || fail "store 5 did not register with PD"
new=$(rdb_store_id "$pd" "${store_addr[4]}")
# A store that just registered counts 0 regions: wait for its first move before "settled".
took_some() { [ "$(held_by "$new" | cut -d' ' -f1)" -gt 0 ] && settled 2 4; }
phase_until 3600 took_some
record rebalance "$phase_s" "$phase_json"
read -r new_regions new_bytes <<<"$(held_by "$new")"
echo "           the new store (PD id $new) took $new_regions regions, $(( new_bytes / 1048576 )) MB in $phase_s s"

echo
python3 - "$results" "$size_mb" <<'PY'
import json, sys
print("| phase (%s MB per store) | seconds | put ops/s | p50 ms | p99 ms | errors |" % sys.argv[2])
print("|---|---|---|---|---|---|")
for line in open(sys.argv[1]):
    phase, secs, js = line.split(" ", 2)
    r = json.loads(js)
    print("| %s | %.1f | %.0f | %.2f | %.2f | %d |" % (
        phase, float(secs), r["ops_per_sec"], r["p50_ms"], r["p99_ms"], r["errors"]))
PY
python3 - "$work/beats.txt" "$lost" "$killed_at" <<'PY'
import sys
lost, killed = int(sys.argv[2]), int(sys.argv[3])
worst, who, down, polls = 0, 0, 0, 0
for line in open(sys.argv[1]):
    at, sid, state, silent = line.split()
    at, sid, silent = int(at), int(sid), int(silent)
    if sid == lost and at >= killed:
        continue
    polls += 1
    if silent > worst:
        worst, who = silent, sid
    down += state != "up"
print("store heartbeats: longest silence of a running store %d ms (PD id %d); "
      "%d of %d looks (one a second per store) saw a running store down" % (worst, who, down, polls))
PY
pdcli operator list > "$work/operators.txt" 2>&1 || true
echo "operators: $(grep -c finished "$work/operators.txt" || true) finished lately (rdb-cli --pd ... operator list)"
