//! What a benchmark run observed and how it is printed: per-task, per-kind latency
//! histograms and counters ([`Stats`]), merged into a [`Summary`] that prints as a table for
//! people and as one JSON line for scripts. The JSON line keeps the fields it had before the
//! per-kind figures, in the same order, and adds `distribution`, `scan_max` and
//! `ops_by_kind` after them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdb_client::{Error, ReadConsistency};
use serde_json::json;

use super::{BenchArgs, Distribution, OpKind, Workload};

/// Largest latency the histograms track (one hour, in microseconds); longer ones saturate.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A short name for the kind of a client error, used to count errors.
fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::InvalidArgument(_) => "invalid_argument",
        Error::NotLeader { .. } => "not_leader",
        Error::Unavailable(_) => "unavailable",
        Error::Indeterminate(_) => "indeterminate",
        Error::Unsupported(_) => "unsupported",
        Error::StaleEpoch(_) => "stale_epoch",
        Error::AlreadyBootstrapped(_) => "already_bootstrapped",
        Error::NotFound(_) => "not_found",
        Error::ClusterMismatch(_) => "cluster_mismatch",
        Error::FailedPrecondition(_) => "failed_precondition",
        Error::Io(_) => "io",
        Error::Compacted(_) => "compacted",
        Error::FutureRevision(_) => "future_revision",
    }
}

/// Microseconds as milliseconds.
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// `x` rounded to `decimals` places, for printing.
pub(super) fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// An empty latency histogram: 1 µs to an hour, 3 significant figures.
pub(super) fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| format!("cannot create a latency histogram: {e}"))
}

/// What one kind of request observed.
struct KindStats {
    hist: Histogram<u64>,
    ops: u64,
    errors: u64,
    /// Pairs the scans returned.
    rows: u64,
}

/// What one task (or, merged, all tasks) observed.
pub(super) struct Stats {
    /// An empty histogram with the run's bounds, copied for a kind at its first request (so
    /// a task holds histograms only for the kinds it issued).
    empty: Arc<Histogram<u64>>,
    kinds: BTreeMap<OpKind, KindStats>,
    /// Successful gets that found no value.
    pub(super) not_found: u64,
    /// Failed requests by error kind.
    errors: BTreeMap<&'static str, u64>,
    /// The first message of each error kind.
    pub(super) first_error: BTreeMap<&'static str, String>,
}

impl Stats {
    pub(super) fn new(empty: Arc<Histogram<u64>>) -> Stats {
        Stats {
            empty,
            kinds: BTreeMap::new(),
            not_found: 0,
            errors: BTreeMap::new(),
            first_error: BTreeMap::new(),
        }
    }

    /// The counters of `kind`, created empty at its first request.
    fn kind(&mut self, kind: OpKind) -> &mut KindStats {
        let empty = &self.empty;
        self.kinds.entry(kind).or_insert_with(|| KindStats {
            hist: Histogram::clone(empty),
            ops: 0,
            errors: 0,
            rows: 0,
        })
    }

    pub(super) fn record_ok(&mut self, kind: OpKind, started: Instant, rows: u64) {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let k = self.kind(kind);
        k.hist.saturating_record(us.max(1));
        k.ops += 1;
        k.rows += rows;
    }

    pub(super) fn record_err(&mut self, kind: OpKind, e: &Error) {
        self.kind(kind).errors += 1;
        let name = error_kind(e);
        *self.errors.entry(name).or_insert(0) += 1;
        self.first_error
            .entry(name)
            .or_insert_with(|| e.to_string());
    }

    /// Successful requests of every kind.
    pub(super) fn ops(&self) -> u64 {
        self.kinds.values().map(|k| k.ops).sum()
    }

    pub(super) fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The latencies of every kind in one histogram.
    fn all_latencies(&self) -> Result<Histogram<u64>, String> {
        let mut all = Histogram::clone(&self.empty);
        for k in self.kinds.values() {
            all.add(&k.hist)
                .map_err(|e| format!("cannot merge latency histograms: {e}"))?;
        }
        Ok(all)
    }

