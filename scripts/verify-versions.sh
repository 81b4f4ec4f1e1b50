#!/usr/bin/env bash
# End-to-end check of versioned keys and namespaces (specs/018-versions), using rdb-server,
# rdb-pd and rdb-cli only.
#
# Steps (each printed with its time):
#   Config-file cluster (three nodes, history_revisions = 50):
#   1. every write gets the next revision; `get -o json` shows create_revision, mod_revision
#      and version; `get --rev` and `scan --rev` read the past
#   2. conditional writes: cas and delete by version and by mod_revision (exit 6 on a mismatch)
#   3. `compact R`: a read below R fails (exit 2, "is compacted"), at R it answers
#   4. automatic compaction: 200 writes later, history older than 50 revisions is gone
#   5. namespaces: create (strong, eventual), list; the same key in three namespaces is three
#      keys; scans stay in theirs; a namespace never created is refused (exit 3); an
#      eventual namespace reads from every node without a read barrier
#   6. every replica hashes the same (versions and history included)
#   PD mode (one PD, three stores, a region split every 100 keys):
#   7. versions written before splits read the same after them, past revisions too, in every
#      region; a namespace's keys spread over regions scan whole and apart from `default`
#   8. revisions are PD timestamps: a later write in another region has a larger one, and a
#      scan at a timestamp is one cut of every region (later writes do not show); a read past
#      PD's newest timestamp is refused
#   9. `compact` along every region (--regions), then every region's replicas hash the same
# Exits non-zero on the first failure and always stops every process it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
rdb_build

work=$(mktemp -d -t rdb-versions.XXXXXX)
declare -A pid
trap rdb_verify_cleanup EXIT
echo "rdb verify-versions ($work)"

# A field of the JSON object on stdin: field NAME.
field() { python3 -c 'import json,sys; v=json.load(sys.stdin).get(sys.argv[1]); print("" if v is None else v)' "$1"; }
# Runs rdb-cli expecting exit code CODE: expect CODE ARGS...; prints its output.
expect() {
  local want=$1 got=0
  shift
  out=$("$@" 2>&1) || got=$?
  [ "$got" = "$want" ] || fail "exit $got (not $want) from: ${*:2}: $out"
  printf '%s' "$out"
}

# --- Config-file cluster.
mkdir -p "$work/three"
rdb_write_config "$work/three" 3
cfg="$work/three/cluster.toml"
printf '[settings]\nhistory_revisions = 50\n' >> "$cfg"
endpoints=$(rdb_endpoints "$cfg")
cli() { "$RDB_BIN/rdb-cli" --endpoints "$endpoints" --timeout-ms 10000 "$@"; }
for i in 1 2 3; do
  "$RDB_BIN/rdb-server" --config "$cfg" --node-id "$i" >>"$work/n$i.log" 2>&1 &
  pid[n$i]=$!
done
wait_for 10000 "$RDB_BIN/rdb-cli" --endpoints "$endpoints" --timeout-ms 500 put boot ok &>/dev/null \
  || fail "the cluster took no write within 10 s"

# 1. Revisions and versions.
begin
r1=$(cli -o json put k v1 | field revision)
r2=$(cli -o json put k v2 | field revision)
[ "$r2" -eq $((r1 + 1)) ] || fail "revisions $r1 then $r2: not the next one"
got=$(cli -o json get k | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["value"], j["create_revision"], j["mod_revision"], j["version"])')
[ "$got" = "v2 $r1 $r2 2" ] || fail "get -o json: '$got', not 'v2 $r1 $r2 2'"
[ "$(cli get k --rev "$r1")" = v1 ] || fail "get --rev $r1 is not v1"
cli put j later >/dev/null
[ "$(cli scan --rev "$r2")" = "$(printf 'boot\tok\nk\tv2')" ] || fail "scan --rev $r2: $(cli scan --rev "$r2")"
pass "revisions, versions and reads at a past revision"

# 2. Conditional writes.
begin
expect 0 cli cas k v3 --expected-version 2 >/dev/null
expect 6 cli cas k v4 --expected-version 2 | grep -q "current value: v3 (version 3," \
  || fail "a failed cas by version does not show the current version"
expect 6 cli delete k --expected-mod-revision "$r1" >/dev/null
mod=$(cli -o json get k | field mod_revision)
expect 0 cli delete k --expected-mod-revision "$mod" >/dev/null
expect 3 cli get k >/dev/null
expect 0 cli cas k again --expected-version 0 >/dev/null
pass "cas and delete by version and by mod_revision"

