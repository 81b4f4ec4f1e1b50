#!/usr/bin/env bash
# rdb and etcd side by side, on this machine, in one session: a three-node etcd cluster (Debian's
# etcd-server, installed when missing) and a three-node rdb cluster (release build), both on
# loopback with fsync on, their data in one folder on the same disk. Each row runs ROUNDS times,
# the two systems alternating (etcd first in odd rounds, rdb first in even ones), with the same
# load generator (`kvbench`, tests/src/bin/kvbench.rs): 256-byte values, 100,000 keys. Prints
# every run, then per row the ops/s of each round, the per-round ratio rdb/etcd, the median p50
# and p99, the servers' CPU seconds per 1,000 operations, and for puts the WAL fsyncs per second
# (summed over the three members, from their Prometheus metrics) and puts per fsync per member;
# then each server's RSS and data size.
# Usage:
#   bash scripts/bench-etcd.sh [ROUNDS=3] [SECONDS=10] [ROWS]
# ROWS (optional) is a space-separated subset of: put1 put16 put64 put256 get64 sget64, and
# lget64: get64 with rdb's client sending linearizable reads to the leader only (etcd: as get64).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
secs=${2:-10}
rows=${3:-"put1 put16 put64 put256 get64 sget64"}
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

if ! command -v etcd >/dev/null; then
  echo "installing Debian's etcd-server (etcd 3.4)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server >/dev/null ||
    { echo "cannot install etcd-server (run as root)" >&2; exit 1; }
fi
rdb_bench_bin
kvbench="$bin/kvbench"
[ -x "$kvbench" ] || { echo "no $kvbench: build with cargo build --release --workspace --bins" >&2; exit 1; }

work=$(mktemp -d -t rdb-vs-etcd.XXXXXX)
pids=()
etcd_pids=()
cleanup() {
  for p in "${pids[@]}" "${etcd_pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# etcd: three members on free loopback ports.
read -r -a ep <<< "$(rdb_free_ports 6)"
initial=""
for i in 1 2 3; do
  initial+="e$i=http://127.0.0.1:${ep[$(( 2 * i - 1 ))]},"
done
initial=${initial%,}
etcd_endpoints=""
etcd_metrics=()
for i in 1 2 3; do
  cp=${ep[$(( 2 * i - 2 ))]}; pp=${ep[$(( 2 * i - 1 ))]}
  etcd --name "e$i" --data-dir "$work/etcd$i" \
    --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
    --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
    --initial-cluster "$initial" --initial-cluster-token rdb-bench --initial-cluster-state new \
    --logger zap --log-level warn >"$work/etcd$i.log" 2>&1 &
  etcd_pids+=($!)
  etcd_endpoints+="127.0.0.1:$cp,"
  etcd_metrics+=("http://127.0.0.1:$cp/metrics")
done
etcd_endpoints=${etcd_endpoints%,}
until "$kvbench" --backend etcd --endpoints "$etcd_endpoints" --clients 1 --connections 1 \
    --duration-secs 1 2>/dev/null | grep -q '"ops":[1-9]'; do
  sleep 0.5
done

# rdb: three nodes, default settings, warnings only in the logs.
mkdir -p "$work/rdb"
rdb_start_bench_cluster "$work/rdb" warning
rdb_endpoints=$endpoints
rdb_pids=("${pids[@]}")
rdb_metrics=("${metrics_urls[@]}")

fsyncs() { # SYSTEM: WAL fsyncs so far, summed over the members
  local u
  if [ "$1" = etcd ]; then
    for u in "${etcd_metrics[@]}"; do curl -sf "$u" || true; done |
      awk '/^etcd_disk_wal_fsync_duration_seconds_count/ {n += $2} END {printf "%d\n", n}'
  else
    for u in "${rdb_metrics[@]}"; do curl -sf "$u" || true; done |
      awk '/^rdb_raft_log_fsync_seconds_count/ {n += $2} END {printf "%d\n", n}'
  fi
}

results="$work/results.txt"
one() { # one SYSTEM ROW
  local sys=$1 row=$2 eps args before after line
  case $row in
    put1) args=(--workload put --clients 1 --connections 1) ;;
    put16) args=(--workload put --clients 16 --connections 4) ;;
    put64) args=(--workload put --clients 64 --connections 8) ;;
    put256) args=(--workload put --clients 256 --connections 16) ;;
    get64) args=(--workload get --clients 64 --connections 8) ;;
    sget64) args=(--workload get-serializable --clients 64 --connections 8) ;;
    lget64) args=(--workload get --clients 64 --connections 8)
      if [ "$sys" = rdb ]; then args+=(--leader-reads); fi ;;
    *) echo "unknown row $row" >&2; exit 2 ;;
  esac
  local f0 f1
  f0=$(fsyncs "$sys")
  if [ "$sys" = etcd ]; then
    eps=$etcd_endpoints; before=$(rdb_cpu_ticks "${etcd_pids[@]}")
  else
    eps=$rdb_endpoints; before=$(rdb_cpu_ticks "${rdb_pids[@]}")
  fi
  line=$("$kvbench" --backend "$sys" --endpoints "$eps" --duration-secs "$secs" "${args[@]}")
  if [ "$sys" = etcd ]; then after=$(rdb_cpu_ticks "${etcd_pids[@]}"); else after=$(rdb_cpu_ticks "${rdb_pids[@]}"); fi
  f1=$(fsyncs "$sys")
  echo "$row $sys $(( after - before )) $(( f1 - f0 )) $line" | tee -a "$results"
}