    pub(super) fn merge(&mut self, other: Stats) -> Result<(), String> {
        for (kind, theirs) in other.kinds {
            match self.kinds.get_mut(&kind) {
                Some(ours) => {
                    ours.hist
                        .add(&theirs.hist)
                        .map_err(|e| format!("cannot merge latency histograms: {e}"))?;
                    ours.ops += theirs.ops;
                    ours.errors += theirs.errors;
                    ours.rows += theirs.rows;
                }
                None => {
                    self.kinds.insert(kind, theirs);
                }
            }
        }
        self.not_found += other.not_found;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_insert(0) += n;
        }
        for (k, m) in other.first_error {
            self.first_error.entry(k).or_insert(m);
        }
        Ok(())
    }
}

/// One kind of request's share of a run, as printed.
#[derive(Debug, Clone, PartialEq)]
pub struct KindSummary {
    /// The kind.
    pub kind: OpKind,
    /// Successful requests.
    pub ops: u64,
    /// Failed requests.
    pub errors: u64,
    /// Median latency in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency in milliseconds.
    pub p99_ms: f64,
    /// Largest latency in milliseconds.
    pub max_ms: f64,
    /// Pairs returned, for scans.
    pub rows: Option<u64>,
}

/// The result of a run, as printed.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The workload run.
    pub workload: Workload,
    /// Concurrent tasks.
    pub clients: usize,
    /// Client connections used.
    pub connections: usize,
    /// Bytes per written value.
    pub value_size: usize,
    /// Size of the key space.
    pub keys: u64,
    /// Successful requests.
    pub ops: u64,
    /// Successful gets that found no value.
    pub not_found: u64,
    /// Failed requests by error kind.
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the measured phase.
    pub seconds: f64,
    /// Median latency in milliseconds.
    pub p50_ms: f64,
    /// 95th percentile latency in milliseconds.
    pub p95_ms: f64,
    /// 99th percentile latency in milliseconds.
    pub p99_ms: f64,
    /// Largest latency in milliseconds.
    pub max_ms: f64,
    /// Consistency of the gets.
    pub consistency: ReadConsistency,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
    /// Keys per request.
    pub batch: usize,
    /// How keys were picked (None for tso).
    pub distribution: Option<Distribution>,
    /// Longest scan, for the workloads that scan.
    pub scan_max: Option<u32>,
    /// Every kind of request the workload issues (also those with no requests), in the
    /// workload's order.
    pub kinds: Vec<KindSummary>,
}

