//! The cluster configuration file: one TOML file describes every node, and each node is started
//! from it with its own id.
//!
//! ```toml
//! cluster_id = 1
//!
//! [[nodes]]
//! id = 1
//! peer_addr = "127.0.0.1:2380"
//! client_addr = "127.0.0.1:2379"
//! data_dir = "./rdb-data/node1"
//!
//! [settings]          # optional; every field has a default
//! tick_interval_ms = 50
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A Raft node id.
pub type NodeId = u64;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The content breaks a rule.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// One member of the cluster.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Raft id, non-zero and unique.
    pub id: NodeId,
    /// Address other nodes use for Raft traffic.
    pub peer_addr: String,
    /// Address clients use for the KV service.
    pub client_addr: String,
    /// Where this node keeps its RocksDB database.
    pub data_dir: PathBuf,
    /// Where this node serves Prometheus metrics (`GET /metrics`); none when left out.
    #[serde(default)]
    pub metrics_addr: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, one event per line with key=value fields.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Per-node tunables; every field has a documented default.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Milliseconds per Raft tick (default 50).
    pub tick_interval_ms: u64,
    /// Ticks without a leader before an election (default 20: 1 s, randomised up to 2 s).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats (default 2: 100 ms).
    pub heartbeat_ticks: usize,
    /// Compact the log once this many applied entries are in it (default 10,000).
    pub snapshot_threshold: u64,
    /// Entries kept after compaction so lagging followers catch up from the log (default 5,000).
    pub catch_up_entries: u64,
    /// Most log entries a leader keeps for followers that are still catching up (recently
    /// active, including one receiving a snapshot); past it, the log is compacted regardless,
    /// so a dead or stuck follower cannot make it grow forever (default 0: 10 x snapshot_threshold).
    pub max_retained_log_entries: u64,
    /// Bytes per second this node sends snapshot data at, over all transfers (default 0: unlimited).
    pub snapshot_max_bytes_per_sec: u64,
    /// Largest key in bytes (default 4096).
    pub max_key_bytes: usize,
    /// Largest value in bytes (default 1 MiB).
    pub max_value_bytes: usize,
    /// Largest gRPC message a node accepts from a peer, in bytes (default 16 MiB; snapshots are chunked).
    pub max_peer_message_bytes: usize,
    /// How long a client request may wait for Raft, in milliseconds (default 5000).
    pub request_timeout_ms: u64,
    /// Applied entries a client request id is remembered for, to apply retries once (default
    /// 200,000). It decides what applying an entry does, so it is fixed when a node's data
    /// directory is created: a node whose file says otherwise refuses to start.
    pub dedup_window: u64,
    /// Revisions of history each region keeps readable before automatic compaction drops
    /// older versions (default 10,000; 0: keep all history). Fixed when a data directory is
    /// created, as `dedup_window` is (specs/018-versions).
    pub history_revisions: u64,
    /// PD mode, where revisions are PD timestamps: seconds of history each region keeps
    /// readable before automatic compaction drops older versions (default 600; 0: keep all
    /// history). Fixed when a data directory is created, as `dedup_window` is.
    pub history_secs: u64,
    /// Most pairs one scan returns (default 10,000).
    pub max_scan_limit: u32,
    /// Most bytes of keys and values in one response (default 4 MiB); a scan page that would
    /// pass it ends early with `more` and the key to continue from. At least the largest key
    /// plus the largest value.
    pub max_response_bytes: usize,
    /// Total RocksDB write-ahead log size before old logs are flushed away, in bytes (default 64 MiB).
    pub max_wal_bytes: u64,
    /// RocksDB's block cache, shared by a node's column families, in bytes (default 32 MiB).
    pub block_cache_bytes: u64,
    /// All of RocksDB's memtables together before it flushes, in bytes (default 64 MiB).
    pub memtable_bytes: u64,
    /// `text` or `json` (default text).
    pub log_format: LogFormat,
    /// `trace`, `debug`, `info`, `warning`, `error` or `critical` (default info).
    pub log_level: String,
}

/// Slowest snapshot sending rate accepted, in bytes per second (64 KiB/s).
pub const MIN_SNAPSHOT_RATE: u64 = 64 << 10;

