//! `rdb-server --join`: a new node's configuration comes from the running cluster, not a file.
//!
//! The operator first adds the node (`rdb-cli member add ID --peer-addr .. --client-addr ..
//! [--learner]`), then starts it with `--join` and the cluster's client addresses. The node
//! asks the leader for the member list (cluster id, members' addresses, shared settings),
//! checks it was added with the addresses it was started with, and keeps that configuration in
//! its data directory (`join.toml`), so it restarts without asking again. Its data directory
//! starts with no membership: the leader's first snapshot brings the conf state and the data.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdb_proto::kv::kv_client::KvClient;
use rdb_proto::kv::{ErrorCode, MemberListRequest, MemberListResponse};
use slog::{info, Logger};

use crate::config::{ClusterConfig, ConfigError, NodeConfig, NodeId, Settings};
use crate::ServerError;

/// The file in the data directory that keeps a joined node's configuration.
pub const JOIN_FILE: &str = "join.toml";

/// How long a joining node keeps asking the cluster for its member list.
const ASK_FOR: Duration = Duration::from_secs(30);

/// What `rdb-server --join` was given.
#[derive(Debug, Clone)]
pub struct JoinArgs {
    /// Client addresses of the running cluster's nodes.
    pub endpoints: Vec<String>,
    /// This node's id, as it was added.
    pub node_id: NodeId,
    /// Where peers reach this node.
    pub peer_addr: String,
    /// Where clients reach this node.
    pub client_addr: String,
    /// This node's data directory.
    pub data_dir: PathBuf,
    /// Where this node serves metrics, if anywhere.
    pub metrics_addr: Option<String>,
}

/// The configuration of a joining node: the one kept in its data directory, or else the one
/// built from the cluster's member list (and then kept).
pub async fn join_config(a: &JoinArgs, logger: &Logger) -> Result<ClusterConfig, ServerError> {
    let kept = a.data_dir.join(JOIN_FILE);
    if kept.exists() {
        let mut c = ClusterConfig::load(&kept)?;
        c.joining = true;
        c.node(a.node_id)?;
        info!(logger, "joined before: using the kept configuration"; "file" => %kept.display());
        return Ok(c);
    }
    let list = ask_members(&a.endpoints).await?;
    let config = config_from(a, &list)?;
    keep(&a.data_dir, &config)?;
    info!(logger, "joining"; "cluster_id" => config.cluster_id, "leader" => list.leader_id,
        "members" => config.nodes.len());
    Ok(config)
}

/// Builds the configuration from the leader's member list, checking this node is in it with
/// the addresses it was started with.
pub fn config_from(a: &JoinArgs, list: &MemberListResponse) -> Result<ClusterConfig, ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    let ids: Vec<NodeId> = list.members.iter().map(|m| m.id).collect();
    let Some(me) = list.members.iter().find(|m| m.id == a.node_id) else {
        return invalid(format!(
            "node {} is not a member of cluster {} (members: {ids:?}); add it first with \
             `rdb-cli member add {} --peer-addr {} --client-addr {} --learner`",
            a.node_id, list.cluster_id, a.node_id, a.peer_addr, a.client_addr
        ));
    };
    if me.peer_addr != a.peer_addr || me.client_addr != a.client_addr {
        return invalid(format!(
            "node {} was added with peer address {} and client address {}, but started with {} \
             and {}",
            a.node_id, me.peer_addr, me.client_addr, a.peer_addr, a.client_addr
        ));
    }
    let settings: Settings =
        toml::from_str(&list.settings_toml).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("(the cluster's settings)"),
            message: e.message().to_string(),
        })?;
    let nodes = list
        .members
        .iter()
        .map(|m| {
            let mine = m.id == a.node_id;
            NodeConfig {
                id: m.id,
                peer_addr: m.peer_addr.clone(),
                client_addr: m.client_addr.clone(),
                // Only this node's directory is ever opened; the others only need distinct names.
                data_dir: if mine {
                    a.data_dir.clone()
                } else {
                    PathBuf::from(format!("(node {} is not on this machine)", m.id))
                },
                metrics_addr: if mine { a.metrics_addr.clone() } else { None },
            }
        })
        .collect();
    let config = ClusterConfig {
        cluster_id: list.cluster_id,
        nodes,
        settings,
        tls: None,
        peer_tls: None,
        joining: true,
    };
    config.validate()?;
    Ok(config)
}

