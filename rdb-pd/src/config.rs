//! A PD group's configuration file: rdb-server's format (`cluster_id`, `[[nodes]]`,
//! `[settings]`) plus an optional `[pd]` table.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdb_server::config::{ClusterConfig, ConfigError, NodeConfig, Settings};
use rdb_server::join::JoinArgs;
use serde::{Deserialize, Serialize};

/// Shortest timestamp window a PD leader persists ahead of the clock, in ms.
pub const MIN_TSO_WINDOW_MS: u64 = 50;
/// Longest: a window is how far timestamps may run ahead of the clock after a restart.
pub const MAX_TSO_WINDOW_MS: u64 = 60_000;

/// Shortest `store_down_after_secs`: more than the 2 s between a live store's heartbeats.
pub const MIN_STORE_DOWN_AFTER_SECS: u64 = 3;

/// A region whose membership has not changed for this long has settled: extra peers are not
/// an operator's (or a person's) work halfway, and the replica checker removes them.
const SETTLED_AFTER: Duration = Duration::from_secs(20);

/// Balance waits this long into a PD leader's term: until then it has not heard every
/// region's leader (they report every 2 s) and would move leaderships on a partial count.
const BALANCE_AFTER: Duration = Duration::from_secs(5);

/// PD-only settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PdSettings {
    /// How far ahead of the clock the leader persists the timestamp window, in ms (default 3000,
    /// at most 60,000).
    pub tso_window_ms: u64,
    /// A store silent for longer than this is reported Down, in seconds (default 30).
    pub store_down_after_secs: u64,
    /// A store silent for longer than this is gone: its regions' peers there are replaced on
    /// other stores, in seconds (default 1800, TiKV's `max-store-down-time`; at least
    /// `store_down_after_secs`).
    pub max_store_down_secs: u64,
    /// How many new peers' snapshots may be on their way to one store, and from one store, at
    /// once (default 4): moves never crowd out client traffic.
    pub store_limit: u64,
    /// An operator whose step has not progressed for this long is dropped, in seconds
    /// (default 600: a large region's snapshot; a leader transfer gets 10 s).
    pub operator_timeout_secs: u64,
    /// Leadership moves toward stores that lead fewer regions (default true).
    pub balance_leaders: bool,
    /// Peers move toward stores that hold fewer regions or bytes (default true).
    pub balance_regions: bool,
    /// A region merges into its right neighbour when both hold at most this many MiB (default
    /// 20, TiKV's `max-merge-region-size`; 0: no merges)...
    pub max_merge_region_size_mb: u64,
    /// ...and at most this many keys (default 200,000).
    pub max_merge_region_keys: u64,
    /// A region does not merge within this many seconds of its last split or merge (default
    /// 3600, TiKV's `split-merge-interval`): keys just written may be about to grow it.
    pub split_merge_interval_secs: u64,
    /// Store labels that say where a store is, most general first (e.g. `["zone", "host"]`):
    /// a region's replicas go to stores that share as few of them as possible (default none).
    pub location_labels: Vec<String>,
}

impl Default for PdSettings {
    fn default() -> Self {
        PdSettings {
            tso_window_ms: 3000,
            store_down_after_secs: 30,
            max_store_down_secs: 1800,
            store_limit: 4,
            operator_timeout_secs: 600,
            balance_leaders: true,
            balance_regions: true,
            max_merge_region_size_mb: 20,
            max_merge_region_keys: 200_000,
            split_merge_interval_secs: 3600,
            location_labels: Vec::new(),
        }
    }
}

impl PdSettings {
    /// The window as a duration.
    pub fn tso_window(&self) -> Duration {
        Duration::from_millis(self.tso_window_ms)
    }

    /// The Down threshold as a duration.
    pub fn store_down_after(&self) -> Duration {
        Duration::from_secs(self.store_down_after_secs)
    }

    /// How long a store may be silent before its peers are replaced.
    pub fn max_store_down(&self) -> Duration {
        Duration::from_secs(self.max_store_down_secs)
    }

