#!/usr/bin/env bash
# Replacing a dead node, then a rolling restart, with writes going on; rdb-server, rdb-cli and
# rdb-load (a writer that logs every acknowledged write) only. The README's procedure, run.
#
# Steps (each printed with its time):
#   1. three nodes, writers start
#   2. node 3 is killed (kill -9) and its data deleted
#   3. node 4 is added as a learner                 (rdb-cli member add 4 ... --learner)
#   4. node 4 starts with --join and catches up
#   5. node 4 is promoted to voter                  (rdb-cli member promote 4)
#   6. node 3 is removed                            (rdb-cli member remove 3)
#   7. no acknowledged write is lost; replicas are identical (rdb-cli check)
#   8. rolling restart of nodes 1, 2 and 4 (SIGTERM: a leader hands over first) with writes
#      going on, in which no client write ends in error
# Exits non-zero on the first failure and always stops every process it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
rdb_build

work=$(mktemp -d -t rdb-membership.XXXXXX)
declare -A pid
trap rdb_verify_cleanup EXIT

cli() { "$RDB_BIN/rdb-cli" "$@"; }
# fail, begin, pass and wait_for come from lib.sh.

rdb_write_config "$work" 3
cfg="$work/cluster.toml"
# Small log thresholds, so the new node catches up from a snapshot and then the log.
printf '[settings]\nsnapshot_threshold = 2000\ncatch_up_entries = 500\n' >> "$cfg"
read -r p4 c4 <<< "$(rdb_free_ports 2)"
peer4="127.0.0.1:$p4"
client4="127.0.0.1:$c4"
ep() { rdb_endpoint_of "$cfg" "$1"; }
old3="$(ep 1),$(ep 2),$(ep 3)"
new3="$(ep 1),$(ep 2),$client4"

start() { # start ID: node ID from the file; node 4 joins
  if [ "$1" = 4 ]; then
    "$RDB_BIN/rdb-server" --join "$(ep 1),$(ep 2)" --node-id 4 --peer-addr "$peer4" \
      --client-addr "$client4" --data-dir "$work/node4" >>"$work/n4.log" 2>&1 &
  else
    "$RDB_BIN/rdb-server" --config "$cfg" --node-id "$1" >>"$work/n$1.log" 2>&1 &
  fi
  pid[$1]=$!
}
term_and_wait() { # SIGTERM, then wait for the process to end
  kill -TERM "${pid[$1]}"
  wait "${pid[$1]}" 2>/dev/null || true
  unset "pid[$1]"
}
has_leader() { cli --endpoints "$1" --timeout-ms 1000 -o json member list >/dev/null; }
caught_up() { # caught_up ID: the leader counts ID within 1% of its commit index
  cli --endpoints "$new3" --timeout-ms 2000 -o json member list |
    python3 -c 'import json,sys
d=json.load(sys.stdin); m=[x for x in d["members"] if x["id"]==int(sys.argv[1])]
sys.exit(0 if m and m[0]["match_index"]*100 >= d["commit_index"]*99 else 1)' "$1"
}
writer() { # writer NAME ENDPOINTS: starts rdb-load in the background
  rm -f "$work/stop-$1"
  "$RDB_BIN/rdb-load" write --endpoints "$2" --log "$work/acked-$1.txt" \
    --stop-file "$work/stop-$1" --prefix "$1" >"$work/load-$1.out" 2>&1 &
  pid[load-$1]=$!
}
stop_writer() { # stop_writer NAME: returns rdb-load's status (1 if any write failed)
  touch "$work/stop-$1"
  local rc=0
  wait "${pid[load-$1]}" || rc=$?
  unset "pid[load-$1]"
  return $rc
}
acked() { wc -l < "$work/acked-$1.txt"; }
at_least() { [ "$(acked "$1")" -ge "$2" ]; }
more_acked() { # more_acked NAME N: waits until N more writes are acknowledged
  wait_for 30000 at_least "$1" $(( $(acked "$1") + $2 ))
}

echo "rdb verify-membership ($work)"
begin
for i in 1 2 3; do start "$i"; done
wait_for 10000 has_leader "$old3" || fail "no leader within 10 s"
writer replace "$(ep 1),$(ep 2),$(ep 3),$client4"
wait_for 30000 at_least replace 3000 || fail "writes too slow: $(acked replace) in 30 s"
pass "1. three nodes up, 3000 writes acknowledged"

begin
kill -9 "${pid[3]}"; wait "${pid[3]}" 2>/dev/null || true; unset "pid[3]"
rm -rf "$work/node3"
more_acked replace 500 || fail "writes stopped with node 3 down"
pass "2. node 3 killed and its data deleted; writes go on"

begin
cli --endpoints "$old3" member add 4 --peer-addr "$peer4" --client-addr "$client4" --learner \
  >"$work/add.out" || fail "member add: $(cat "$work/add.out")"
pass "3. node 4 added as a learner"

begin
start 4
wait_for 60000 caught_up 4 || fail "node 4 did not catch up within 60 s"
pass "4. node 4 joined and caught up (snapshot + log)"

begin
cli --endpoints "$new3" member promote 4 >/dev/null || fail "member promote 4"
pass "5. node 4 promoted to voter"

begin
cli --endpoints "$new3" member remove 3 >/dev/null || fail "member remove 3"
cli --endpoints "$new3" member list
pass "6. node 3 removed"

begin
n=$(acked replace)
stop_writer replace || echo "INFO  some writes failed while node 3 was down and replaced (they were not acknowledged)"
head -n 1 "$work/load-replace.out"
"$RDB_BIN/rdb-load" verify --endpoints "$new3" --log "$work/acked-replace.txt" ||
  fail "an acknowledged write was lost"
cli --endpoints "$new3" check >/dev/null || fail "the replicas differ"
pass "7. no acknowledged write lost ($n+), replicas identical"

writer rolling "$new3"
wait_for 30000 at_least rolling 100 || fail "no write acknowledged"
for i in 1 2 4; do
  begin
  term_and_wait "$i"
  start "$i"
  wait_for 30000 caught_up "$i" || fail "node $i did not catch up after its restart"
  more_acked rolling 50 || fail "writes stopped after restarting node $i"
  pass "8. node $i restarted (SIGTERM) and caught up"
done
begin
stop_writer rolling || fail "a client write failed during the rolling restart: $(cat "$work/load-rolling.out")"
head -n 1 "$work/load-rolling.out"
"$RDB_BIN/rdb-load" verify --endpoints "$new3" --log "$work/acked-rolling.txt" ||
  fail "an acknowledged write was lost in the rolling restart"
cli --endpoints "$new3" check >/dev/null || fail "the replicas differ after the rolling restart"
pass "8. rolling restart: no write failed, none lost, replicas identical"
echo "verify-membership: all steps passed"
