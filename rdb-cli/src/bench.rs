//! `rdb-cli bench`: a closed-loop load generator that measures throughput and latency.
//!
//! It opens `--connections` [`Client`]s (each with the endpoint list rotated, so different
//! connections try different nodes first) and runs `--clients` tokio tasks spread round-robin
//! over them. Each task keeps exactly one request in flight: it picks a key from
//! `bench-00000000 .. bench-{keys-1}` (uniformly or zipfian, `--distribution`) and a kind of
//! request by the workload's mix, both with a seeded `StdRng`, issues the request, waits for
//! the answer, and repeats until `--duration-secs` have passed or `--ops` requests have been
//! issued in total. `--preload` first writes every key once, so that reads find data.
//!
//! Kinds of request: `read` (a get, or a batch get with `--batch`), `update` (a put or batch
//! put to a key of the key space), `insert` (a put to a new key after the key space), `scan`
//! (up to 1..=`--scan-max` keys from the chosen key on) and `tso` (a timestamp from PD). The
//! workloads `put`, `get`, `mixed` (`--read-ratio`) and `tso` are rdb's own. The YCSB core
//! workloads are presets: `ycsb-a` 50% reads / 50% updates, `ycsb-b` 95/5, `ycsb-c` reads
//! only, `ycsb-e` 95% scans / 5% inserts; `scan` is scans only. The presets preload by default
//! (`--no-preload` skips it when an earlier run wrote the keys) and the ycsb ones pick keys
//! zipfian by default, as YCSB does. Unlike YCSB, ycsb-e's scans start among the preloaded
//! keys only (its inserts are visible to scans that run past the end of the key space), and
//! each run numbers its inserts from `--keys` again.
//!
//! Latency is measured around each client call (so it includes the client's own retries and
//! redirects) and recorded in microseconds in a per-task, per-kind HDR histogram; the
//! histograms are merged at the end. Only successful calls count as ops and go into the
//! histogram; failed calls are counted by error kind and the run goes on. Throughput is
//! successful ops divided by the wall time from the first request to the last answer. The
//! summary is a short table (in table mode) and always one JSON line on stdout, for scripts:
//! totals first, then per kind of request (`ops_by_kind`). Ctrl-C stops the run early and
//! still prints the summary.

mod driver;
mod keys;
mod preload;
mod report;
#[cfg(test)]
mod tests;
mod workload;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::distributions::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdb_client::{Client, Error, Options, PdClient, ReadConsistency, ScanRange};
use tokio::task::JoinSet;

pub use keys::Distribution;
use keys::{key_name, KeyChooser, KEY_PREFIX};
use report::{new_histogram, round, Stats, Summary};

use crate::output::Printer;
use driver::*;
use preload::preload;
use workload::*;
pub use workload::{OpKind, Workload};

/// Bench options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Which requests to issue.
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    pub workload: Workload,
    /// Concurrent in-flight requests (one task each).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Client connections (rdb clients) the tasks are spread over, round-robin.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Size of the key space; keys are bench-00000000, bench-00000001, ...
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Bytes per written value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// How long to measure, in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Stop after this many requests in total instead of after --duration-secs.
    #[arg(long, conflicts_with = "duration_secs")]
    pub ops: Option<u64>,
    /// Write every key once before measuring (get and mixed need data; the ycsb and scan
    /// workloads do this by default).
    #[arg(long)]
    pub preload: bool,
    /// Do not preload for the ycsb and scan workloads (the keys exist from an earlier run).
    #[arg(long, conflicts_with = "preload")]
    pub no_preload: bool,
    /// Serve gets and scans without a ReadIndex round (possibly stale); default is
    /// linearizable.
    #[arg(long)]
    pub serializable: bool,
    /// Fraction of requests that are gets in the mixed workload, 0 to 1 [default: 0.5]. The
    /// ycsb and scan workloads have their own mix and refuse it.
    #[arg(long)]
    pub read_ratio: Option<f64>,
    /// How keys (and scan starts) are picked [default: zipfian for the ycsb workloads,
    /// uniform for the others]. Zipfian is YCSB's scrambled zipfian, constant 0.99.
    #[arg(long, value_enum)]
    pub distribution: Option<Distribution>,
    /// Longest scan of the ycsb-e and scan workloads: each scan asks for a uniform 1..=N keys.
    #[arg(long, default_value_t = 100)]
    pub scan_max: u32,
    /// Seed for the key-choice random number generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Gets read their keys as of this revision (0: the newest), to measure reads of history
    /// (specs/018-versions); with --batch above 1 or other workloads it is refused.
    #[arg(long, default_value_t = 0)]
    pub revision: u64,
    /// Keys per request: above 1, puts are `batch_put`s and gets `batch_get`s of that many
    /// random keys (one Raft entry, one read barrier); ops count requests, keys/s counts keys.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
}

