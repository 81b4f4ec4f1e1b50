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

mod keys;
mod report;

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

/// Read share of `--workload mixed` when `--read-ratio` is not given.
const DEFAULT_READ_RATIO: f64 = 0.5;

/// Which requests the benchmark issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Only puts.
    Put,
    /// Only gets.
    Get,
    /// Gets with probability `--read-ratio` (default 0.5), puts otherwise.
    Mixed,
    /// Timestamps from PD's oracle (needs `--pd`): each task asks for one at a time; one
    /// `PdClient` per connection batches the tasks' requests.
    Tso,
    /// YCSB A, update heavy: 50% reads, 50% updates (zipfian keys; preloads).
    #[value(name = "ycsb-a")]
    YcsbA,
    /// YCSB B, read mostly: 95% reads, 5% updates (zipfian keys; preloads).
    #[value(name = "ycsb-b")]
    YcsbB,
    /// YCSB C, read only (zipfian keys; preloads).
    #[value(name = "ycsb-c")]
    YcsbC,
    /// YCSB E, short ranges: 95% scans of 1..=--scan-max keys, 5% inserts of new keys
    /// (zipfian scan starts; preloads).
    #[value(name = "ycsb-e")]
    YcsbE,
    /// Only scans of 1..=--scan-max keys (uniform starts; preloads).
    Scan,
}

impl Workload {
    /// The name used on the command line and in the JSON summary.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mixed => "mixed",
            Workload::Tso => "tso",
            Workload::YcsbA => "ycsb-a",
            Workload::YcsbB => "ycsb-b",
            Workload::YcsbC => "ycsb-c",
            Workload::YcsbE => "ycsb-e",
            Workload::Scan => "scan",
        }
    }

    /// The kinds of request and their shares; `read_ratio` is used by `mixed` only.
    fn mix(self, read_ratio: f64) -> Mix {
        let split = |first, share, second| Mix::Split {
            first,
            share,
            second,
        };
        match self {
            Workload::Put => Mix::Only(OpKind::Update),
            Workload::Get | Workload::YcsbC => Mix::Only(OpKind::Read),
            Workload::Mixed => split(OpKind::Read, read_ratio, OpKind::Update),
            Workload::Tso => Mix::Only(OpKind::Tso),
            Workload::YcsbA => split(OpKind::Read, 0.5, OpKind::Update),
            Workload::YcsbB => split(OpKind::Read, 0.95, OpKind::Update),
            Workload::YcsbE => split(OpKind::Scan, 0.95, OpKind::Insert),
            Workload::Scan => Mix::Only(OpKind::Scan),
        }
    }

    /// Whether the workload is a preset with its own fixed mix that needs data: the YCSB
    /// workloads and `scan`. These preload unless told not to.
    fn is_preset(self) -> bool {
        matches!(
            self,
            Workload::YcsbA | Workload::YcsbB | Workload::YcsbC | Workload::YcsbE | Workload::Scan
        )
    }

    /// Key distribution when `--distribution` is not given: zipfian for the YCSB workloads
    /// (as in YCSB), uniform for the others; None for tso, which has no keys.
    fn default_distribution(self) -> Option<Distribution> {
        match self {
            Workload::Tso => None,
            Workload::YcsbA | Workload::YcsbB | Workload::YcsbC | Workload::YcsbE => {
                Some(Distribution::Zipfian)
            }
            Workload::Put | Workload::Get | Workload::Mixed | Workload::Scan => {
                Some(Distribution::Uniform)
            }
        }
    }

    /// Whether the workload issues scans.
    fn scans(self) -> bool {
        matches!(self, Workload::YcsbE | Workload::Scan)
    }
}

/// A kind of request, as counted in the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    /// A get (a batch get with `--batch`).
    Read,
    /// A put (a batch put with `--batch`) to a key of the key space.
    Update,
    /// A put to a new key after the key space (ycsb-e).
    Insert,
    /// A scan of 1..=`--scan-max` keys.
    Scan,
    /// A timestamp from PD.
    Tso,
}

impl OpKind {
    /// The name used in the summary.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::Scan => "scan",
            OpKind::Tso => "tso",
        }
    }
}

/// How a workload divides its requests between kinds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mix {
    /// Every request is of this kind.
    Only(OpKind),
    /// `first` with probability `share`, `second` otherwise.
    Split {
        first: OpKind,
        share: f64,
        second: OpKind,
    },
}

impl Mix {
    /// The kinds the mix issues, in the order the summary lists them.
    fn kinds(self) -> Vec<OpKind> {
        match self {
            Mix::Only(k) => vec![k],
            Mix::Split { first, second, .. } => vec![first, second],
        }
    }

