//! `rdb-server --join`: a new node's configuration comes from the running cluster, not a file.
//!
//! The operator first adds the node (`rdb-cli member add ID --peer-addr .. --client-addr ..
//! [--learner]`), then starts it with `--join` and the cluster's client addresses. The node
//! asks the leader for the member list (cluster id, members' addresses, shared settings),
//! checks it was added with the addresses it was started with, and keeps that configuration in
//! its data directory (`join.toml`), so it restarts without asking again. Its data directory
//! starts with no membership: the leader's first snapshot brings the conf state and the data.
//!
//! `rdb-pd --join` does the same for a PD node (`rdb-pd/src/join.rs`), asking PD's
//! `GetMembers` instead; the pieces here ([`ask_group`], [`config_from`], [`keep`]) serve both.

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

/// How long a joining node waits for one node's answer before it asks the next.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(3);

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

/// What a joining node takes from the running group: its id, its members and its settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupList {
    /// The group's cluster id (peer messages and data directories carry it).
    pub cluster_id: u64,
    /// The node whose view this is (the leader, when one answered).
    pub leader_id: NodeId,
    /// Every member: id, peer address, client address.
    pub members: Vec<(NodeId, String, String)>,
    /// The group's shared `[settings]` as TOML.
    pub settings_toml: String,
}

/// One node's answer to a joining node asking for the member list (`T`).
#[derive(Debug, Clone)]
pub enum Asked<T> {
    /// The leader's list.
    List(T),
    /// Not from this node: why, and the leader's client address when it named one.
    Elsewhere {
        /// The node's refusal or the transport error.
        why: String,
        /// Where to ask instead.
        leader: Option<String>,
    },
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
    let list = ask_group(&a.endpoints, |ep| async move { ask_one(&ep).await }).await?;
    let config = config_from(a, &list, "rdb-cli member add")?;
    let text = toml::to_string(&config).map_err(|e| ServerError::DataDir {
        dir: a.data_dir.clone(),
        message: format!("cannot encode the joined configuration: {e}"),
    })?;
    keep(&a.data_dir, &text)?;
    info!(logger, "joining"; "cluster_id" => config.cluster_id, "leader" => list.leader_id,
        "members" => config.nodes.len());
    Ok(config)
}

