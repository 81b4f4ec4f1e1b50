//! `rdb-pd --join`: a new PD node's configuration comes from the running PD group, not a file.
//!
//! The operator first adds the node (`rdb-cli --pd ADDRS member add ID --peer-addr ..
//! --client-addr .. --learner`), then starts it with `--join` and the group's client addresses.
//! The node asks the leader's `GetMembers` (the group's Raft cluster id, the members' addresses,
//! `[settings]` and `[pd]`), checks it was added with the addresses it was started with, and
//! keeps that configuration in its data directory (`join.toml`), so it restarts without asking
//! again. It starts with no membership: the leader's snapshot brings the conf state, the
//! member records and PD's metadata (rdb-server's `join.rs` has the shared steps).

use rdb_proto::pd::pd_client::PdClient;
use rdb_proto::pd::{ErrorCode, GetMembersRequest, GetMembersResponse};
use rdb_server::join::{
    ask_group, ask_within, keep, Asked, GroupList, JoinArgs, ANSWER_WITHIN, JOIN_FILE,
};
use rdb_server::ServerError;
use slog::{info, Logger};

use crate::config::PdConfig;

/// The configuration of a joining PD node: the one kept in its data directory, or else the
/// one built from the group's member list (and then kept).
pub async fn join_config(a: &JoinArgs, logger: &Logger) -> Result<PdConfig, ServerError> {
    let kept = a.data_dir.join(JOIN_FILE);
    if kept.exists() {
        let c = PdConfig::load_joined(&kept)?;
        c.cluster.node(a.node_id)?;
        info!(logger, "joined before: using the kept configuration"; "file" => %kept.display());
        return Ok(c);
    }
    let answer = ask_group(&a.endpoints, |ep| async move { ask_one(&ep).await }).await?;
    let pd_toml = answer.pd_settings_toml.clone();
    let list = group_list(answer);
    let add = format!("rdb-cli --pd {} member add", a.endpoints.join(","));
    let config = PdConfig::joined(a, &list, &pd_toml, &add)?;
    keep(&a.data_dir, &config.to_toml()?)?;
    info!(logger, "joining the PD group"; "cluster_id" => config.cluster.cluster_id,
        "leader" => list.leader_id, "members" => config.cluster.nodes.len());
    Ok(config)
}

/// Asks one PD node for the members; only the leader's answer is taken (a follower may not
/// have applied the latest change yet).
async fn ask_one(ep: &str) -> Asked<GetMembersResponse> {
    let call = async {
        let mut c = PdClient::connect(format!("http://{ep}"))
            .await
            .map_err(|e| e.to_string())?;
        c.get_members(GetMembersRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_string())
    };
    let r = match ask_within(ANSWER_WITHIN, call).await {
        Ok(r) => r,
        Err(no) => return no,
    };
    if let Some(e) = r.error {
        let leader = e
            .leader
            .filter(|_| e.code == ErrorCode::NotLeader as i32)
            .map(|l| l.client_addr);
        return Asked::Elsewhere {
            why: e.message,
            leader,
        };
    }
    match &r.leader {
        Some(l) if l.id == r.node_id => Asked::List(r),
        Some(l) => Asked::Elsewhere {
            why: format!("PD node {} leads, at {}", l.id, l.client_addr),
            leader: Some(l.client_addr.clone()),
        },
        None => Asked::Elsewhere {
            why: "the PD group has no leader".into(),
            leader: None,
        },
    }
}

/// PD's member list as a joining node reads it.
fn group_list(r: GetMembersResponse) -> GroupList {
    GroupList {
        cluster_id: r.group_id,
        leader_id: r.leader.as_ref().map_or(0, |l| l.id),
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
    use rdb_proto::pd::Member;
    use std::path::PathBuf;

    fn args(dir: &std::path::Path) -> JoinArgs {
        JoinArgs {
            endpoints: vec!["127.0.0.1:1".into()],
            node_id: 4,
            peer_addr: "127.0.0.1:14".into(),
            client_addr: "127.0.0.1:24".into(),
            data_dir: dir.to_path_buf(),
            metrics_addr: None,
        }
    }

    fn member(id: u64) -> Member {
        Member {
            id,
            peer_addr: format!("127.0.0.1:1{id}"),
            client_addr: format!("127.0.0.1:2{id}"),
            ..Default::default()
        }
    }

    #[test]
    fn a_joining_pd_node_takes_the_groups_settings_and_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path());
        // A group of four: 1, 3 and 4 after 2 left; not a size a file may start with.
        let r = GetMembersResponse {
            members: vec![member(1), member(3), member(4), member(5)],
            leader: Some(member(1)),
            node_id: 1,
            group_id: 9,
            settings_toml: "tick_interval_ms = 20\n".into(),
            pd_settings_toml: "tso_window_ms = 500\n".into(),
            ..Default::default()
        };
        let pd_toml = r.pd_settings_toml.clone();
        let c =
            PdConfig::joined(&a, &group_list(r), &pd_toml, "rdb-cli --pd A member add").unwrap();
        assert_eq!(c.cluster.cluster_id, 9);
        assert_eq!(c.cluster.settings.tick_interval_ms, 20);
        assert_eq!(c.pd.tso_window_ms, 500);
        assert!(c.cluster.joining);
        assert_eq!(
            c.cluster.node(4).unwrap().data_dir,
            PathBuf::from(dir.path())
        );
        // Kept and read back: the same configuration.
        keep(dir.path(), &c.to_toml().unwrap()).unwrap();
        let back = PdConfig::load_joined(&dir.path().join(JOIN_FILE)).unwrap();
        assert_eq!(back.cluster, c.cluster);
        assert_eq!(back.pd, c.pd);

        let not_added = GetMembersResponse {
            members: vec![member(1)],
            group_id: 9,
            ..Default::default()
        };
        let e = PdConfig::joined(&a, &group_list(not_added), "", "rdb-cli --pd A member add")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rdb-cli --pd A member add 4"), "{e}");
    }
}
