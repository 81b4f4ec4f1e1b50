#!/usr/bin/env bash
# End-to-end check of regions (PD mode), using rdb-pd, rdb-server --pd and rdb-cli only.
#
# Steps (each printed with its time):
#   1. one PD node and three stores start; region 1 is bootstrapped and elects
#   2. 1,200 keys are written in batches through the PD-mode client (rdb-cli --regions) with a
#      split threshold of 100 keys: at least 8 regions form
#   3. every key reads back with its value (batch gets, cut by region the same way)
#   (steps 4 and 5 go through --endpoints: the stores route requests without a region context)
#   4. a full scan returns every key, once, in order
#   5. a store is killed with -9: every region still serves a write and a read
#   6. the store restarts and holds every key again (its own, serializable view)
#   7. every region's replicas hash equal at one index of its log (rdb-cli --pd ... check)
#   8. a fourth store starts; the first region moves a replica to it through its own log: a
#      learner there, promoted, made leader, and store 1's peer removed (rdb-cli --pd ...
#      member ... --region, leader transfer --region); every key reads back, `status` shows
#      the region on store 4 as leader, and the replicas agree again
#   9. a backup of the cluster (rdb-cli --pd ... snapshot save: every region from its leader)
#      is restored into a new PD and three new stores (rdb-server --restore FILE --pd ...
#      --data-dir ...): the new PD has the same regions, every key reads back with its value,
#      and the new cluster takes writes
# Exits non-zero on the first failure and always stops every process it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
rdb_build

work=$(mktemp -d -t rdb-regions.XXXXXX)
declare -A pid
trap rdb_verify_cleanup EXIT
keys=1200
read -r pd_port pd_peer s1 s2 s3 s4 p1 p2 p3 p4 pd2_port pd2_peer r1 r2 r3 q1 q2 q3 \
  <<<"$(rdb_free_ports 18)"
pd=127.0.0.1:$pd_port
store_addr=(127.0.0.1:$s1 127.0.0.1:$s2 127.0.0.1:$s3 127.0.0.1:$s4)
store_peer=(127.0.0.1:$p1 127.0.0.1:$p2 127.0.0.1:$p3 127.0.0.1:$p4)
endpoints=$(IFS=,; echo "${store_addr[*]:0:3}")
cli() { "$RDB_BIN/rdb-cli" --endpoints "$endpoints" --timeout-ms 10000 "$@"; }
pdcli() { "$RDB_BIN/rdb-cli" --pd "$pd" --timeout-ms 5000 "$@"; }
start_store() { # start_store N
  "$RDB_BIN/rdb-server" --pd "$pd" --addr "${store_addr[$(($1 - 1))]}" \
    --peer-addr "${store_peer[$(($1 - 1))]}" --data-dir "$work/store$1" \
    --region-split-keys 100 --split-check-ms 200 >>"$work/store$1.log" 2>&1 &
  pid[store$1]=$!
}
echo "rdb verify-regions ($work)"

# 1. PD and three stores.
begin
rdb_pd_config "$work/pd.toml" 9 "$pd" "127.0.0.1:$pd_peer" "$work/pd"
# Step 8 moves a replica and a leadership by hand: PD's balancers would move them on
# (scripts/verify-scheduling.sh checks those).
printf '[pd]\nbalance_leaders = false\nbalance_regions = false\n' >> "$work/pd.toml"
"$RDB_BIN/rdb-pd" --config "$work/pd.toml" >>"$work/pd.log" 2>&1 &
pid[pd]=$!
for i in 1 2 3; do start_store "$i"; done
wait_for 20000 rdb_regions_tiled "$pd" 1 || fail "region 1 was not bootstrapped with a leader"
pass "PD and 3 stores up, region 1 leads"

# 2. Writes that split: batches of 40 keys, four at a time, through the PD-mode client (each
# batch is cut by region as regions split under it).
begin
seq -f 'key%05g' 1 "$keys" | awk '{printf "%s v-%s%s", $1, $1, (NR % 40 ? " " : "\n")}' > "$work/batches"
xargs -P 4 -L 1 "$RDB_BIN/rdb-cli" --pd "$pd" --regions --timeout-ms 20000 batch put \
  < "$work/batches" >/dev/null || fail "a batch put failed"
wait_for 30000 rdb_regions_tiled "$pd" 8 || fail "fewer than 8 regions after $keys keys: $(pdcli region list)"
n=$(pdcli -o json region list | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["regions"]))')
pass "$keys keys written, $n regions"
pdcli region list

# 3. Every key reads back, 100 at a time (a batch get is cut by region too).
begin
seq -f 'key%05g' 1 "$keys" | xargs -n 100 "$RDB_BIN/rdb-cli" --pd "$pd" --regions \
  --timeout-ms 10000 batch get > "$work/got.txt" || fail "a batch get failed"
