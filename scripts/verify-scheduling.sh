#!/usr/bin/env bash
# End-to-end check of PD's scheduling (specs/015-scheduling), using rdb-pd, rdb-server --pd,
# rdb-cli and rdb-load only. Writers run from step 2 to step 6: rdb-load --pd, four writers
# overwriting 300 keys each in turn, logging every acknowledged write and every write whose
# outcome is unknown.
#
# Steps (each printed with its time; a step over its ceiling fails):
#   1. one PD node (a store is down after 3 s of silence, gone after 8 s; regions of at most
#      20 keys merge 1 s after their last split) and three stores (regions split past 100
#      keys) start; region 1 is bootstrapped and elects
#   2. the writers start: at least 8 regions form
#   3. stores 4 and 5 join: every live store holds regions within 2 of the others, and stores
#      4 and 5 lead some (leader and region balance)
#   4. store 2 is killed with -9 for good: every region is back to 3 voters on live stores,
#      none on store 2 (replica repair)
#   5. store 4 is removed (`store remove`): it is drained, then tombstoned (decommission)
#   6. the writers stop: they made progress in every step above, and every logged key holds
#      its last acknowledged value (or a later one whose outcome is unknown)
#   7. all keys but 20 are deleted: PD merges the small regions (at most 3 left), and the 20
#      keys still read back
#   8. every region's replicas hash equal (rdb-cli --pd ... check); `operator list` is printed
# Exits non-zero on the first failure (printing the tail of every log) and always stops every
# process it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
rdb_build

work=$(mktemp -d -t rdb-scheduling.XXXXXX)
declare -A pid
trap rdb_verify_cleanup EXIT
read -r pd_port pd_peer s1 s2 s3 s4 s5 p1 p2 p3 p4 p5 <<<"$(rdb_free_ports 12)"
pd=127.0.0.1:$pd_port
store_addr=(127.0.0.1:$s1 127.0.0.1:$s2 127.0.0.1:$s3 127.0.0.1:$s4 127.0.0.1:$s5)
store_peer=(127.0.0.1:$p1 127.0.0.1:$p2 127.0.0.1:$p3 127.0.0.1:$p4 127.0.0.1:$p5)
pdcli() { "$RDB_BIN/rdb-cli" --pd "$pd" --timeout-ms 5000 "$@"; }
start_store() { # start_store N
  "$RDB_BIN/rdb-server" --pd "$pd" --addr "${store_addr[$(($1 - 1))]}" \
    --peer-addr "${store_peer[$(($1 - 1))]}" --data-dir "$work/store$1" \
    --region-split-keys 100 --split-check-ms 200 >>"$work/store$1.log" 2>&1 &
  pid[store$1]=$!
}
# Acknowledged writes so far, and a check that more came since a count.
acked() { awk '!/ \?$/ { n++ } END { print n + 0 }' "$work/acked.txt"; }
acked_since() { [ "$(acked)" -gt "$1" ]; }
# Fails the step NAME unless the writers were acknowledged a write since COUNT (within 20 s).
writers_went_on() { # writers_went_on COUNT NAME
  wait_for 20000 acked_since "$1" || fail "$2: no write was acknowledged during the step"
}
# Succeeds when the live stores (state up) hold regions within 2 of each other and every store
# id given leads at least one region.
balanced() { # balanced ID...
  pdcli -o json store list | python3 -c '
import json, sys
up = [s for s in json.load(sys.stdin) if s["state"] == "up"]
counts = [s["region_count"] for s in up]
leads = {s["id"]: s["leader_count"] for s in up}
sys.exit(0 if counts and max(counts) - min(counts) <= 2
         and all(leads.get(int(i), 0) >= 1 for i in sys.argv[1:]) else 1)' "$@"
}
store_state() { # store_state ID: up, down, offline or tombstone
  pdcli -o json store list | python3 -c '
import json, sys
print(next(s["state"] for s in json.load(sys.stdin) if s["id"] == int(sys.argv[1])))' "$1"
}
tombstoned() { [ "$(store_state "$1")" = tombstone ]; }
region_count() {
  pdcli -o json region list | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["regions"]))'
}
# One line per live store: id, regions, leaders.
store_summary() {
  pdcli -o json store list | python3 -c '
import json, sys
print(", ".join("store %d: %d regions, %d leading" % (s["id"], s["region_count"], s["leader_count"])
                for s in json.load(sys.stdin) if s["state"] == "up"))'
}
echo "rdb verify-scheduling ($work)"

# 1. PD and three stores.
begin
rdb_pd_config "$work/pd.toml" 11 "$pd" "127.0.0.1:$pd_peer" "$work/pd"
printf '[pd]\nstore_down_after_secs = 3\nmax_store_down_secs = 8\nsplit_merge_interval_secs = 1\nmax_merge_region_keys = 20\n' >> "$work/pd.toml"
"$RDB_BIN/rdb-pd" --config "$work/pd.toml" >>"$work/pd.log" 2>&1 &
pid[pd]=$!
for i in 1 2 3; do start_store "$i"; done
wait_for 20000 rdb_regions_tiled "$pd" 1 || fail "region 1 was not bootstrapped with a leader"
pass "PD and 3 stores up, region 1 leads" 20000

