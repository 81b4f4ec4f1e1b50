//! A test cluster of real `rdb-server` processes on 127.0.0.1 ports chosen per test.
//!
//! Each node runs the same binary users run, from one generated config file, with its data in
//! a temporary directory. Nodes can be killed with SIGKILL, restarted, paused (SIGSTOP) and
//! resumed. Every process is killed when the cluster is dropped, even when a test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdb_client::{Client, NodeStatus, Options};

use crate::netns::NetnsNet;

/// Copies the files of directory `from` into `to` (which must exist), subdirectories too.
pub fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read the directory") {
        let p = e.expect("a directory entry").path();
        let dest = to.join(p.file_name().expect("a file name"));
        if p.is_dir() {
            std::fs::create_dir_all(&dest).expect("create a directory");
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).expect("copy a file");
        }
    }
}

/// Where the rdb binaries are: `$RDB_BIN`, else the cargo target folder of this test binary.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("RDB_BIN") {
        return PathBuf::from(dir);
    }
    // target/debug/deps/<test-binary> -> target/debug
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test binary has a folder")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Runs `rdb-cli --endpoints ENDPOINTS ARGS...` to its end.
pub fn rdb_cli(endpoints: &[String], args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin_dir().join("rdb-cli"))
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .args(args)
        .output()
        .expect("run rdb-cli")
}

