//! A PD-mode cluster of real processes on 127.0.0.1 ports chosen per test: one `rdb-pd` node
//! and `n` `rdb-server --pd` stores, each with its data and log in one temporary folder. Stores
//! can be killed with SIGKILL and restarted; every process is killed when the cluster drops.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdb_client::pd::RegionInfo;
use rdb_client::{Client, Error, PdClient, RegionCheck, RegionScope};
use rdb_proto::kv::kv_client::KvClient;
use rdb_proto::kv::{PutRequest, RegionContext};

use crate::cluster::{bin_dir, free_port, quick_options, TestCluster};

/// How stores split in a test.
#[derive(Debug, Clone, Copy)]
pub struct Split {
    /// `--region-split-keys`.
    pub keys: u64,
    /// `--split-check-ms`.
    pub check_ms: u64,
}

/// What a region cluster is started with besides its size and splits.
#[derive(Clone)]
pub struct Setup {
    /// `--replicas`: stores region 1 is bootstrapped on.
    pub replicas: usize,
    /// The text of every store's file (`--config`: `[settings]`, `[tls]`, ...), if any.
    pub store_file: Option<String>,
    /// Tables added to PD's configuration (`[tls]`, ...).
    pub pd_tables: String,
    /// TLS for this test's own clients of PD and of the stores.
    pub client_tls: Option<rdb_client::TlsOptions>,
    /// Each store's `--labels` (index = store number - 1; none past the end).
    pub store_labels: Vec<String>,
    /// PD nodes in the group (1, 3 or 5).
    pub pd_nodes: usize,
    /// How many of them (the first ones) stores and this test's clients are given; 0: all.
    pub pd_given: usize,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            replicas: 3,
            store_file: None,
            pd_tables: String::new(),
            client_tls: None,
            store_labels: Vec::new(),
            pd_nodes: 1,
            pd_given: 0,
        }
    }
}

/// A PD group and its stores.
pub struct RegionCluster {
    /// The PD group (one node unless [`Setup::pd_nodes`] says otherwise).
    pub pd: TestCluster,
    /// Store client addresses, index = store number - 1 (not the store id PD assigned).
    pub addrs: Vec<String>,
    /// Store peer addresses, likewise.
    pub peer_addrs: Vec<String>,
    /// Where each store serves its metrics (`--metrics-addr`), likewise.
    pub metrics_addrs: Vec<String>,
    dir: tempfile::TempDir,
    stores: Vec<Option<Child>>,
    split: Split,
    setup: Setup,
}

impl RegionCluster {
    /// Starts a PD node and `n` stores that split regions past `split.keys` keys, with region
    /// 1 on three of them.
    pub fn start(n: usize, split: Split) -> RegionCluster {
        Self::start_with_replicas(n, split, 3)
    }

    /// Starts a PD node and `n` stores that split regions past `split.keys` keys, with region
    /// 1 bootstrapped on `replicas` of them.
    pub fn start_with_replicas(n: usize, split: Split, replicas: usize) -> RegionCluster {
        Self::start_setup(
            n,
            split,
            Setup {
                replicas,
                ..Setup::default()
            },
        )
    }

    /// Starts a PD node and `n` stores that split regions past `split.keys` keys, as `setup`
    /// says.
    pub fn start_setup(n: usize, split: Split, setup: Setup) -> RegionCluster {
        let mut c = RegionCluster::with_pd_only(n, split, setup);
        for i in 1..=n {
            c.restart(i);
        }
        c
    }

    /// A new PD node, and `n` stores seeded from the cluster backup `file` by
    /// `rdb-server --restore FILE --pd <PD> --data-dir <store 1> ... --data-dir <store n>`, whose
    /// output is returned. The stores are not started (`restart` each).
    pub fn restore_from(file: &Path, n: usize, split: Split) -> (RegionCluster, Output) {
        let c = Self::with_pd_only(n, split, Setup::default());
        let out = c.restore_into(file, (1..=n).map(|i| c.data_dir(i)).collect());
        (c, out)
    }

    /// Runs `rdb-server --restore FILE --pd <this cluster's PD>` with one `--data-dir` per
    /// directory of `dirs`, and returns its output.
    pub fn restore_into(&self, file: &Path, dirs: Vec<PathBuf>) -> Output {
        Command::new(bin_dir().join("rdb-server"))
            .arg("--restore")
            .arg(file)
            .args(["--pd", &self.pd_addrs()])
            .args(
                dirs.iter()
                    .flat_map(|d| [std::ffi::OsStr::new("--data-dir"), d.as_os_str()]),
            )
            .stdin(Stdio::null())
            .output()
            .expect("run rdb-server (cargo build --workspace --bins)")
    }

