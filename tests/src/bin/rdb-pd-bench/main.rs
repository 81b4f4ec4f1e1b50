//! `rdb-pd-bench`: feeds ONE rdb-pd node the heartbeats of a cluster far larger than this
//! machine could host with real stores (by default 100 stores and 100,000 regions), and
//! reports what PD sustains. TiKV PD's `tools/heartbeat-bench` is the model.
//!
//! ```text
//! rdb-pd-bench [--stores 100] [--regions 100000] [--concurrency 64] [--secs 30] [--json]
//! rdb-pd-bench --pd 127.0.0.1:2399 --pd-pid 4242     # a PD started elsewhere (fresh)
//! ```
//!
//! Without `--pd` it starts `rdb-pd` from beside its own executable, one node in a temporary
//! folder, the way the process tests do ([`TestCluster::start_pd`]); build that binary in the
//! same profile first (`cargo build --release -p rdb-pd -p rdb-tests`).
//!
//! The run, in order:
//! 1. Registers `--stores` stores (ids from `AllocId`, then `PutStore`), and from then on sends
//!    each a store heartbeat every 2 s, as real stores do, so PD counts them up.
//! 2. Seeds `--regions` regions with one `BootstrapRegions` call: consecutive key ranges tiling
//!    the key space, 3 peers each on consecutive stores (every store holds the same number of
//!    peers), the first peer leading (every store leads the same number). `BootstrapRegions`
//!    records a whole cluster once, so it cannot be batched: the request must fit the 4 MiB PD's
//!    gRPC server decodes, which the regions are encoded to fit (see [`seed_regions`]).
//! 3. Runs `--concurrency` heartbeat loops for `--secs`: each takes the next region in turn
//!    (so the regions are heartbeaten round-robin, all once before any twice) and reports it to
//!    PD unchanged, with its leader, as a region's leader does; PD runs its scheduling checks
//!    inside each region heartbeat, so one round over every region is one scheduling pass.
//!
//! Heartbeats go through raw tonic, not `PdClient::region_heartbeat`: the typed client retries
//! unavailable and indeterminate answers with backoff, which would count a refusal as a slow
//! success. Here each call is one request; an error is counted and the loop moves on. Setup
//! calls (ids, stores, store heartbeats) use the typed client.
//!
//! The report (see [`report`]): region heartbeats per second (the median of the per-second
//! rates), heartbeat latency (p50/p99/max), PD's CPU over the heartbeat phase and its memory at
//! the end, the time of one scheduling pass (every region heartbeaten once; projected from the
//! rate when the run ends first) and how many operators PD answered with.

mod report;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use prost::Message as _;
use rdb_client::pd::{Store, StoreStats};
use rdb_client::{Options, PdClient};
use rdb_proto::pd as pb;
use rdb_proto::pd::pd_client::PdClient as PdGrpc;
use rdb_tests::cluster::{bin_dir, TestCluster};
use tonic::transport::{Channel, Endpoint};

use report::{ProcSample, Report};

/// Peers per region.
const REPLICAS: u64 = 3;
/// How often a real store heartbeats (rdb-server's store loop).
const STORE_HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// The largest request PD's gRPC server decodes (tonic's default; PD sets no other).
const PD_MAX_REQUEST_BYTES: usize = 4 << 20;
/// Longest wait for one heartbeat's answer before it counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the seeding call: PD checks and writes every region in one Raft entry.
const SEED_TIMEOUT: Duration = Duration::from_secs(120);

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Measures one rdb-pd node under the heartbeats of many synthetic stores and regions.
#[derive(Debug, Parser)]
#[command(name = "rdb-pd-bench")]
struct Args {
    /// Stores to register and heartbeat (at least 3: each region has 3 peers on distinct stores).
    #[arg(long, default_value_t = 100)]
    stores: u64,
    /// Regions to seed and heartbeat.
    #[arg(long, default_value_t = 100_000)]
    regions: u64,
    /// Concurrent region heartbeat loops (one request in flight each).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Client connections the loops are spread over.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Seconds of region heartbeats.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Client address of a fresh (not bootstrapped) PD to measure, instead of starting one.
    #[arg(long)]
    pd: Option<String>,
    /// With --pd: the PD's process id, for its CPU and memory (without it they are not reported).
    #[arg(long, requires = "pd")]
    pd_pid: Option<u32>,
    /// Print one JSON line instead of the text report.
    #[arg(long)]
    json: bool,
}