/// Builds the configuration from the leader's member list, checking this node is in it with
/// the addresses it was started with. `add_command` is how an operator adds a member (named
/// in the error when this node was not added).
pub fn config_from(
    a: &JoinArgs,
    list: &GroupList,
    add_command: &str,
) -> Result<ClusterConfig, ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    let ids: Vec<String> = list.members.iter().map(|m| m.0.to_string()).collect();
    let Some((_, peer_addr, client_addr)) = list.members.iter().find(|m| m.0 == a.node_id) else {
        return invalid(format!(
            "node {} is not a member of cluster {} (members: {}); add it first with \
             `{add_command} {} --peer-addr {} --client-addr {} --learner`",
            a.node_id,
            list.cluster_id,
            ids.join(", "),
            a.node_id,
            a.peer_addr,
            a.client_addr
        ));
    };
    if *peer_addr != a.peer_addr || *client_addr != a.client_addr {
        return invalid(format!(
            "node {} was added with peer address {peer_addr} and client address {client_addr}, \
             but started with {} and {}",
            a.node_id, a.peer_addr, a.client_addr
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
        .map(|(id, peer_addr, client_addr)| {
            let mine = *id == a.node_id;
            NodeConfig {
                id: *id,
                peer_addr: peer_addr.clone(),
                client_addr: client_addr.clone(),
                // Only this node's directory is ever opened; the others only need distinct names.
                data_dir: if mine {
                    a.data_dir.clone()
                } else {
                    PathBuf::from(format!("(node {id} is not on this machine)"))
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

/// Writes a joined node's configuration `text` into its data directory as [`JOIN_FILE`]
/// (fsynced, then renamed into place).
pub fn keep(dir: &Path, text: &str) -> Result<(), ServerError> {
    use std::io::Write;
    let data_dir_error = |e: std::io::Error| ServerError::DataDir {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(data_dir_error)?;
    let tmp = dir.join(format!("{JOIN_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(data_dir_error)?;
    f.write_all(text.as_bytes()).map_err(data_dir_error)?;
    f.sync_all().map_err(data_dir_error)?;
    std::fs::rename(&tmp, dir.join(JOIN_FILE)).map_err(data_dir_error)?;
    Ok(())
}

/// Asks the group's nodes at `endpoints` (client addresses), in turn and following leader
/// hints, for the leader's member list, with `ask` (one node's answer), for up to 30 s.
pub async fn ask_group<T, F, Fut>(endpoints: &[String], ask: F) -> Result<T, ServerError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Asked<T>>,
{
    let deadline = tokio::time::Instant::now() + ASK_FOR;
    let mut last = String::from("no endpoint given");
    let mut queue: Vec<String> = endpoints.to_vec();
    while tokio::time::Instant::now() < deadline {
        let mut hints = Vec::new();
        for ep in &queue {
            match ask(ep.clone()).await {
                Asked::List(list) => return Ok(list),
                Asked::Elsewhere { why, leader } => {
                    hints.extend(leader.filter(|h| !h.is_empty()));
                    last = format!("{ep}: {why}");
                }
            }
        }
        queue = hints.into_iter().chain(endpoints.iter().cloned()).collect();
        queue.dedup();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(ServerError::Config(ConfigError::Invalid(format!(
        "cannot get the member list from the cluster at {} within {}s: {last}",
        endpoints.join(","),
        ASK_FOR.as_secs()
    ))))
}

/// Waits up to `deadline` for `call`, one node's answer (or why there is none): the answer,
/// or else the transport error or the lack of an answer in time as an [`Asked::Elsewhere`]
/// that names no leader, so the caller asks the next node.
pub async fn ask_within<R, T, Fut>(deadline: Duration, call: Fut) -> Result<R, Asked<T>>
where
    Fut: std::future::Future<Output = Result<R, String>>,
{
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(why)) => Err(Asked::Elsewhere { why, leader: None }),
        Err(_) => Err(Asked::Elsewhere {
            why: "no answer in time".into(),
            leader: None,
        }),
    }
}

/// Asks one node of a config-file cluster for the leader's member list.
async fn ask_one(ep: &str) -> Asked<GroupList> {
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
    let answer = match ask_within(ANSWER_WITHIN, call).await {
        Ok(r) => r,
        Err(no) => return no,
    };
    match answer.error {
        None => Asked::List(group_list(answer)),
        Some(e) => Asked::Elsewhere {
            leader: e
                .leader
                .filter(|_| e.code == ErrorCode::NotLeader as i32)
                .map(|h| h.addr),
            why: e.message,
        },
    }
}

/// A config-file cluster's member list as a joining node reads it.
fn group_list(r: MemberListResponse) -> GroupList {
    GroupList {
        cluster_id: r.cluster_id,
        leader_id: r.leader_id,
        members: r
            .members
            .into_iter()
            .map(|m| (m.id, m.peer_addr, m.client_addr))
            .collect(),
        settings_toml: r.settings_toml,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdb_proto::kv::{Member, MemberRole};

    const ADD: &str = "rdb-cli member add";

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

    fn list(members: &[(u64, &str, &str)]) -> GroupList {
        group_list(MemberListResponse {
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
        })
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
            ADD,
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

        let not_added = config_from(&a, &list(&[(1, "127.0.0.1:11", "127.0.0.1:21")]), ADD);
        assert!(not_added.unwrap_err().to_string().contains("member add 4"));
        let moved = config_from(&a, &list(&[(4, "127.0.0.1:99", "127.0.0.1:24")]), ADD);
        assert!(moved.unwrap_err().to_string().contains("was added with"));
    }
}