/// A finished command's exit code, stdout and stderr, for an assertion's message.
pub fn explain(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Scrapes `GET /metrics` at `addr`: every `rdb_` sample line as "name{labels}" -> value.
pub fn scrape_metrics(addr: &str) -> std::collections::HashMap<String, f64> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    body.lines()
        .filter(|l| l.starts_with("rdb_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// A free port on 127.0.0.1, below the kernel's ephemeral range (32768-60999 on Linux), and
/// never one this test process handed out before: a port is only checked, not held, so two
/// calls could otherwise return the same one before any node binds it (a config naming an
/// address twice is refused). Below the ephemeral range, a port released for a node cannot be
/// taken meanwhile as the source port of some outgoing connection.
pub fn free_port() -> u16 {
    use rand::Rng;
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = rand::thread_rng();
    loop {
        let port = rng.gen_range(20_000..32_000);
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
}

/// One node's addresses and process.
pub struct NodeProc {
    /// Node id.
    pub id: u64,
    /// Client address.
    pub client_addr: String,
    /// Peer address.
    pub peer_addr: String,
    /// Prometheus endpoint address (`GET /metrics`).
    pub metrics_addr: String,
    /// For a node added at run time: the client addresses it joins through (`--join`).
    pub join: Option<Vec<String>>,
    child: Option<Child>,
    paused: bool,
}

/// A running cluster.
pub struct TestCluster {
    /// The temporary folder holding the config, data and logs.
    pub dir: tempfile::TempDir,
    /// The config file every node was started from.
    pub config: PathBuf,
    /// The nodes, index = id - 1.
    pub nodes: Vec<NodeProc>,
    /// Separate network namespaces, when the cluster was started with links that can be cut.
    pub net: Option<NetnsNet>,
    /// The binary each node runs: `rdb-server`, or `rdb-pd` for a PD group.
    binary: &'static str,
}

/// Extra `[settings]` lines for a test cluster (TOML text).
#[derive(Debug, Clone, Default)]
pub struct Settings(pub String);

impl TestCluster {
    /// Starts `n` nodes with default settings.
    pub fn start(n: usize) -> TestCluster {
        Self::start_with(n, Settings::default())
    }

    /// Starts `n` nodes with extra settings.
    pub fn start_with(n: usize, settings: Settings) -> TestCluster {
        Self::launch(n, settings, None)
    }

    /// Starts a PD group of `n` `rdb-pd` nodes, with `pd` as the text of its `[pd]` table.
    pub fn start_pd(n: usize, pd: &str) -> TestCluster {
        Self::start_pd_with_tables(n, &format!("[pd]\n{pd}\n"))
    }

    /// Starts a PD group of `n` `rdb-pd` nodes whose config ends with `tables` (TOML text:
    /// `[pd]`, `[tls]`, ...).
    pub fn start_pd_with_tables(n: usize, tables: &str) -> TestCluster {
        Self::launch_binary(n, Settings::default(), None, "rdb-pd", tables)
    }

    /// Starts `n` rdb-server nodes whose config ends with `tables` (TOML text: `[tls]`, ...).
    pub fn start_with_tables(n: usize, tables: &str) -> TestCluster {
        Self::launch_binary(n, Settings::default(), None, "rdb-server", tables)
    }

    /// Starts `n` nodes, each in its own network namespace, so links can be cut and healed
    /// ([`TestCluster::isolate`]). Panics with the reason when namespaces cannot be made
    /// (they need root).
    pub fn start_partitionable(n: usize) -> TestCluster {
        Self::start_partitionable_with(n, Settings::default())
    }

    /// [`TestCluster::start_partitionable`] with extra settings.
    pub fn start_partitionable_with(n: usize, settings: Settings) -> TestCluster {
        let net = NetnsNet::create(n as u32)
            .unwrap_or_else(|e| panic!("cannot create network namespaces (run as root): {e}"));
        Self::launch(n, settings, Some(net))
    }

    fn launch(n: usize, settings: Settings, net: Option<NetnsNet>) -> TestCluster {
        Self::launch_binary(n, settings, net, "rdb-server", "")
    }

    fn launch_binary(
        n: usize,
        settings: Settings,
        net: Option<NetnsNet>,
        binary: &'static str,
        tables: &str,
    ) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut toml = String::from("cluster_id = 7\n");
        let mut nodes = Vec::new();
        for id in 1..=n as u64 {
            let (peer_addr, client_addr) = match &net {
                Some(net) => (
                    format!("{}:2380", net.addr(id as u32)),
                    format!("{}:2379", net.addr(id as u32)),
                ),
                None => (
                    format!("127.0.0.1:{}", free_port()),
                    format!("127.0.0.1:{}", free_port()),
                ),
            };
            let metrics_addr = match &net {
                Some(net) => format!("{}:9379", net.addr(id as u32)),
                None => format!("127.0.0.1:{}", free_port()),
            };
            toml.push_str(&format!(
                "[[nodes]]\nid = {id}\npeer_addr = \"{peer_addr}\"\nclient_addr = \"{client_addr}\"\nmetrics_addr = \"{metrics_addr}\"\ndata_dir = \"{}\"\n",
                dir.path().join(format!("node{id}")).display()
            ));
            nodes.push(NodeProc {
                id,
                client_addr,
                peer_addr,
                metrics_addr,
                join: None,
                child: None,
                paused: false,
            });
        }
        toml.push_str("[settings]\n");
        toml.push_str(&settings.0);
        toml.push('\n');
        toml.push_str(tables);
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, toml).expect("write config");
        let mut c = TestCluster {
            dir,
            config,
            nodes,
            net,
            binary,
        };
        for id in 1..=n as u64 {
            c.restart(id);
        }
        c
    }

    /// Starts (or restarts) node `id`; it must not be running.
    pub fn restart(&mut self, id: u64) {
        self.restart_with_env(id, &[]);
    }

    /// Starts (or restarts) node `id` with extra environment variables (e.g. `FAILPOINTS`).
    pub fn restart_with_env(&mut self, id: u64, env: &[(&str, &str)]) {
        let log = self.log_path(id);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log");
        let server = bin_dir().join(self.binary);
        let mut cmd = match &self.net {
            // `ip netns exec` execs the server in place, so the child's pid is the server's.
            Some(net) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.ns(id as u32)]).arg(&server);
                c
            }
            None => Command::new(&server),
        };
        cmd.envs(env.iter().copied());
        let node = &self.nodes[(id - 1) as usize];
        match &node.join {
            None => cmd.arg("--config").arg(&self.config),
            Some(endpoints) => cmd
                .arg("--join")
                .arg(endpoints.join(","))
                .args(["--peer-addr", &node.peer_addr])
                .args(["--client-addr", &node.client_addr])
                .args(["--metrics-addr", &node.metrics_addr])
                .arg("--data-dir")
                .arg(self.data_dir(id)),
        };
        let child = cmd
            .arg("--node-id")
            .arg(id.to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}/{} ({e}); run `cargo build --workspace --bins` first",
                    bin_dir().display(),
                    self.binary
                )
            });
        let node = self.node_mut(id);
        node.child = Some(child);
        node.paused = false;
    }

    /// Addresses for a new node (id = the next one), which joins through `through` (node ids)
    /// once started with [`TestCluster::restart`]; add it to the cluster first
    /// (`Client::change_members`).
    pub fn new_joiner(&mut self, through: &[u64]) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let join = through
            .iter()
            .map(|&t| self.nodes[(t - 1) as usize].client_addr.clone())
            .collect();
        self.nodes.push(NodeProc {
            id,
            client_addr: format!("127.0.0.1:{}", free_port()),
            peer_addr: format!("127.0.0.1:{}", free_port()),
            metrics_addr: format!("127.0.0.1:{}", free_port()),
            join: Some(join),
            child: None,
            paused: false,
        });
        id
    }

    /// A client for nodes `ids` only.
    pub fn client_of(&self, ids: &[u64]) -> Client {
        let eps: Vec<String> = ids
            .iter()
            .map(|&id| self.nodes[(id - 1) as usize].client_addr.clone())
            .collect();
        Client::with_options(eps, quick_options()).expect("client")
    }

    /// Path of node `id`'s log file.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    /// What node `id` recovered from disk at each of its starts, oldest first, from the
    /// `replica started` lines of its log (logged before any peer message is processed).
    pub fn replica_starts(&self, id: u64) -> Vec<ReplicaStart> {
        parse_replica_starts(&std::fs::read_to_string(self.log_path(id)).unwrap_or_default())
    }

    /// Data directory of node `id`.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Kills node `id` with SIGKILL (no chance to flush or say goodbye) and reaps it.
    pub fn kill(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(mut child) = node.child.take() {
            if node.paused {
                signal(&child, libc::SIGCONT);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
    }

    /// Stops node `id` cleanly (SIGTERM), as an operator would.
    pub fn terminate(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(child) = &node.child {
            signal(child, libc::SIGTERM);
        }
    }

    /// Waits up to `timeout` for node `id`'s process to end by itself, and reaps it. None if
    /// it is still running then (or was not started).
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let node = self.node_mut(id);
        let child = node.child.as_mut()?;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    node.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => return None,
            }
        }
    }

    /// Freezes node `id` (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn pause(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(child) = &node.child {
            signal(child, libc::SIGSTOP);
            node.paused = true;
        }
    }

    /// Thaws node `id` (SIGCONT).
    pub fn resume(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(child) = &node.child {
            signal(child, libc::SIGCONT);
            node.paused = false;
        }
    }

    /// Cuts node `id` off from the other nodes (clients still reach it). Needs a cluster from
    /// [`TestCluster::start_partitionable`].
    pub fn isolate(&self, id: u64) {
        self.net
            .as_ref()
            .expect("isolate needs start_partitionable")
            .isolate(id as u32);
    }

    /// Heals every cut link.
    pub fn heal_all(&self) {
        if let Some(net) = &self.net {
            net.heal_all();
        }
    }

    /// Node `id`'s process as the kernel sees it: its state letter from /proc (R running,
    /// S sleeping, T stopped, Z exited but not reaped), or `none`/`gone`. For failure reports.
    pub fn proc_state(&self, id: u64) -> String {
        let Some(pid) = self.pid(id) else {
            return "none".into();
        };
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // "pid (comm) S ...": the state follows the closing parenthesis.
            Ok(stat) => stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .map_or_else(|| "?".into(), |st| format!("pid {pid} {st}")),
            Err(_) => format!("pid {pid} gone"),
        }
    }

    /// Node `id`'s process id, if it was started (for /proc figures).
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes[(id - 1) as usize].child.as_ref().map(Child::id)
    }

    /// Whether node `id` has a live process.
    pub fn is_running(&self, id: u64) -> bool {
        self.nodes[(id - 1) as usize].child.is_some()
    }

    /// Every node's client address.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client_addr.clone()).collect()
    }

    /// A client for the whole cluster with test-friendly timing.
    pub fn client(&self) -> Client {
        Client::with_options(self.endpoints(), quick_options()).expect("client")
    }

    /// A client that talks to node `id` only.
    pub fn client_for(&self, id: u64) -> Client {
        Client::with_options(
            [self.nodes[(id - 1) as usize].client_addr.clone()],
            quick_options(),
        )
        .expect("client")
    }

    /// Node `id`'s status, if it answers.
    pub async fn status(&self, id: u64) -> Option<NodeStatus> {
        let addr = self.nodes[(id - 1) as usize].client_addr.clone();
        self.client_for(id).status_of(&addr).await.ok()
    }

    /// The id of the node that reports itself leader, waiting up to `timeout`. Panics naming
    /// the nodes' states if none does.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = Vec::new();
            for n in &self.nodes {
                if n.child.is_none() || n.paused {
                    continue;
                }
                if let Some(s) = self.status(n.id).await {
                    if s.role == "leader" {
                        return n.id;
                    }
                    seen.push(format!("{}:{}@{}", n.id, s.role, s.term));
                }
            }
            if Instant::now() >= deadline {
                let procs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("{}:{}", n.id, self.proc_state(n.id)))
                    .collect();
                panic!(
                    "no leader within {timeout:?}; answering nodes: {seen:?}; processes: {procs:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until node `id` has applied at least `index`, panicking after `timeout`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(id).await;
            if s.as_ref().is_some_and(|s| s.applied_index >= index) {
                return;
            }
            if Instant::now() >= deadline {
                panic!("node {id} did not apply index {index} within {timeout:?} (status {s:?})");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `check` returns true, panicking with `what` after `timeout`.
    pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        while !check().await {
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Size in bytes of every file under node `id`'s data directory.
    pub fn disk_usage(&self, id: u64) -> u64 {
        dir_size(&self.data_dir(id))
    }
}

/// The Raft state a node recovered from disk at one start (its `replica started` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaStart {
    /// The term in the recovered hard state.
    pub term: u64,
    /// The vote in the recovered hard state (0: none).
    pub vote: u64,
    /// The recovered applied index.
    pub applied: u64,
}

/// Every `replica started` line of a node's log, in text (`key: value, ...`) or JSON format.
pub fn parse_replica_starts(log: &str) -> Vec<ReplicaStart> {
    log.lines()
        .filter(|l| l.contains("replica started"))
        .filter_map(|l| {
            Some(ReplicaStart {
                term: log_field(l, "term")?,
                vote: log_field(l, "vote")?,
                applied: log_field(l, "applied")?,
            })
        })
        .collect()
}

/// A numeric field of one log line.
fn log_field(line: &str, name: &str) -> Option<u64> {
    if line.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        return v.get(name)?.as_u64();
    }
    line.split(", ").find_map(|part| {
        part.trim()
            .strip_prefix(name)?
            .strip_prefix(": ")?
            .trim()
            .parse()
            .ok()
    })
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a pid we own and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Client timing for tests: short attempts so failures show quickly.
pub fn quick_options() -> Options {
    Options {
        deadline: Duration::from_secs(10),
        attempt_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_millis(300),
        election_timeout: Duration::from_secs(1),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        tls: None,
        spread_reads: true,
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.kill(id);
        }
        if std::thread::panicking() {
            // Keep the evidence: copy the config and logs out of the temporary folder (it is
            // deleted next) and print each node's log tail.
            static FAILURES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let keep =
                std::env::temp_dir().join(format!("rdb-test-failure-{}-{n}", std::process::id()));
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(&self.config, keep.join("cluster.toml"));
            for n in &self.nodes {
                let _ = std::fs::copy(self.log_path(n.id), keep.join(format!("node{}.log", n.id)));
                let log = std::fs::read_to_string(self.log_path(n.id)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("--- node {} log tail ({} bytes) ---", n.id, log.len());
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
            eprintln!("config and logs kept in {}", keep.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{free_port, parse_replica_starts, ReplicaStart};

    #[test]
    fn replica_start_lines_parse_in_text_and_json() {
        let log = "Nov 26 11:10:00.123 INFO starting node, node_id: 2\n\
            Nov 26 11:10:00.200 INFO replica started, last_index: 9, commit: 9, vote: 3, term: 12, applied: 9, node_id: 2\n\
            {\"msg\":\"replica started\",\"level\":\"INFO\",\"applied\":4,\"term\":5,\"vote\":0,\"commit\":4}\n\
            Nov 26 11:10:01.000 INFO replica started, term: 1\n";
        assert_eq!(
            parse_replica_starts(log),
            [
                ReplicaStart {
                    term: 12,
                    vote: 3,
                    applied: 9
                },
                ReplicaStart {
                    term: 5,
                    vote: 0,
                    applied: 4
                },
            ],
            "the last line lacks fields and is skipped"
        );
    }

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        // 2,000 draws from 12,000 ports would repeat ~166 times if repeats were possible.
        let mut ports: Vec<u16> = (0..2000).map(|_| free_port()).collect();
        assert!(ports.iter().all(|p| (20_000..32_000).contains(p)));
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 2000, "a port was handed out twice");
    }
}
