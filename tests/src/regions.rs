//! A PD-mode cluster of real processes on 127.0.0.1 ports chosen per test: one `rdb-pd` node
//! and `n` `rdb-server --pd` stores, each with its data and log in one temporary folder. Stores
//! can be killed with SIGKILL and restarted; every process is killed when the cluster drops.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdb_client::pd::RegionInfo;
use rdb_client::{Client, PdClient};

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
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            replicas: 3,
            store_file: None,
            pd_tables: String::new(),
            client_tls: None,
        }
    }
}

/// A PD node and its stores.
pub struct RegionCluster {
    /// The PD group (one node).
    pub pd: TestCluster,
    /// Store client addresses, index = store number - 1 (not the store id PD assigned).
    pub addrs: Vec<String>,
    /// Store peer addresses, likewise.
    pub peer_addrs: Vec<String>,
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
        let pd = TestCluster::start_pd_with_tables(1, &setup.pd_tables);
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some(text) = &setup.store_file {
            std::fs::write(dir.path().join("store.toml"), text).expect("write store file");
        }
        let port = |_| format!("127.0.0.1:{}", free_port());
        let addrs = (0..n).map(port).collect();
        let peer_addrs = (0..n).map(port).collect();
        let mut c = RegionCluster {
            pd,
            addrs,
            peer_addrs,
            dir,
            stores: (0..n).map(|_| None).collect(),
            split,
            setup,
        };
        for i in 1..=n {
            c.restart(i);
        }
        c
    }

    /// The PD client address.
    pub fn pd_addr(&self) -> String {
        self.pd.nodes[0].client_addr.clone()
    }

    /// A PD client.
    pub fn pd_client(&self) -> PdClient {
        PdClient::with_options([self.pd_addr()], self.options()).expect("pd client")
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

    /// Log of store `i` (1-based).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("store{i}.log"))
    }

    /// Starts (or restarts) store `i` (1-based); it must not be running.
    pub fn restart(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("open log");
        let child = Command::new(bin_dir().join("rdb-server"))
            .args(["--pd", &self.pd_addr()])
            .args(["--addr", &self.addrs[i - 1]])
            .args(["--peer-addr", &self.peer_addrs[i - 1]])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("store{i}")))
            .args(["--region-split-keys", &self.split.keys.to_string()])
            .args(["--split-check-ms", &self.split.check_ms.to_string()])
            .args(["--replicas", &self.setup.replicas.to_string()])
            .args(
                self.setup
                    .store_file
                    .iter()
                    .flat_map(|_| ["--config".into(), self.dir.path().join("store.toml")]),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start rdb-server; run `cargo build --workspace --bins` first");
        self.stores[i - 1] = Some(child);
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
