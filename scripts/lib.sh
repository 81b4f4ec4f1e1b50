# Shared helpers for rdb's scripts. Source it; it defines functions (and the clock of the verify
# scripts' steps) only.

# Builds the binaries once (debug profile, cached in target/) and sets RDB_BIN to their folder.
rdb_build() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ -z "${RDB_BIN:-}" ]; then
    (cd "$root" && cargo build --workspace --bins --quiet) || return 1
    RDB_BIN="${CARGO_TARGET_DIR:-$root/target}/debug"
  fi
  export RDB_BIN
}

# Builds release binaries (cached in target/) and sets RDB_RELEASE_BIN to their folder.
rdb_build_release() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  (cd "$root" && cargo build --release --workspace --bins --quiet) || return 1
  RDB_RELEASE_BIN="${CARGO_TARGET_DIR:-$root/target}/release"
  export RDB_RELEASE_BIN
}

# Prints N distinct free TCP ports on 127.0.0.1 below the kernel's ephemeral range (32768-60999),
# so a restarted node never finds its port taken as some connection's source port.
rdb_free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
ports = []
while len(ports) < int(sys.argv[1]):
    p = random.randrange(20000, 32000)
    if p in ports:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        ports.append(p)
    except OSError:
        pass
    finally:
        s.close()
print(" ".join(map(str, ports)))
PY
}

# Summed user + system CPU time of the given pids so far, in clock ticks (getconf CLK_TCK).
rdb_cpu_ticks() {
  local t=0 p f
  for p in "$@"; do
    read -r -a f < "/proc/$p/stat"
    t=$(( t + f[13] + f[14] ))
  done
  echo $t
}

# Milliseconds since the epoch.
rdb_now_ms() {
  echo $(( $(date +%s%N) / 1000000 ))
}