impl Summary {
    /// Builds the summary of a run from its merged stats.
    pub(super) fn new(
        args: &BenchArgs,
        stats: &Stats,
        elapsed: Duration,
        interrupted: bool,
    ) -> Result<Summary, String> {
        let hist = stats.all_latencies()?;
        let kinds = args
            .mix()
            .kinds()
            .into_iter()
            .map(|kind| match stats.kinds.get(&kind) {
                Some(k) => KindSummary {
                    kind,
                    ops: k.ops,
                    errors: k.errors,
                    p50_ms: ms(k.hist.value_at_quantile(0.50)),
                    p99_ms: ms(k.hist.value_at_quantile(0.99)),
                    max_ms: ms(k.hist.max()),
                    rows: (kind == OpKind::Scan).then_some(k.rows),
                },
                None => KindSummary {
                    kind,
                    ops: 0,
                    errors: 0,
                    p50_ms: 0.0,
                    p99_ms: 0.0,
                    max_ms: 0.0,
                    rows: (kind == OpKind::Scan).then_some(0),
                },
            })
            .collect();
        Ok(Summary {
            workload: args.workload,
            clients: args.clients,
            connections: args.effective_connections(),
            value_size: args.value_size,
            keys: args.keys,
            ops: stats.ops(),
            not_found: stats.not_found,
            errors: stats
                .errors
                .iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect(),
            seconds: elapsed.as_secs_f64(),
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p95_ms: ms(hist.value_at_quantile(0.95)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            max_ms: ms(hist.max()),
            consistency: args.consistency(),
            interrupted,
            batch: args.batch,
            distribution: args.distribution(),
            scan_max: args.scan_max(),
            kinds,
        })
    }

    /// Failed requests of every kind.
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Successful requests per second of wall time.
    pub fn ops_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ops as f64 / self.seconds
        } else {
            0.0
        }
    }

    fn consistency_name(&self) -> &'static str {
        match self.consistency {
            ReadConsistency::Linearizable => "linearizable",
            ReadConsistency::Serializable => "serializable",
        }
    }

    /// The summary as one line of JSON, fields in a fixed order: the totals as before the
    /// ycsb workloads, then `distribution`, `scan_max` (scanning workloads only) and
    /// `ops_by_kind`.
    pub fn to_json(&self) -> String {
        let line = JsonSummary {
            workload: self.workload.name(),
            clients: self.clients,
            connections: self.connections,
            value_size: self.value_size,
            keys: self.keys,
            ops: self.ops,
            errors: self.error_total(),
            seconds: round(self.seconds, 3),
            ops_per_sec: round(self.ops_per_sec(), 1),
            batch: self.batch,
            keys_per_sec: round(self.ops_per_sec() * self.batch as f64, 1),
            p50_ms: round(self.p50_ms, 3),
            p95_ms: round(self.p95_ms, 3),
            p99_ms: round(self.p99_ms, 3),
            max_ms: round(self.max_ms, 3),
            consistency: self.consistency_name(),
            errors_by_kind: &self.errors,
            not_found: self.not_found,
            interrupted: self.interrupted,
            distribution: self.distribution.map(Distribution::name),
            scan_max: self.scan_max,
            ops_by_kind: self
                .kinds
                .iter()
                .map(|k| {
                    let per_sec = if self.seconds > 0.0 {
                        k.ops as f64 / self.seconds
                    } else {
                        0.0
                    };
                    (
                        k.kind.name(),
                        JsonKind {
                            ops: k.ops,
                            errors: k.errors,
                            ops_per_sec: round(per_sec, 1),
                            p50_ms: round(k.p50_ms, 3),
                            p99_ms: round(k.p99_ms, 3),
                            max_ms: round(k.max_ms, 3),
                            rows: k.rows,
                        },
                    )
                })
                .collect(),
        };
        // Plain numbers, strings and string-keyed maps: serializing cannot fail.
        serde_json::to_string(&line)
            .unwrap_or_else(|e| json!({ "error": e.to_string() }).to_string())
    }

    /// The summary as a few aligned lines for people.
    pub fn to_table(&self) -> String {
        let reads = match self.workload {
            Workload::Put => String::new(),
            _ => format!(" ({} reads)", self.consistency_name()),
        };
        let errors = if self.errors.is_empty() {
            "0".to_string()
        } else {
            let parts: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            format!("{} ({})", self.error_total(), parts.join(", "))
        };
        let cut = if self.interrupted {
            " [interrupted]"
        } else {
            ""
        };
        let keys = match self.distribution {
            Some(d) => format!("{} keys ({})", self.keys, d.name()),
            None => format!("{} keys", self.keys),
        };
        let mut lines = vec![
            format!("workload    {}{reads}{cut}", self.workload.name()),
            format!(
                "clients     {} over {} connections; {keys}, {}-byte values",
                self.clients, self.connections, self.value_size
            ),
            if self.batch > 1 {
                format!(
                    "ops         {} in {:.2} s = {:.1} ops/s of {} keys = {:.1} keys/s",
                    self.ops,
                    self.seconds,
                    self.ops_per_sec(),
                    self.batch,
                    self.ops_per_sec() * self.batch as f64
                )
            } else {
                format!(
                    "ops         {} in {:.2} s = {:.1} ops/s",
                    self.ops,
                    self.seconds,
                    self.ops_per_sec()
                )
            },
            format!(
                "latency ms  p50 {:.3}  p95 {:.3}  p99 {:.3}  max {:.3}",
                self.p50_ms, self.p95_ms, self.p99_ms, self.max_ms
            ),
            format!("errors      {errors}"),
        ];
        // Per kind only where it adds something: several kinds, or the rows of scans.
        if self.kinds.len() > 1 || self.kinds.iter().any(|k| k.rows.is_some()) {
            for (i, k) in self.kinds.iter().enumerate() {
                let head = if i == 0 { "by kind" } else { "" };
                let rows = match k.rows {
                    Some(rows) if k.ops > 0 => {
                        format!("  rows {rows} ({:.1} per scan)", rows as f64 / k.ops as f64)
                    }
                    Some(rows) => format!("  rows {rows}"),
                    None => String::new(),
                };
                lines.push(format!(
                    "{head:<11} {:<7} {} ops  p50 {:.3}  p99 {:.3}  max {:.3} ms  {} errors{rows}",
                    k.kind.name(),
                    k.ops,
                    k.p50_ms,
                    k.p99_ms,
                    k.max_ms,
                    k.errors
                ));
            }
        }
        if self.not_found > 0 {
            lines.push(format!(
                "not found   {} gets (use --preload to write every key first)",
                self.not_found
            ));
        }
        lines.join("\n")
    }
}