impl Settings {
    /// The settings that decide what applying an entry does, as a data directory records them.
    pub fn apply_settings(&self) -> rdb_storage::ApplySettings {
        rdb_storage::ApplySettings {
            dedup_window: self.dedup_window,
            history_revisions: self.history_revisions,
            history_ms: self.history_secs.saturating_mul(1000),
        }
    }

    /// The RocksDB tunables these settings give.
    pub fn engine_options(&self) -> rdb_storage::EngineOptions {
        rdb_storage::EngineOptions {
            max_wal_bytes: self.max_wal_bytes,
            block_cache_bytes: self.block_cache_bytes,
            memtable_bytes: self.memtable_bytes,
        }
    }

    /// Checks that the settings make sense together (every value in range).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let s = self;
        if s.tick_interval_ms == 0 {
            return bad("settings.tick_interval_ms must be positive".into());
        }
        if s.heartbeat_ticks == 0 || s.election_ticks <= s.heartbeat_ticks {
            return bad(format!(
                "settings: election_ticks ({}) must exceed heartbeat_ticks ({}), which must be positive",
                s.election_ticks, s.heartbeat_ticks
            ));
        }
        if s.catch_up_entries >= s.snapshot_threshold {
            return bad(format!(
                "settings: catch_up_entries ({}) must be below snapshot_threshold ({})",
                s.catch_up_entries, s.snapshot_threshold
            ));
        }
        if s.max_retained_log_entries != 0 && s.max_retained_log_entries < s.snapshot_threshold {
            return bad(format!(
                "settings: max_retained_log_entries ({}) must be 0 (10 x snapshot_threshold) or at least snapshot_threshold ({})",
                s.max_retained_log_entries, s.snapshot_threshold
            ));
        }
        if s.snapshot_max_bytes_per_sec != 0 && s.snapshot_max_bytes_per_sec < MIN_SNAPSHOT_RATE {
            return bad(format!(
                "settings.snapshot_max_bytes_per_sec must be 0 (unlimited) or at least {MIN_SNAPSHOT_RATE}"
            ));
        }
        if s.max_key_bytes == 0 || s.max_key_bytes > 64 * 1024 {
            return bad("settings.max_key_bytes must be between 1 and 65536".into());
        }
        if s.max_value_bytes == 0
            || s.max_value_bytes + s.max_key_bytes + 4096 > s.max_peer_message_bytes
        {
            return bad(format!(
                "settings: max_value_bytes ({}) must be positive and fit, with the key, in max_peer_message_bytes ({})",
                s.max_value_bytes, s.max_peer_message_bytes
            ));
        }
        if s.request_timeout_ms == 0 {
            return bad("settings.request_timeout_ms must be positive".into());
        }
        if s.dedup_window < 1000 {
            return bad("settings.dedup_window must be at least 1000".into());
        }
        if s.block_cache_bytes < (1 << 20) || s.memtable_bytes < (4 << 20) {
            return bad(
                "settings.block_cache_bytes must be at least 1 MiB and settings.memtable_bytes \
                 at least 4 MiB"
                    .into(),
            );
        }
        if s.max_wal_bytes < (1 << 20) {
            return bad("settings.max_wal_bytes must be at least 1 MiB".into());
        }
        if s.max_response_bytes < s.max_value_bytes + s.max_key_bytes {
            return bad(format!(
                "settings: max_response_bytes ({}) must hold the largest key and value ({} bytes)",
                s.max_response_bytes,
                s.max_value_bytes + s.max_key_bytes
            ));
        }
        if s.max_scan_limit == 0 {
            return bad("settings.max_scan_limit must be positive".into());
        }
        if slog::Level::from_str_ok(&s.log_level).is_none() {
            return bad(format!(
                "settings.log_level {:?} is not a level",
                s.log_level
            ));
        }
        Ok(())
    }

    /// The log length past which a leader compacts without waiting for slow followers.
    pub fn retained_log_cap(&self) -> u64 {
        match self.max_retained_log_entries {
            0 => self.snapshot_threshold.saturating_mul(10),
            n => n,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tick_interval_ms: 50,
            election_ticks: 20,
            heartbeat_ticks: 2,
            snapshot_threshold: 10_000,
            catch_up_entries: 5_000,
            max_retained_log_entries: 0,
            snapshot_max_bytes_per_sec: 0,
            max_key_bytes: 4096,
            max_value_bytes: 1 << 20,
            max_peer_message_bytes: 16 << 20,
            request_timeout_ms: 5000,
            dedup_window: 200_000,
            history_revisions: rdb_storage::engine::DEFAULT_HISTORY_REVISIONS,
            history_secs: rdb_storage::engine::DEFAULT_HISTORY_MS / 1000,
            max_scan_limit: 10_000,
            max_response_bytes: 4 << 20,
            max_wal_bytes: 64 << 20,
            block_cache_bytes: 32 << 20,
            memtable_bytes: 64 << 20,
            log_format: LogFormat::Text,
            log_level: "info".into(),
        }
    }
}