# The benchmark scripts' exit trap (`trap rdb_bench_cleanup EXIT`): kills every process in
# `pids` and removes the work directory `work`.
rdb_bench_cleanup() {
  local p
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# The step helpers of the verify scripts. `begin` starts a step's clock; `pass NAME [CEILING_MS]`
# prints the step with its time and fails it when a ceiling is given and passed; `skip NAME
# REASON` prints a step that cannot run yet; `fail MESSAGE` stops the script (its EXIT trap
# cleans up); `wait_for MS CMD...` retries CMD until it succeeds (every RDB_WAIT_EVERY seconds,
# default 0.02), or returns 1 after MS milliseconds.
step_start=0
fail() { echo "FAIL  $*" >&2; exit 1; }
begin() { step_start=$(rdb_now_ms); }
skip() { printf 'SKIP  %-56s %s\n' "$1" "$2"; }
pass() {
  local ms=$(( $(rdb_now_ms) - step_start ))
  local ceiling=${2:-}
  if [ -n "$ceiling" ] && [ "$ms" -gt "$ceiling" ]; then
    fail "$1: took ${ms} ms, over the ${ceiling} ms ceiling"
  fi
  printf 'PASS  %-56s %6d ms%s\n' "$1" "$ms" "${ceiling:+ (ceiling $ceiling ms)}"
}
# The EXIT trap of the verify scripts: kills every process in the associative array `pid`
# and removes the folder `work`, or keeps it and prints the logs' tails when the script failed.
rdb_verify_cleanup() {
  local rc=$? p
  for p in "${pid[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ $rc -ne 0 ]; then
    echo "logs kept in $work" >&2
    tail -n 20 "$work"/*.log >&2 2>/dev/null || true
  else
    rm -rf "$work"
  fi
}
wait_for() {
  local until=$(( $(rdb_now_ms) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(rdb_now_ms)" -lt "$until" ] || return 1
    sleep "${RDB_WAIT_EVERY:-0.02}"
  done
}

# Writes a cluster config with N nodes on free ports into DIR/cluster.toml; with a third
# argument `metrics`, each node also serves Prometheus metrics on a free port.
rdb_write_config() {
  local dir=$1 n=$2 metrics=${3:-} i ports
  read -r -a ports <<< "$(rdb_free_ports $(( 3 * n )))"
  {
    echo "cluster_id = 42"
    for i in $(seq 1 "$n"); do
      echo "[[nodes]]"
      echo "id = $i"
      echo "peer_addr = \"127.0.0.1:${ports[$(( 3 * i - 3 ))]}\""
      echo "client_addr = \"127.0.0.1:${ports[$(( 3 * i - 2 ))]}\""
      echo "data_dir = \"$dir/node$i\""
      if [ "$metrics" = metrics ]; then
        echo "metrics_addr = \"127.0.0.1:${ports[$(( 3 * i - 1 ))]}\""
      fi
    done
  } > "$dir/cluster.toml"
}

# Comma-separated client addresses of a config file.
rdb_endpoints() {
  grep client_addr "$1" | sed 's/.*"\(.*\)"/\1/' | paste -sd, -
}

# Client address of node ID in a config file.
rdb_endpoint_of() {
  grep client_addr "$1" | sed 's/.*"\(.*\)"/\1/' | sed -n "${2}p"
}

# Sets `bin` for the benchmark scripts: $RDB_RELEASE_BIN when given (to compare builds), else
# runs the set-up and builds release binaries.
rdb_bench_bin() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ -z "${RDB_RELEASE_BIN:-}" ]; then
    bash "$root/scripts/setup.sh"
    rdb_build_release || return 1
  fi
  bin=$RDB_RELEASE_BIN
}

# Starts a three-node cluster of "$bin/rdb-server" in DIR with log level LEVEL, appending each
# node's pid to the array `pids` and its log to DIR/nI.log; sets `endpoints`, and
# `metrics_urls` (each node's Prometheus endpoint), and returns once a node reports itself leader.
rdb_start_bench_cluster() {
  local dir=$1 level=$2 i p started=()
  rdb_write_config "$dir" 3 metrics
  printf '[settings]\nlog_level = "%s"\n' "$level" >> "$dir/cluster.toml"
  for i in 1 2 3; do
    "$bin/rdb-server" --config "$dir/cluster.toml" --node-id "$i" 2>"$dir/n$i.log" &
    pids+=($!)
    started+=($!)
  done
  metrics_urls=()
  for p in $(grep metrics_addr "$dir/cluster.toml" | sed 's/.*"\(.*\)"/\1/'); do
    metrics_urls+=("http://$p/metrics")
  done
  endpoints=$(rdb_endpoints "$dir/cluster.toml")
  until "$bin/rdb-cli" --endpoints "$endpoints" --timeout-ms 500 status 2>/dev/null | grep -q leader; do
    for i in 1 2 3; do
      if ! kill -0 "${started[$(( i - 1 ))]}" 2>/dev/null; then
        echo "rdb-server node $i exited at start:" >&2
        tail -n 5 "$dir/n$i.log" >&2
        return 1
      fi
    done
    sleep 0.2
  done
}

# Writes the file of a one-node PD cluster: rdb_pd_config FILE CLUSTER_ID CLIENT_ADDR PEER_ADDR
# DATA_DIR. Append tables (`[pd]`, `[settings]`) after it.
rdb_pd_config() {
  printf 'cluster_id = %s\n[[nodes]]\nid = 1\nclient_addr = "%s"\npeer_addr = "%s"\ndata_dir = "%s"\n' \
    "$2" "$3" "$4" "$5" > "$1"
}

# Succeeds once the PD at PD_ADDR knows at least N regions, each with a leader, whose ranges
# tile the key space: rdb_regions_tiled PD_ADDR N (rdb-cli from $RDB_BIN).
rdb_regions_tiled() {
  "$RDB_BIN/rdb-cli" --pd "$1" --timeout-ms 5000 -o json region list 2>/dev/null | python3 -c '
import json, sys
rs = json.load(sys.stdin)["regions"]
ok = rs and rs[0]["start_key"] == "" and rs[-1]["end_key"] == "" and all(
    a["end_key"] == b["start_key"] for a, b in zip(rs, rs[1:])) and all(r.get("leader") for r in rs)
sys.exit(0 if ok and len(rs) >= int(sys.argv[1]) else 1)' "$2"
}

# Prints the id the PD at PD_ADDR gave the store serving clients at ADDR (fails if none):
# rdb_store_id PD_ADDR ADDR.
rdb_store_id() {
  "$RDB_BIN/rdb-cli" --pd "$1" --timeout-ms 5000 -o json store list | python3 -c '
import json, sys
print(next(s["id"] for s in json.load(sys.stdin) if s["address"] == sys.argv[1]))' "$2"
}

# Succeeds when every region PD_ADDR knows has a leader and 3 voters, no learner, all on stores
# PD shows up and none on store ID (a store lost or removed): rdb_replicated_without PD_ADDR ID.
rdb_replicated_without() {
  "$RDB_BIN/rdb-cli" --pd "$1" --timeout-ms 5000 -o json region list | python3 -c '
import json, sys
rs = json.load(sys.stdin)["regions"]
sys.exit(0 if rs and all(r.get("leader") and len(r["peers"]) == 3
                         and all(not p["learner"] and p["store_state"] == "up"
                                 and p["store_id"] != int(sys.argv[1]) for p in r["peers"])
                         for r in rs) else 1)' "$2"
}
