//! The membership calls of the client service: `MemberList` and `MemberChange`.

use rdb_proto::kv::{
    Member, MemberChangeRequest, MemberChangeResponse, MemberChangeType, MemberListRequest,
    MemberListResponse, MemberRole,
};
use rdb_storage::MemberRecord;
use tonic::{Request, Response, Status};

use super::kv::{err, KvService};
use crate::config::NodeId;
use crate::raft_core::{MemberStep, Membership};
use crate::router::{Msg, RequestError};

impl KvService {
    /// The members as this node applied them; unless `local`, only the leader answers (its
    /// view has every member's progress), others point to it.
    pub(crate) async fn member_list_inner(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let req = request.into_inner();
        let (local, region_id) = (req.local, req.region_id);
        let view = match tokio::time::timeout(
            self.timeout(),
            self.mailbox.call(|tx| Msg::Members { region_id, tx }),
        )
        .await
        {
            Ok(Ok(Ok(v))) => v,
            Ok(Ok(Err(e)) | Err(e)) => {
                return err(e, |r: &mut MemberListResponse, e| r.error = Some(e))
            }
            Err(_) => {
                let e = RequestError::Unavailable("node did not answer in time".into());
                return err(e, |r: &mut MemberListResponse, e| r.error = Some(e));
            }
        };
        if !local && view.leader_id != view.node_id {
            // PD mode: a region's leader is named by its store, as for a write.
            let hint = match view.stores.iter().find(|s| s.0 == view.leader_id) {
                Some((peer, store, addr)) if !addr.is_empty() => {
                    Some((*store, addr.clone(), *peer))
                }
                Some(_) => None,
                None => self
                    .members
                    .client_addr(view.leader_id)
                    .map(|addr| (view.leader_id, addr, 0)),
            };
            let e = match hint {
                Some((id, addr, peer_id)) if view.leader_id != 0 => {
                    RequestError::NotLeader(Some(crate::router::LeaderHint { id, addr, peer_id }))
                }
                _ => RequestError::Unavailable("no leader is known".into()),
            };
            return err(e, |r: &mut MemberListResponse, e| r.error = Some(e));
        }
        let settings_toml = toml::to_string(&*self.settings)
            .map_err(|e| Status::internal(format!("cannot encode settings: {e}")))?;
        let mut members = self.members_of(&view.membership, &view.progress, &view.stores);
        if let Some(me) = members.iter_mut().find(|m| m.id == view.node_id) {
            me.match_index = view.commit_index;
        }
        Ok(Response::new(MemberListResponse {
            error: None,
            cluster_id: self.cluster_id,
            leader_id: view.leader_id,
            members,
            node_id: view.node_id,
            commit_index: view.commit_index,
            settings_toml,
        }))
    }

    /// Proposes a membership change on the leader and answers once it applied there.
    pub(crate) async fn member_change_inner(
        &self,
        request: Request<MemberChangeRequest>,
    ) -> Result<Response<MemberChangeResponse>, Status> {
        let deadline = self.deadline(&request);
        let req = request.into_inner();
        let region_id = req.region_id;
        let (steps, added) = match parse_changes(req) {
            Ok(v) => v,
            Err(e) => return err(e, |r: &mut MemberChangeResponse, e| r.error = Some(e)),
        };
        let call = self.mailbox.call(|tx| Msg::ChangeMembers {
            region_id,
            steps,
            added,
            tx,
        });
        let r = match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RequestError::Indeterminate(
                "the membership change did not apply before the deadline".into(),
            )),
        };
        match r {
            Ok((index, membership)) => {
                // A region's peers are named by their stores, which its meta holds.
                let stores = match self.mailbox.call(|tx| Msg::Members { region_id, tx }).await {
                    Ok(Ok(view)) => view.stores,
                    _ => Vec::new(),
                };
                Ok(Response::new(MemberChangeResponse {
                    error: None,
                    members: self.members_of(&membership, &[], &stores),
                    index,
                }))
            }
            Err(e) => err(e, |r: &mut MemberChangeResponse, e| r.error = Some(e)),
        }
    }

    /// The wire form of a membership, with addresses from the member directory (PD mode: the
    /// store of each peer, from `stores`, and its client address).
    fn members_of(
        &self,
        m: &Membership,
        progress: &[(NodeId, u64)],
        stores: &[(u64, u64, String)],
    ) -> Vec<Member> {
        let dir = self.members.read();
        let mut voters: Vec<NodeId> = m.voters.iter().chain(&m.voters_outgoing).copied().collect();
        voters.sort_unstable();
        voters.dedup();
        let roles = voters
            .into_iter()
            .map(|id| (id, MemberRole::Voter))
            .chain(m.learners.iter().map(|&id| (id, MemberRole::Learner)));
        roles
            .map(|(id, role)| {
                let addrs = dir.members.get(&id);
                let store = stores.iter().find(|s| s.0 == id);
                Member {
                    id,
                    peer_addr: addrs.map(|a| a.peer_addr.clone()).unwrap_or_default(),
                    client_addr: match store {
                        Some((_, _, addr)) => addr.clone(),
                        None => addrs.map(|a| a.client_addr.clone()).unwrap_or_default(),
                    },
                    store_id: store.map_or(0, |s| s.1),
                    role: role as i32,
                    match_index: progress
                        .iter()
                        .find(|(p, _)| *p == id)
                        .map_or(0, |&(_, m)| m),
                }
            })
            .collect()
    }
}

