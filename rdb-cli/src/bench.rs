//! `rdb-cli bench`: a closed-loop load generator that measures throughput and latency.
//!
//! It opens `--connections` [`Client`]s (each with the endpoint list rotated, so different
//! connections try different nodes first) and runs `--clients` tokio tasks spread round-robin
//! over them. Each task keeps exactly one request in flight: it picks a key uniformly from
//! `bench-00000000 .. bench-{keys-1}` with a seeded `StdRng`, issues a put or a get (by
//! `--workload` and `--read-ratio`), waits for the answer, and repeats until `--duration-secs`
//! have passed or `--ops` requests have been issued in total. `--preload` first writes every
//! key once, so that reads find data.
//!
//! Latency is measured around each client call (so it includes the client's own retries and
//! redirects) and recorded in microseconds in a per-task HDR histogram; the histograms are
//! merged at the end. Only successful calls count as ops and go into the histogram; failed
//! calls are counted by error kind and the run goes on. Throughput is successful ops divided
//! by the wall time from the first request to the last answer. The summary is a short table
//! (in table mode) and always one JSON line on stdout, for scripts. Ctrl-C stops the run early
//! and still prints the summary.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::distributions::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdb_client::{Client, Error, Options, PdClient, ReadConsistency};
use serde_json::json;
use tokio::task::JoinSet;

use crate::output::Printer;

/// Largest latency the histograms track (one hour, in microseconds); longer ones saturate.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Which requests the benchmark issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Only puts.
    Put,
    /// Only gets.
    Get,
    /// Gets with probability `--read-ratio`, puts otherwise.
    Mixed,
    /// Timestamps from PD's oracle (needs `--pd`): each task asks for one at a time; one
    /// `PdClient` per connection batches the tasks' requests.
    Tso,
}

impl Workload {
    /// The name used on the command line and in the JSON summary.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mixed => "mixed",
            Workload::Tso => "tso",
        }
    }
}

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
    /// Write every key once before measuring (get and mixed workloads need data).
    #[arg(long)]
    pub preload: bool,
    /// Serve gets without a ReadIndex round (possibly stale); default is linearizable.
    #[arg(long)]
    pub serializable: bool,
    /// Fraction of requests that are gets in the mixed workload, 0 to 1.
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    /// Seed for the key-choice random number generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
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
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err(format!(
                "--read-ratio must be between 0 and 1, got {}",
                self.read_ratio
            ));
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

    /// Read consistency the gets use.
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
}

/// The name of key number `i`.
fn key_name(i: u64) -> String {
    format!("bench-{i:08}")
}

/// `endpoints` rotated left by `i`, so connection `i` tries a different node first.
fn rotated(endpoints: &[String], i: usize) -> Vec<String> {
    let mut v = endpoints.to_vec();
    if !v.is_empty() {
        let n = i % v.len();
        v.rotate_left(n);
    }
    v
}

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
        Error::Io(_) => "io",
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| format!("cannot create a latency histogram: {e}"))
}

/// What one task (or, merged, all tasks) observed.
struct Stats {
    hist: Histogram<u64>,
    ops: u64,
    not_found: u64,
    errors: BTreeMap<&'static str, u64>,
    first_error: BTreeMap<&'static str, String>,
}

impl Stats {
    fn new() -> Result<Stats, String> {
        Ok(Stats {
            hist: new_histogram()?,
            ops: 0,
            not_found: 0,
            errors: BTreeMap::new(),
            first_error: BTreeMap::new(),
        })
    }

    fn record_ok(&mut self, started: Instant) {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.hist.saturating_record(us.max(1));
        self.ops += 1;
    }

    fn record_err(&mut self, e: &Error) {
        let kind = error_kind(e);
        *self.errors.entry(kind).or_insert(0) += 1;
        self.first_error
            .entry(kind)
            .or_insert_with(|| e.to_string());
    }

    fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    fn merge(&mut self, other: Stats) -> Result<(), String> {
        self.hist
            .add(&other.hist)
            .map_err(|e| format!("cannot merge latency histograms: {e:?}"))?;
        self.ops += other.ops;
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

/// Counters the tasks bump as they go, for the progress bar.
#[derive(Default)]
struct Live {
    ok: AtomicU64,
    errors: AtomicU64,
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
}

impl Summary {
    /// Builds the summary of a run from its latency histogram (microseconds) and counters.
    #[allow(clippy::too_many_arguments)]
    fn new(
        args: &BenchArgs,
        hist: &Histogram<u64>,
        ops: u64,
        not_found: u64,
        errors: &BTreeMap<&'static str, u64>,
        elapsed: Duration,
        interrupted: bool,
    ) -> Summary {
        Summary {
            workload: args.workload,
            clients: args.clients,
            connections: args.effective_connections(),
            value_size: args.value_size,
            keys: args.keys,
            ops,
            not_found,
            errors: errors.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            seconds: elapsed.as_secs_f64(),
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p95_ms: ms(hist.value_at_quantile(0.95)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            max_ms: ms(hist.max()),
            consistency: args.consistency(),
            interrupted,
            batch: args.batch,
        }
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

    /// The summary as one line of JSON, fields in a fixed order.
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
        };
        // Plain numbers, strings and a string-keyed map: serializing cannot fail.
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
        let mut lines = vec![
            format!("workload    {}{reads}{cut}", self.workload.name()),
            format!(
                "clients     {} over {} connections; {} keys, {}-byte values",
                self.clients, self.connections, self.keys, self.value_size
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
}

/// When the measured phase ends.
#[derive(Clone, Copy)]
enum Budget {
    /// Stop issuing requests at this instant.
    Until(Instant),
    /// Stop once this many requests were issued by all tasks together.
    Ops(u64),
}

/// Everything a measuring task shares with the others.
struct Shared {
    budget: Budget,
    issued: AtomicU64,
    stop: AtomicBool,
    live: Live,
    value: Vec<u8>,
}

impl Shared {
    /// Claims the right to issue one more request; false when the run is over.
    fn take_one(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        match self.budget {
            Budget::Until(t) => Instant::now() < t,
            Budget::Ops(n) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
        }
    }
}

/// What a measuring task talks to.
#[derive(Clone)]
enum Conn {
    Kv(Client),
    Pd(PdClient),
}

/// One measuring task: one request in flight at a time until the budget is spent.
async fn measure_task(
    conn: Conn,
    args: BenchArgs,
    seed: u64,
    shared: Arc<Shared>,
    mut stats: Stats,
) -> Stats {
    let mut rng = StdRng::seed_from_u64(seed);
    let consistency = args.consistency();
    while shared.take_one() {
        let key = key_name(rng.gen_range(0..args.keys));
        let read = match args.workload {
            Workload::Put | Workload::Tso => false,
            Workload::Get => true,
            Workload::Mixed => rng.gen_bool(args.read_ratio),
        };
        let more: Vec<String> = (1..args.batch)
            .map(|_| key_name(rng.gen_range(0..args.keys)))
            .collect();
        let started = Instant::now();
        let result = match &conn {
            Conn::Pd(pd) => pd.timestamp().await.map(|_| true),
            Conn::Kv(client) if read && args.batch > 1 => client
                .batch_get(std::iter::once(key).chain(more), consistency)
                .await
                .map(|v| v.iter().all(Option::is_some)),
            Conn::Kv(client) if read => {
                client.get_with(key, consistency).await.map(|v| v.is_some())
            }
            Conn::Kv(client) if args.batch > 1 => client
                .batch_put(
                    std::iter::once(key)
                        .chain(more)
                        .map(|k| (k, shared.value.clone())),
                )
                .await
                .map(|()| true),
            Conn::Kv(client) => client.put(key, shared.value.clone()).await.map(|()| true),
        };
        match result {
            Ok(found) => {
                stats.record_ok(started);
                if !found {
                    stats.not_found += 1;
                }
                shared.live.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.record_err(&e);
                shared.live.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    stats
}

/// One preload task: writes keys taken from a shared cursor until all are written.
async fn preload_task(
    client: Client,
    keys: u64,
    next: Arc<AtomicU64>,
    shared: Arc<Shared>,
    mut stats: Stats,
) -> Stats {
    while !shared.stop.load(Ordering::Relaxed) {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= keys {
            break;
        }
        let started = Instant::now();
        match client.put(key_name(i), shared.value.clone()).await {
            Ok(()) => {
                stats.record_ok(started);
                shared.live.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.record_err(&e);
                shared.live.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    stats
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::default_bar()
        .template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Waits for every task, refreshing `bar` with `refresh` and turning Ctrl-C into a stop
/// request. Returns the merged stats and whether Ctrl-C was pressed.
async fn drive(
    mut set: JoinSet<Stats>,
    shared: &Shared,
    bar: &ProgressBar,
    refresh: impl Fn(&ProgressBar, u64, u64),
) -> Result<(Stats, bool), String> {
    let mut total = Stats::new()?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                None => break,
                Some(Ok(stats)) => total.merge(stats)?,
                Some(Err(e)) => return Err(format!("a benchmark task failed: {e}")),
            },
            _ = tick.tick() => refresh(
                bar,
                shared.live.ok.load(Ordering::Relaxed),
                shared.live.errors.load(Ordering::Relaxed),
            ),
            r = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                shared.stop.store(true, Ordering::Relaxed);
                if r.is_ok() {
                    bar.suspend(|| eprintln!("interrupted: waiting for requests in flight"));
                }
            }
        }
    }
    Ok((total, interrupted))
}

/// Runs a benchmark against the cluster at `endpoints` (PD's at `pd` for the tso workload)
/// and prints its summary.
pub async fn run(
    endpoints: &[String],
    pd: &[String],
    opts: Options,
    args: BenchArgs,
    p: &Printer,
) -> Result<(), String> {
    args.validate()?;
    if args.workload == Workload::Tso && pd.is_empty() {
        return Err("the tso workload talks to PD: give its endpoints with --pd".into());
    }
    if args.workload == Workload::Tso && args.preload {
        return Err("--preload writes keys; the tso workload has none".into());
    }
    let conns: Vec<Client> = (0..args.effective_connections())
        .map(|i| Client::with_options(rotated(endpoints, i), opts.clone()))
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

    if args.preload {
        preload(&conns, &args, value.clone()).await?;
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
    let shared = Arc::new(Shared {
        budget,
        issued: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        live: Live::default(),
        value,
    });
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
        let stats = Stats::new()?;
        set.spawn(measure_task(
            conn,
            args.clone(),
            task_seed,
            shared.clone(),
            stats,
        ));
    }
    let by_ops = args.ops.is_some();
    let (total, interrupted) = drive(set, &shared, &bar, |bar, ok, errors| {
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

    let summary = Summary::new(
        &args,
        &total.hist,
        total.ops,
        total.not_found,
        &total.errors,
        elapsed,
        interrupted,
    );
    if !p.is_json() {
        println!("{}", summary.to_table());
        for (kind, msg) in &total.first_error {
            eprintln!("first {kind} error: {msg}");
        }
    }
    println!("{}", summary.to_json());
    if summary.ops == 0 && summary.error_total() > 0 {
        return Err(format!(
            "no request succeeded ({} failed)",
            summary.error_total()
        ));
    }
    Ok(())
}

/// Writes every key once, with the same clients as the measured phase.
async fn preload(conns: &[Client], args: &BenchArgs, value: Vec<u8>) -> Result<(), String> {
    let shared = Arc::new(Shared {
        budget: Budget::Ops(args.keys),
        issued: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        live: Live::default(),
        value,
    });
    let next = Arc::new(AtomicU64::new(0));
    let bar = ProgressBar::new(args.keys).with_style(bar_style(
        "preload {elapsed_precise} [{wide_bar}] {pos}/{len} keys  {msg}",
    ));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..args.clients {
        set.spawn(preload_task(
            conns[i % conns.len()].clone(),
            args.keys,
            next.clone(),
            shared.clone(),
            Stats::new()?,
        ));
    }
    let (total, interrupted) = drive(set, &shared, &bar, |bar, ok, errors| {
        bar.set_position(ok + errors);
        let secs = started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { ok as f64 / secs } else { 0.0 };
        bar.set_message(format!("{rate:.0} keys/s  {errors} errors"));
    })
    .await?;
    bar.finish_and_clear();
    if interrupted {
        return Err("interrupted during --preload".into());
    }
    let errors = total.error_total();
    eprintln!(
        "preloaded {} of {} keys in {:.2} s{}",
        total.ops,
        args.keys,
        started.elapsed().as_secs_f64(),
        if errors > 0 {
            format!(" ({errors} failed)")
        } else {
            String::new()
        }
    );
    for (kind, msg) in &total.first_error {
        eprintln!("first {kind} error during preload: {msg}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        let mut v = vec!["bench"];
        v.extend_from_slice(args);
        Cmd::try_parse_from(v).map(|c| c.bench)
    }

    fn defaults() -> BenchArgs {
        match parse(&[]) {
            Ok(a) => a,
            Err(e) => panic!("defaults do not parse: {e}"),
        }
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let a = defaults();
        assert_eq!(a.workload, Workload::Put);
        assert_eq!(a.clients, 16);
        assert_eq!(a.connections, 4);
        assert_eq!(a.keys, 100_000);
        assert_eq!(a.value_size, 256);
        assert_eq!(a.duration_secs, 10);
        assert_eq!(a.ops, None);
        assert!(!a.preload && !a.serializable);
        assert_eq!(a.read_ratio, 0.5);
        assert_eq!(a.seed, 1);
        assert_eq!(a.validate(), Ok(()));
    }

    #[test]
    fn flags_parse_in_kebab_case() {
        let a = parse(&[
            "--workload",
            "mixed",
            "--clients",
            "3",
            "--connections",
            "2",
            "--keys",
            "10",
            "--value-size",
            "7",
            "--ops",
            "100",
            "--preload",
            "--serializable",
            "--read-ratio",
            "0.9",
            "--seed",
            "42",
        ])
        .map_err(|e| e.to_string());
        let a = match a {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(a.workload, Workload::Mixed);
        assert_eq!(
            (a.clients, a.connections, a.keys, a.value_size),
            (3, 2, 10, 7)
        );
        assert_eq!(a.ops, Some(100));
        assert!(a.preload && a.serializable);
        assert_eq!(a.read_ratio, 0.9);
        assert_eq!(a.seed, 42);
        assert_eq!(a.consistency(), ReadConsistency::Serializable);
        assert_eq!(a.validate(), Ok(()));
    }

    #[test]
    fn ops_and_duration_conflict() {
        assert!(parse(&["--ops", "5"]).is_ok());
        assert!(parse(&["--duration-secs", "5"]).is_ok());
        assert!(parse(&["--ops", "5", "--duration-secs", "5"]).is_err());
        assert!(parse(&["--workload", "scan"]).is_err());
    }

    #[test]
    fn validation_refuses_bad_settings() {
        let check = |f: &dyn Fn(&mut BenchArgs), needle: &str| {
            let mut a = defaults();
            f(&mut a);
            match a.validate() {
                Err(e) => assert!(e.contains(needle), "{e:?} lacks {needle:?}"),
                Ok(()) => panic!("accepted a bad setting ({needle})"),
            }
        };
        check(&|a| a.clients = 0, "--clients");
        check(&|a| a.connections = 0, "--connections");
        check(&|a| a.keys = 0, "--keys");
        check(&|a| a.read_ratio = -0.1, "--read-ratio");
        check(&|a| a.read_ratio = 1.5, "--read-ratio");
        check(&|a| a.read_ratio = f64::NAN, "--read-ratio");
        check(&|a| a.ops = Some(0), "--ops");
        check(&|a| a.duration_secs = 0, "--duration-secs");

        let mut a = defaults();
        a.read_ratio = 0.0;
        assert_eq!(a.validate(), Ok(()));
        a.read_ratio = 1.0;
        assert_eq!(a.validate(), Ok(()));
        // With --ops the duration is not used.
        a.duration_secs = 0;
        a.ops = Some(1);
        assert_eq!(a.validate(), Ok(()));
    }

    #[test]
    fn connections_are_capped_by_clients() {
        let mut a = defaults();
        a.clients = 2;
        a.connections = 4;
        assert_eq!(a.effective_connections(), 2);
        a.clients = 16;
        assert_eq!(a.effective_connections(), 4);
    }

    #[test]
    fn keys_are_zero_padded() {
        assert_eq!(key_name(0), "bench-00000000");
        assert_eq!(key_name(42), "bench-00000042");
        assert_eq!(key_name(99_999_999), "bench-99999999");
        assert_eq!(key_name(123_456_789), "bench-123456789");
        // Padding keeps numeric and byte order the same within the documented range.
        assert!(key_name(9) < key_name(10));
    }

    #[test]
    fn endpoints_rotate_per_connection() {
        let eps: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(rotated(&eps, 0), ["a", "b", "c"]);
        assert_eq!(rotated(&eps, 1), ["b", "c", "a"]);
        assert_eq!(rotated(&eps, 2), ["c", "a", "b"]);
        assert_eq!(rotated(&eps, 3), ["a", "b", "c"]);
        assert_eq!(rotated(&eps, 7), ["b", "c", "a"]);
        assert!(rotated(&[], 3).is_empty());
        assert_eq!(rotated(&eps[..1], 5), ["a"]);
    }

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

    fn stats_with(latencies_us: &[u64]) -> Stats {
        let mut s = match Stats::new() {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        for &us in latencies_us {
            s.hist.saturating_record(us);
            s.ops += 1;
        }
        s
    }

    #[test]
    fn stats_merge_adds_everything() {
        let mut a = stats_with(&[1000, 2000]);
        a.record_err(&Error::Unavailable("first".into()));
        let mut b = stats_with(&[3000]);
        b.not_found = 1;
        b.record_err(&Error::Unavailable("second".into()));
        b.record_err(&Error::Indeterminate("x".into()));
        assert_eq!(a.merge(b), Ok(()));
        assert_eq!(a.ops, 3);
        assert_eq!(a.hist.len(), 3);
        assert_eq!(a.not_found, 1);
        assert_eq!(a.errors.get("unavailable"), Some(&2));
        assert_eq!(a.errors.get("indeterminate"), Some(&1));
        assert_eq!(a.error_total(), 3);
        assert_eq!(
            a.first_error.get("unavailable").map(String::as_str),
            Some("unavailable: first")
        );
    }

    #[test]
    fn summary_json_has_every_field() {
        // 100 ops: 1..=100 ms.
        let lat: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let mut s = stats_with(&lat);
        s.record_err(&Error::Unavailable("x".into()));
        s.record_err(&Error::Unavailable("y".into()));
        let mut args = defaults();
        args.workload = Workload::Get;
        args.clients = 8;
        args.connections = 2;
        let sum = Summary::new(
            &args,
            &s.hist,
            s.ops,
            0,
            &s.errors,
            Duration::from_secs(2),
            false,
        );
        assert_eq!(sum.ops_per_sec(), 50.0);
        let line = sum.to_json();
        assert!(!line.contains('\n'));
        assert!(line.starts_with(r#"{"workload":"get","clients":8,"connections":2,"#));
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
        // HDR values are within 0.1% (3 significant figures).
        let near = |key: &str, want: f64| {
            let got = j[key].as_f64().unwrap_or(f64::NAN);
            assert!((got - want).abs() <= want * 0.001 + 0.001, "{key}: {got}");
        };
        near("p50_ms", 50.0);
        near("p95_ms", 95.0);
        near("p99_ms", 99.0);
        near("max_ms", 100.0);

        let table = sum.to_table();
        assert!(table.contains("get (linearizable reads)"), "{table}");
        assert!(table.contains("100 in 2.00 s = 50.0 ops/s"), "{table}");
        assert!(table.contains("2 (unavailable 2)"), "{table}");
    }

    #[test]
    fn empty_run_summary_is_all_zero() {
        let s = stats_with(&[]);
        let sum = Summary::new(&defaults(), &s.hist, 0, 0, &s.errors, Duration::ZERO, true);
        let j = parse_json(&sum.to_json());
        assert_eq!(j["ops"], 0);
        assert_eq!(j["ops_per_sec"], 0.0);
        assert_eq!(j["p99_ms"], 0.0);
        assert_eq!(j["max_ms"], 0.0);
        assert_eq!(j["errors"], 0);
        assert_eq!(j["interrupted"], true);
    }

    #[test]
    fn ops_budget_is_shared_and_exact() {
        let shared = Shared {
            budget: Budget::Ops(3),
            issued: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            live: Live::default(),
            value: Vec::new(),
        };
        let taken = (0..10).filter(|_| shared.take_one()).count();
        assert_eq!(taken, 3);
        let stopped = Shared {
            budget: Budget::Until(Instant::now() + Duration::from_secs(60)),
            issued: AtomicU64::new(0),
            stop: AtomicBool::new(true),
            live: Live::default(),
            value: Vec::new(),
        };
        assert!(!stopped.take_one());
    }
}
