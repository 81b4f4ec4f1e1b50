//! PD's own metrics, served beside the node's on `metrics_addr`: what the leader knows of the
//! stores and regions (every second; zero on a follower, which knows no heartbeats), and the
//! timestamp oracle's requests and latency.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts};

/// PD's metrics.
pub struct PdMetrics {
    /// Stores by state (up, down, tombstone, offline), as the leader reports them.
    pub stores: IntGaugeVec,
    /// Regions PD knows.
    pub regions: IntGauge,
    /// Regions with fewer live peers than the replication factor (a peer on a store that is
    /// down or tombstoned does not count).
    pub regions_under_replicated: IntGauge,
    /// Regions no leader has reported since this node leads.
    pub regions_without_leader: IntGauge,
    /// Scheduling steps asked of region leaders, by kind (see `crate::schedule`).
    pub operators: prometheus::IntCounterVec,
    /// Operators made, by checker (replica, balance-leader, balance-region).
    pub operators_created: prometheus::IntCounterVec,
    /// Operators that ended, by checker and outcome (finished, timed_out, cancelled).
    pub operators_ended: prometheus::IntCounterVec,
    /// Timestamp requests answered (each may carry many timestamps).
    pub tso_requests: IntCounter,
    /// Time to answer a timestamp request, seconds.
    pub tso_seconds: Histogram,
}

fn build() -> Result<PdMetrics, prometheus::Error> {
    let m = PdMetrics {
        stores: IntGaugeVec::new(
            Opts::new(
                "rdb_pd_stores",
                "Stores by state, as the PD leader reports them",
            ),
            &["state"],
        )?,
        regions: IntGauge::new("rdb_pd_regions", "Regions PD knows (on the leader)")?,
        regions_under_replicated: IntGauge::new(
            "rdb_pd_regions_under_replicated",
            "Regions with fewer live peers than the replication factor (on the leader)",
        )?,
        regions_without_leader: IntGauge::new(
            "rdb_pd_regions_without_leader",
            "Regions no leader has reported since this PD node leads (on the leader)",
        )?,
        operators: prometheus::IntCounterVec::new(
            Opts::new(
                "rdb_pd_operators_total",
                "Scheduling steps asked of region leaders in heartbeat answers, by kind",
            ),
            &["kind"],
        )?,
        operators_created: prometheus::IntCounterVec::new(
            Opts::new(
                "rdb_pd_operators_created_total",
                "Operators made by PD's checkers, by checker",
            ),
            &["type"],
        )?,
        operators_ended: prometheus::IntCounterVec::new(
            Opts::new(
                "rdb_pd_operators_ended_total",
                "Operators that ended, by checker and outcome",
            ),
            &["type", "outcome"],
        )?,
        tso_requests: IntCounter::new("rdb_pd_tso_requests_total", "Timestamp requests answered")?,
        tso_seconds: Histogram::with_opts(
            HistogramOpts::new("rdb_pd_tso_seconds", "Time to answer a timestamp request").buckets(
                vec![
                    0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
                ],
            ),
        )?,
    };
    let registry = rdb_server::metrics::metrics();
    registry.register(Box::new(m.stores.clone()))?;
    registry.register(Box::new(m.regions.clone()))?;
    registry.register(Box::new(m.regions_under_replicated.clone()))?;
    registry.register(Box::new(m.regions_without_leader.clone()))?;
    // Every kind from the start, at zero: a rate over "no operator yet" is 0, not no series.
    for kind in [
        "ADD_LEARNER",
        "PROMOTE",
        "REMOVE",
        "TRANSFER_LEADER",
        "MERGE",
    ] {
        m.operators.with_label_values(&[kind]);
    }
    registry.register(Box::new(m.operators.clone()))?;
    for kind in ["replica", "balance-leader", "balance-region", "merge"] {
        m.operators_created.with_label_values(&[kind]);
        for outcome in ["finished", "timed_out", "cancelled"] {
            m.operators_ended.with_label_values(&[kind, outcome]);
        }
    }
    registry.register(Box::new(m.operators_created.clone()))?;
    registry.register(Box::new(m.operators_ended.clone()))?;
    registry.register(Box::new(m.tso_requests.clone()))?;
    registry.register(Box::new(m.tso_seconds.clone()))?;
    Ok(m)
}

/// PD's metrics, registered on first use.
pub fn metrics() -> &'static PdMetrics {
    static METRICS: LazyLock<PdMetrics> = LazyLock::new(|| {
        // Names are distinct constants: a clash is a programming error caught by any test.
        build().unwrap_or_else(|e| panic!("registering PD's metrics: {e}"))
    });
    &METRICS
}

/// Records one answered timestamp request.
pub fn observe_tso(took: Duration) {
    let m = metrics();
    m.tso_requests.inc();
    m.tso_seconds.observe(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_uses_only_pd_metrics_that_exist() {
        let dashboard = include_str!("../../dashboards/rdb.json");
        let m = metrics();
        m.stores.with_label_values(&["up"]).set(3);
        observe_tso(Duration::from_micros(300));
        let text = rdb_server::metrics::metrics().render();
        let mut names: Vec<&str> = dashboard
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("rdb_pd_"))
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(
            names.len() >= 5,
            "the dashboard names few PD metrics: {names:?}"
        );
        for name in names {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {base} ")),
                "dashboards/rdb.json uses {name}, which rdb-pd does not export"
            );
        }
        assert!(text.contains("rdb_pd_stores{state=\"up\"} 3"), "{text}");
        assert!(text.contains("rdb_pd_tso_requests_total 1"), "{text}");
    }
}