/// TLS for one port: this node's certificate and key, and the CA that signs the other side's
/// certificates. A `{id}` in a path is replaced by the node's id, so one file serves every
/// node (`cert_file = "certs/node{id}.pem"`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// This node's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that sign the other side's certificates.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `ca_file` (always on for `[peer_tls]`).
    #[serde(default)]
    pub client_cert_auth: bool,
}

impl TlsSettings {
    /// The settings with `{id}` in every path replaced by `id`.
    pub fn for_node(&self, id: NodeId) -> TlsSettings {
        let sub = |p: &PathBuf| PathBuf::from(p.to_string_lossy().replace("{id}", &id.to_string()));
        TlsSettings {
            cert_file: sub(&self.cert_file),
            key_file: sub(&self.key_file),
            ca_file: self.ca_file.as_ref().map(sub),
            client_cert_auth: self.client_cert_auth,
        }
    }
}

/// The whole cluster, as read from the file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Identifies the cluster; a data directory remembers it and refuses another.
    pub cluster_id: u64,
    /// The initial members. Once a node's data directory exists, the membership stored in it
    /// (changed through the log: `rdb-cli member ...`) wins over this list.
    pub nodes: Vec<NodeConfig>,
    /// Tunables shared by all nodes.
    #[serde(default)]
    pub settings: Settings,
    /// TLS on the client port (etcd's `--cert-file`, `--key-file`, `--trusted-ca-file`,
    /// `--client-cert-auth`); plaintext when absent.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// Mutual TLS on the peer port: every node presents its certificate and accepts only
    /// peers whose certificate `ca_file` signed; plaintext when absent.
    #[serde(default)]
    pub peer_tls: Option<TlsSettings>,
    /// Set by `rdb-server --join`, never by a file: this node joins a running cluster, so its
    /// data directory starts with no membership (it comes with the leader's snapshot).
    #[serde(skip)]
    pub joining: bool,
}

/// The optional file of a PD-mode store (`rdb-server --pd ... --config store.toml`): the same
/// `[settings]`, `[tls]` and `[peer_tls]` tables as a cluster file, without `cluster_id` and
/// `nodes` (PD places stores and knows the cluster), plus `[pd_tls]` to reach PD.
///
/// ```toml
/// [tls]                      # the client port (--addr)
/// cert_file = "store.pem"
/// key_file = "store.key"
/// [peer_tls]                 # the peer port (--peer-addr) and this store's connections to others
/// cert_file = "store.pem"
/// key_file = "store.key"
/// ca_file = "ca.pem"
/// [pd_tls]                   # PD's client port
/// ca_file = "ca.pem"
/// ```
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// Regions' Raft and request settings.
    #[serde(default)]
    pub settings: Settings,
    /// TLS on the client port; plaintext when absent.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// Mutual TLS on the peer port and to other stores; plaintext when absent.
    #[serde(default)]
    pub peer_tls: Option<TlsSettings>,
    /// TLS to PD's client port; plaintext when absent.
    #[serde(default)]
    pub pd_tls: Option<ClientTlsSettings>,
}

