//! `rdb-server --restore FILE`: seeds the data directories of a new cluster from a backup file
//! (`rdb-cli snapshot save`), then exits without serving.
//!
//! With `--config C [--node-id N]` ([`run`]) it seeds a config-file cluster: each node's
//! directory gets the backup's data (every region of it) as region 1 at the backup's index and
//! term, the identity and voters of the config (never the old cluster's membership), and the
//! config's apply settings; see [`rdb_storage::backup::restore`]. The nodes then start as usual
//! with `--config C --node-id N`, all at the backup's index with identical data, and elect a
//! leader.
//!
//! With `--pd A,B,C --data-dir D1 --data-dir D2 ...` ([`run_pd`]) it seeds a PD-mode cluster
//! around a new PD cluster that was never bootstrapped: one new store per directory, each with a
//! peer of every region of the backup (their ranges and ids kept; their peers new, one per
//! store, so the number of directories is the cluster's replication factor). Store and peer ids
//! come from PD's allocator; recording the regions reserves their ids, so nothing PD hands out
//! later collides with them. The stores then start as usual with `--pd A,B,C --addr ...
//! --peer-addr ... --data-dir Di` (any addresses: they register with PD when they start) and
//! elect a leader for every region.
//!
//! Either way the file is checked whole and every target directory must be missing or empty
//! before anything is written, so a refusal changes nothing. In PD mode the directories are
//! built aside, the regions are recorded with PD (the step that decides: a PD that is
//! bootstrapped by then refuses, and the directories built are removed), and only then are the
//! directories renamed into place.

use std::path::{Path, PathBuf};

use rdb_client::pd::Region as PdRegion;
use rdb_client::PdClient;
use rdb_storage::backup::{self, BackupContents, RestoreTarget, Restored, StoreRestoreTarget};
use rdb_storage::region::{Peer, Region, RegionEpoch, StoreIdent};
use rdb_storage::Ident;

use crate::config::{ClusterConfig, ConfigError, NodeConfig, NodeId, Settings};
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
            settings: config.settings.apply_settings(),
            engine_opts: config.settings.engine_options(),
        };
        let r = backup::restore(file, &n.data_dir, &target)?;
        let (index, term) = info
            .regions
            .iter()
            .fold((0, 0), |(i, t), b| (b.index.max(i), b.term.max(t)));
        println!(
            "restored node {} into {}: index {index}, term {term}, {} keys ({} records; backup of cluster {}, {} region{}, crc32 {:08x})",
            n.id,
            n.data_dir.display(),
            r.keys,
            r.records,
            info.cluster_id,
            info.regions.len(),
            if info.regions.len() == 1 { "" } else { "s" },
            info.checksum,
        );
        restored.push(r);
    }
    Ok(restored)
}