/// Validates a change request into core steps and the added peers' records. A peer is added
/// with the store that will host it (a PD-mode region), or with its addresses (a node of a
/// config-file cluster, which is the store of its own id).
pub fn parse_changes(
    req: MemberChangeRequest,
) -> Result<(Vec<MemberStep>, Vec<MemberRecord>), RequestError> {
    let bad = |m: String| Err(RequestError::InvalidArgument(m));
    if req.changes.is_empty() {
        return bad("no membership change given".into());
    }
    let mut steps = Vec::new();
    let mut added = Vec::new();
    for c in req.changes {
        if c.id == 0 {
            return bad("node id 0 is reserved; ids start at 1".into());
        }
        let ty = MemberChangeType::try_from(c.r#type).unwrap_or(MemberChangeType::Unspecified);
        let step = match ty {
            MemberChangeType::AddVoter | MemberChangeType::AddLearner
                if c.store_id != 0 || req.region_id > 1 =>
            {
                if c.store_id == 0 {
                    return bad(format!("peer {}: no store given to host it", c.id));
                }
                added.push(MemberRecord {
                    id: c.id,
                    store_id: c.store_id,
                    ..Default::default()
                });
                if ty == MemberChangeType::AddVoter {
                    MemberStep::AddVoter(c.id)
                } else {
                    MemberStep::AddLearner(c.id)
                }
            }
            MemberChangeType::AddVoter | MemberChangeType::AddLearner => {
                for (what, addr) in [("peer_addr", &c.peer_addr), ("client_addr", &c.client_addr)] {
                    if !looks_like_host_port(addr) {
                        return bad(format!("node {}: {what} '{addr}' is not HOST:PORT", c.id));
                    }
                }
                added.push(MemberRecord {
                    id: c.id,
                    peer_addr: c.peer_addr,
                    client_addr: c.client_addr,
                    removed: false,
                    store_id: 0,
                });
                if ty == MemberChangeType::AddVoter {
                    MemberStep::AddVoter(c.id)
                } else {
                    MemberStep::AddLearner(c.id)
                }
            }
            MemberChangeType::Promote => MemberStep::Promote(c.id),
            MemberChangeType::Remove => MemberStep::Remove(c.id),
            MemberChangeType::Unspecified => {
                return bad(format!("node {}: no change type given", c.id));
            }
        };
        steps.push(step);
    }
    Ok((steps, added))
}

/// `HOST:PORT` with a non-empty host and a numeric port.
fn looks_like_host_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdb_proto::kv::MemberChangeStep;

    fn parse_changes_static(
        req: MemberChangeRequest,
    ) -> Result<(Vec<MemberStep>, Vec<MemberRecord>), RequestError> {
        parse_changes(req)
    }

    #[test]
    fn changes_are_validated_before_they_reach_raft() {
        let step = |ty: MemberChangeType, id, peer: &str| MemberChangeStep {
            r#type: ty as i32,
            id,
            peer_addr: peer.into(),
            client_addr: "127.0.0.1:1".into(),
            store_id: 0,
        };
        let req = |changes| MemberChangeRequest {
            changes,
            region_id: 0,
        };
        assert!(parse_changes_static(req(vec![])).is_err());
        assert!(
            parse_changes_static(req(vec![step(MemberChangeType::AddLearner, 0, "h:1")])).is_err()
        );
        assert!(
            parse_changes_static(req(vec![step(MemberChangeType::AddLearner, 4, "nohost")]))
                .is_err()
        );
        assert!(
            parse_changes_static(req(vec![step(MemberChangeType::Unspecified, 4, "h:1")])).is_err()
        );
        let (steps, added) = parse_changes_static(req(vec![
            step(MemberChangeType::AddLearner, 4, "h:1"),
            step(MemberChangeType::Remove, 3, ""),
        ]))
        .unwrap();
        assert_eq!(
            steps,
            vec![MemberStep::AddLearner(4), MemberStep::Remove(3)]
        );
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].peer_addr, "h:1");
        // A region's new peer names its store instead of addresses.
        let in_region = |store_id| MemberChangeRequest {
            changes: vec![MemberChangeStep {
                r#type: MemberChangeType::AddLearner as i32,
                id: 14,
                store_id,
                ..Default::default()
            }],
            region_id: 7,
        };
        assert!(parse_changes(in_region(0)).is_err());
        let (steps, added) = parse_changes(in_region(4)).unwrap();
        assert_eq!(steps, vec![MemberStep::AddLearner(14)]);
        assert_eq!((added[0].id, added[0].store_id), (14, 4));
    }
}
