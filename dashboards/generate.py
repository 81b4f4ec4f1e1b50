#!/usr/bin/env python3
"""Writes dashboards/rdb.json, the Grafana dashboard of rdb's metrics, from the panels below.

Run it after changing a panel (`python3 dashboards/generate.py`; `--stdout` prints instead);
the test suite runs every query of the dashboard through a real Prometheus scraping a live
cluster, and checks that the committed file is what this script writes.
"""
import json
import pathlib
import sys

SEL = '{instance=~"$instance"}'


def quantile(q, metric, by):
    """The q-quantile of histogram `metric` over 1 minute, summed by `by` (and le)."""
    return f"histogram_quantile({q}, sum(rate({metric}_bucket{SEL}[1m])) by ({by}))"


def rate(metric):
    return f"rate({metric}{SEL}[1m])"


def mean(metric):
    return f"rate({metric}_sum{SEL}[1m]) / rate({metric}_count{SEL}[1m])"


# (title, unit, [(expr, legend)]), two panels per row.
PANELS = [
    ("Requests per second by operation and outcome", "reqps",
     [(f"sum(rate(rdb_requests_total{SEL}[1m])) by (op, outcome)", "{{op}} {{outcome}}")]),
    ("Request latency p99 by operation", "s",
     [(quantile(0.99, "rdb_request_duration_seconds", "le, op"), "{{op}} p99"),
      (quantile(0.5, "rdb_request_duration_seconds", "le, op"), "{{op}} p50")]),
    ("Propose to apply (p50, p99)", "s",
     [(quantile(0.5, "rdb_propose_apply_seconds", "le"), "p50"),
      (quantile(0.99, "rdb_propose_apply_seconds", "le"), "p99")]),
    ("Synced log write (fsync) p99 by node", "s",
     [(quantile(0.99, "rdb_raft_log_fsync_seconds", "le, instance"), "{{instance}}")]),
    ("Apply duration p99 by node", "s",
     [(quantile(0.99, "rdb_apply_seconds", "le, instance"), "{{instance}}")]),
    ("Raft turn time p99 and entries per append (mean)", "s",
     [(quantile(0.99, "rdb_raft_turn_seconds", "le, instance"), "turn p99 {{instance}}"),
      (mean("rdb_raft_entries_per_append"), "entries/append {{instance}}")]),
    ("ReadIndex rounds per second and reads per round", "short",
     [(rate("rdb_read_index_rounds_total"), "rounds/s {{instance}}"),
      (mean("rdb_reads_per_read_index_round"), "reads/round {{instance}}")]),
    ("Term, leader and leader changes", "short",
     [(f"rdb_raft_term{SEL}", "term {{instance}}"),
      (f"rdb_raft_is_leader{SEL}", "leader {{instance}}"),
      (f"increase(rdb_raft_leader_changes_total{SEL}[5m])", "changes/5m {{instance}}")]),
    ("Commit and applied index", "short",
     [(f"rdb_raft_commit_index{SEL}", "commit {{instance}}"),
      (f"rdb_raft_applied_index{SEL}", "applied {{instance}}")]),
    ("Apply lag (commit - applied)", "short",
     [(f"rdb_raft_commit_index{SEL} - rdb_raft_applied_index{SEL}", "{{instance}}")]),
    ("Raft log: entries and first index", "short",
     [(f"rdb_raft_log_entries{SEL}", "entries {{instance}}"),
      (f"rdb_raft_log_first_index{SEL}", "first {{instance}}")]),
    ("Snapshots sent and received (bytes/s)", "Bps",
     [(rate("rdb_snapshot_sent_bytes_total"), "sent {{instance}}"),
      (rate("rdb_snapshot_received_bytes_total"), "received {{instance}}")]),
    ("Peer send failures and queue depth", "short",
     [(rate("rdb_peer_send_failures_total"), "failures/s {{instance}}"),
      (f"rdb_peer_queue_depth{SEL}", "queue {{instance}} to {{peer}}")]),
    ("RocksDB: SST bytes and pending compaction bytes", "bytes",
     [(f"rdb_rocksdb_sst_bytes{SEL}", "sst {{instance}}"),
      (f"rdb_rocksdb_pending_compaction_bytes{SEL}", "pending {{instance}}")]),
    ("Memory: resident set and what RocksDB holds", "bytes",
     [(f"rdb_process_resident_bytes{SEL}", "resident {{instance}}"),
      (f"rdb_rocksdb_memory_bytes{SEL}", "{{part}} {{instance}}")]),
    # PD-mode stores: their regions by role, and the furthest behind.
    ("Stores: regions by role", "short",
     [(f"rdb_store_regions{SEL}", "{{instance}} {{role}}")]),
    ("Stores: largest apply lag over their regions", "short",
     [(f"rdb_store_max_apply_lag{SEL}", "{{instance}}")]),
    # PD: its gauges are the leader's view (a follower reports zeros), so they are summed.
    ("PD: stores by state", "short",
     [(f"sum(rdb_pd_stores{SEL}) by (state)", "{{state}}")]),
    ("PD: regions, under-replicated and without a leader", "short",
     [(f"sum(rdb_pd_regions{SEL})", "regions"),
      (f"sum(rdb_pd_regions_under_replicated{SEL})", "under-replicated"),
      (f"sum(rdb_pd_regions_without_leader{SEL})", "without a leader")]),
    ("PD: timestamp requests per second and p99", "short",
     [(f"sum(rate(rdb_pd_tso_requests_total{SEL}[1m]))", "requests/s"),
      (quantile(0.99, "rdb_pd_tso_seconds", "le"), "p99 seconds")]),
    # PD's scheduling: the steps it asks of region leaders (replica repair, store removal).
    ("PD: operators per second by kind", "short",
     [(f"sum(rate(rdb_pd_operators_total{SEL}[1m])) by (kind)", "{{kind}}")]),
]


def dashboard():
    panels = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append({
            "id": i + 1,
            "type": "timeseries",
            "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"x": 12 * (i % 2), "y": 8 * (i // 2), "w": 12, "h": 8},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": [
                {"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend}
                for j, (expr, legend) in enumerate(targets)
            ],
        })
    return {
        "title": "rdb",
        "uid": "rdb-overview",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "10s",
        "tags": ["rdb", "flaredb"],
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus",
             "label": "Prometheus"},
            {"name": "instance", "type": "query",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": "label_values(rdb_raft_term, instance)", "includeAll": True,
             "multi": True, "current": {"text": "All", "value": "$__all"}, "refresh": 2,
             "label": "Node"},
        ]},
        "panels": panels,
    }


if __name__ == "__main__":
    text = json.dumps(dashboard(), indent=2) + "\n"
    if sys.argv[1:] == ["--stdout"]:
        sys.stdout.write(text)
    else:
        pathlib.Path(__file__).with_name("rdb.json").write_text(text)