echo "rdb vs etcd ($(etcd --version | head -n 1)), $rounds rounds of $secs s per row"
for r in $(seq 1 "$rounds"); do
  for row in $rows; do
    if [ $(( r % 2 )) -eq 1 ]; then one etcd "$row"; one rdb "$row"; else one rdb "$row"; one etcd "$row"; fi
  done
done

rss() { awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/$1/status"; }
echo
echo "memory and disk after the run:"
for i in 0 1 2; do
  printf '  etcd member %d: RSS %s MiB, data %s MiB | rdb node %d: RSS %s MiB, data %s MiB\n' \
    $(( i + 1 )) "$(rss "${etcd_pids[$i]}")" "$(du -sm "$work/etcd$(( i + 1 ))" | cut -f1)" \
    $(( i + 1 )) "$(rss "${rdb_pids[$i]}")" "$(du -sm "$work/rdb/node$(( i + 1 ))" | cut -f1)"
done
echo
python3 - "$results" "$(getconf CLK_TCK)" <<'PY'
import json, statistics, sys
tck = float(sys.argv[2])
runs = {}
order = []
for line in open(sys.argv[1]):
    row, sysname, ticks, syncs, js = line.split(" ", 4)
    r = json.loads(js)
    r["cpu_s"] = int(ticks) / tck
    r["fsyncs"] = int(syncs)
    if row not in order:
        order.append(row)
    runs.setdefault((row, sysname), []).append(r)
names = {"put1": "put 1/1", "put16": "put 16/4", "put64": "put 64/8", "put256": "put 256/16",
         "get64": "get linearizable 64/8", "sget64": "get serializable 64/8",
         "lget64": "get linearizable 64/8, rdb leader-only"}
print("| row | etcd ops/s | rdb ops/s | rdb/etcd per round | p50 etcd / rdb ms | p99 etcd / rdb ms | CPU s per 1k ops etcd / rdb |")
print("|---|---|---|---|---|---|---|")
med = statistics.median
for row in order:
    e, d = runs[(row, "etcd")], runs[(row, "rdb")]
    ratios = ", ".join("%.2f" % (b["ops_per_sec"] / a["ops_per_sec"]) if a["ops_per_sec"] else "-" for a, b in zip(e, d))
    cpu = lambda rs: med(r["cpu_s"] * 1000 / r["ops"] for r in rs if r["ops"])
    print("| %s | %s | %s | %s | %.2f / %.2f | %.2f / %.2f | %.3f / %.3f |" % (
        names.get(row, row),
        ", ".join("%.0f" % r["ops_per_sec"] for r in e),
        ", ".join("%.0f" % r["ops_per_sec"] for r in d),
        ratios,
        med(r["p50_ms"] for r in e), med(r["p50_ms"] for r in d),
        med(r["p99_ms"] for r in e), med(r["p99_ms"] for r in d),
        cpu(e), cpu(d)))
print()
print("| put row | fsyncs/s etcd / rdb (3 members) | puts per fsync per member etcd / rdb |")
print("|---|---|---|")
for row in order:
    if not row.startswith("put"):
        continue
    e, d = runs[(row, "etcd")], runs[(row, "rdb")]
    # fsyncs over the run's seconds (ops / ops_per_sec).
    rate = lambda rs: med(r["fsyncs"] * r["ops_per_sec"] / r["ops"] for r in rs if r["ops"])
    per = lambda rs: med(3 * r["ops"] / r["fsyncs"] for r in rs if r["fsyncs"])
    print("| %s | %.0f / %.0f | %.2f / %.2f |" % (names.get(row, row), rate(e), rate(d), per(e), per(d)))
errs = sum(r["errors"] for rs in runs.values() for r in rs)
print("\nerrors: %d" % errs)
PY