# 3. Compaction by hand.
begin
now=$(cli -o json put k compact-me | field revision)
[ "$(cli -o json compact "$now" | field compacted)" = "$now" ] || fail "compact $now did not say $now"
expect 2 cli get k --rev "$r2" | grep -q "is compacted (history starts at $now)" \
  || fail "a read below the compacted revision was not refused"
[ "$(cli get k --rev "$now")" = compact-me ] || fail "a read at the compacted revision failed"
expect 2 cli compact $((now + 1000)) | grep -q "not reached" || fail "compact above the last was not refused"
pass "compact R refuses reads below R"

# 4. Automatic compaction: 50 revisions kept.
begin
seq 1 200 | awk '{printf "auto%03d v%d%s", $1, $1, (NR % 20 ? " " : "\n")}' > "$work/batches"
while read -r line; do
  # shellcheck disable=SC2086
  cli batch put $line >/dev/null || fail "a batch put failed"
done < "$work/batches"
for i in $(seq 1 60); do cli put auto-rev "$i" >/dev/null; done
last=$(cli -o json get auto-rev | field mod_revision)
expect 2 cli get auto-rev --rev $((last - 55)) | grep -q "is compacted" \
  || fail "history older than 50 revisions was still readable"
[ "$(cli get auto-rev --rev $((last - 45)))" = 15 ] || fail "history within 50 revisions was not readable"
pass "automatic compaction keeps the last 50 revisions"

# 5. Namespaces.
begin
expect 0 cli namespace create apps --mode strong >/dev/null
expect 0 cli namespace create cache --mode eventual >/dev/null
[ "$(cli namespace list | awk 'NR > 1 {print $1 ":" $2}' | paste -sd' ')" = "default:strong apps:strong cache:eventual" ] \
  || fail "namespace list: $(cli namespace list)"
cli -n apps put k in-apps >/dev/null
RDB_NAMESPACE=cache cli put k in-cache >/dev/null
[ "$(cli get k)" = compact-me ] || fail "default's k changed"
[ "$(cli -n apps get k)" = in-apps ] || fail "apps' k: $(cli -n apps get k)"
[ "$(cli -n apps scan)" = "$(printf 'k\tin-apps')" ] || fail "a scan of apps: $(cli -n apps scan)"
cli scan --limit 0 | grep -q in-apps && fail "a scan of default shows a key of apps"
expect 3 cli -n nosuch get k | grep -q "does not exist" || fail "a namespace never created was not refused"
for i in 1 2 3; do
  node=$(rdb_endpoint_of "$cfg" "$i")
  read_k() { [ "$("$RDB_BIN/rdb-cli" --endpoints "$node" -n cache get k 2>/dev/null)" = in-cache ]; }
  wait_for 5000 read_k || fail "node $i did not serve the eventual namespace's k"
done
pass "namespaces keep their keys apart"

# 6. The replicas agree, versions and history included.
begin
cli check > "$work/check.txt" 2>&1 || fail "the replicas differ: $(cat "$work/check.txt")"
pass "every replica hashes the same"
for i in 1 2 3; do kill "${pid[n$i]}"; wait "${pid[n$i]}" 2>/dev/null || true; unset "pid[n$i]"; done

# --- PD mode.
read -r pd_port pd_peer s1 s2 s3 p1 p2 p3 <<<"$(rdb_free_ports 8)"
pd=127.0.0.1:$pd_port
rdb_pd_config "$work/pd.toml" 9 "$pd" "127.0.0.1:$pd_peer" "$work/pd"
"$RDB_BIN/rdb-pd" --config "$work/pd.toml" >>"$work/pd.log" 2>&1 &
pid[pd]=$!
stores=(127.0.0.1:$s1 127.0.0.1:$s2 127.0.0.1:$s3)
peers=(127.0.0.1:$p1 127.0.0.1:$p2 127.0.0.1:$p3)
for i in 0 1 2; do
  "$RDB_BIN/rdb-server" --pd "$pd" --addr "${stores[$i]}" --peer-addr "${peers[$i]}" \
    --data-dir "$work/store$i" --region-split-keys 100 --split-check-ms 200 \
    >>"$work/store$i.log" 2>&1 &
  pid[store$i]=$!
done
rcli() { "$RDB_BIN/rdb-cli" --pd "$pd" --regions --timeout-ms 20000 "$@"; }
wait_for 20000 rdb_regions_tiled "$pd" 1 || fail "region 1 was not bootstrapped with a leader"