impl BenchArgs {
    /// Refuses settings the benchmark cannot run with.
    fn validate(&self) -> Result<(), String> {
        if self.clients == 0 {
            return Err("--clients must be at least 1".into());
        }
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if self.batch == 0 || self.batch > rdb_client::MAX_BATCH_KEYS {
            return Err(format!(
                "--batch must be between 1 and {}",
                rdb_client::MAX_BATCH_KEYS
            ));
        }
        if self.keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        if self.revision != 0 && (self.workload != Workload::Get || self.batch != 1) {
            return Err(
                "--revision reads single keys at a past revision: use it with --workload get \
                 and --batch 1"
                    .into(),
            );
        }
        if let Some(ratio) = self.read_ratio {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(format!("--read-ratio must be between 0 and 1, got {ratio}"));
            }
            if self.workload.is_preset() {
                return Err(format!(
                    "--read-ratio sets the mix of --workload mixed; {} has its own ({}); \
                     use --workload mixed --distribution zipfian for another ratio",
                    self.workload.name(),
                    self.mix().describe()
                ));
            }
        }
        if self.scan_max == 0 {
            return Err("--scan-max must be at least 1".into());
        }
        if self.batch > 1 && self.workload.scans() {
            return Err(format!(
                "--batch applies to gets and puts, not to the scans of {}",
                self.workload.name()
            ));
        }
        if self.workload == Workload::Tso {
            if self.preload {
                return Err("--preload writes keys; the tso workload has none".into());
            }
            if self.distribution.is_some() {
                return Err("--distribution picks keys; the tso workload has none".into());
            }
        }
        match self.ops {
            Some(0) => return Err("--ops must be at least 1".into()),
            None if self.duration_secs == 0 => {
                return Err("--duration-secs must be at least 1".into())
            }
            _ => {}
        }
        Ok(())
    }

    /// Read consistency the gets and scans use.
    fn consistency(&self) -> ReadConsistency {
        if self.serializable {
            ReadConsistency::Serializable
        } else {
            ReadConsistency::Linearizable
        }
    }

    /// Connections actually opened: there is no point in more than there are tasks.
    fn effective_connections(&self) -> usize {
        self.connections.min(self.clients)
    }

    /// The kinds of request this run issues and their shares.
    fn mix(&self) -> Mix {
        self.workload
            .mix(self.read_ratio.unwrap_or(DEFAULT_READ_RATIO))
    }

    /// How keys are picked (None for tso, which has no keys).
    fn distribution(&self) -> Option<Distribution> {
        if self.workload == Workload::Tso {
            return None;
        }
        self.distribution.or(self.workload.default_distribution())
    }

    /// Whether every key is written once before measuring.
    fn should_preload(&self) -> bool {
        self.preload || (self.workload.is_preset() && !self.no_preload)
    }

    /// Longest scan, for the workloads that scan.
    fn scan_max(&self) -> Option<u32> {
        self.workload.scans().then_some(self.scan_max)
    }
}