seq -f 'key%05g' 1 "$keys" | awk '{print $1 "\tv-" $1}' > "$work/want.txt"
cmp -s "$work/got.txt" "$work/want.txt" || fail "keys did not read back: $(diff "$work/got.txt" "$work/want.txt" | head -5)"
pass "every key reads back"

# 4. A full scan, in order.
begin
cli scan --limit 0 | cut -f1 > "$work/scan.txt"
seq -f 'key%05g' 1 "$keys" > "$work/expected.txt"
cmp -s "$work/scan.txt" "$work/expected.txt" || fail "the scan differs from the keys written ($(wc -l < "$work/scan.txt") lines)"
pass "a full scan returns all $keys keys in order"

# 5. Kill a store: every region still serves.
begin
kill -9 "${pid[store1]}"; wait "${pid[store1]}" 2>/dev/null || true; unset "pid[store1]"
starts=$(pdcli -o json region list | python3 -c '
import json, sys
for r in json.load(sys.stdin)["regions"]: print(r["start_key"])')
while read -r start; do
  k="${start}0after-kill"
  out=$(cli put "$k" ok 2>&1) || fail "region starting at '$start' took no write: $out"
  [ "$(cli get "$k")" = ok ] || fail "region starting at '$start' did not read back"
done <<<"$starts"
pass "store 1 killed: all $n regions serve writes and reads"

# 6. It comes back and catches up.
begin
start_store 1
cli scan --limit 0 | cut -f1 > "$work/all.txt"
caught_up() {
  "$RDB_BIN/rdb-cli" --endpoints "${store_addr[0]}" --timeout-ms 2000 scan --serializable --limit 0 \
    | cut -f1 | cmp -s - "$work/all.txt"
}
wait_for 30000 caught_up || fail "store 1 did not catch up within 30 s"
pass "store 1 restarted and holds every key"

# 7. Every region's replicas hold the same data: hashed at one index of each region's log.
begin
"$RDB_BIN/rdb-cli" --pd "$pd" --timeout-ms 20000 check > "$work/check.txt" 2>&1 \
  || fail "the replicas differ (exit $?): $(cat "$work/check.txt")"
cat "$work/check.txt"
pass "every region's replicas agree"

# 8. A replica of the first region moves from store 1 to a new fourth store.
begin
start_store 4
store_id_at() { rdb_store_id "$pd" "$1"; } # store_id_at ADDR
registered() { store_id_at "${store_addr[3]}" >/dev/null 2>&1; }
wait_for 20000 registered || fail "store 4 did not register with PD"
s1_id=$(store_id_at "${store_addr[0]}")
s4_id=$(store_id_at "${store_addr[3]}")
read -r region old_peer <<<"$(pdcli -o json region list | python3 -c '
import json, sys
r = json.load(sys.stdin)["regions"][0]
print(r["id"], next(p["id"] for p in r["peers"] if p["store_id"] == int(sys.argv[1])))' "$s1_id")"
pdcli member add --region "$region" --store "$s4_id" --learner > "$work/add.txt" \
  || fail "adding a learner of region $region on store $s4_id failed: $(cat "$work/add.txt")"
new_peer=$(pdcli -o json member list --region "$region" | python3 -c '
import json, sys
print(next(p["id"] for p in json.load(sys.stdin)["peers"] if p["store_id"] == int(sys.argv[1])))' "$s4_id")
promoted() { pdcli member promote --region "$region" "$new_peer" >/dev/null 2>&1; }
wait_for 30000 promoted || fail "learner $new_peer of region $region was never promoted"
pdcli leader transfer --region "$region" "$new_peer" >/dev/null \
  || fail "leadership of region $region did not move to peer $new_peer"
pdcli member remove --region "$region" "$old_peer" >/dev/null \
  || fail "peer $old_peer of region $region (store 1) was not removed"
moved() {
  pdcli -o json region list | python3 -c '
import json, sys
r = next(r for r in json.load(sys.stdin)["regions"] if r["id"] == int(sys.argv[1]))
stores = sorted(p["store_id"] for p in r["peers"])
sys.exit(0 if int(sys.argv[2]) in stores and int(sys.argv[3]) not in stores and len(stores) == 3
         and not any(p["learner"] for p in r["peers"]) else 1)' "$region" "$s4_id" "$s1_id"
}
wait_for 20000 moved || fail "PD does not show region $region moved: $(pdcli region list)"
seq -f 'key%05g' 1 "$keys" | xargs -n 100 "$RDB_BIN/rdb-cli" --pd "$pd" --regions \
  --timeout-ms 10000 batch get > "$work/got2.txt" || fail "a batch get failed after the move"
cmp -s "$work/got2.txt" "$work/want.txt" || fail "keys did not read back after the move"
pdcli status > "$work/status.txt" || fail "status failed: $(cat "$work/status.txt")"
grep -A 100 "regions of store $s4_id:" "$work/status.txt" | grep -qE "^$region +$new_peer +leader " \
  || fail "status does not show region $region led on store $s4_id: $(cat "$work/status.txt")"
"$RDB_BIN/rdb-cli" --pd "$pd" --timeout-ms 20000 check > "$work/check2.txt" 2>&1 \
  || fail "the replicas differ after the move (exit $?): $(cat "$work/check2.txt")"
pass "region $region moved from store $s1_id to store $s4_id (peer $new_peer leads)"

# 9. A backup of every region, restored into a new PD cluster and three new stores.
begin
pdcli -o json region list > "$work/regions-saved.json"
"$RDB_BIN/rdb-cli" --pd "$pd" --timeout-ms 20000 snapshot save "$work/cluster.rdb" \
  > "$work/save.txt" 2>&1 || fail "the backup failed: $(cat "$work/save.txt")"
head -1 "$work/save.txt"
cli scan --limit 0 > "$work/source-scan.txt" || fail "the source scan failed"
pd2=127.0.0.1:$pd2_port
rdb_pd_config "$work/pd2.toml" 10 "$pd2" "127.0.0.1:$pd2_peer" "$work/pd2"
"$RDB_BIN/rdb-pd" --config "$work/pd2.toml" >>"$work/pd2.log" 2>&1 &
pid[pd2]=$!
pd2_up() { "$RDB_BIN/rdb-cli" --pd "$pd2" --timeout-ms 2000 tso >/dev/null 2>&1; }
wait_for 20000 pd2_up || fail "the new PD did not start"
"$RDB_BIN/rdb-server" --restore "$work/cluster.rdb" --pd "$pd2" \
  --data-dir "$work/restored1" --data-dir "$work/restored2" --data-dir "$work/restored3" \
  > "$work/restore.txt" 2>&1 || fail "the restore failed: $(cat "$work/restore.txt")"
cat "$work/restore.txt"
raddr=(127.0.0.1:$r1 127.0.0.1:$r2 127.0.0.1:$r3)
rpeer=(127.0.0.1:$q1 127.0.0.1:$q2 127.0.0.1:$q3)
for i in 1 2 3; do
  "$RDB_BIN/rdb-server" --pd "$pd2" --addr "${raddr[$((i - 1))]}" --peer-addr "${rpeer[$((i - 1))]}" \
    --data-dir "$work/restored$i" --region-split-keys 100 --split-check-ms 200 \
    >>"$work/restored$i.log" 2>&1 &
  pid[restored$i]=$!
done
saved=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["regions"]))' \
  "$work/regions-saved.json")
