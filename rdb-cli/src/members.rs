//! `rdb-cli member ...`: the cluster's membership (or, with `--pd`, PD's members).

use clap::Subcommand;
use rdb_client::{Client, MemberChange, MemberInfo, MemberList, MemberRole};
use serde_json::json;

use crate::output::{header, print_table, Printer};

/// `rdb-cli member ...`.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum MemberCmd {
    /// The members with their role and how far each has the log (PD's nodes with --pd).
    List,
    /// Add node ID (an id never used in this cluster) as a voter, or with --learner as a
    /// learner; then start it with `rdb-server --join`.
    Add {
        /// The new node's id.
        id: u64,
        /// Where the other nodes reach it (HOST:PORT).
        #[arg(long)]
        peer_addr: String,
        /// Where clients reach it (HOST:PORT).
        #[arg(long)]
        client_addr: String,
        /// Add it as a learner (it receives the log but does not vote); promote it later.
        #[arg(long)]
        learner: bool,
    },
    /// Make learner ID a voter; refused while it holds less than 90% of the leader's log.
    Promote {
        /// The learner.
        id: u64,
    },
    /// Remove node ID for good (a leader hands leadership over first). Its id is never
    /// accepted again, and the node stops serving.
    Remove {
        /// The node.
        id: u64,
    },
    /// Replace voter OLD by learner NEW in one joint-consensus change: NEW becomes a voter and
    /// OLD leaves at once, so the number of voters never changes.
    Replace {
        /// The voter that leaves.
        old: u64,
        /// The learner that takes its vote.
        new: u64,
    },
}

/// Runs a membership command against the cluster; returns the exit code.
pub async fn run(client: &Client, cmd: MemberCmd, p: &Printer) -> u8 {
    let changes = match cmd {
        MemberCmd::List => {
            return match client.member_list().await {
                Ok(list) => print_list(p, &list),
                Err(e) => crate::fail(&e),
            }
        }
        MemberCmd::Add {
            id,
            peer_addr,
            client_addr,
            learner,
        } => vec![if learner {
            MemberChange::AddLearner {
                id,
                peer_addr,
                client_addr,
            }
        } else {
            MemberChange::AddVoter {
                id,
                peer_addr,
                client_addr,
            }
        }],
        MemberCmd::Promote { id } => vec![MemberChange::Promote(id)],
        MemberCmd::Remove { id } => vec![MemberChange::Remove(id)],
        MemberCmd::Replace { old, new } => {
            vec![MemberChange::Promote(new), MemberChange::Remove(old)]
        }
    };
    match client.change_members(&changes).await {
        Ok(members) => print_members(p, &members, None),
        Err(e) => crate::fail(&e),
    }
}

fn role_name(r: MemberRole) -> &'static str {
    match r {
        MemberRole::Voter => "voter",
        MemberRole::Learner => "learner",
    }
}

fn print_list(p: &Printer, list: &MemberList) -> u8 {
    print_members(p, &list.members, Some(list))
}

fn print_members(p: &Printer, members: &[MemberInfo], list: Option<&MemberList>) -> u8 {
    let leader = list.map(|l| l.leader_id);
    if p.is_json() {
        let rows: Vec<_> = members
            .iter()
            .map(|m| {
                json!({"id": m.id, "role": role_name(m.role), "peer_addr": m.peer_addr,
                       "client_addr": m.client_addr, "match_index": m.match_index,
                       "leader": Some(m.id) == leader})
            })
            .collect();
        let doc = match list {
            Some(l) => json!({"cluster_id": l.cluster_id, "leader_id": l.leader_id,
                              "commit_index": l.commit_index, "members": rows}),
            None => json!({"members": rows}),
        };
        outln!("{doc}");
        return 0;
    }
    let mut rows = vec![header(&[
        "ID",
        "ROLE",
        "CLIENT_ADDR",
        "PEER_ADDR",
        "MATCH",
        "LAG",
    ])];
    for m in members {
        let role = if Some(m.id) == leader {
            "voter (leader)"
        } else {
            role_name(m.role)
        };
        let (matched, lag) = match list {
            Some(l) => (
                m.match_index.to_string(),
                l.commit_index.saturating_sub(m.match_index).to_string(),
            ),
            None => ("-".into(), "-".into()),
        };
        rows.push(vec![
            m.id.to_string(),
            role.into(),
            m.client_addr.clone(),
            m.peer_addr.clone(),
            matched,
            lag,
        ]);
    }
    print_table(&rows);
    0
}
