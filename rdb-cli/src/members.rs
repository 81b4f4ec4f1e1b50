//! `rdb-cli member ...`: the cluster's membership (with `--pd`, PD's own members; with `--pd`
//! and `--region`, a region's peers).

use clap::Subcommand;
use rdb_client::{
    Client, MemberChange, MemberInfo, MemberList, MemberRole, PdClient, RegionMemberChange,
    RegionMembers,
};
use serde_json::json;

use crate::output::{header, print_table, Printer};

/// `rdb-cli member ...`.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum MemberCmd {
    /// The members with their role and how far each has the log (PD's nodes with --pd).
    List,
    /// Add node ID (an id never used in this cluster) as a voter, or with --learner as a
    /// learner; then start it with `rdb-server --join` (with --pd: a PD node, started with
    /// `rdb-pd --join`). With --region: add a peer of the region on store --store (its id
    /// from PD unless ID is given).
    Add {
        /// The new node's (or peer's) id.
        id: Option<u64>,
        /// Where the other nodes reach it (HOST:PORT).
        #[arg(long)]
        peer_addr: Option<String>,
        /// Where clients reach it (HOST:PORT).
        #[arg(long)]
        client_addr: Option<String>,
        /// With --region: the store to host the new peer (one with no peer of the region).
        #[arg(long)]
        store: Option<u64>,
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
    if cmd == MemberCmd::List {
        return match client.member_list().await {
            Ok(list) => print_list(p, &list),
            Err(e) => crate::fail(&e),
        };
    }
    let changes = match changes_of(cmd) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.change_members(&changes).await {
        Ok(members) => print_members(p, &members, None),
        Err(e) => crate::fail(&e),
    }
}

/// Runs a membership command on PD's own group (`--pd` without `--region`); returns the exit
/// code. `list` exits 4 when PD has no leader (the nodes listed are then those the answering
/// node applied).
pub async fn run_pd(client: &PdClient, cmd: MemberCmd, p: &Printer) -> u8 {
    if cmd == MemberCmd::List {
        return match client.get_members().await {
            Ok(m) if m.leader.is_none() => {
                p.members(&m);
                eprintln!(
                    "rdb-cli: unavailable: PD has no leader (the nodes listed are the members \
                     the answering node knows; fewer than a majority of them may be up)"
                );
                crate::exit::UNAVAILABLE
            }
            Ok(m) => p.members(&m),
            Err(e) => crate::fail(&e),
        };
    }
    let changes = match changes_of(cmd) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.change_members(&changes).await {
        Ok(members) => p.members(&members),
        Err(e) => crate::fail(&e),
    }
}