impl Args {
    fn check(&self) -> BenchResult<()> {
        if self.stores < REPLICAS {
            return Err(format!(
                "--stores must be at least {REPLICAS}: each region has {REPLICAS} peers on distinct stores"
            )
            .into());
        }
        if self.regions == 0 || self.concurrency == 0 || self.connections == 0 || self.secs == 0 {
            return Err(
                "--regions, --concurrency, --connections and --secs must be at least 1".into(),
            );
        }
        Ok(())
    }
}

/// A one-request gRPC client of PD (no retries).
async fn connect(addr: &str) -> BenchResult<PdGrpc<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("PD address '{addr}': {e}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("cannot connect to PD at {addr}: {e}"))?;
    Ok(PdGrpc::new(channel))
}

/// Registers `count` stores and returns their ids.
async fn register_stores(pd: &PdClient, count: u64) -> BenchResult<Vec<u64>> {
    let n = u32::try_from(count).map_err(|_| "--stores is too large")?;
    let first = pd.alloc_ids(n).await?;
    let ids: Vec<u64> = (first..first + count).collect();
    for &id in &ids {
        let store = Store {
            id,
            address: format!("bench-store-{id}:20160"),
            ..Default::default()
        };
        pd.put_store(store, id).await?;
    }
    Ok(ids)
}