# 2. Writers until the regions split.
begin
"$RDB_BIN/rdb-load" write --pd "$pd" --log "$work/acked.txt" --stop-file "$work/stop" \
  --writers 4 --keys 300 --prefix key >"$work/load.log" 2>&1 &
pid[load]=$!
wait_for 60000 rdb_regions_tiled "$pd" 8 || fail "fewer than 8 regions: $(pdcli region list)"
pass "writers on, $(region_count) regions, $(acked) writes acknowledged" 60000

# 3. Two new stores take their share of regions and leaderships.
begin
before=$(acked)
start_store 4
start_store 5
registered() { rdb_store_id "$pd" "$1" >/dev/null; }
wait_for 20000 registered "${store_addr[3]}" || fail "store 4 did not register with PD"
wait_for 20000 registered "${store_addr[4]}" || fail "store 5 did not register with PD"
id4=$(rdb_store_id "$pd" "${store_addr[3]}")
id5=$(rdb_store_id "$pd" "${store_addr[4]}")
wait_for 90000 balanced "$id4" "$id5" \
  || fail "stores $id4 and $id5 were not given their share within 90 s: $(store_summary)"
writers_went_on "$before" "balance"
pass "stores 4 and 5 (ids $id4, $id5) took regions and leaders" 100000
echo "      $(store_summary)"

# 4. Store 2 is lost for good: its replicas are replaced on the live stores.
begin
before=$(acked)
id2=$(rdb_store_id "$pd" "${store_addr[1]}")
kill -9 "${pid[store2]}"; wait "${pid[store2]}" 2>/dev/null || true; unset "pid[store2]"
wait_for 90000 rdb_replicated_without "$pd" "$id2" \
  || fail "regions not back to 3 voters without store $id2 within 90 s: $(pdcli region list)"
writers_went_on "$before" "repair"
pass "store 2 (id $id2) lost: $(region_count) regions back to 3 voters" 100000

# 5. Store 4 is removed: drained, then tombstoned.
begin
before=$(acked)
pdcli store remove "$id4" > "$work/remove.txt" 2>&1 \
  || fail "store remove $id4 was refused: $(cat "$work/remove.txt")"
wait_for 90000 tombstoned "$id4" \
  || fail "store $id4 was not drained and tombstoned within 90 s: $(pdcli store list)"
wait_for 30000 rdb_replicated_without "$pd" "$id4" \
  || fail "a region still names store $id4 or is short of voters: $(pdcli region list)"
writers_went_on "$before" "decommission"
pass "store 4 (id $id4) removed: drained and tombstoned" 100000

# 6. The writers stop; every write they logged reads back.
begin
touch "$work/stop"
wait "${pid[load]}" || true
unset "pid[load]"
read -r _ n_acked _ n_unknown < <(head -1 "$work/load.log")
"$RDB_BIN/rdb-load" verify --pd "$pd" --log "$work/acked.txt" > "$work/verify.txt" 2>&1 \
  || fail "acknowledged writes did not read back: $(head -5 "$work/verify.txt")"
pass "$n_acked writes acknowledged ($n_unknown unknown): all read back" 30000

# 7. All keys but 20 deleted: PD merges the small regions; the 20 keys still read back.
begin
before_merge=$(region_count)
for w in 0 1 2 3; do
  for chunk in 0 100 200; do
    keys=()
    for n in $(seq "$chunk" $((chunk + 99))); do
      [ "$w" = 0 ] && [ "$n" -lt 20 ] && continue
      keys+=("$(printf 'key-%d-%08d' "$w" "$n")")
    done
    "$RDB_BIN/rdb-cli" --pd "$pd" --regions --timeout-ms 20000 batch delete "${keys[@]}" \
      > "$work/delete.txt" 2>&1 || fail "batch delete refused: $(cat "$work/delete.txt")"
  done
done
few_regions() { [ "$(region_count)" -le 3 ]; }
wait_for 90000 few_regions \
  || fail "$(region_count) regions of $before_merge left 90 s after the deletes: $(pdcli operator list)"
grep -E '^key-0-000000(0[0-9]|1[0-9]) ' "$work/acked.txt" > "$work/kept.txt" || true
"$RDB_BIN/rdb-load" verify --pd "$pd" --log "$work/kept.txt" > "$work/verify-kept.txt" 2>&1 \
  || fail "the 20 kept keys did not read back: $(head -5 "$work/verify-kept.txt")"
pass "all keys but 20 deleted: $before_merge regions merged into $(region_count)" 100000

# 8. The replicas agree; what PD scheduled.
begin
"$RDB_BIN/rdb-cli" --pd "$pd" --timeout-ms 20000 check > "$work/check.txt" 2>&1 \
  || fail "the replicas differ (exit $?): $(cat "$work/check.txt")"
pass "every region's replicas agree" 30000
pdcli operator list
echo "verify-scheduling: all steps passed"