/// The JSON line's fields, in the order they are printed.
#[derive(serde::Serialize)]
struct JsonSummary<'a> {
    workload: &'static str,
    clients: usize,
    connections: usize,
    value_size: usize,
    keys: u64,
    ops: u64,
    errors: u64,
    seconds: f64,
    ops_per_sec: f64,
    batch: usize,
    keys_per_sec: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    consistency: &'static str,
    errors_by_kind: &'a BTreeMap<String, u64>,
    not_found: u64,
    interrupted: bool,
    distribution: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scan_max: Option<u32>,
    ops_by_kind: BTreeMap<&'static str, JsonKind>,
}

/// One kind of request in the JSON line.
#[derive(serde::Serialize)]
struct JsonKind {
    ops: u64,
    errors: u64,
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::tests::{defaults, parsed};

    #[test]
    fn error_kinds_have_stable_names() {
        assert_eq!(
            error_kind(&Error::InvalidArgument("x".into())),
            "invalid_argument"
        );
        assert_eq!(
            error_kind(&Error::NotLeader {
                leader_id: None,
                leader_addr: None
            }),
            "not_leader"
        );
        assert_eq!(error_kind(&Error::Unavailable("x".into())), "unavailable");
        assert_eq!(
            error_kind(&Error::Indeterminate("x".into())),
            "indeterminate"
        );
    }

