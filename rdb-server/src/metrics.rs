//! Prometheus metrics of a node, and the HTTP endpoint that serves them.
//!
//! One process runs one node, so the metrics are process-wide statics in their own registry.
//! A PD-mode store shares them: the histograms and counters add up its regions' turns,
//! synced writes and leader changes, and its own gauges (`rdb_store_*`) count its regions by
//! role and keep the largest apply lag, never a series per region. The gauges of a node's one
//! group (`rdb_raft_term`, `rdb_raft_commit_index`, ...) stay 0 on a store.
//! The Raft core stays free of them: the node task, the stores' wrappers, the services and the
//! transport record what they see.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric of the node.
pub struct Metrics {
    registry: Registry,
    /// Client requests by operation and outcome (ok, or the error kind).
    pub requests: IntCounterVec,
    /// Client request latency by operation, seconds.
    pub request_seconds: HistogramVec,
    /// From proposal to the answer after apply, seconds (writes on the leader).
    pub propose_apply_seconds: Histogram,
    /// Synced writes of the Raft log (entries + hard state), seconds.
    pub fsync_seconds: Histogram,
    /// Applying a batch of committed entries, seconds.
    pub apply_seconds: Histogram,
    /// One turn of the node task (inputs, Ready cycle, answers), seconds.
    pub turn_seconds: Histogram,
    /// Entries persisted per Ready.
    pub entries_per_append: Histogram,
    /// ReadIndex rounds started.
    pub read_rounds: IntCounter,
    /// Reads served per round.
    pub reads_per_round: Histogram,
    /// PD-mode writes stamped again: their stamps were used up by writes proposed before them,
    /// or their region had recorded a higher revision.
    pub restamps: IntCounter,
    /// Raft term.
    pub term: IntGauge,
    /// 1 when this node leads.
    pub is_leader: IntGauge,
    /// Raft role: 0 follower, 1 candidate, 2 leader, 3 pre-candidate.
    pub role: IntGauge,
    /// Times the known leader changed.
    pub leader_changes: IntCounter,
    /// Ticks of the task that drives the Raft groups: one per `tick_interval_ms` while the
    /// task keeps up, fewer when its turns are slower than that.
    pub ticks: IntCounter,
    /// Commit index.
    pub commit_index: IntGauge,
    /// Applied index.
    pub applied_index: IntGauge,
    /// First index still in the log.
    pub log_first_index: IntGauge,
    /// Entries in the log.
    pub log_entries: IntGauge,
    /// Snapshots sent, and their bytes.
    pub snapshots_sent: IntCounter,
    /// Bytes of snapshots sent.
    pub snapshot_sent_bytes: IntCounter,
    /// Time to send one snapshot, seconds.
    pub snapshot_send_seconds: Histogram,
    /// Snapshots received.
    pub snapshots_received: IntCounter,
    /// Bytes of snapshots received.
    pub snapshot_received_bytes: IntCounter,
    /// Time to receive one snapshot (first chunk to the file synced), seconds.
    pub snapshot_receive_seconds: Histogram,
    /// Failures to send to a peer (connect or stream errors, dropped messages), by peer.
    pub peer_send_failures: IntCounterVec,
    /// Messages queued for a peer, by peer.
    pub peer_queue_depth: IntGaugeVec,
    /// Peer messages refused on arrival, by why: `cluster` (another cluster or kind of node),
    /// `raft` (what raft-rs must not be given, see `Replica::refusal`).
    pub peer_messages_refused: IntCounterVec,
    /// Bytes of live SST files in RocksDB.
    pub rocksdb_sst_bytes: IntGauge,
    /// Bytes RocksDB estimates compaction still has to rewrite.
    pub rocksdb_pending_compaction_bytes: IntGauge,
    /// Memory RocksDB holds, by part: `block_cache`, `block_cache_pinned`, `memtables`,
    /// `table_readers` (see `rdb_storage::MemoryStats`).
    pub rocksdb_memory_bytes: IntGaugeVec,
    /// The process's resident set, in bytes (`VmRSS` of /proc/self/status).
    pub resident_bytes: IntGauge,
    /// Regions a PD-mode store hosts, by the role of its peer: `leader`, `follower`,
    /// `learner`, `candidate` (one series per role, not per region).
    pub store_regions: IntGaugeVec,
    /// The largest apply lag (commit minus applied index) over a store's regions.
    pub store_max_apply_lag: IntGauge,
    /// The slowest synced write since the node task last looked, in microseconds.
    pub slowest_fsync_us: AtomicU64,
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

/// Latency buckets: 50 us to about 26 s.
fn seconds() -> Vec<f64> {
    exponential_buckets(0.00005, 2.0, 20).unwrap_or_default()
}

impl Metrics {
    fn new() -> Metrics {
        let requests = IntCounterVec::new(
            Opts::new(
                "rdb_requests_total",
                "Client requests by operation and outcome",
            ),
            &["op", "outcome"],
        );
        let request_seconds = HistogramVec::new(
            HistogramOpts::new("rdb_request_duration_seconds", "Client request latency")
                .buckets(seconds()),
            &["op"],
        );
        let peer_send_failures = IntCounterVec::new(
            Opts::new("rdb_peer_send_failures_total", "Failures sending to a peer"),
            &["peer"],
        );
        let peer_queue_depth = IntGaugeVec::new(
            Opts::new("rdb_peer_queue_depth", "Raft messages queued for a peer"),
            &["peer"],
        );
        let peer_messages_refused = IntCounterVec::new(
            Opts::new(
                "rdb_peer_messages_refused_total",
                "Peer messages refused on arrival",
            ),
            &["why"],
        );
        let rocksdb_memory_bytes = IntGaugeVec::new(
            Opts::new("rdb_rocksdb_memory_bytes", "Memory RocksDB holds, by part"),
            &["part"],
        );
        let store_regions = IntGaugeVec::new(
            Opts::new(
                "rdb_store_regions",
                "Regions a store hosts, by the role of its peer",
            ),
            &["role"],
        );
        let gauge =
            |n: &str, h: &str| IntGauge::new(n, h).unwrap_or_else(|e| panic!("metric {n}: {e}"));
        let counter =
            |n: &str, h: &str| IntCounter::new(n, h).unwrap_or_else(|e| panic!("metric {n}: {e}"));
        let m = Metrics {
            registry: Registry::new(),
            requests: requests.unwrap_or_else(|e| panic!("rdb_requests_total: {e}")),
            request_seconds: request_seconds
                .unwrap_or_else(|e| panic!("rdb_request_duration_seconds: {e}")),
            propose_apply_seconds: histogram(
                "rdb_propose_apply_seconds",
                "From proposal to the answer after apply",
                seconds(),
            ),
            fsync_seconds: histogram(
                "rdb_raft_log_fsync_seconds",
                "Synced writes of Raft entries and hard state",
                seconds(),
            ),
            apply_seconds: histogram(
                "rdb_apply_seconds",
                "Applying a batch of committed entries",
                seconds(),
            ),
            turn_seconds: histogram(
                "rdb_raft_turn_seconds",
                "One turn of the node task: inputs, Ready cycle, answers",
                seconds(),
            ),
            entries_per_append: histogram(
                "rdb_raft_entries_per_append",
                "Entries persisted per Ready",
                exponential_buckets(1.0, 2.0, 14).unwrap_or_default(),
            ),
            read_rounds: counter("rdb_read_index_rounds_total", "ReadIndex rounds started"),
            restamps: counter(
                "rdb_write_restamps_total",
                "PD-mode writes stamped again (their stamps used up, or below their region's last revision)",
            ),
            reads_per_round: histogram(
                "rdb_reads_per_read_index_round",
                "Linearizable reads served per ReadIndex round",
                exponential_buckets(1.0, 2.0, 14).unwrap_or_default(),
            ),
            term: gauge("rdb_raft_term", "Raft term"),
            is_leader: gauge("rdb_raft_is_leader", "1 when this node leads"),
            role: gauge(
                "rdb_raft_role",
                "Raft role: 0 follower, 1 candidate, 2 leader, 3 pre-candidate",
            ),
            leader_changes: counter(
                "rdb_raft_leader_changes_total",
                "Times the known leader changed",
            ),
            ticks: counter(
                "rdb_raft_ticks_total",
                "Ticks of the task that drives the Raft groups",
            ),
            commit_index: gauge("rdb_raft_commit_index", "Commit index"),
            applied_index: gauge("rdb_raft_applied_index", "Applied index"),
            log_first_index: gauge("rdb_raft_log_first_index", "First index in the Raft log"),
            log_entries: gauge("rdb_raft_log_entries", "Entries in the Raft log"),
            snapshots_sent: counter("rdb_snapshots_sent_total", "Snapshots sent"),
            snapshot_sent_bytes: counter("rdb_snapshot_sent_bytes_total", "Snapshot bytes sent"),
            snapshot_send_seconds: histogram(
                "rdb_snapshot_send_seconds",
                "Time to send one snapshot",
                seconds(),
            ),
            snapshots_received: counter("rdb_snapshots_received_total", "Snapshots received"),
            snapshot_received_bytes: counter(
                "rdb_snapshot_received_bytes_total",
                "Snapshot bytes received",
            ),
            snapshot_receive_seconds: histogram(
                "rdb_snapshot_receive_seconds",
                "Time to receive one snapshot",
                seconds(),
            ),
            peer_send_failures: peer_send_failures
                .unwrap_or_else(|e| panic!("rdb_peer_send_failures_total: {e}")),
            peer_queue_depth: peer_queue_depth
                .unwrap_or_else(|e| panic!("rdb_peer_queue_depth: {e}")),
            peer_messages_refused: peer_messages_refused
                .unwrap_or_else(|e| panic!("rdb_peer_messages_refused_total: {e}")),
            rocksdb_sst_bytes: gauge("rdb_rocksdb_sst_bytes", "Bytes of live SST files"),
            rocksdb_pending_compaction_bytes: gauge(
                "rdb_rocksdb_pending_compaction_bytes",
                "Bytes RocksDB estimates compaction still has to rewrite",
            ),
            rocksdb_memory_bytes: rocksdb_memory_bytes
                .unwrap_or_else(|e| panic!("rdb_rocksdb_memory_bytes: {e}")),
            resident_bytes: gauge(
                "rdb_process_resident_bytes",
                "The process's resident set in bytes",
            ),
            store_regions: store_regions.unwrap_or_else(|e| panic!("rdb_store_regions: {e}")),
            store_max_apply_lag: gauge(
                "rdb_store_max_apply_lag",
                "The largest apply lag (commit minus applied index) over a store's regions",
            ),
            slowest_fsync_us: AtomicU64::new(0),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.request_seconds.clone()),
            Box::new(m.propose_apply_seconds.clone()),
            Box::new(m.fsync_seconds.clone()),
            Box::new(m.apply_seconds.clone()),
            Box::new(m.turn_seconds.clone()),
            Box::new(m.entries_per_append.clone()),
            Box::new(m.read_rounds.clone()),
            Box::new(m.restamps.clone()),
            Box::new(m.reads_per_round.clone()),
            Box::new(m.term.clone()),
            Box::new(m.is_leader.clone()),
            Box::new(m.role.clone()),
            Box::new(m.leader_changes.clone()),
            Box::new(m.ticks.clone()),
            Box::new(m.commit_index.clone()),
            Box::new(m.applied_index.clone()),
            Box::new(m.log_first_index.clone()),
            Box::new(m.log_entries.clone()),
            Box::new(m.snapshots_sent.clone()),
            Box::new(m.snapshot_sent_bytes.clone()),
            Box::new(m.snapshot_send_seconds.clone()),
            Box::new(m.snapshots_received.clone()),
            Box::new(m.snapshot_received_bytes.clone()),
            Box::new(m.snapshot_receive_seconds.clone()),
            Box::new(m.peer_send_failures.clone()),
            Box::new(m.peer_queue_depth.clone()),
            Box::new(m.peer_messages_refused.clone()),
            Box::new(m.rocksdb_sst_bytes.clone()),
            Box::new(m.rocksdb_pending_compaction_bytes.clone()),
            Box::new(m.rocksdb_memory_bytes.clone()),
            Box::new(m.resident_bytes.clone()),
            Box::new(m.store_regions.clone()),
            Box::new(m.store_max_apply_lag.clone()),
        ];
        for c in collectors {
            // Names are distinct constants: a clash is a programming error caught by any test.
            m.registry
                .register(c)
                .unwrap_or_else(|e| panic!("registering a metric: {e}"));
        }
        // Which build answers, as etcd's and TiKV's build-info gauges: 1 with the version.
        let build = IntGaugeVec::new(
            Opts::new("rdb_build_info", "The running build: 1, with its version"),
            &["version"],
        )
        .and_then(|g| {
            g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
            m.registry.register(Box::new(g.clone())).map(|()| g)
        });
        if let Err(e) = build {
            panic!("rdb_build_info: {e}");
        }
        m
    }