# 7. Versions across splits.
begin
r1=$(rcli -o json put key00000 first | field revision)
r2=$(rcli -o json put key00000 second | field revision)
seq -f 'key%05g' 1 600 | awk '{printf "%s v-%s%s", $1, $1, (NR % 40 ? " " : "\n")}' > "$work/pd-batches"
xargs -P 4 -L 1 "$RDB_BIN/rdb-cli" --pd "$pd" --regions --timeout-ms 20000 batch put \
  < "$work/pd-batches" >/dev/null || fail "a batch put failed"
rcli namespace create tenant --mode strong >/dev/null
seq -f 'key%05g' 1 300 | awk '{printf "%s t-%s%s", $1, $1, (NR % 40 ? " " : "\n")}' \
  | xargs -P 4 -L 1 "$RDB_BIN/rdb-cli" --pd "$pd" --regions -n tenant --timeout-ms 20000 batch put \
  >/dev/null || fail "a batch put in namespace tenant failed"
wait_for 30000 rdb_regions_tiled "$pd" 4 || fail "fewer than 4 regions: $(rcli region list)"
got=$(rcli -o json get key00000 | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["value"], j["create_revision"], j["mod_revision"], j["version"])')
[ "$got" = "second $r1 $r2 2" ] || fail "after the splits, get -o json: '$got', not 'second $r1 $r2 2'"
[ "$(rcli get key00000 --rev "$r1")" = first ] || fail "after the splits, get --rev $r1 is not 'first'"
last_key=key00600
mod=$(rcli -o json get "$last_key" | field mod_revision)
[ "$(rcli get "$last_key" --rev "$mod")" = "v-$last_key" ] || fail "a read at $last_key's own revision failed"
[ "$(rcli scan --limit 0 | wc -l)" = 601 ] || fail "a scan of default over every region: $(rcli scan --limit 0 | wc -l) keys, not 601"
[ "$(rcli -n tenant scan --limit 0 | cut -f2 | grep -c '^t-')" = 300 ] \
  || fail "a scan of tenant over every region: $(rcli -n tenant scan --limit 0 | wc -l) lines"
n=$(rcli -o json region list | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["regions"]))')
pass "versions, past reads and namespaces across $n regions"

# 8. Revisions are PD timestamps: they order writes across regions, and a scan at one of them
#    is one cut of every region (idle regions advance to it first).
begin
ra=$(rcli -o json put key00001 ordered-a | field revision)
rb=$(rcli -o json put key00599 ordered-b | field revision)
[ "$rb" -gt "$ra" ] || fail "a later write in another region got revision $rb, not above $ra"
cut=$("$RDB_BIN/rdb-cli" --pd "$pd" -o json tso | field timestamp)
[ "$cut" -gt "$rb" ] || fail "PD's timestamp $cut is not above the last write's revision $rb"
rcli put key00001 after-the-cut >/dev/null
rcli put key00599 after-the-cut >/dev/null
rcli scan --limit 0 --rev "$cut" > "$work/cut.txt"
[ "$(wc -l < "$work/cut.txt")" = 601 ] || fail "the scan at $cut has $(wc -l < "$work/cut.txt") keys, not 601"
grep -q after-the-cut "$work/cut.txt" && fail "the scan at $cut shows a write made after it"
grep -q "^key00001	ordered-a$" "$work/cut.txt" || fail "the scan at $cut misses key00001's value then"
grep -q "^key00599	ordered-b$" "$work/cut.txt" || fail "the scan at $cut misses key00599's value then"
expect 2 rcli get key00001 --rev $((cut + (3600000 << 16))) | grep -q "not reached" \
  || fail "a read an hour past PD's newest timestamp was not refused"
pass "revisions order writes across regions; a scan at a timestamp is one cut"

# 9. Compaction along every region; the replicas agree.
begin
rcli compact "$r2" >/dev/null || fail "compact along the regions failed"
expect 2 rcli get key00000 --rev "$r1" | grep -q "is compacted" || fail "a read below the compaction answered"
"$RDB_BIN/rdb-cli" --pd "$pd" --timeout-ms 20000 check > "$work/pd-check.txt" 2>&1 \
  || fail "the replicas differ: $(cat "$work/pd-check.txt")"
pass "compact along every region; every region's replicas agree"
echo "verify-versions: all steps passed"