    /// Starts the PD node of a cluster of `n` stores, none of them running yet (start each
    /// with [`RegionCluster::restart`]).
    pub fn with_pd_only(n: usize, split: Split, setup: Setup) -> RegionCluster {
        let pd = TestCluster::start_pd_with_tables(setup.pd_nodes, &setup.pd_tables);
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some(text) = &setup.store_file {
            std::fs::write(dir.path().join("store.toml"), text).expect("write store file");
        }
        let port = |_| format!("127.0.0.1:{}", free_port());
        let addrs = (0..n).map(port).collect();
        let peer_addrs = (0..n).map(port).collect();
        let metrics_addrs = (0..n).map(port).collect();
        RegionCluster {
            pd,
            addrs,
            peer_addrs,
            metrics_addrs,
            dir,
            stores: (0..n).map(|_| None).collect(),
            split,
            setup,
        }
    }

    /// The PD client address (of the group's first node).
    pub fn pd_addr(&self) -> String {
        self.pd.nodes[0].client_addr.clone()
    }

    /// The client addresses of the PD nodes stores are given (`--pd`, see
    /// [`Setup::pd_given`]), comma-separated.
    pub fn pd_addrs(&self) -> String {
        let given = match self.setup.pd_given {
            0 => self.setup.pd_nodes,
            n => n,
        };
        let first: Vec<String> = self.pd.nodes[..given]
            .iter()
            .map(|n| n.client_addr.clone())
            .collect();
        first.join(",")
    }

    /// A PD client for the PD nodes stores are given.
    pub fn pd_client(&self) -> PdClient {
        PdClient::with_options(self.pd_addrs().split(','), self.options()).expect("pd client")
    }

