//! A randomized fault run: concurrent clients on a small key set while a nemesis kills (-9),
//! restarts and pauses nodes; every operation is recorded with its invoke and complete times
//! and outcome, and the history is checked for linearizability afterwards.
//!
//! Outcomes are mapped honestly: a write the client reports `Unavailable` was definitely not
//! applied (`Failed`), one it reports `Indeterminate` may have been (`Indeterminate`). After the
//! faults stop, the cluster is healed and every key is read once more; those final reads are
//! part of the history, so "every acknowledged write is present or superseded" is checked by
//! the same search. Last, the replica check ([`Client::check`]; over regions,
//! [`Client::check_regions`] for each region) compares every replica's hash of its data at one
//! log index: the replicas must be identical, not only the reads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdb_client::{CheckReport, Client, Error, Options, RegionCheck};

use crate::cluster::{Settings, TestCluster};
use crate::linearizability::{check, CheckResult, Op, Operation, Outcome};

/// What a fault run does.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// How long clients run while faults happen.
    pub duration: Duration,
    /// Seed of the nemesis and of the clients' choices.
    pub seed: u64,
    /// Concurrent clients doing reads and writes.
    pub clients: usize,
    /// Extra clients doing only reads, one starting on each node in turn (as a service
    /// co-located with a node would): they expose any node that serves reads it should not.
    pub readers: usize,
    /// Keys in play (few keys, many conflicts).
    pub keys: usize,
    /// Search steps per key before the checker answers "unknown".
    pub step_budget: u64,
    /// Run each node in its own network namespace and let the nemesis cut links too
    /// (needs root).
    pub partitions: bool,
    /// Extra `[settings]` lines for the cluster (TOML), e.g. a small `snapshot_threshold` so
    /// compaction and snapshot installs happen during the run.
    pub settings: String,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            duration: Duration::from_secs(20),
            seed: 1,
            clients: 4,
            readers: 3,
            keys: 3,
            step_budget: 5_000_000,
            partitions: false,
            settings: String::new(),
        }
    }
}

/// What a fault run saw.
#[derive(Debug)]
pub struct FaultReport {
    /// Every recorded operation.
    pub history: Vec<Operation>,
    /// The checker's verdict.
    pub result: CheckResult,
    /// The faults injected, in order, for the report.
    pub faults: Vec<String>,
    /// The replica check after the final reads: every node's hash at one index, or why no
    /// complete check could be made.
    pub replicas: Result<CheckReport, String>,
    /// Log compactions and snapshot installs the nodes logged during the run.
    pub events: LogEvents,
}

/// Counts of notable events in the nodes' logs, to show what a run exercised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogEvents {
    /// `log compacted` lines, all nodes.
    pub compactions: usize,
    /// `installing snapshot` lines, all nodes.
    pub snapshot_installs: usize,
}

impl LogEvents {
    /// Counts the events in every node log of `cluster`.
    pub fn count(cluster: &TestCluster) -> LogEvents {
        let mut e = LogEvents::default();
        for n in &cluster.nodes {
            let log = std::fs::read_to_string(cluster.log_path(n.id)).unwrap_or_default();
            e.compactions += log.matches("log compacted").count();
            e.snapshot_installs += log.matches("installing snapshot").count();
        }
        e
    }
}

impl FaultReport {
    /// Counts of (ok, failed, indeterminate) operations.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for o in &self.history {
            match o.outcome {
                Outcome::Failed => c.1 += 1,
                Outcome::Indeterminate => c.2 += 1,
                _ => c.0 += 1,
            }
        }
        c
    }

    /// Writes the history as JSON, for replay and for the failure report.
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(&self.history).map_err(std::io::Error::other)?;
        std::fs::write(path, json)
    }
}

fn client_options() -> Options {
    Options {
        // Shorter than an election: some calls end Failed or Indeterminate, which is what the
        // checker must handle.
        deadline: Duration::from_millis(1500),
        attempt_timeout: Duration::from_millis(700),
        connect_timeout: Duration::from_millis(200),
        election_timeout: Duration::from_secs(1),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        tls: None,
        spread_reads: true,
    }
}