/// Heartbeats every store every 2 s until aborted; failures are counted in `errors`.
async fn heartbeat_stores(pd: PdClient, stores: Vec<u64>, regions: u64, errors: Arc<AtomicU64>) {
    let peers_each = regions * REPLICAS / stores.len() as u64;
    let mut every = tokio::time::interval(STORE_HEARTBEAT_EVERY);
    loop {
        every.tick().await;
        let beats = stores.iter().map(|&store_id| {
            pd.store_heartbeat(StoreStats {
                store_id,
                region_count: peers_each,
                capacity_bytes: 1 << 40,
                available_bytes: 1 << 39,
                used_bytes: 1 << 39,
            })
        });
        for r in futures::future::join_all(beats).await {
            if r.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Region `i` of `n`'s boundary key: `i` big-endian in `width` bytes, so keys sort as numbers.
fn boundary(i: u64, width: usize) -> Vec<u8> {
    i.to_be_bytes()[8 - width..].to_vec()
}

/// `n` regions tiling the key space in order, 3 peers each on consecutive stores (region `i`
/// on stores `i`, `i+1`, `i+2` modulo their count), the first peer leading. Region and peer ids
/// count up from `first_id`. Encoded as small as they can be, to fit one request: boundary
/// keys of as few bytes as `n` needs, and no epoch (PD reads a missing one as version 0,
/// conf_ver 0: a region never split nor changed), which saves 6 bytes of about 46 a region.
fn seed_regions(n: u64, stores: &[u64], first_id: u64) -> Vec<pb::Region> {
    let width = (1..8)
        .find(|&w| n.saturating_sub(1) >> (8 * w) == 0)
        .unwrap_or(8);
    let s = stores.len() as u64;
    (0..n)
        .map(|i| pb::Region {
            id: first_id + i,
            start_key: if i == 0 {
                Vec::new()
            } else {
                boundary(i, width)
            },
            end_key: if i + 1 == n {
                Vec::new()
            } else {
                boundary(i + 1, width)
            },
            epoch: None,
            peers: (0..REPLICAS)
                .map(|j| pb::Peer {
                    id: first_id + n + i * REPLICAS + j,
                    store_id: stores[((i + j) % s) as usize],
                    learner: false,
                })
                .collect(),
        })
        .collect()
}

/// Records `regions` with one `BootstrapRegions` call; returns the request's size in bytes.
async fn bootstrap(grpc: &mut PdGrpc<Channel>, regions: Vec<pb::Region>) -> BenchResult<usize> {
    let n = regions.len();
    let req = pb::BootstrapRegionsRequest { regions };
    let size = req.encoded_len();
    if size > PD_MAX_REQUEST_BYTES {
        return Err(format!(
            "{n} regions encode to {size} bytes, over the {PD_MAX_REQUEST_BYTES} bytes PD decodes \
             in one request; BootstrapRegions records a whole cluster in one call, so it cannot \
             be batched: use at most about {} regions",
            n * PD_MAX_REQUEST_BYTES / size
        )
        .into());
    }
    let answer = tokio::time::timeout(SEED_TIMEOUT, grpc.bootstrap_regions(req))
        .await
        .map_err(|_| {
            format!(
                "PD did not answer BootstrapRegions within {} s",
                SEED_TIMEOUT.as_secs()
            )
        })?
        .map_err(|s| format!("BootstrapRegions failed: {}", s.message()))?
        .into_inner();
    match answer.error {
        None => Ok(size),
        Some(e) => Err(format!("PD refused BootstrapRegions: {}", e.message).into()),
    }
}

/// What the heartbeat loops share.
struct Run {
    regions: Vec<pb::Region>,
    /// The next region to heartbeat (modulo their count).
    cursor: AtomicU64,
    /// Regions answered without error at least once.
    seen: Vec<AtomicBool>,
    covered: AtomicU64,
    /// When every region had been answered once, in µs since `started` (0: not yet).
    pass_us: AtomicU64,
    /// Successful heartbeats answered in each second of the run.
    per_sec: Vec<AtomicU64>,
    started: Instant,
    end: Instant,
}

/// One loop's counts.
struct LoopStats {
    latency_us: Histogram<u64>,
    operators: u64,
    errors: BTreeMap<String, u64>,
    last_error: String,
}

impl LoopStats {
    fn error(&mut self, kind: String, message: String) {
        *self.errors.entry(kind).or_default() += 1;
        self.last_error = message;
    }
}

/// Latencies in µs, 1 µs to an hour, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid bounds")
}

/// Heartbeats regions in turn until the run ends.
async fn heartbeat_loop(run: Arc<Run>, mut grpc: PdGrpc<Channel>) -> LoopStats {
    let mut st = LoopStats {
        latency_us: histogram(),
        operators: 0,
        errors: BTreeMap::new(),
        last_error: String::new(),
    };
    let n = run.regions.len() as u64;
    while Instant::now() < run.end {
        let i = (run.cursor.fetch_add(1, Ordering::Relaxed) % n) as usize;
        let region = &run.regions[i];
        let req = pb::RegionHeartbeatRequest {
            region: Some(region.clone()),
            leader: region.peers.first().copied(),
            approximate_size: 96 << 20,
            approximate_keys: 1_000_000,
        };
        let t0 = Instant::now();
        let answer = tokio::time::timeout(CALL_TIMEOUT, grpc.region_heartbeat(req)).await;
        let took = t0.elapsed();
        match answer {
            Err(_) => st.error(
                "timeout".into(),
                format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
            ),
            Ok(Err(status)) => st.error("grpc".into(), status.message().to_string()),
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                if let Some(e) = resp.error {
                    let code = pb::ErrorCode::try_from(e.code)
                        .map_or_else(|_| e.code.to_string(), |c| c.as_str_name().to_lowercase());
                    st.error(code, e.message);
                    continue;
                }
                st.latency_us
                    .saturating_record((took.as_micros() as u64).max(1));
                if resp.operator.is_some() {
                    st.operators += 1;
                }
                let at = run.started.elapsed();
                if let Some(bucket) = run.per_sec.get(at.as_secs() as usize) {
                    bucket.fetch_add(1, Ordering::Relaxed);
                }
                if !run.seen[i].swap(true, Ordering::Relaxed)
                    && run.covered.fetch_add(1, Ordering::Relaxed) + 1 == n
                {
                    run.pass_us
                        .store((at.as_micros() as u64).max(1), Ordering::Relaxed);
                }
            }
        }
    }
    st
}

/// The PD under test: started here (stopped when this is dropped) or given.
struct Target {
    _started: Option<TestCluster>,
    addr: String,
    pid: Option<u32>,
}

fn target(args: &Args) -> BenchResult<Target> {
    if let Some(addr) = &args.pd {
        return Ok(Target {
            _started: None,
            addr: addr.clone(),
            pid: args.pd_pid,
        });
    }
    let binary = bin_dir().join("rdb-pd");
    if !binary.is_file() {
        return Err(format!(
            "no rdb-pd beside this binary ({}): build it in the same profile \
             (cargo build --release -p rdb-pd), or give --pd ADDR",
            binary.display()
        )
        .into());
    }
    let cluster = TestCluster::start_pd(1, "");
    Ok(Target {
        addr: cluster.nodes[0].client_addr.clone(),
        pid: cluster.pid(1),
        _started: Some(cluster),
    })
}

async fn bench(args: Args) -> BenchResult<Report> {
    args.check()?;
    let pd_under_test = target(&args)?;
    let opts = Options {
        deadline: Duration::from_secs(30),
        ..Options::default()
    };
    let pd = PdClient::with_options([pd_under_test.addr.as_str()], opts)?;
    if pd.is_bootstrapped().await? {
        return Err(format!(
            "PD at {} is already bootstrapped: the bench seeds its own regions into a fresh PD",
            pd_under_test.addr
        )
        .into());
    }
    let stores = register_stores(&pd, args.stores).await?;
    let store_errors = Arc::new(AtomicU64::new(0));
    let store_beats = tokio::spawn(heartbeat_stores(
        pd.clone(),
        stores.clone(),
        args.regions,
        store_errors.clone(),
    ));

    let ids = args.regions * (1 + REPLICAS);
    let ids = u32::try_from(ids).map_err(|_| "--regions is too large for one id allocation")?;
    let first_id = pd.alloc_ids(ids).await?;
    let regions = seed_regions(args.regions, &stores, first_id);
    let mut grpc = Vec::new();
    for _ in 0..args.connections {
        grpc.push(connect(&pd_under_test.addr).await?);
    }
    let seeding = Instant::now();
    let seed_bytes = bootstrap(&mut grpc[0], regions.clone()).await?;
    let seed_secs = seeding.elapsed().as_secs_f64();

    let n = regions.len();
    let started = Instant::now();
    let run = Arc::new(Run {
        regions,
        cursor: AtomicU64::new(0),
        seen: (0..n).map(|_| AtomicBool::new(false)).collect(),
        covered: AtomicU64::new(0),
        pass_us: AtomicU64::new(0),
        per_sec: (0..args.secs).map(|_| AtomicU64::new(0)).collect(),
        started,
        end: started + Duration::from_secs(args.secs),
    });
    let cpu_before = pd_under_test.pid.and_then(ProcSample::cpu_ticks);
    let loops: Vec<_> = (0..args.concurrency)
        .map(|t| tokio::spawn(heartbeat_loop(run.clone(), grpc[t % grpc.len()].clone())))
        .collect();
    let mut stats = Vec::new();
    for l in loops {
        stats.push(l.await?);
    }
    let wall = started.elapsed();
    let cpu_after = pd_under_test.pid.and_then(ProcSample::cpu_ticks);
    store_beats.abort();
    let proc = pd_under_test
        .pid
        .map(|pid| ProcSample::take(pid, cpu_before, cpu_after, wall));

    let mut latency = histogram();
    let (mut operators, mut errors, mut last_error) = (0, BTreeMap::new(), String::new());
    for s in stats {
        latency.add(&s.latency_us)?;
        operators += s.operators;
        for (k, v) in s.errors {
            *errors.entry(k).or_insert(0) += v;
        }
        if !s.last_error.is_empty() {
            last_error = s.last_error;
        }
    }
    let pass_us = run.pass_us.load(Ordering::Relaxed);
    Ok(Report {
        stores: args.stores,
        regions: args.regions,
        concurrency: args.concurrency,
        secs: args.secs,
        run_secs: wall.as_secs_f64(),
        seed_secs,
        seed_bytes,
        per_sec: run
            .per_sec
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect(),
        latency_us: latency,
        errors,
        last_error,
        store_heartbeat_errors: store_errors.load(Ordering::Relaxed),
        regions_heartbeaten: run.covered.load(Ordering::Relaxed),
        pass_secs: (pass_us != 0).then(|| pass_us as f64 / 1e6),
        operators,
        proc,
    })
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let json = args.json;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rdb-pd-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench(args)) {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rdb-pd-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