/// Writes the configuration into the data directory (fsynced, then renamed into place).
fn keep(dir: &Path, config: &ClusterConfig) -> Result<(), ServerError> {
    use std::io::Write;
    let data_dir_error = |e: std::io::Error| ServerError::DataDir {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(data_dir_error)?;
    let text = toml::to_string(config).map_err(|e| ServerError::DataDir {
        dir: dir.to_path_buf(),
        message: format!("cannot encode the joined configuration: {e}"),
    })?;
    let tmp = dir.join(format!("{JOIN_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(data_dir_error)?;
    f.write_all(text.as_bytes()).map_err(data_dir_error)?;
    f.sync_all().map_err(data_dir_error)?;
    std::fs::rename(&tmp, dir.join(JOIN_FILE)).map_err(data_dir_error)?;
    Ok(())
}

/// Asks the cluster's nodes, in turn and following leader hints, for the leader's member list.
async fn ask_members(endpoints: &[String]) -> Result<MemberListResponse, ServerError> {
    let deadline = tokio::time::Instant::now() + ASK_FOR;
    let mut last = String::from("no endpoint given");
    let mut queue: Vec<String> = endpoints.to_vec();
    while tokio::time::Instant::now() < deadline {
        let mut hints = Vec::new();
        for ep in &queue {
            match ask_one(ep).await {
                Ok(r) => match r.error {
                    None => return Ok(r),
                    Some(e) if e.code == ErrorCode::NotLeader as i32 => {
                        if let Some(h) = e.leader.filter(|h| !h.addr.is_empty()) {
                            hints.push(h.addr);
                        }
                        last = format!("{ep}: {}", e.message);
                    }
                    Some(e) => last = format!("{ep}: {}", e.message),
                },
                Err(e) => last = format!("{ep}: {e}"),
            }
        }
        queue = hints.into_iter().chain(endpoints.iter().cloned()).collect();
        queue.dedup();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(ServerError::Config(ConfigError::Invalid(format!(
        "cannot get the member list from the cluster at {endpoints:?} within {}s: {last}",
        ASK_FOR.as_secs()
    ))))
}

async fn ask_one(ep: &str) -> Result<MemberListResponse, String> {
    let call = async {
        let mut c = KvClient::connect(format!("http://{ep}"))
            .await
            .map_err(|e| e.to_string())?;
        c.member_list(MemberListRequest {
            local: false,
            region_id: 0,
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.message().to_string())
    };
    tokio::time::timeout(Duration::from_secs(3), call)
        .await
        .map_err(|_| "no answer in time".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdb_proto::kv::{Member, MemberRole};

    fn args() -> JoinArgs {
        JoinArgs {
            endpoints: vec!["127.0.0.1:1".into()],
            node_id: 4,
            peer_addr: "127.0.0.1:14".into(),
            client_addr: "127.0.0.1:24".into(),
            data_dir: PathBuf::from("/tmp/n4"),
            metrics_addr: None,
        }
    }

    fn list(members: &[(u64, &str, &str)]) -> MemberListResponse {
        MemberListResponse {
            cluster_id: 9,
            leader_id: 1,
            members: members
                .iter()
                .map(|&(id, p, c)| Member {
                    id,
                    peer_addr: p.into(),
                    client_addr: c.into(),
                    role: MemberRole::Voter as i32,
                    match_index: 0,
                    store_id: 0,
                })
                .collect(),
            settings_toml: "tick_interval_ms = 20\n".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_joining_node_takes_the_clusters_settings_and_checks_it_was_added() {
        let a = args();
        let c = config_from(
            &a,
            &list(&[
                (1, "127.0.0.1:11", "127.0.0.1:21"),
                (4, "127.0.0.1:14", "127.0.0.1:24"),
            ]),
        )
        .unwrap();
        assert_eq!(c.cluster_id, 9);
        assert_eq!(c.settings.tick_interval_ms, 20);
        assert!(c.joining);
        assert_eq!(c.node(4).unwrap().data_dir, PathBuf::from("/tmp/n4"));
        // Kept and read back: the same configuration.
        let back = ClusterConfig::parse(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.nodes, c.nodes);
        assert_eq!(back.settings, c.settings);

        let not_added = config_from(&a, &list(&[(1, "127.0.0.1:11", "127.0.0.1:21")]));
        assert!(not_added.unwrap_err().to_string().contains("member add 4"));
        let moved = config_from(&a, &list(&[(4, "127.0.0.1:99", "127.0.0.1:24")]));
        assert!(moved.unwrap_err().to_string().contains("was added with"));
    }
}