fn text(v: Option<Vec<u8>>) -> Option<String> {
    v.map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The history a run records, shared by its clients.
type History = Arc<Mutex<Vec<Operation>>>;

/// Starts the run's clients on `endpoints` (each one beginning at another endpoint): random
/// get/put/cas/delete on `cfg.keys` keys (reads only for the `cfg.readers` extra clients),
/// each operation recorded in `history` with its invoke and complete times since `t0`, until
/// `stop` is set.
fn spawn_clients(
    cfg: &FaultConfig,
    endpoints: &[String],
    t0: Instant,
    history: &History,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for id in 0..(cfg.clients + cfg.readers) as u64 {
        let read_only = id >= cfg.clients as u64;
        let mut endpoints = endpoints.to_vec();
        let n = endpoints.len();
        endpoints.rotate_left(id as usize % n);
        let client = Client::with_options(endpoints, client_options()).expect("client");
        let (history, stop) = (history.clone(), stop.clone());
        let (keys, seed) = (cfg.keys, cfg.seed);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(id));
            let mut n = 0u64;
            let mut last_seen: Vec<Option<String>> = vec![None; keys];
            while !stop.load(Ordering::Relaxed) {
                let k = rng.gen_range(0..keys);
                let key = format!("k{k}");
                n += 1;
                let value = format!("c{id}-{n}");
                let roll: f64 = rng.gen();
                let op = if read_only || roll < 0.4 {
                    Op::Get { key: key.clone() }
                } else if roll < 0.7 {
                    Op::Put {
                        key: key.clone(),
                        value,
                    }
                } else if roll < 0.9 {
                    Op::Cas {
                        key: key.clone(),
                        expected: last_seen[k].clone(),
                        new: value,
                    }
                } else {
                    Op::Delete { key: key.clone() }
                };
                let invoke = t0.elapsed().as_nanos() as u64;
                let outcome = execute(&client, &op).await;
                let complete = t0.elapsed().as_nanos() as u64;
                if let Outcome::Get(v) = &outcome {
                    last_seen[k] = v.clone();
                }
                history.lock().expect("history").push(Operation {
                    client: id,
                    op,
                    outcome,
                    invoke,
                    complete,
                });
            }
        }));
    }
    tasks
}

/// Reads every key once more through `reader`, with patience (these reads must succeed), and
/// adds them to the history: "every acknowledged write is present or superseded" is then
/// checked by the same search.
async fn final_reads(reader: &Client, cfg: &FaultConfig, t0: Instant, history: &History) {
    for k in 0..cfg.keys {
        let key = format!("k{k}");
        let invoke = t0.elapsed().as_nanos() as u64;
        let v = reader
            .get(key.clone())
            .await
            .unwrap_or_else(|e| panic!("final read of {key}: {e}"));
        let complete = t0.elapsed().as_nanos() as u64;
        history.lock().expect("history").push(Operation {
            client: u64::MAX,
            op: Op::Get { key },
            outcome: Outcome::Get(text(v)),
            invoke,
            complete,
        });
    }
}

