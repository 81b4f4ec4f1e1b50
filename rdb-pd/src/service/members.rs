//! PD's own membership: `GetMembers` and `ChangeMembers`, the PD group's counterparts of a
//! config-file cluster's `Kv.MemberList` and `Kv.MemberChange`, on the same node task
//! (`Msg::Members`, `Msg::ChangeMembers`) and with the same checks.

use rdb_proto::kv::{MemberChangeRequest, MemberChangeStep};
use rdb_proto::pd::*;
use rdb_server::raft_core::Membership;
use rdb_server::router::{Msg, RequestError};
use rdb_server::service::members::parse_changes;

use super::{pb_error, PdService, Refusal};
use crate::raft_calls::RAFT_TIMEOUT;

impl PdService {
    /// PD's members as this node applied them, with their addresses and the leader (and, on
    /// the leader, how far each holds the log), plus what a joining PD node adopts.
    pub(super) async fn get_members_inner(&self) -> GetMembersResponse {
        let view = match tokio::time::timeout(
            RAFT_TIMEOUT,
            self.mailbox.call(|tx| Msg::Members { region_id: 0, tx }),
        )
        .await
        {
            Ok(Ok(Ok(v))) => v,
            Ok(Ok(Err(e)) | Err(e)) => {
                return GetMembersResponse::refusal(pb_error(e, &self.config))
            }
            Err(_) => {
                let e = RequestError::Unavailable("the PD node is busy".into());
                return GetMembersResponse::refusal(pb_error(e, &self.config));
            }
        };
        let leads = view.leader_id != 0 && view.leader_id == view.node_id;
        let mut members =
            self.wire_members(&view.membership, leads.then_some(view.progress.as_slice()));
        if leads {
            if let Some(me) = members.iter_mut().find(|m| m.id == view.node_id) {
                me.match_index = view.commit_index;
            }
        }
        let settings = toml::to_string(&self.config.settings)
            .and_then(|s| Ok((s, toml::to_string(&self.settings)?)));
        let (settings_toml, pd_settings_toml) = match settings {
            Ok(s) => s,
            Err(e) => {
                let e = RequestError::Unavailable(format!("cannot encode the settings: {e}"));
                return GetMembersResponse::refusal(pb_error(e, &self.config));
            }
        };
        let removed_ids = self.members.read().removed.iter().copied().collect();
        GetMembersResponse {
            error: None,
            removed_ids,
            leader: members.iter().find(|m| m.id == view.leader_id).cloned(),
            members,
            node_id: view.node_id,
            commit_index: view.commit_index,
            group_id: self.config.cluster_id,
            settings_toml,
            pd_settings_toml,
        }
    }

    /// Changes PD's membership through the leader's log; answered once it applied there.
    pub(super) async fn change_members_inner(
        &self,
        req: ChangeMembersRequest,
    ) -> ChangeMembersResponse {
        // The steps are a config-file cluster's, checked by the same rules.
        let steps = req
            .changes
            .into_iter()
            .map(|c| MemberChangeStep {
                r#type: kv_change_type(c.r#type) as i32,
                id: c.id,
                peer_addr: c.peer_addr,
                client_addr: c.client_addr,
                store_id: 0,
            })
            .collect();
        let parsed = parse_changes(MemberChangeRequest {
            changes: steps,
            region_id: 0,
        });
        let (steps, added) = match parsed {
            Ok(v) => v,
            Err(e) => return ChangeMembersResponse::refusal(pb_error(e, &self.config)),
        };
        let call = self.mailbox.call(|tx| Msg::ChangeMembers {
            region_id: 0,
            steps,
            added,
            tx,
        });
        let r = match tokio::time::timeout(RAFT_TIMEOUT, call).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RequestError::Indeterminate(
                "the membership change did not apply in time; it may still".into(),
            )),
        };
        match r {
            Ok((index, membership)) => ChangeMembersResponse {
                error: None,
                members: self.wire_members(&membership, None),
                index,
            },
            Err(e) => ChangeMembersResponse::refusal(pb_error(e, &self.config)),
        }
    }

    /// The wire form of `m`: voters, then learners, by id, with addresses from the member
    /// directory and, on the leader, each one's match index from `progress`.
    fn wire_members(&self, m: &Membership, progress: Option<&[(u64, u64)]>) -> Vec<Member> {
        let dir = self.members.read();
        let mut voters: Vec<u64> = m.voters.iter().chain(&m.voters_outgoing).copied().collect();
        voters.sort_unstable();
        voters.dedup();
        let roles = voters
            .into_iter()
            .map(|id| (id, false))
            .chain(m.learners.iter().map(|&id| (id, true)));
        roles
            .map(|(id, learner)| {
                let addrs = dir.members.get(&id);
                Member {
                    id,
                    client_addr: addrs.map(|a| a.client_addr.clone()).unwrap_or_default(),
                    peer_addr: addrs.map(|a| a.peer_addr.clone()).unwrap_or_default(),
                    learner,
                    match_index: progress
                        .and_then(|p| p.iter().find(|(p, _)| *p == id))
                        .map_or(0, |&(_, m)| m),
                }
            })
            .collect()
    }
}

/// A PD change type as the config-file cluster's (the same steps, checked alike).
fn kv_change_type(t: i32) -> rdb_proto::kv::MemberChangeType {
    use rdb_proto::kv::MemberChangeType as Kv;
    match MemberChangeType::try_from(t) {
        Ok(MemberChangeType::AddVoter) => Kv::AddVoter,
        Ok(MemberChangeType::AddLearner) => Kv::AddLearner,
        Ok(MemberChangeType::Promote) => Kv::Promote,
        Ok(MemberChangeType::Remove) => Kv::Remove,
        Ok(MemberChangeType::Unspecified) | Err(_) => Kv::Unspecified,
    }
}