/// The client side of a TLS connection (a store to PD): the CA that signs the server, and this
/// side's certificate when the server asks for one.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// CA certificates (PEM) that sign the server's certificate.
    pub ca_file: PathBuf,
    /// This side's certificate chain (PEM), for a server that requires client certificates.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl StoreFile {
    /// How the store reaches PD: the client's default timing, and TLS from `[pd_tls]`.
    pub fn pd_client_options(&self) -> Result<rdb_client::Options, ConfigError> {
        let mut opts = rdb_client::Options::default();
        if let Some(t) = &self.pd_tls {
            let read = |p: &Path, what: &str| {
                std::fs::read(p).map_err(|e| {
                    ConfigError::Invalid(format!("[pd_tls] {what} {}: {e}", p.display()))
                })
            };
            let identity = match (&t.cert_file, &t.key_file) {
                (Some(c), Some(k)) => Some((read(c, "cert_file")?, read(k, "key_file")?)),
                _ => None,
            };
            opts.tls = Some(rdb_client::TlsOptions {
                ca_pem: read(&t.ca_file, "ca_file")?,
                identity,
            });
        }
        Ok(opts)
    }

    /// Reads and validates a store file.
    pub fn load(path: &Path) -> Result<StoreFile, ConfigError> {
        load_with(path, |text| {
            let f: StoreFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
                path: PathBuf::new(),
                message: e.message().to_string(),
            })?;
            f.validate()?;
            Ok(f)
        })
    }

    /// Checks the TLS tables as a cluster file's, and the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_tls(self.tls.as_ref(), self.peer_tls.as_ref())?;
        if let Some(t) = &self.pd_tls {
            if t.cert_file.is_some() != t.key_file.is_some() {
                return Err(ConfigError::Invalid(
                    "[pd_tls] needs both cert_file and key_file, or neither".into(),
                ));
            }
        }
        self.settings.validate()
    }
}

/// Checks `[tls]` and `[peer_tls]`: client certificates need the CA that signs them, and peers
/// always check each other's.
fn validate_tls(
    tls: Option<&TlsSettings>,
    peer_tls: Option<&TlsSettings>,
) -> Result<(), ConfigError> {
    let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
    if tls.is_some_and(|t| t.client_cert_auth && t.ca_file.is_none()) {
        return bad("[tls] client_cert_auth needs ca_file, the CA that signs clients");
    }
    if peer_tls.is_some_and(|t| t.ca_file.is_none()) {
        return bad("[peer_tls] needs ca_file: peers check each other's certificates");
    }
    Ok(())
}

/// Reads the file at `path` and parses it with `parse`, naming the file in a parse error.
pub fn load_with<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        ConfigError::Parse { message, .. } => ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        },
        other => other,
    })
}

impl ClusterConfig {
    /// Reads and validates a configuration file. Relative data directories are resolved against
    /// the current directory, as a user typing the command would expect.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        load_with(path, Self::parse)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        let cfg: ClusterConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.message().to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The embedded default: one node on 127.0.0.1 with its data in `./rdb-data/single` (or in
    /// `./rdb-data` itself when a database from before is there: `./rdb-data` also holds the
    /// local 3-node cluster's `node1/`.. and the PD-mode stores' directories, so a database
    /// straight in it would mix with theirs).
    pub fn single_node_default() -> ClusterConfig {
        let data_dir = single_node_data_dir(Path::new("./rdb-data"));
        ClusterConfig {
            cluster_id: 1,
            nodes: vec![NodeConfig {
                id: 1,
                peer_addr: "127.0.0.1:2380".into(),
                client_addr: "127.0.0.1:2379".into(),
                data_dir,
                metrics_addr: Some("127.0.0.1:9379".into()),
            }],
            settings: Settings::default(),
            tls: None,
            peer_tls: None,
            joining: false,
        }
    }

    /// The member with this id.
    pub fn node(&self, id: NodeId) -> Result<&NodeConfig, ConfigError> {
        self.nodes.iter().find(|n| n.id == id).ok_or_else(|| {
            let ids: Vec<_> = self.nodes.iter().map(|n| n.id).collect();
            ConfigError::Invalid(format!("node id {id} is not in the config (ids: {ids:?})"))
        })
    }