/// Runs one fault scenario against a fresh 3-node cluster and checks the history.
pub async fn run(cfg: &FaultConfig) -> FaultReport {
    let settings = Settings(cfg.settings.clone());
    let mut cluster = if cfg.partitions {
        TestCluster::start_partitionable_with(3, settings)
    } else {
        TestCluster::start_with(3, settings)
    };
    cluster.wait_leader(Duration::from_secs(10)).await;
    let t0 = Instant::now();
    let history: History = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = spawn_clients(cfg, &cluster.endpoints(), t0, &history, &stop);

    // The nemesis: one fault at a time, so a majority is usually up and progress is possible.
    let mut faults = Vec::new();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let end = Instant::now() + cfg.duration;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1200))).await;
        let leader = leader_now(&cluster).await;
        let victim = if rng.gen_bool(0.5) {
            leader.unwrap_or(1)
        } else {
            rng.gen_range(1..=3)
        };
        let hold = Duration::from_millis(rng.gen_range(200..1500));
        let kinds = if cfg.partitions { 4 } else { 3 };
        match rng.gen_range(0..kinds) {
            0 => {
                faults.push(format!(
                    "{:?} kill -9 node {victim} for {hold:?}",
                    t0.elapsed()
                ));
                cluster.kill(victim);
                tokio::time::sleep(hold).await;
                cluster.restart(victim);
            }
            1 => {
                faults.push(format!(
                    "{:?} pause node {victim} for {hold:?}",
                    t0.elapsed()
                ));
                cluster.pause(victim);
                tokio::time::sleep(hold).await;
                cluster.resume(victim);
            }
            2 => {
                faults.push(format!("{:?} quiet for {hold:?}", t0.elapsed()));
                tokio::time::sleep(hold).await;
            }
            _ => {
                let hold = hold * 2;
                faults.push(format!(
                    "{:?} isolate node {victim} for {hold:?}",
                    t0.elapsed()
                ));
                cluster.isolate(victim);
                tokio::time::sleep(hold).await;
                cluster.heal_all();
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }

    // Heal and read every key once more, with patience: these reads must succeed.
    cluster.heal_all();
    for id in 1..=3 {
        if !cluster.is_running(id) {
            cluster.restart(id);
        }
        cluster.resume(id);
    }
    cluster.wait_leader(Duration::from_secs(15)).await;
    let reader =
        Client::with_options(cluster.endpoints(), crate::cluster::quick_options()).expect("client");
    final_reads(&reader, cfg, t0, &history).await;
    let replicas = check_replicas(&cluster).await;
    let events = LogEvents::count(&cluster);
    let history = std::mem::take(&mut *history.lock().expect("history"));
    let result = check(&history, cfg.step_budget);
    FaultReport {
        history,
        result,
        faults,
        replicas,
        events,
    }
}

/// What a fault run over regions saw (see [`run_regions`]).
#[derive(Debug)]
pub struct RegionFaultReport {
    /// Every recorded operation of the checked clients.
    pub history: Vec<Operation>,
    /// The checker's verdict.
    pub result: CheckResult,
    /// The faults injected, in order.
    pub faults: Vec<String>,
    /// Regions PD knew at the end.
    pub regions: usize,
    /// Keys the filler wrote (they make the regions split during the run).
    pub filler_keys: usize,
    /// The replica check of every region after the final reads: each region's peers hashed
    /// at one index of its log, or why no complete check could be made.
    pub replicas: Result<Vec<RegionCheck>, String>,
}