    fn parse_json(line: &str) -> serde_json::Value {
        match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => panic!("not JSON ({e}): {line}"),
        }
    }

    fn empty_stats() -> Stats {
        match new_histogram() {
            Ok(h) => Stats::new(Arc::new(h)),
            Err(e) => panic!("{e}"),
        }
    }

    /// Records one successful request of `kind` per latency (microseconds).
    fn record(s: &mut Stats, kind: OpKind, latencies_us: &[u64], rows_each: u64) {
        for &us in latencies_us {
            let k = s.kind(kind);
            k.hist.saturating_record(us);
            k.ops += 1;
            k.rows += rows_each;
        }
    }

    fn stats_with(kind: OpKind, latencies_us: &[u64]) -> Stats {
        let mut s = empty_stats();
        record(&mut s, kind, latencies_us, 0);
        s
    }

    fn summary(args: &BenchArgs, s: &Stats, secs: u64, interrupted: bool) -> Summary {
        match Summary::new(args, s, Duration::from_secs(secs), interrupted) {
            Ok(sum) => sum,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn stats_merge_adds_everything() {
        let mut a = stats_with(OpKind::Read, &[1000, 2000]);
        a.record_err(OpKind::Read, &Error::Unavailable("first".into()));
        let mut b = stats_with(OpKind::Read, &[3000]);
        record(&mut b, OpKind::Update, &[500], 0);
        b.not_found = 1;
        b.record_err(OpKind::Update, &Error::Unavailable("second".into()));
        b.record_err(OpKind::Read, &Error::Indeterminate("x".into()));
        assert_eq!(a.merge(b), Ok(()));
        assert_eq!(a.ops(), 4);
        assert_eq!(a.kinds[&OpKind::Read].ops, 3);
        assert_eq!(a.kinds[&OpKind::Read].hist.len(), 3);
        assert_eq!(a.kinds[&OpKind::Read].errors, 2);
        assert_eq!(a.kinds[&OpKind::Update].ops, 1);
        assert_eq!(a.kinds[&OpKind::Update].errors, 1);
        assert_eq!(a.all_latencies().map(|h| h.len()), Ok(4));
        assert_eq!(a.not_found, 1);
        assert_eq!(a.errors.get("unavailable"), Some(&2));
        assert_eq!(a.errors.get("indeterminate"), Some(&1));
        assert_eq!(a.error_total(), 3);
        assert_eq!(
            a.first_error.get("unavailable").map(String::as_str),
            Some("unavailable: first")
        );
    }

    /// The JSON fields every script knows, in their order (scripts/bench-*.sh parse them).
    const OLD_FIELDS: [&str; 19] = [
        "workload",
        "clients",
        "connections",
        "value_size",
        "keys",
        "ops",
        "errors",
        "seconds",
        "ops_per_sec",
        "batch",
        "keys_per_sec",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
        "consistency",
        "errors_by_kind",
        "not_found",
        "interrupted",
    ];

    /// Asserts `line`'s top-level fields are the old ones in their order, then `added`.
    fn assert_fields(line: &str, added: &[&str]) {
        let j = parse_json(line);
        let keys: Vec<&str> = match j.as_object() {
            Some(o) => o.keys().map(String::as_str).collect(),
            None => panic!("not an object: {line}"),
        };
        let mut want: Vec<&str> = OLD_FIELDS.to_vec();
        want.extend_from_slice(added);
        let mut sorted_want = want.clone();
        sorted_want.sort_unstable();
        // serde_json's map sorts keys; compare sets there and the order in the text.
        assert_eq!(keys, sorted_want, "{line}");
        let positions: Vec<usize> = want
            .iter()
            .map(|f| match line.find(&format!("\"{f}\":")) {
                Some(i) => i,
                None => panic!("{f} missing: {line}"),
            })
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "fields out of order: {line}"
        );
    }

    #[test]
    fn summary_json_has_every_field() {
        // 100 ops: 1..=100 ms.
        let lat: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let mut s = stats_with(OpKind::Read, &lat);
        s.record_err(OpKind::Read, &Error::Unavailable("x".into()));
        s.record_err(OpKind::Read, &Error::Unavailable("y".into()));
        let mut args = defaults();
        args.workload = Workload::Get;
        args.clients = 8;
        args.connections = 2;
        let sum = summary(&args, &s, 2, false);
        assert_eq!(sum.ops_per_sec(), 50.0);
        let line = sum.to_json();
        assert!(!line.contains('\n'));
        assert!(line.starts_with(r#"{"workload":"get","clients":8,"connections":2,"#));
        assert_fields(&line, &["distribution", "ops_by_kind"]);
        let j = parse_json(&line);
        assert_eq!(j["workload"], "get");
        assert_eq!(j["clients"], 8);
        assert_eq!(j["connections"], 2);
        assert_eq!(j["value_size"], 256);
        assert_eq!(j["keys"], 100_000);
        assert_eq!(j["ops"], 100);
        assert_eq!(j["errors"], 2);
        assert_eq!(j["errors_by_kind"]["unavailable"], 2);
        assert_eq!(j["not_found"], 0);
        assert_eq!(j["seconds"], 2.0);
        assert_eq!(j["ops_per_sec"], 50.0);
        assert_eq!(j["consistency"], "linearizable");
        assert_eq!(j["interrupted"], false);
        assert_eq!(j["distribution"], "uniform");
        assert_eq!(j["ops_by_kind"]["read"]["ops"], 100);
        assert_eq!(j["ops_by_kind"]["read"]["errors"], 2);
        assert_eq!(j["ops_by_kind"]["read"]["ops_per_sec"], 50.0);
        assert!(j["ops_by_kind"]["read"].get("rows").is_none());
        // HDR values are within 0.1% (3 significant figures).
        let near = |got: &serde_json::Value, want: f64| {
            let got = got.as_f64().unwrap_or(f64::NAN);
            assert!(
                (got - want).abs() <= want * 0.001 + 0.001,
                "{got} vs {want}"
            );
        };
        near(&j["p50_ms"], 50.0);
        near(&j["p95_ms"], 95.0);
        near(&j["p99_ms"], 99.0);
        near(&j["max_ms"], 100.0);
        near(&j["ops_by_kind"]["read"]["p50_ms"], 50.0);
        near(&j["ops_by_kind"]["read"]["p99_ms"], 99.0);

        let table = sum.to_table();
        assert!(table.contains("get (linearizable reads)"), "{table}");
        assert!(table.contains("100000 keys (uniform)"), "{table}");
        assert!(table.contains("100 in 2.00 s = 50.0 ops/s"), "{table}");
        assert!(table.contains("2 (unavailable 2)"), "{table}");
        // One kind without scans: no per-kind lines repeating the totals.
        assert!(!table.contains("by kind"), "{table}");
    }

    #[test]
    fn summary_reports_each_kind_of_a_mixed_run() {
        // ycsb-e: 95 scans of 10..=105 ms returning 20 pairs each, 5 inserts of 1..=5 ms.
        let mut s = stats_with(
            OpKind::Insert,
            &(1..=5).map(|i| i * 1000).collect::<Vec<_>>(),
        );
        record(
            &mut s,
            OpKind::Scan,
            &(10..=104).map(|i| i * 1000).collect::<Vec<_>>(),
            20,
        );
        s.record_err(OpKind::Insert, &Error::Unavailable("x".into()));
        let args = parsed(&["--workload", "ycsb-e", "--scan-max", "50"]);
        let sum = summary(&args, &s, 10, false);
        assert_eq!(sum.ops, 100);
        let line = sum.to_json();
        assert_fields(&line, &["distribution", "scan_max", "ops_by_kind"]);
        let j = parse_json(&line);
        assert_eq!(j["workload"], "ycsb-e");
        assert_eq!(j["distribution"], "zipfian");
        assert_eq!(j["scan_max"], 50);
        assert_eq!(j["ops"], 100);
        assert_eq!(j["errors"], 1);
        let scan = &j["ops_by_kind"]["scan"];
        let insert = &j["ops_by_kind"]["insert"];
        assert_eq!(scan["ops"], 95);
        assert_eq!(scan["errors"], 0);
        assert_eq!(scan["rows"], 1900);
        assert_eq!(scan["ops_per_sec"], 9.5);
        assert_eq!(insert["ops"], 5);
        assert_eq!(insert["errors"], 1);
        assert!(insert.get("rows").is_none());
        let ms_of = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        assert!((ms_of(&insert["p50_ms"]) - 3.0).abs() < 0.01, "{line}");
        assert!((ms_of(&insert["max_ms"]) - 5.0).abs() < 0.01, "{line}");
        assert!((ms_of(&scan["p50_ms"]) - 57.0).abs() < 0.1, "{line}");
        assert!(ms_of(&scan["p99_ms"]) > ms_of(&insert["max_ms"]), "{line}");
        // Only the workload's kinds are listed.
        assert_eq!(j["ops_by_kind"].as_object().map(|o| o.len()), Some(2));

        let table = sum.to_table();
        assert!(table.contains("100000 keys (zipfian)"), "{table}");
        assert!(table.contains("by kind     scan    95 ops"), "{table}");
        assert!(table.contains("rows 1900 (20.0 per scan)"), "{table}");
        assert!(table.contains("            insert  5 ops"), "{table}");
        assert!(table.contains("1 errors"), "{table}");
    }

    #[test]
    fn kinds_without_requests_are_listed_as_zero() {
        // ycsb-b where no update happened (or all failed): the update entry still exists.
        let s = stats_with(OpKind::Read, &[1000]);
        let sum = summary(&parsed(&["--workload", "ycsb-b"]), &s, 1, false);
        let j = parse_json(&sum.to_json());
        assert_eq!(j["ops_by_kind"]["read"]["ops"], 1);
        assert_eq!(j["ops_by_kind"]["update"]["ops"], 0);
        assert_eq!(j["ops_by_kind"]["update"]["p99_ms"], 0.0);
        // tso: no keys, so no distribution.
        let t = summary(
            &parsed(&["--workload", "tso"]),
            &stats_with(OpKind::Tso, &[10]),
            1,
            false,
        );
        let j = parse_json(&t.to_json());
        assert!(j["distribution"].is_null());
        assert_eq!(j["ops_by_kind"]["tso"]["ops"], 1);
    }

    #[test]
    fn empty_run_summary_is_all_zero() {
        let s = empty_stats();
        let sum = summary(&defaults(), &s, 0, true);
        let j = parse_json(&sum.to_json());
        assert_eq!(j["ops"], 0);
        assert_eq!(j["ops_per_sec"], 0.0);
        assert_eq!(j["p99_ms"], 0.0);
        assert_eq!(j["max_ms"], 0.0);
        assert_eq!(j["errors"], 0);
        assert_eq!(j["interrupted"], true);
        assert_eq!(j["ops_by_kind"]["update"]["ops"], 0);
        assert_eq!(j["ops_by_kind"]["update"]["ops_per_sec"], 0.0);
    }
}