wait_for 30000 rdb_regions_tiled "$pd2" "$saved" || fail "the new PD shows no leader for every region"
same_regions() {
  "$RDB_BIN/rdb-cli" --pd "$pd2" -o json region list | python3 -c '
import json, sys
ranges = lambda rs: [(r["id"], r["start_key"], r["end_key"]) for r in rs["regions"]]
sys.exit(0 if ranges(json.load(sys.stdin)) == ranges(json.load(open(sys.argv[1]))) else 1)' \
    "$work/regions-saved.json"
}
same_regions || fail "the new PD's regions are not the saved ones: $("$RDB_BIN/rdb-cli" --pd "$pd2" region list)"
rcli() { "$RDB_BIN/rdb-cli" --endpoints "$(IFS=,; echo "${raddr[*]}")" --timeout-ms 10000 "$@"; }
rcli scan --limit 0 > "$work/restored-scan.txt" || fail "the restored scan failed"
cmp -s "$work/restored-scan.txt" "$work/source-scan.txt" \
  || fail "the restored cluster's keys differ: $(diff "$work/restored-scan.txt" "$work/source-scan.txt" | head -5)"
seq -f 'key%05g' 1 "$keys" | xargs -n 100 "$RDB_BIN/rdb-cli" --pd "$pd2" --regions \
  --timeout-ms 10000 batch get > "$work/got3.txt" || fail "a batch get failed on the restored cluster"
cmp -s "$work/got3.txt" "$work/want.txt" || fail "keys did not read back from the restored cluster"
"$RDB_BIN/rdb-cli" --pd "$pd2" --regions --timeout-ms 10000 put restored-key yes >/dev/null \
  || fail "the restored cluster took no write"
pass "backup of $saved regions restored into a new PD cluster: same regions, every key reads back"
echo "verify-regions: all steps passed"
