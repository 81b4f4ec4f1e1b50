//! `rdb-server --restore FILE --config C [--node-id N]`: seeds the data directories of a new
//! cluster from a backup file (`rdb-cli snapshot save`), then exits without serving.
//!
//! The file is checked whole before anything is written, and every target directory must be
//! missing or empty: either refusal changes nothing, on any node. Each node's directory gets
//! the backup's data at its index and term, the identity and voters of the config (never the
//! old cluster's membership), and the config's apply settings; see
//! [`rdb_storage::backup::restore`]. The nodes then start as usual with `--config C
//! --node-id N`, all at the backup's index with identical data, and elect a leader.

use std::path::Path;

use rdb_storage::backup::{self, RestoreTarget, Restored};
use rdb_storage::{ApplySettings, EngineOptions, Ident};

use crate::config::{ClusterConfig, NodeConfig, NodeId};
use crate::ServerError;

/// Restores `file` into node `node_id`'s data directory, or into every node's when `None`,
/// printing one line per node. Returns what was restored, in node order.
pub fn run(
    config: &ClusterConfig,
    node_id: Option<NodeId>,
    file: &Path,
) -> Result<Vec<Restored>, ServerError> {
    config.validate()?;
    let nodes: Vec<&NodeConfig> = match node_id {
        Some(id) => vec![config.node(id)?],
        None => config.nodes.iter().collect(),
    };
    let info = backup::verify(file)?;
    // Every target is checked before the first is written, so a refusal changes nothing.
    for n in &nodes {
        backup::check_target(&n.data_dir)?;
    }
    let voters: Vec<NodeId> = config.nodes.iter().map(|n| n.id).collect();
    let members = crate::server::member_records(config);
    let mut restored = Vec::new();
    for n in nodes {
        let target = RestoreTarget {
            ident: Ident {
                cluster_id: config.cluster_id,
                node_id: n.id,
            },
            voters: voters.clone(),
            members: members.clone(),
            settings: ApplySettings {
                dedup_window: config.settings.dedup_window,
            },
            engine_opts: EngineOptions {
                max_wal_bytes: config.settings.max_wal_bytes,
            },
        };
        let r = backup::restore(file, &n.data_dir, &target)?;
        println!(
            "restored node {} into {}: index {}, term {}, {} keys ({} records; backup of cluster {} node {}, crc32 {:08x})",
            n.id,
            n.data_dir.display(),
            r.backup.index,
            r.backup.term,
            r.backup.keys,
            r.records,
            info.source.cluster_id,
            info.source.node_id,
            info.checksum,
        );
        restored.push(r);
    }
    Ok(restored)
}