    /// The kind of the next request. `share` is validated to lie in [0, 1].
    fn pick(self, rng: &mut impl Rng) -> OpKind {
        match self {
            Mix::Only(k) => k,
            Mix::Split {
                first,
                share,
                second,
            } => {
                if rng.gen_bool(share) {
                    first
                } else {
                    second
                }
            }
        }
    }

    /// The mix in words, e.g. "95% reads, 5% updates".
    fn describe(self) -> String {
        match self {
            Mix::Only(k) => format!("{}s only", k.name()),
            Mix::Split {
                first,
                share,
                second,
            } => format!(
                "{}% {}s, {}% {}s",
                round(share * 100.0, 1),
                first.name(),
                round((1.0 - share) * 100.0, 1),
                second.name()
            ),
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

/// `endpoints` rotated left by `i`, so connection `i` tries a different node first.
fn rotated(endpoints: &[String], i: usize) -> Vec<String> {
    let mut v = endpoints.to_vec();
    if !v.is_empty() {
        let n = i % v.len();
        v.rotate_left(n);
    }
    v
}

/// Counters the tasks bump as they go, for the progress bar.
#[derive(Default)]
struct Live {
    ok: AtomicU64,
    errors: AtomicU64,
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
    /// Inserts issued so far; insert `n` writes key number `keys + n`.
    inserted: AtomicU64,
}

impl Shared {
    fn new(budget: Budget, value: Vec<u8>) -> Shared {
        Shared {
            budget,
            issued: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            live: Live::default(),
            value,
            inserted: AtomicU64::new(0),
        }
    }

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

/// One request, with its keys named, ready to send (built before the clock starts).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Request {
    Timestamp,
    Get(String),
    BatchGet(Vec<String>),
    Put(String),
    BatchPut(Vec<String>),
    Scan { start: String, limit: u32 },
}

/// Builds the request of `kind` for the chosen key number `key` (and `more` for batches).
/// Inserts take the next number after the key space from `inserted`; scans draw their
/// length from `rng`.
fn build_request(
    kind: OpKind,
    key: u64,
    more: &[u64],
    args: &BenchArgs,
    inserted: &AtomicU64,
    rng: &mut impl Rng,
) -> Request {
    let batch = || {
        std::iter::once(key)
            .chain(more.iter().copied())
            .map(key_name)
            .collect()
    };
    match kind {
        OpKind::Tso => Request::Timestamp,
        OpKind::Read if more.is_empty() => Request::Get(key_name(key)),
        OpKind::Read => Request::BatchGet(batch()),
        OpKind::Update if more.is_empty() => Request::Put(key_name(key)),
        OpKind::Update => Request::BatchPut(batch()),
        OpKind::Insert => {
            let n = inserted.fetch_add(1, Ordering::Relaxed);
            Request::Put(key_name(args.keys.saturating_add(n)))
        }
        OpKind::Scan => Request::Scan {
            start: key_name(key),
            limit: rng.gen_range(1..=args.scan_max.max(1)),
        },
    }
}

/// What a successful request returned.
struct Done {
    /// False for a get that found no value (or a batch get that missed a key).
    found: bool,
    /// Pairs a scan returned.
    rows: u64,
}

impl Done {
    fn found(found: bool) -> Done {
        Done { found, rows: 0 }
    }
}

/// Sends one request and waits for its answer.
async fn send(
    conn: &Conn,
    req: Request,
    value: &[u8],
    consistency: ReadConsistency,
) -> Result<Done, Error> {
    let client = match conn {
        Conn::Pd(pd) => return pd.timestamp().await.map(|_| Done::found(true)),
        Conn::Kv(client) => client,
    };
    match req {
        Request::Timestamp => Err(Error::Unsupported(
            "timestamps come from PD, not from a KV node".into(),
        )),
        Request::Get(key) => client
            .get_with(key, consistency)
            .await
            .map(|v| Done::found(v.is_some())),
        Request::BatchGet(keys) => client
            .batch_get(keys, consistency)
            .await
            .map(|v| Done::found(v.iter().all(Option::is_some))),
        Request::Put(key) => client
            .put(key, value.to_vec())
            .await
            .map(|()| Done::found(true)),
        Request::BatchPut(keys) => client
            .batch_put(keys.into_iter().map(|k| (k, value.to_vec())))
            .await
            .map(|()| Done::found(true)),
        Request::Scan { start, limit } => {
            let range = ScanRange {
                start: start.into_bytes(),
                // Stay among the benchmark's keys.
                end: rdb_client::prefix_end(KEY_PREFIX),
                prefix: Vec::new(),
                limit,
            };
            client.scan(range, consistency).await.map(|page| Done {
                found: true,
                rows: page.kvs.len() as u64,
            })
        }
    }
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
    let mix = args.mix();
    let chooser = KeyChooser::new(
        args.distribution().unwrap_or(Distribution::Uniform),
        args.keys,
    );
    while shared.take_one() {
        // Same draw order as before the presets (key, kind, batch keys), so a seed gives
        // the old workloads the same uniform key sequence.
        let key = chooser.next(&mut rng);
        let kind = mix.pick(&mut rng);
        let more: Vec<u64> = (1..args.batch).map(|_| chooser.next(&mut rng)).collect();
        let req = build_request(kind, key, &more, &args, &shared.inserted, &mut rng);
        let started = Instant::now();
        match send(&conn, req, &shared.value, consistency).await {
            Ok(done) => {
                stats.record_ok(kind, started, done.rows);
                if !done.found {
                    stats.not_found += 1;
                }
                shared.live.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.record_err(kind, &e);
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
                stats.record_ok(OpKind::Insert, started, 0);
                shared.live.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.record_err(OpKind::Insert, &e);
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

/// Waits for every task, merging their stats into `total`, refreshing `bar` with `refresh`
/// and turning Ctrl-C into a stop request. Returns the merged stats and whether Ctrl-C was
/// pressed.
async fn drive(
    mut set: JoinSet<Stats>,
    shared: &Shared,
    bar: &ProgressBar,
    mut total: Stats,
    refresh: impl Fn(&ProgressBar, u64, u64),
) -> Result<(Stats, bool), String> {
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

/// Writes every key once, with the same clients as the measured phase.
async fn preload(
    conns: &[Client],
    args: &BenchArgs,
    value: Vec<u8>,
    empty: &Arc<Histogram<u64>>,
) -> Result<(), String> {
    let shared = Arc::new(Shared::new(Budget::Ops(args.keys), value));
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
            Stats::new(empty.clone()),
        ));
    }
    let total = Stats::new(empty.clone());
    let (total, interrupted) = drive(set, &shared, &bar, total, |bar, ok, errors| {
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
        total.ops(),
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

    pub(super) fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        let mut v = vec!["bench"];
        v.extend_from_slice(args);
        Cmd::try_parse_from(v).map(|c| c.bench)
    }

    pub(super) fn parsed(args: &[&str]) -> BenchArgs {
        match parse(args) {
            Ok(a) => a,
            Err(e) => panic!("{args:?} do not parse: {e}"),
        }
    }

    pub(super) fn defaults() -> BenchArgs {
        parsed(&[])
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
        assert!(!a.preload && !a.no_preload && !a.serializable);
        assert_eq!(a.read_ratio, None);
        assert_eq!(a.distribution, None);
        assert_eq!(a.scan_max, 100);
        assert_eq!(a.seed, 1);
        assert_eq!(a.validate(), Ok(()));
        // The put workload: updates only, uniform keys, no preload, no scans.
        assert_eq!(a.mix(), Mix::Only(OpKind::Update));
        assert_eq!(a.distribution(), Some(Distribution::Uniform));
        assert!(!a.should_preload());
        assert_eq!(a.scan_max(), None);
    }

    #[test]
    fn flags_parse_in_kebab_case() {
        let a = parsed(&[
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
            "--distribution",
            "zipfian",
            "--seed",
            "42",
        ]);
        assert_eq!(a.workload, Workload::Mixed);
        assert_eq!(
            (a.clients, a.connections, a.keys, a.value_size),
            (3, 2, 10, 7)
        );
        assert_eq!(a.ops, Some(100));
        assert!(a.preload && a.serializable);
        assert_eq!(a.read_ratio, Some(0.9));
        assert_eq!(
            a.mix(),
            Mix::Split {
                first: OpKind::Read,
                share: 0.9,
                second: OpKind::Update
            }
        );
        assert_eq!(a.distribution(), Some(Distribution::Zipfian));
        assert_eq!(a.seed, 42);
        assert_eq!(a.consistency(), ReadConsistency::Serializable);
        assert_eq!(a.validate(), Ok(()));
        // Without --read-ratio, mixed is half reads.
        assert_eq!(
            parsed(&["--workload", "mixed"]).mix(),
            Mix::Split {
                first: OpKind::Read,
                share: 0.5,
                second: OpKind::Update
            }
        );
    }

    #[test]
    fn ops_and_duration_conflict() {
        assert!(parse(&["--ops", "5"]).is_ok());
        assert!(parse(&["--duration-secs", "5"]).is_ok());
        assert!(parse(&["--ops", "5", "--duration-secs", "5"]).is_err());
        assert!(parse(&["--workload", "bogus"]).is_err());
        assert!(parse(&["--workload", "ycsb-d"]).is_err());
        assert!(parse(&["--distribution", "latest"]).is_err());
        assert!(parse(&["--preload", "--no-preload"]).is_err());
    }

    #[test]
    fn ycsb_presets_map_to_their_mix_zipfian_keys_and_a_preload() {
        let split = |first, share, second| Mix::Split {
            first,
            share,
            second,
        };
        let cases = [
            (
                "ycsb-a",
                Workload::YcsbA,
                split(OpKind::Read, 0.5, OpKind::Update),
                "50% reads, 50% updates",
            ),
            (
                "ycsb-b",
                Workload::YcsbB,
                split(OpKind::Read, 0.95, OpKind::Update),
                "95% reads, 5% updates",
            ),
            (
                "ycsb-c",
                Workload::YcsbC,
                Mix::Only(OpKind::Read),
                "reads only",
            ),
            (
                "ycsb-e",
                Workload::YcsbE,
                split(OpKind::Scan, 0.95, OpKind::Insert),
                "95% scans, 5% inserts",
            ),
        ];
        for (name, workload, mix, words) in cases {
            let a = parsed(&["--workload", name]);
            assert_eq!(a.workload, workload);
            assert_eq!(workload.name(), name);
            assert_eq!(a.mix(), mix, "{name}");
            assert_eq!(a.mix().describe(), words, "{name}");
            assert_eq!(a.distribution(), Some(Distribution::Zipfian), "{name}");
            assert!(a.should_preload(), "{name} does not preload");
            assert_eq!(a.validate(), Ok(()), "{name}");
        }
        // Only ycsb-e scans, and it reports its longest scan.
        assert_eq!(parsed(&["--workload", "ycsb-e"]).scan_max(), Some(100));
        assert_eq!(parsed(&["--workload", "ycsb-a"]).scan_max(), None);

        // scan: scans only, uniform starts, preloads, its own --scan-max.
        let a = parsed(&["--workload", "scan", "--scan-max", "7"]);
        assert_eq!(a.mix(), Mix::Only(OpKind::Scan));
        assert_eq!(a.distribution(), Some(Distribution::Uniform));
        assert!(a.should_preload());
        assert_eq!(a.scan_max(), Some(7));
        assert_eq!(a.validate(), Ok(()));
    }

    #[test]
    fn presets_take_a_distribution_and_no_preload() {
        let a = parsed(&["--workload", "ycsb-a", "--distribution", "uniform"]);
        assert_eq!(a.distribution(), Some(Distribution::Uniform));
        let a = parsed(&["--workload", "ycsb-b", "--no-preload"]);
        assert!(!a.should_preload());
        assert_eq!(a.validate(), Ok(()));
        // The old workloads preload only when asked; --no-preload changes nothing there.
        assert!(parsed(&["--workload", "get", "--preload"]).should_preload());
        assert!(!parsed(&["--workload", "get"]).should_preload());
        assert!(!parsed(&["--workload", "get", "--no-preload"]).should_preload());
        // tso has no keys.
        let t = parsed(&["--workload", "tso"]);
        assert_eq!(t.distribution(), None);
        assert!(!t.should_preload());
        assert_eq!(t.mix(), Mix::Only(OpKind::Tso));
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
        check(&|a| a.read_ratio = Some(-0.1), "--read-ratio");
        check(&|a| a.read_ratio = Some(1.5), "--read-ratio");
        check(&|a| a.read_ratio = Some(f64::NAN), "--read-ratio");
        check(&|a| a.ops = Some(0), "--ops");
        check(&|a| a.duration_secs = 0, "--duration-secs");
        check(&|a| a.batch = 0, "--batch");
        check(&|a| a.scan_max = 0, "--scan-max");
        // A preset's mix is fixed: the error names it and the way to another ratio.
        check(
            &|a| {
                a.workload = Workload::YcsbB;
                a.read_ratio = Some(0.5);
            },
            "ycsb-b has its own (95% reads, 5% updates); use --workload mixed",
        );
        check(
            &|a| {
                a.workload = Workload::Scan;
                a.read_ratio = Some(1.0);
            },
            "--read-ratio",
        );
        // Scans and inserts are single requests.
        check(
            &|a| {
                a.workload = Workload::YcsbE;
                a.batch = 10;
            },
            "--batch",
        );
        check(
            &|a| {
                a.workload = Workload::Tso;
                a.distribution = Some(Distribution::Zipfian);
            },
            "--distribution",
        );
        check(
            &|a| {
                a.workload = Workload::Tso;
                a.preload = true;
            },
            "--preload",
        );

        let mut a = defaults();
        a.read_ratio = Some(0.0);
        assert_eq!(a.validate(), Ok(()));
        a.read_ratio = Some(1.0);
        assert_eq!(a.validate(), Ok(()));
        // With --ops the duration is not used.
        a.duration_secs = 0;
        a.ops = Some(1);
        assert_eq!(a.validate(), Ok(()));
        // Batches of reads and updates are fine in the ycsb presets without scans.
        let mut a = defaults();
        a.workload = Workload::YcsbA;
        a.batch = 10;
        assert_eq!(a.validate(), Ok(()));
    }

    #[test]
    fn mixes_pick_kinds_in_their_shares() {
        let mut rng = StdRng::seed_from_u64(9);
        let n = 20_000;
        let share_of = |mix: Mix, kind: OpKind, rng: &mut StdRng| {
            let picks: Vec<OpKind> = (0..n).map(|_| mix.pick(rng)).collect();
            assert!(
                picks.iter().all(|k| mix.kinds().contains(k)),
                "{mix:?} picked a kind it does not list"
            );
            picks.iter().filter(|&&k| k == kind).count() as f64 / n as f64
        };
        let near = |got: f64, want: f64| assert!((got - want).abs() < 0.01, "{got} vs {want}");
        near(
            share_of(Workload::YcsbA.mix(0.0), OpKind::Read, &mut rng),
            0.5,
        );
        near(
            share_of(Workload::YcsbB.mix(0.0), OpKind::Read, &mut rng),
            0.95,
        );
        near(
            share_of(Workload::YcsbC.mix(0.0), OpKind::Read, &mut rng),
            1.0,
        );
        near(
            share_of(Workload::YcsbE.mix(0.0), OpKind::Scan, &mut rng),
            0.95,
        );
        near(
            share_of(Workload::Mixed.mix(0.2), OpKind::Read, &mut rng),
            0.2,
        );
        near(
            share_of(Workload::Put.mix(0.9), OpKind::Update, &mut rng),
            1.0,
        );
    }

    #[test]
    fn requests_name_their_keys() {
        let mut a = defaults();
        a.keys = 1000;
        a.scan_max = 5;
        let inserted = AtomicU64::new(0);
        let mut rng = StdRng::seed_from_u64(3);
        let mut build =
            |kind, key, more: &[u64]| build_request(kind, key, more, &a, &inserted, &mut rng);
        assert_eq!(
            build(OpKind::Read, 7, &[]),
            Request::Get("bench-00000007".into())
        );
        assert_eq!(
            build(OpKind::Update, 7, &[]),
            Request::Put("bench-00000007".into())
        );
        assert_eq!(
            build(OpKind::Read, 7, &[8, 9]),
            Request::BatchGet(vec![
                "bench-00000007".into(),
                "bench-00000008".into(),
                "bench-00000009".into()
            ])
        );
        assert_eq!(
            build(OpKind::Update, 1, &[2]),
            Request::BatchPut(vec!["bench-00000001".into(), "bench-00000002".into()])
        );
        assert_eq!(build(OpKind::Tso, 7, &[]), Request::Timestamp);
        // Inserts write new keys after the key space, one number each, whatever key was drawn.
        assert_eq!(
            build(OpKind::Insert, 7, &[]),
            Request::Put("bench-00001000".into())
        );
        assert_eq!(
            build(OpKind::Insert, 7, &[]),
            Request::Put("bench-00001001".into())
        );
        // Scans start at the drawn key and ask for 1..=scan_max keys, every length in time.
        let mut lengths = std::collections::BTreeSet::new();
        for _ in 0..200 {
            match build(OpKind::Scan, 42, &[]) {
                Request::Scan { start, limit } => {
                    assert_eq!(start, "bench-00000042");
                    assert!((1..=5).contains(&limit), "limit {limit}");
                    lengths.insert(limit);
                }
                other => panic!("not a scan: {other:?}"),
            }
        }
        assert_eq!(lengths.into_iter().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(inserted.load(Ordering::Relaxed), 2);
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
    fn ops_budget_is_shared_and_exact() {
        let shared = Shared::new(Budget::Ops(3), Vec::new());
        let taken = (0..10).filter(|_| shared.take_one()).count();
        assert_eq!(taken, 3);
        let stopped = Shared::new(
            Budget::Until(Instant::now() + Duration::from_secs(60)),
            Vec::new(),
        );
        stopped.stop.store(true, Ordering::Relaxed);
        assert!(!stopped.take_one());
    }
}