    /// Adds a process's own metrics (rdb-pd's) to the ones `GET /metrics` serves.
    pub fn register(
        &self,
        c: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), prometheus::Error> {
        self.registry.register(c)
    }

    /// Records a synced write's duration, and remembers the slowest for the node's warning.
    pub fn observe_fsync(&self, d: Duration) {
        self.fsync_seconds.observe(d.as_secs_f64());
        self.slowest_fsync_us
            .fetch_max(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

/// The node's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [("content-type", "text/plain; version=0.0.4")],
                metrics().render(),
            )
        }),
    );
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_with_its_name() {
        let m = metrics();
        m.requests.with_label_values(&["put", "ok"]).inc();
        m.observe_fsync(Duration::from_millis(3));
        m.peer_queue_depth.with_label_values(&["2"]).set(4);
        let text = m.render();
        for name in [
            "rdb_requests_total{op=\"put\",outcome=\"ok\"}",
            "rdb_raft_log_fsync_seconds_count",
            "rdb_raft_term",
            "rdb_peer_queue_depth{peer=\"2\"} 4",
            "rdb_rocksdb_pending_compaction_bytes",
            "rdb_process_resident_bytes",
            "rdb_store_max_apply_lag",
            "rdb_build_info{version=\"",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(m.slowest_fsync_us.load(Ordering::Relaxed) >= 3000);
    }

    #[test]
    fn the_dashboard_uses_only_metrics_that_exist() {
        let dashboard = include_str!("../../dashboards/rdb.json");
        // Labelled families appear once they have a series.
        let m = metrics();
        m.requests.with_label_values(&["test", "ok"]);
        m.request_seconds.with_label_values(&["test"]);
        m.peer_send_failures.with_label_values(&["test"]);
        m.peer_queue_depth.with_label_values(&["test"]);
        m.store_regions.with_label_values(&["leader"]);
        m.rocksdb_memory_bytes.with_label_values(&["block_cache"]);
        let text = m.render();
        // PD's own metrics (`rdb_pd_`) are rdb-pd's, checked there.
        let mut names: Vec<&str> = dashboard
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("rdb_") && !w.starts_with("rdb_pd_"))
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(
            names.len() >= 15,
            "the dashboard names few metrics: {names:?}"
        );
        for name in names {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {base} ")),
                "dashboards/rdb.json uses {name}, which the node does not export"
            );
        }
    }
}
