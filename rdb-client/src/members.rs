//! Membership: list the members, add, promote and remove them (the `MemberList` and
//! `MemberChange` calls).

use tokio::time::Instant;

use rdb_proto::kv::{
    Member, MemberChangeRequest, MemberChangeStep, MemberChangeType, MemberListRequest, MemberRole,
};

use crate::{Client, Error, Result};

/// Whether a member votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Counts towards quorums and can lead.
    Voter,
    /// Receives the log but does not vote.
    Learner,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Raft id.
    pub id: u64,
    /// Where peers reach it.
    pub peer_addr: String,
    /// Where clients reach it.
    pub client_addr: String,
    /// Voter or learner.
    pub role: Role,
    /// The highest log index the leader knows it holds (the leader's commit index for itself).
    pub match_index: u64,
    /// PD mode: the store hosting this peer of the region (0 for a config-file node).
    pub store_id: u64,
}

/// The members as the leader sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberList {
    /// The cluster.
    pub cluster_id: u64,
    /// The leader that answered.
    pub leader_id: u64,
    /// The leader's commit index.
    pub commit_index: u64,
    /// Every voter and learner, voters first, by id.
    pub members: Vec<MemberInfo>,
    /// The cluster's shared settings (TOML), which a joining node adopts.
    pub settings_toml: String,
}

impl MemberList {
    /// The member with `id`, if any.
    pub fn get(&self, id: u64) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.id == id)
    }
}

/// One step of a membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// Add a new node as a voter.
    AddVoter {
        /// Its id (never used before in this cluster).
        id: u64,
        /// Where peers reach it.
        peer_addr: String,
        /// Where clients reach it.
        client_addr: String,
    },
    /// Add a new node as a learner.
    AddLearner {
        /// Its id (never used before in this cluster).
        id: u64,
        /// Where peers reach it.
        peer_addr: String,
        /// Where clients reach it.
        client_addr: String,
    },
    /// Make a learner a voter (refused while it is far behind).
    Promote(u64),
    /// Remove a voter or a learner for good.
    Remove(u64),
}

impl MemberChange {
    fn to_pb(&self) -> MemberChangeStep {
        let (ty, id, peer, client) = match self {
            MemberChange::AddVoter {
                id,
                peer_addr,
                client_addr,
            } => (MemberChangeType::AddVoter, *id, peer_addr, client_addr),
            MemberChange::AddLearner {
                id,
                peer_addr,
                client_addr,
            } => (MemberChangeType::AddLearner, *id, peer_addr, client_addr),
            MemberChange::Promote(id) => (
                MemberChangeType::Promote,
                *id,
                &String::new(),
                &String::new(),
            ),
            MemberChange::Remove(id) => (
                MemberChangeType::Remove,
                *id,
                &String::new(),
                &String::new(),
            ),
        };
        MemberChangeStep {
            r#type: ty as i32,
            id,
            peer_addr: peer.clone(),
            client_addr: client.clone(),
            store_id: 0,
        }
    }

    /// Whether the change is in effect in `list`.
    fn holds_in(&self, list: &MemberList) -> bool {
        match self {
            MemberChange::AddVoter { id, .. } | MemberChange::Promote(id) => {
                list.get(*id).is_some_and(|m| m.role == Role::Voter)
            }
            MemberChange::AddLearner { id, .. } => list.get(*id).is_some(),
            MemberChange::Remove(id) => list.get(*id).is_none(),
        }
    }
}

pub(crate) fn member_of(m: Member) -> MemberInfo {
    MemberInfo {
        id: m.id,
        peer_addr: m.peer_addr,
        client_addr: m.client_addr,
        role: if m.role == MemberRole::Learner as i32 {
            Role::Learner
        } else {
            Role::Voter
        },
        match_index: m.match_index,
        store_id: m.store_id,
    }
}

impl Client {
    /// The members, as the leader sees them (following `NotLeader` hints like a read).
    pub async fn member_list(&self) -> Result<MemberList> {
        self.member_list_from(false).await
    }

    /// The members as the node the client reaches applied them, leader or not (no progress
    /// figures unless it leads): for checking what each node believes.
    pub async fn member_list_local(&self) -> Result<MemberList> {
        self.member_list_from(true).await
    }

    async fn member_list_from(&self, local: bool) -> Result<MemberList> {
        self.member_list_until(local, self.deadline()).await
    }

    async fn member_list_until(&self, local: bool, deadline: Instant) -> Result<MemberList> {
        self.call_until(false, deadline, |mut c| async move {
            let r = c
                .member_list(MemberListRequest {
                    local,
                    region_id: 0,
                })
                .await?
                .into_inner();
            let list = MemberList {
                cluster_id: r.cluster_id,
                leader_id: r.leader_id,
                commit_index: r.commit_index,
                members: r.members.into_iter().map(member_of).collect(),
                settings_toml: r.settings_toml,
            };
            Ok((list, r.error))
        })
        .await
        .and_then(|list| {
            // A group always has a member: none means a PD-mode store answered.
            if list.members.is_empty() {
                return Err(Error::Unsupported(
                    "the node answered with no members: it is a store of a PD-mode cluster, \
                     where each region has its own members; PD lists the stores and regions"
                        .into(),
                ));
            }
            Ok(list)
        })
    }

    /// Changes the membership through the leader's log and returns the new members once the
    /// change applied there. Several steps touching voters run as joint consensus.
    ///
    /// Retried like a write. A change found already in effect succeeds, so retrying after an
    /// `Indeterminate` (or re-running a script) is safe.
    pub async fn change_members(&self, changes: &[MemberChange]) -> Result<Vec<MemberInfo>> {
        let deadline = self.deadline();
        let req = MemberChangeRequest {
            changes: changes.iter().map(MemberChange::to_pb).collect(),
            region_id: 0,
        };
        let r = self
            .call_until(true, deadline, |mut c| {
                let req = req.clone();
                async move {
                    let r = c.member_change(req).await?.into_inner();
                    Ok((r.members, r.error))
                }
            })
            .await;
        match r {
            Ok(members) => Ok(members.into_iter().map(member_of).collect()),
            // Whether the change took effect after all is checked within the same deadline, so
            // a failing change never takes longer than one deadline to say so. With no time
            // left, the outcome stays the error (unknown, for an indeterminate one).
            Err(e) if Instant::now() >= deadline => Err(e),
            Err(e) => match self.member_list_until(false, deadline).await {
                Ok(list) if changes.iter().all(|c| c.holds_in(&list)) => Ok(list.members),
                _ => Err(e),
            },
        }
    }
}