/// Where a benchmark sends its requests.
#[derive(Debug, Clone, Copy)]
pub struct Targets<'a> {
    /// The cluster's client addresses.
    pub endpoints: &'a [String],
    /// PD's client addresses (the tso workload; with `regions`, the region map).
    pub pd: &'a [String],
    /// A PD-mode cluster: each connection routes by PD's region map (`Client::with_pd`).
    pub regions: bool,
}

/// Runs a benchmark against the cluster at `targets` and prints its summary.
pub async fn run(
    targets: Targets<'_>,
    opts: Options,
    args: BenchArgs,
    p: &Printer,
) -> Result<(), String> {
    let (endpoints, pd) = (targets.endpoints, targets.pd);
    args.validate()?;
    if args.workload == Workload::Tso && pd.is_empty() {
        return Err("the tso workload talks to PD: give its endpoints with --pd".into());
    }
    let empty = Arc::new(new_histogram()?);
    let conns: Vec<Client> = (0..args.effective_connections())
        .map(|i| {
            if targets.regions {
                Client::with_pd(rotated(pd, i), opts.clone())
            } else {
                Client::with_options(rotated(endpoints, i), opts.clone())
            }
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot create a client: {e}"))?;
    let targets: Vec<Conn> = if args.workload == Workload::Tso {
        (0..args.effective_connections())
            .map(|i| PdClient::with_options(rotated(pd, i), opts.clone()).map(Conn::Pd))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot create a PD client: {e}"))?
    } else {
        conns.iter().cloned().map(Conn::Kv).collect()
    };
    let mut rng = StdRng::seed_from_u64(args.seed);
    let value: Vec<u8> = (&mut rng)
        .sample_iter(Alphanumeric)
        .take(args.value_size)
        .collect();

    if args.should_preload() {
        preload(&conns, &args, value.clone(), &empty).await?;
    } else if args.no_preload && args.workload.is_preset() {
        eprintln!(
            "note: --no-preload: reads and scans find only the keys an earlier run wrote \
             (bench-00000000 .. {})",
            key_name(args.keys - 1)
        );
    } else if matches!(args.workload, Workload::Get | Workload::Mixed) {
        eprintln!(
            "note: without --preload, gets may find no value (they still count as ops; \
             see not_found)"
        );
    }

    let budget = match args.ops {
        Some(n) => Budget::Ops(n),
        None => Budget::Until(Instant::now() + Duration::from_secs(args.duration_secs)),
    };
    let shared = Arc::new(Shared::new(budget, value));
    let bar = match args.ops {
        Some(n) => ProgressBar::new(n).with_style(bar_style(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} requests  {msg}",
        )),
        None => ProgressBar::new(args.duration_secs.saturating_mul(1000)).with_style(bar_style(
            &format!(
                "{{elapsed_precise}} of {}s [{{wide_bar}}] {{msg}}",
                args.duration_secs
            ),
        )),
    };
    let started = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..args.clients {
        let conn = targets[i % targets.len()].clone();
        let task_seed = rng.gen::<u64>();
        set.spawn(measure_task(
            conn,
            args.clone(),
            task_seed,
            shared.clone(),
            Stats::new(empty.clone()),
        ));
    }
    let by_ops = args.ops.is_some();
    let total = Stats::new(empty.clone());
    let (total, interrupted) = drive(set, &shared, &bar, total, |bar, ok, errors| {
        let secs = started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { ok as f64 / secs } else { 0.0 };
        if by_ops {
            bar.set_position(ok + errors);
        } else {
            let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            bar.set_position(ms);
        }
        bar.set_message(format!("{ok} ops  {rate:.0} ops/s  {errors} errors"));
    })
    .await?;
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    let summary = Summary::new(&args, &total, elapsed, interrupted)?;
    if !p.is_json() {
        outln!("{}", summary.to_table());
        for (kind, msg) in &total.first_error {
            eprintln!("first {kind} error: {msg}");
        }
    }
    outln!("{}", summary.to_json());
    if summary.ops == 0 && summary.error_total() > 0 {
        return Err(format!(
            "no request succeeded ({} failed)",
            summary.error_total()
        ));
    }
    Ok(())
}