    /// The rules PD's scheduler decides by, for regions of `replicas` voters.
    pub fn rules(&self, replicas: usize) -> crate::schedule::Rules {
        use crate::schedule::{Balance, MergeRules, Rules};
        Rules {
            replicas,
            store_limit: usize::try_from(self.store_limit).unwrap_or(usize::MAX),
            operator_timeout: Duration::from_secs(self.operator_timeout_secs),
            balance: Balance {
                leaders: self.balance_leaders,
                regions: self.balance_regions,
            },
            merge: MergeRules {
                max_size: self.max_merge_region_size_mb.saturating_mul(1 << 20),
                max_keys: self.max_merge_region_keys,
            },
            split_merge_interval: Duration::from_secs(self.split_merge_interval_secs),
            settled_after: SETTLED_AFTER,
            balance_after: BALANCE_AFTER,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PdFile {
    cluster_id: u64,
    nodes: Vec<NodeConfig>,
    #[serde(default)]
    settings: Settings,
    #[serde(default)]
    pd: PdSettings,
    #[serde(default)]
    tls: Option<rdb_server::config::TlsSettings>,
    #[serde(default)]
    peer_tls: Option<rdb_server::config::TlsSettings>,
}

/// A PD group: its members and Raft settings (as rdb-server's) and the PD settings.
#[derive(Debug, Clone)]
pub struct PdConfig {
    /// Members, Raft settings.
    pub cluster: ClusterConfig,
    /// PD settings.
    pub pd: PdSettings,
}

impl PdConfig {
    /// Reads and validates a PD configuration file, with rdb-server's rules.
    pub fn load(path: &Path) -> Result<PdConfig, ConfigError> {
        rdb_server::config::load_with(path, Self::parse)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<PdConfig, ConfigError> {
        Self::parse_as(text, false)
    }

    /// Reads the configuration a node that joined the group kept in its data directory
    /// (`rdb-pd --join`, see [`PdConfig::joined`]).
    pub fn load_joined(path: &Path) -> Result<PdConfig, ConfigError> {
        rdb_server::config::load_with(path, |text| Self::parse_as(text, true))
    }

    /// The configuration of node `a.node_id` joining the running group whose member list is
    /// `list`, with the group's `[pd]` table `pd_toml`. `add_command` is how an operator adds a
    /// PD node (named in the error when this one was not added).
    pub fn joined(
        a: &JoinArgs,
        list: &rdb_server::join::GroupList,
        pd_toml: &str,
        add_command: &str,
    ) -> Result<PdConfig, ConfigError> {
        let cluster = rdb_server::join::config_from(a, list, add_command)?;
        let pd: PdSettings = toml::from_str(pd_toml).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("(the PD group's [pd] settings)"),
            message: e.message().to_string(),
        })?;
        let cfg = PdConfig { cluster, pd };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configuration as a PD file's text (what a joined node keeps).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let f = PdFile {
            cluster_id: self.cluster.cluster_id,
            nodes: self.cluster.nodes.clone(),
            settings: self.cluster.settings.clone(),
            pd: self.pd.clone(),
            tls: self.cluster.tls.clone(),
            peer_tls: self.cluster.peer_tls.clone(),
        };
        toml::to_string(&f)
            .map_err(|e| ConfigError::Invalid(format!("cannot encode the PD configuration: {e}")))
    }

    /// Parses configuration text: a group's file, or (`joining`) a joined node's kept one.
    fn parse_as(text: &str, joining: bool) -> Result<PdConfig, ConfigError> {
        let f: PdFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.message().to_string(),
        })?;
        let cfg = PdConfig {
            cluster: ClusterConfig {
                cluster_id: f.cluster_id,
                nodes: f.nodes,
                settings: f.settings,
                tls: f.tls,
                peer_tls: f.peer_tls,
                joining,
            },
            pd: f.pd,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks rdb-server's rules and PD's own. A group starts with 1, 3 or 5 nodes; a joining
    /// node's list is the running group's, whatever its size.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.cluster.validate()?;
        if !self.cluster.joining && ![1, 3, 5].contains(&self.cluster.nodes.len()) {
            return Err(ConfigError::Invalid(format!(
                "a PD group has 1, 3 or 5 nodes, this one has {}",
                self.cluster.nodes.len()
            )));
        }
        if !(MIN_TSO_WINDOW_MS..=MAX_TSO_WINDOW_MS).contains(&self.pd.tso_window_ms) {
            return Err(ConfigError::Invalid(format!(
                "[pd] tso_window_ms must be {MIN_TSO_WINDOW_MS} to {MAX_TSO_WINDOW_MS} (1 min), \
                 got {}: the oracle persists a window this far ahead of the clock",
                self.pd.tso_window_ms
            )));
        }
        if self.pd.store_down_after_secs < MIN_STORE_DOWN_AFTER_SECS {
            return Err(ConfigError::Invalid(format!(
                "[pd] store_down_after_secs must be at least {MIN_STORE_DOWN_AFTER_SECS}, got {}: \
                 stores heartbeat every 2 s, and a live store would count down between two",
                self.pd.store_down_after_secs
            )));
        }
        if self.pd.store_limit == 0 || self.pd.operator_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "[pd] store_limit and operator_timeout_secs must be at least 1: with 0 no \
                 region could ever be repaired"
                    .into(),
            ));
        }
        if let Some(l) = self
            .pd
            .location_labels
            .iter()
            .find(|l| !rdb_client::pd::valid_label(l))
        {
            return Err(ConfigError::Invalid(format!(
                "[pd] location_labels: \"{l}\" is not a label name (1 to 64 letters, digits, '-', '_' or '.')"
            )));
        }
        if self.pd.max_store_down_secs < self.pd.store_down_after_secs {
            return Err(ConfigError::Invalid(format!(
                "[pd] max_store_down_secs ({}) must be at least store_down_after_secs ({}): a \
                 store's peers are replaced only once it is down",
                self.pd.max_store_down_secs, self.pd.store_down_after_secs
            )));
        }
        Ok(())
    }

    /// The embedded default: one PD node on 127.0.0.1:2399 (peer port 2400, metrics on 9399),
    /// data in `./rdb-pd-data`.
    pub fn single_node_default() -> PdConfig {
        PdConfig {
            cluster: ClusterConfig {
                cluster_id: 1,
                nodes: vec![NodeConfig {
                    id: 1,
                    peer_addr: "127.0.0.1:2400".into(),
                    client_addr: "127.0.0.1:2399".into(),
                    data_dir: PathBuf::from("./rdb-pd-data"),
                    metrics_addr: Some("127.0.0.1:9399".into()),
                }],
                settings: Settings::default(),
                tls: None,
                peer_tls: None,
                joining: false,
            },
            pd: PdSettings::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = r#"
cluster_id = 9
[[nodes]]
id = 1
peer_addr = "127.0.0.1:1"
client_addr = "127.0.0.1:2"
data_dir = "/tmp/a"
[[nodes]]
id = 2
peer_addr = "127.0.0.1:3"
client_addr = "127.0.0.1:4"
data_dir = "/tmp/b"
[[nodes]]
id = 3
peer_addr = "127.0.0.1:5"
client_addr = "127.0.0.1:6"
data_dir = "/tmp/c"
"#;

    #[test]
    fn a_three_node_file_parses_with_pd_defaults_and_pd_settings_override() {
        let c = PdConfig::parse(THREE).unwrap();
        assert_eq!(c.cluster.nodes.len(), 3);
        assert_eq!(c.pd, PdSettings::default());
        let c = PdConfig::parse(&format!("{THREE}\n[pd]\ntso_window_ms = 500\n")).unwrap();
        assert_eq!(c.pd.tso_window_ms, 500);
    }

    #[test]
    fn the_local_three_node_file_is_valid() {
        let c = PdConfig::parse(include_str!("../../scripts/local-pd.toml")).unwrap();
        assert_eq!(c.cluster.nodes.len(), 3);
        assert_eq!(c.pd, PdSettings::default());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let two = THREE.split("[[nodes]]\nid = 3").next().unwrap();
        let e = PdConfig::parse(two).unwrap_err().to_string();
        assert!(e.contains("1, 3 or 5 nodes"), "{e}");
        let e = PdConfig::parse(&format!("{THREE}\n[pd]\ntso_window_ms = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tso_window_ms"), "{e}");
        // A window far ahead of the clock would hand out timestamps of another century.
        for too_far in ["60001", "9000000000000"] {
            let e = PdConfig::parse(&format!("{THREE}\n[pd]\ntso_window_ms = {too_far}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("tso_window_ms must be 50 to 60000"), "{e}");
        }
        let e = PdConfig::parse(&format!("{THREE}\n[pd]\nbogus = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        // Down sooner than a live store's next heartbeat, or gone sooner than down.
        let e = PdConfig::parse(&format!("{THREE}\n[pd]\nstore_down_after_secs = 2\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("store_down_after_secs must be at least 3"),
            "{e}"
        );
        let e = PdConfig::parse(&format!(
            "{THREE}\n[pd]\nstore_down_after_secs = 60\nmax_store_down_secs = 30\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("max_store_down_secs (30) must be at least"),
            "{e}"
        );
    }
}