    /// Checks every rule a cluster needs before anything touches the disk.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        validate_tls(self.tls.as_ref(), self.peer_tls.as_ref())?;
        if self.cluster_id == 0 {
            return bad("cluster_id must be non-zero".into());
        }
        if self.nodes.is_empty() {
            return bad("at least one [[nodes]] entry is required".into());
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        let mut dirs = HashSet::new();
        for n in &self.nodes {
            if n.id == 0 {
                return bad("node id 0 is reserved; ids start at 1".into());
            }
            if !ids.insert(n.id) {
                return bad(format!("node id {} appears twice", n.id));
            }
            let addrs_of_node = [
                ("peer_addr", Some(&n.peer_addr)),
                ("client_addr", Some(&n.client_addr)),
                ("metrics_addr", n.metrics_addr.as_ref()),
            ];
            for (what, a) in addrs_of_node
                .into_iter()
                .filter_map(|(w, a)| a.map(|a| (w, a)))
            {
                if a.parse::<SocketAddr>().is_err() {
                    return bad(format!(
                        "node {}: {what} {a:?} is not an ip:port address",
                        n.id
                    ));
                }
                if !addrs.insert(a.clone()) {
                    return bad(format!("node {}: address {a} is used twice", n.id));
                }
            }
            if n.data_dir.as_os_str().is_empty() {
                return bad(format!("node {}: data_dir is empty", n.id));
            }
            if !dirs.insert(n.data_dir.clone()) {
                return bad(format!(
                    "node {}: data_dir {} is used twice",
                    n.id,
                    n.data_dir.display()
                ));
            }
        }
        self.settings.validate()
    }
}

/// `slog::Level` parsing that names our accepted spellings.
trait LevelExt {
    fn from_str_ok(s: &str) -> Option<slog::Level>;
}

impl LevelExt for slog::Level {
    fn from_str_ok(s: &str) -> Option<slog::Level> {
        s.parse::<slog::Level>().ok()
    }
}

/// Parses a log level name.
pub fn parse_level(s: &str) -> Option<slog::Level> {
    slog::Level::from_str_ok(s)
}