/// Restores `file` into a new PD-mode cluster: one store per directory of `dirs`, registered
/// with no PD yet but with ids from the PD cluster at `pd`, which must never have been
/// bootstrapped. `settings` are the stores' (their store file's). Prints one line per store;
/// returns what was restored, in the order of `dirs`.
pub fn run_pd(
    pd: &[String],
    pd_options: rdb_client::Options,
    file: &Path,
    dirs: &[PathBuf],
    settings: &Settings,
) -> Result<Vec<Restored>, ServerError> {
    if dirs.is_empty() {
        return Err(ConfigError::Invalid(
            "--restore with --pd needs a --data-dir for every new store (one per replica)".into(),
        )
        .into());
    }
    for (i, d) in dirs.iter().enumerate() {
        if dirs[..i].contains(d) {
            return Err(
                ConfigError::Invalid(format!("--data-dir {} is given twice", d.display())).into(),
            );
        }
    }
    let contents = backup::verify(file)?;
    for d in dirs {
        backup::check_target(d)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ServerError::Pd(format!("runtime: {e}")))?;
    // The client connects lazily, inside the runtime.
    let _in_runtime = rt.enter();
    let pd = PdClient::with_options(pd.iter().cloned(), pd_options)
        .map_err(|e| ServerError::Pd(format!("client: {e}")))?;
    let pd_error = |what: &str, e: rdb_client::Error| ServerError::Pd(format!("{what}: {e}"));
    let stores = u32::try_from(dirs.len())
        .map_err(|_| ServerError::Pd("too many data directories".into()))?;
    let peers = u32::try_from(contents.regions.len())
        .ok()
        .and_then(|r| r.checked_mul(stores))
        .ok_or_else(|| ServerError::Pd("too many regions for one restore".into()))?;
    let (cluster_id, first_store, first_peer) = rt.block_on(async {
        let cluster_id = pd
            .cluster_id()
            .await
            .map_err(|e| pd_error("GetClusterId", e))?;
        pd.set_cluster_id(cluster_id);
        if pd
            .is_bootstrapped()
            .await
            .map_err(|e| pd_error("IsBootstrapped", e))?
        {
            return Err(already_bootstrapped(cluster_id));
        }
        let first_store = pd
            .alloc_ids(stores)
            .await
            .map_err(|e| pd_error("AllocId", e))?;
        let first_peer = pd
            .alloc_ids(peers)
            .await
            .map_err(|e| pd_error("AllocId", e))?;
        Ok::<_, ServerError>((cluster_id, first_store, first_peer))
    })?;
    let store_ids: Vec<u64> = (0..u64::from(stores)).map(|i| first_store + i).collect();
    let regions = placed_regions(&contents, &store_ids, first_peer);
    let mut staged = Vec::new();
    for (dir, &store_id) in dirs.iter().zip(&store_ids) {
        let target = StoreRestoreTarget {
            ident: StoreIdent {
                cluster_id,
                store_id,
                token: new_token(),
            },
            regions: regions.clone(),
            settings: settings.apply_settings(),
            engine_opts: settings.engine_options(),
        };
        staged.push((
            store_id,
            backup::stage_store(file, &contents, dir, &target)?,
        ));
    }
    // The step that decides: once PD has the regions, the directories go into place.
    let recorded = regions.iter().cloned().map(PdRegion::from).collect();
    rt.block_on(pd.bootstrap_regions(recorded))
        .map_err(|e| match e {
            rdb_client::Error::AlreadyBootstrapped(_) => already_bootstrapped(cluster_id),
            e => pd_error("BootstrapRegions", e),
        })?;
    let mut restored = Vec::new();
    for (store_id, s) in staged {
        let r = s.commit()?;
        println!(
            "restored store {store_id} into {}: {} regions, {} keys ({} records; backup of cluster {}, crc32 {:08x}; new cluster {cluster_id})",
            r.data_dir.display(),
            r.regions.len(),
            r.keys,
            r.records,
            contents.cluster_id,
            contents.checksum,
        );
        restored.push(r);
    }
    Ok(restored)
}

fn already_bootstrapped(cluster_id: u64) -> ServerError {
    ServerError::Pd(format!(
        "PD cluster {cluster_id} is bootstrapped already; a restore needs a new PD cluster \
         (new PD data directories) that no store has joined"
    ))
}

/// The backup's regions in the new cluster: each keeps its id (a region of a node of older
/// versions is region 1), range and epoch, with one voter on each of `stores`, their peer ids
/// counted up from `first_peer`.
fn placed_regions(contents: &BackupContents, stores: &[u64], first_peer: u64) -> Vec<Region> {
    let mut next_peer = first_peer;
    contents
        .regions
        .iter()
        .map(|b| {
            let (start, end) = b.range();
            let (id, epoch) = match &b.region {
                Some(r) => (r.id, r.epoch.unwrap_or_default()),
                None => (
                    backup::RESTORED_REGION,
                    RegionEpoch {
                        version: 1,
                        conf_ver: 1,
                    },
                ),
            };
            let peers = stores
                .iter()
                .map(|&store_id| {
                    next_peer += 1;
                    Peer {
                        id: next_peer - 1,
                        store_id,
                        learner: false,
                    }
                })
                .collect();
            Region {
                id,
                start_key: start.to_vec(),
                end_key: end.to_vec(),
                epoch: Some(epoch),
                peers,
            }
        })
        .collect()
}

/// A store token: random and non-zero, as a new store mints one.
fn new_token() -> u64 {
    loop {
        let t: u64 = rand::random();
        if t != 0 {
            break t;
        }
    }
}