/// [`run`] over a PD-mode cluster (specs/009-regions): one PD node and three stores splitting regions
/// past `split_keys` keys. Besides the checked clients on `cfg.keys` keys (`k0`, `k1`, ...),
/// a filler writes many other keys (`f...`, between and around them) so regions split while
/// the clients run, and the nemesis kills (-9) and restarts stores or pauses them. The history
/// is checked for linearizability, final reads included; last, every region's replicas are
/// hashed at one index of its log ([`RegionFaultReport::replicas`]).
pub async fn run_regions(cfg: &FaultConfig, split_keys: u64) -> RegionFaultReport {
    use crate::regions::{RegionCluster, Split};
    let mut cluster = RegionCluster::start(
        3,
        Split {
            keys: split_keys,
            check_ms: 100,
        },
    );
    cluster.wait_regions(1, Duration::from_secs(15)).await;
    let t0 = Instant::now();
    let history: History = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = spawn_clients(cfg, &cluster.addrs, t0, &history, &stop);
    let filled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let client = Client::with_options(cluster.addrs.clone(), client_options()).expect("client");
        let (stop, filled) = (stop.clone(), filled.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Keys before, between and after the checked ones ("k0", "k1", ...).
                let key = format!(
                    "{}{i:06}",
                    ["a", "k0f", "k1f", "k2f", "z"][(i % 5) as usize]
                );
                if client.put(key, "filler").await.is_ok() {
                    filled.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    let mut faults = Vec::new();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let end = Instant::now() + cfg.duration;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1200))).await;
        let victim = rng.gen_range(1..=3);
        let hold = Duration::from_millis(rng.gen_range(200..1500));
        if rng.gen_bool(0.7) {
            faults.push(format!(
                "{:?} kill -9 store {victim} for {hold:?}",
                t0.elapsed()
            ));
            cluster.kill(victim);
            tokio::time::sleep(hold).await;
            cluster.restart(victim);
        } else {
            faults.push(format!("{:?} quiet for {hold:?}", t0.elapsed()));
            tokio::time::sleep(hold).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let regions = cluster.wait_regions(1, Duration::from_secs(30)).await.len();
    final_reads(&cluster.client(), cfg, t0, &history).await;
    let replicas = cluster.check_replicas(Duration::from_secs(30)).await;
    let history = std::mem::take(&mut *history.lock().expect("history"));
    let result = check(&history, cfg.step_budget);
    RegionFaultReport {
        history,
        result,
        faults,
        regions,
        filler_keys: filled.load(Ordering::Relaxed),
        replicas,
    }
}

/// The replica check, retried while a node has not hashed yet (one that was just restarted
/// may still be catching up); a complete check is returned as is, equal hashes or not.
pub async fn check_replicas(cluster: &TestCluster) -> Result<CheckReport, String> {
    let client = Client::with_options(cluster.endpoints(), crate::cluster::quick_options())
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match client.check().await {
            Ok(report) if report.all_ready() => return Ok(report),
            Ok(report) => format!("not every node hashed: {report:?}"),
            Err(e @ Error::Unsupported(_)) => return Err(e.to_string()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "no complete replica check within 30 s; last: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn leader_now(c: &TestCluster) -> Option<u64> {
    for n in &c.nodes {
        if !c.is_running(n.id) {
            continue;
        }
        let s = tokio::time::timeout(Duration::from_millis(300), c.status(n.id)).await;
        if let Ok(Some(s)) = s {
            if s.role == "leader" {
                return Some(n.id);
            }
        }
    }
    None
}

async fn execute(c: &Client, op: &Op) -> Outcome {
    let r: Result<Outcome, Error> = match op {
        Op::Get { key } => c.get(key.clone()).await.map(|v| Outcome::Get(text(v))),
        Op::Put { key, value } => c
            .put(key.clone(), value.clone())
            .await
            .map(|_| Outcome::Put),
        Op::Delete { key } => c.delete(key.clone()).await.map(|_| Outcome::Delete),
        Op::Cas { key, expected, new } => c
            .cas(
                key.clone(),
                expected.clone().map(String::into_bytes),
                new.clone(),
            )
            .await
            .map(|o| Outcome::Cas(o.succeeded)),
    };
    match r {
        Ok(o) => o,
        Err(Error::Indeterminate(_)) => Outcome::Indeterminate,
        Err(Error::Unavailable(_) | Error::NotLeader { .. }) => Outcome::Failed,
        Err(Error::InvalidArgument(m)) => panic!("the workload sent invalid input: {m}"),
        Err(Error::Unsupported(m)) => panic!("the server refused a basic call: {m}"),
        Err(e @ (Error::Compacted(_) | Error::FutureRevision(_))) => {
            panic!("a read of the newest version was refused for its revision: {e}")
        }
        Err(
            e @ (Error::StaleEpoch(_)
            | Error::AlreadyBootstrapped(_)
            | Error::NotFound(_)
            | Error::ClusterMismatch(_)
            | Error::FailedPrecondition(_)
            | Error::Io(_)),
        ) => {
            panic!("a KV call got a PD error: {e}")
        }
    }
}