/// Where the no-argument single node keeps its data under `base`: `base/single`, or `base`
/// itself when it already holds a database (one written before the default moved).
fn single_node_data_dir(base: &Path) -> PathBuf {
    if base.join("CURRENT").exists() {
        base.to_path_buf()
    } else {
        base.join("single")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = r#"
cluster_id = 9
[[nodes]]
id = 1
peer_addr = "127.0.0.1:7001"
client_addr = "127.0.0.1:7101"
data_dir = "d1"
[[nodes]]
id = 2
peer_addr = "127.0.0.1:7002"
client_addr = "127.0.0.1:7102"
data_dir = "d2"
[[nodes]]
id = 3
peer_addr = "127.0.0.1:7003"
client_addr = "127.0.0.1:7103"
data_dir = "d3"
[settings]
tick_interval_ms = 20
"#;

    fn err(text: &str) -> String {
        ClusterConfig::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_store_file_takes_settings_and_tls_and_refuses_what_a_cluster_file_would() {
        let dir = tempfile::tempdir().expect("dir");
        let load = |text: &str| {
            let path = dir.path().join("store.toml");
            std::fs::write(&path, text).expect("write");
            StoreFile::load(&path).map_err(|e| e.to_string())
        };
        let f = load(
            "[settings]\ntick_interval_ms = 20\n[pd_tls]\nca_file = \"ca.pem\"\n\
             [peer_tls]\ncert_file = \"s.pem\"\nkey_file = \"s.key\"\nca_file = \"ca.pem\"\n",
        )
        .expect("a store file");
        assert_eq!(f.settings.tick_interval_ms, 20);
        assert!(f.tls.is_none() && f.peer_tls.is_some() && f.pd_tls.is_some());
        let refused = [
            ("cluster_id = 1\n", "unknown field"),
            (
                "[peer_tls]\ncert_file = \"s.pem\"\nkey_file = \"s.key\"\n",
                "ca_file",
            ),
            (
                "[pd_tls]\nca_file = \"c\"\ncert_file = \"s.pem\"\n",
                "both cert_file and key_file",
            ),
            ("[settings]\nheartbeat_ticks = 0\n", "heartbeat_ticks"),
        ];
        for (text, says) in refused {
            let e = load(text).expect_err(text);
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn three_nodes_parse_with_defaults_filled_in() {
        let c = ClusterConfig::parse(THREE).unwrap();
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.settings.tick_interval_ms, 20);
        assert_eq!(c.settings.max_value_bytes, 1 << 20);
        assert_eq!(c.node(2).unwrap().client_addr, "127.0.0.1:7102");
        assert!(c
            .node(4)
            .unwrap_err()
            .to_string()
            .contains("node id 4 is not in the config"));
        ClusterConfig::single_node_default().validate().unwrap();
        assert_eq!(c.settings.retained_log_cap(), 100_000);
        assert_eq!(c.settings.snapshot_max_bytes_per_sec, 0);
    }

    /// The no-argument node keeps its data in `rdb-data/single`, apart from the local
    /// cluster's `rdb-data/node1`.. and the stores' directories; a database already straight in
    /// `rdb-data` (written before) stays where it is.
    #[test]
    fn the_single_node_default_has_a_directory_of_its_own() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("rdb-data");
        assert_eq!(single_node_data_dir(&dir), dir.join("single"));
        std::fs::create_dir_all(dir.join("node1")).unwrap();
        assert_eq!(single_node_data_dir(&dir), dir.join("single"));
        std::fs::write(dir.join("CURRENT"), "MANIFEST-000001\n").unwrap();
        assert_eq!(single_node_data_dir(&dir), dir);
    }

    #[test]
    fn repeated_ids_addresses_and_dirs_are_refused() {
        assert!(err(&THREE.replace("id = 2", "id = 1")).contains("node id 1 appears twice"));
        assert!(err(&THREE.replace("127.0.0.1:7002", "127.0.0.1:7001")).contains("used twice"));
        assert!(err(&THREE.replace("\"d2\"", "\"d1\"")).contains("data_dir d1 is used twice"));
    }

    #[test]
    fn bad_values_get_one_line_causes() {
        assert!(err(&THREE.replace("cluster_id = 9", "cluster_id = 0")).contains("cluster_id"));
        assert!(err(&THREE.replace("127.0.0.1:7003", "nowhere")).contains("not an ip:port"));
        assert!(
            err(&THREE.replace("tick_interval_ms = 20", "tick_interval_ms = 0"))
                .contains("tick_interval_ms")
        );
        assert!(err(&THREE.replace("tick_interval_ms = 20", "bogus = 1")).contains("unknown field"));
        assert!(
            err(&THREE.replace("tick_interval_ms = 20", "log_level = \"loud\""))
                .contains("log_level")
        );
        assert!(err("cluster_id = 1\nnodes = []").contains("at least one"));
        assert!(
            err(&THREE.replace("tick_interval_ms = 20", "snapshot_max_bytes_per_sec = 1000"))
                .contains("snapshot_max_bytes_per_sec")
        );
        assert!(
            err(&THREE.replace("tick_interval_ms = 20", "max_retained_log_entries = 50"))
                .contains("max_retained_log_entries")
        );
        for e in [
            err("not toml ["),
            err(&THREE.replace("tick_interval_ms = 20", "election_ticks = 1")),
        ] {
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn tls_settings_need_a_ca_where_certificates_are_checked_and_take_the_node_id() {
        let base = "cluster_id = 1\n[[nodes]]\nid = 1\npeer_addr = \"127.0.0.1:1\"\nclient_addr = \"127.0.0.1:2\"\ndata_dir = \"d\"\n";
        let e = ClusterConfig::parse(&format!(
            "{base}[tls]\ncert_file = \"c\"\nkey_file = \"k\"\nclient_cert_auth = true\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("client_cert_auth needs ca_file"), "{e}");
        let e = ClusterConfig::parse(&format!(
            "{base}[peer_tls]\ncert_file = \"c\"\nkey_file = \"k\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("[peer_tls] needs ca_file"), "{e}");
        let c = ClusterConfig::parse(&format!(
            "{base}[peer_tls]\ncert_file = \"certs/n{{id}}.pem\"\nkey_file = \"k{{id}}\"\nca_file = \"ca.pem\"\n"
        ))
        .unwrap();
        let t = c.peer_tls.unwrap().for_node(3);
        assert_eq!(t.cert_file, PathBuf::from("certs/n3.pem"));
        assert_eq!(t.key_file, PathBuf::from("k3"));
    }
}