    /// Runs `rdb-cli --pd <this cluster's PD> ARGS...` (15 s deadline) and returns its output.
    pub fn pd_cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin_dir().join("rdb-cli"))
            .args(["--pd", &self.pd_addrs(), "--timeout-ms", "15000"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run rdb-cli (cargo build --workspace --bins)")
    }

    /// What `rdb-cli --pd ... operator list` prints (stdout, then stderr), for failure
    /// messages.
    pub fn operators(&self) -> String {
        let o = self.pd_cli(&["operator", "list"]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    /// The id PD gave store `i` (1-based), once it registered (a store just started may
    /// take a moment; panics after 30 s).
    pub async fn store_id(&self, i: usize) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let stores = self.pd_client().get_all_stores(true).await;
            let id = stores
                .iter()
                .flatten()
                .find(|s| s.address == self.addrs[i - 1])
                .map(|s| s.id);
            if let Some(id) = id {
                return id;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "store {i} did not register with PD within 30 s: {stores:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client for every store (it follows the stores' leader hints).
    pub fn client(&self) -> Client {
        Client::with_options(self.addrs.clone(), self.options()).expect("client")
    }

    /// The quick test options, with this cluster's client TLS.
    pub fn options(&self) -> rdb_client::Options {
        rdb_client::Options {
            tls: self.setup.client_tls.clone(),
            ..quick_options()
        }
    }

    /// Where the test's files go (certificates, the store file).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Data directory of store `i` (1-based).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("store{i}"))
    }

    /// Log of store `i` (1-based).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("store{i}.log"))
    }

    /// Starts (or restarts) store `i` (1-based); it must not be running.
    pub fn restart(&mut self, i: usize) {
        self.restart_with_replicas(i, self.setup.replicas);
    }

    /// Starts (or restarts) store `i` (1-based) with `--replicas replicas` instead of the
    /// cluster's setup; it must not be running.
    pub fn restart_with_replicas(&mut self, i: usize, replicas: usize) {
        self.spawn(i, replicas, &[]);
    }

    /// Starts (or restarts) store `i` (1-based) with extra environment variables (e.g.
    /// `FAILPOINTS`); it must not be running.
    pub fn restart_with_env(&mut self, i: usize, env: &[(&str, &str)]) {
        self.spawn(i, self.setup.replicas, env);
    }

    fn spawn(&mut self, i: usize, replicas: usize, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("open log");
        let child = Command::new(bin_dir().join("rdb-server"))
            .args(["--pd", &self.pd_addrs()])
            .args(["--addr", &self.addrs[i - 1]])
            .args(["--peer-addr", &self.peer_addrs[i - 1]])
            .args(["--metrics-addr", &self.metrics_addrs[i - 1]])
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(["--region-split-keys", &self.split.keys.to_string()])
            .args(["--split-check-ms", &self.split.check_ms.to_string()])
            .args(["--replicas", &replicas.to_string()])
            .args(
                self.setup
                    .store_file
                    .iter()
                    .flat_map(|_| ["--config".into(), self.dir.path().join("store.toml")]),
            )
            .args(
                self.setup
                    .store_labels
                    .get(i - 1)
                    .iter()
                    .flat_map(|l| ["--labels", l.as_str()]),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start rdb-server; run `cargo build --workspace --bins` first");
        self.stores[i - 1] = Some(child);
    }

    /// Waits up to `timeout` for store `i` (1-based) to exit by itself; its exit status, or
    /// None if it is still running then.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let child = self.stores[i - 1].as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.stores[i - 1] = None;
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether store `i` (1-based) is running (it did not exit by itself).
    pub fn is_running(&mut self, i: usize) -> bool {
        self.stores[i - 1]
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills store `i` (1-based) with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.stores[i - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops store `i` (1-based) with SIGTERM; returns its exit status if it exited within
    /// `timeout` (it is killed with SIGKILL otherwise), or if it was not running.
    pub fn terminate(&mut self, i: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.stores[i - 1].take()?;
        // SAFETY: kill(2) with a pid this process spawned and has not reaped.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Sets how stores started from now on split (`restart` a store to apply it).
    pub fn set_split(&mut self, split: Split) {
        self.split = split;
    }

    /// Every region PD knows, in key order.
    pub async fn regions(&self) -> Vec<RegionInfo> {
        self.pd_client()
            .scan_regions(Vec::new(), Vec::new(), 0)
            .await
            .unwrap_or_default()
    }

    /// Waits until PD knows at least `n` regions, each with a leader, whose ranges tile the
    /// key space (PD hears of each split half from its own leader, so for a moment it may
    /// have one half and not the other); returns them in key order.
    pub async fn wait_regions(&self, n: usize, timeout: Duration) -> Vec<RegionInfo> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let r = self.regions().await;
            let tiled = r.first().is_some_and(|f| f.region.start_key.is_empty())
                && r.last().is_some_and(|l| l.region.end_key.is_empty())
                && r.windows(2)
                    .all(|w| w[0].region.end_key == w[1].region.start_key);
            if r.len() >= n && tiled && r.iter().all(|r| r.leader.is_some()) {
                return r;
            }
            if std::time::Instant::now() >= deadline {
                panic!(
                    "PD knows {} regions after {timeout:?}, wanted {n}: {r:?}",
                    r.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl RegionCluster {
    /// The replica check of every region (`rdb-cli --pd ... check`'s call), retried while a
    /// region has no hash point or a peer has no hash yet (a store just restarted may still be
    /// catching up; one restarted after it hashed has forgotten the hash). A complete check
    /// (every peer of every region hashed) is returned as is, equal hashes or not; `Err` says
    /// why none was complete within `timeout`.
    pub async fn check_replicas(&self, timeout: Duration) -> Result<Vec<RegionCheck>, String> {
        let client = Client::with_pd(self.pd_addrs().split(','), self.options())
            .map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let last = match client.check_regions(RegionScope::All).await {
                Ok(checks) => {
                    // Refused for good: asking again will not help.
                    let refused = checks.iter().find_map(|c| match &c.report {
                        Err(e @ (Error::InvalidArgument(_) | Error::Unsupported(_))) => {
                            Some(format!("region {}: refused: {e}", c.region.id))
                        }
                        _ => None,
                    });
                    if let Some(why) = refused {
                        return Err(why);
                    }
                    match incomplete(&checks) {
                        None => return Ok(checks),
                        Some(why) => why,
                    }
                }
                Err(e @ (Error::InvalidArgument(_) | Error::Unsupported(_))) => {
                    return Err(e.to_string())
                }
                Err(e) => e.to_string(),
            };
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "no complete replica check within {timeout:?}; last: {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Panics unless every region's replicas hash equal at one index of its log (see
    /// [`RegionCluster::check_replicas`]); returns the checks.
    pub async fn assert_replicas_agree(&self) -> Vec<RegionCheck> {
        let checks = self
            .check_replicas(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("replica check: {e}"));
        if let Some(c) = checks.iter().find(|c| !c.consistent()) {
            panic!("region {}'s replicas differ: {c:#?}", c.region.id);
        }
        checks
    }

    /// Sends `req` to the store leading the region of its key, as PD knows them, with that
    /// region's epoch, until a store accepts it; returns the region that did. Every attempt
    /// sends the same request id (`req.request_id` as given), so the write applies at most
    /// once however many attempts reach a store. Panics after `timeout`.
    pub async fn put_raw(&self, req: PutRequest, timeout: Duration) -> u64 {
        let pd = self.pd_client();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let last = match put_once(&pd, req.clone()).await {
                Ok(region) => return region,
                Err(e) => e,
            };
            assert!(
                std::time::Instant::now() < deadline,
                "put of {:?} not accepted within {timeout:?}: {last}",
                String::from_utf8_lossy(&req.key)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One attempt of [`RegionCluster::put_raw`]: the region that accepted, or why none did.
async fn put_once(pd: &PdClient, mut req: PutRequest) -> Result<u64, String> {
    let info = pd
        .get_region(req.key.clone())
        .await
        .map_err(|e| e.to_string())?
        .ok_or("PD knows no region for the key")?;
    let leader = info.leader.ok_or("the region has no leader")?;
    let store = pd
        .get_store(leader.store_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("PD does not know the leader's store")?;
    req.context = Some(RegionContext {
        region_id: info.region.id,
        epoch: Some(rdb_proto::pd::RegionEpoch {
            version: info.region.epoch.version,
            conf_ver: info.region.epoch.conf_ver,
        }),
    });
    let mut kv = KvClient::connect(format!("http://{}", store.address))
        .await
        .map_err(|e| e.to_string())?;
    let r = kv.put(req).await.map_err(|e| e.to_string())?.into_inner();
    match r.error {
        None => Ok(info.region.id),
        Some(e) => Err(format!("refused: {}", e.message)),
    }
}

/// Why a region check is not complete: a region without a hash point or a peer without a hash.
fn incomplete(checks: &[RegionCheck]) -> Option<String> {
    if checks.is_empty() {
        return Some("PD knows no region".into());
    }
    checks.iter().find_map(|c| match &c.report {
        Err(e) => Some(format!("region {}: no hash point: {e}", c.region.id)),
        Ok(r) if !r.all_ready() => Some(format!(
            "region {}: not every peer hashed: {r:?}",
            c.region.id
        )),
        Ok(_) => None,
    })
}

/// Key `i` of the tests' key space.
pub fn key(i: usize) -> String {
    format!("key{i:05}")
}

/// What [`write_rounds`] wrote to one key: the last value acknowledged, and the values
/// written after it whose outcome stayed unknown (the key may hold any of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyWrites {
    /// The last value acknowledged.
    pub acked: Option<String>,
    /// Values written after it, not acknowledged.
    pub unknown: Vec<String>,
}

impl KeyWrites {
    /// Whether `value` is one the key may hold.
    pub fn allows(&self, value: Option<&str>) -> bool {
        match value {
            Some(v) => self.acked.as_deref() == Some(v) || self.unknown.iter().any(|u| u == v),
            None => self.acked.is_none(),
        }
    }
}

/// Writes keys `key(0)..key(n)` `rounds` times over from `writers` tasks, each key's value
/// `r{round}-{i}`: a replica that missed a later round holds an earlier one, which tells
/// which. A write whose call fails is made again (5 calls at most); `rdb-client` retries each
/// call itself with one request id, so an attempt that reaches the cluster twice applies once.
/// Returns what each key may hold.
pub async fn write_rounds(
    client: &Client,
    n: usize,
    rounds: usize,
    writers: usize,
) -> BTreeMap<String, KeyWrites> {
    let written = Arc::new(Mutex::new(BTreeMap::<String, KeyWrites>::new()));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (client, written) = (client.clone(), written.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..rounds {
                for i in (w..n).step_by(writers) {
                    let (k, v) = (key(i), format!("r{round}-{i}"));
                    let mut acked = false;
                    for _ in 0..5 {
                        match client.put(k.clone(), v.clone()).await {
                            Ok(_) => {
                                acked = true;
                                break;
                            }
                            Err(Error::InvalidArgument(m)) => panic!("put {k}: {m}"),
                            Err(_) => continue,
                        }
                    }
                    let mut all = written.lock().unwrap_or_else(|p| p.into_inner());
                    let kw = all.entry(k).or_default();
                    if acked {
                        kw.acked = Some(v);
                        kw.unknown.clear();
                    } else {
                        kw.unknown.push(v);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let out = written.lock().unwrap_or_else(|p| p.into_inner()).clone();
    out
}

impl Drop for RegionCluster {
    fn drop(&mut self) {
        for i in 1..=self.stores.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            for i in 1..=self.stores.len() {
                let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                eprintln!("--- store {i} log tail ---");
                for l in log
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    eprintln!("{l}");
                }
            }
        }
    }
}