/// The steps of a change of a group's own members (a config-file cluster's or PD's), or the
/// exit code of an invalid command.
fn changes_of(cmd: MemberCmd) -> Result<Vec<MemberChange>, u8> {
    Ok(match cmd {
        MemberCmd::List => Vec::new(),
        MemberCmd::Add {
            id: Some(id),
            peer_addr: Some(peer_addr),
            client_addr: Some(client_addr),
            store: None,
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
        MemberCmd::Add { store: Some(_), .. } => {
            return Err(crate::invalid(
                "--store places a peer of a region: give --pd and --region (a node of a \
                 config-file cluster or of PD takes ID, --peer-addr and --client-addr)",
            ))
        }
        MemberCmd::Add { .. } => {
            return Err(crate::invalid(
                "member add takes ID, --peer-addr and --client-addr",
            ))
        }
        MemberCmd::Promote { id } => vec![MemberChange::Promote(id)],
        MemberCmd::Remove { id } => vec![MemberChange::Remove(id)],
        MemberCmd::Replace { old, new } => {
            vec![MemberChange::Promote(new), MemberChange::Remove(old)]
        }
    })
}

/// Runs a membership command on region `region`'s peers through a PD-mode client; returns the
/// exit code.
pub async fn run_region(client: &Client, region: u64, cmd: MemberCmd, p: &Printer) -> u8 {
    let changes = match cmd {
        MemberCmd::List => {
            return match client.region_members(region).await {
                Ok(list) => print_region(p, &list),
                Err(e) => crate::fail(&e),
            }
        }
        MemberCmd::Add {
            id,
            peer_addr: None,
            client_addr: None,
            store: Some(store_id),
            learner,
        } => {
            let id = match id {
                Some(id) => id,
                None => match client.pd().map(|pd| pd.alloc_ids(1)) {
                    Some(alloc) => match alloc.await {
                        Ok(id) => id,
                        Err(e) => return crate::fail(&e),
                    },
                    None => return crate::invalid("a region's new peer needs --pd"),
                },
            };
            vec![if learner {
                RegionMemberChange::AddLearner { id, store_id }
            } else {
                RegionMemberChange::AddVoter { id, store_id }
            }]
        }
        MemberCmd::Add { .. } => {
            return crate::invalid(
                "a region's new peer takes --store (the store to host it) and no addresses",
            )
        }
        MemberCmd::Promote { id } => vec![RegionMemberChange::Promote(id)],
        MemberCmd::Remove { id } => vec![RegionMemberChange::Remove(id)],
        MemberCmd::Replace { old, new } => {
            vec![
                RegionMemberChange::Promote(new),
                RegionMemberChange::Remove(old),
            ]
        }
    };
    match client.change_region_members(region, &changes).await {
        Ok(members) => print_peers(p, region, &members, None),
        Err(e) => crate::fail(&e),
    }
}

/// A region's peers as its leader sees them.
fn print_region(p: &Printer, list: &RegionMembers) -> u8 {
    print_peers(p, list.region_id, &list.members, Some(list))
}

fn print_peers(
    p: &Printer,
    region: u64,
    members: &[MemberInfo],
    list: Option<&RegionMembers>,
) -> u8 {
    let leader = list.map(|l| l.leader_id);
    if p.is_json() {
        let rows: Vec<_> = members
            .iter()
            .map(|m| {
                json!({"id": m.id, "store_id": m.store_id, "role": role_name(m.role),
                       "client_addr": m.client_addr, "match_index": m.match_index,
                       "leader": Some(m.id) == leader})
            })
            .collect();
        let doc = match list {
            Some(l) => json!({"region_id": region, "leader_id": l.leader_id,
                              "commit_index": l.commit_index, "peers": rows}),
            None => json!({"region_id": region, "peers": rows}),
        };
        outln!("{doc}");
        return 0;
    }
    let mut rows = vec![header(&[
        "PEER",
        "STORE",
        "ROLE",
        "CLIENT_ADDR",
        "MATCH",
        "LAG",
    ])];
    for m in members {
        let (role, matched, lag) = role_and_progress(m, leader, list.map(|l| l.commit_index));
        rows.push(vec![
            m.id.to_string(),
            m.store_id.to_string(),
            role,
            m.client_addr.clone(),
            matched,
            lag,
        ]);
    }
    print_table(&rows);
    0
}

/// A member's role as a table shows it (the leader marked), and its match index and lag behind
/// `commit` (the answering leader's commit index; `-` without one).
fn role_and_progress(
    m: &MemberInfo,
    leader: Option<u64>,
    commit: Option<u64>,
) -> (String, String, String) {
    let role = if Some(m.id) == leader {
        "voter (leader)"
    } else {
        role_name(m.role)
    };
    let (matched, lag) = match commit {
        Some(c) => (
            m.match_index.to_string(),
            c.saturating_sub(m.match_index).to_string(),
        ),
        None => ("-".into(), "-".into()),
    };
    (role.into(), matched, lag)
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
        let (role, matched, lag) = role_and_progress(m, leader, list.map(|l| l.commit_index));
        rows.push(vec![
            m.id.to_string(),
            role,
            m.client_addr.clone(),
            m.peer_addr.clone(),
            matched,
            lag,
        ]);
    }
    print_table(&rows);
    0
}
