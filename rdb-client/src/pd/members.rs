//! PD's own membership as the client sees it: reading the members (and learning their
//! addresses as endpoints) and changing them.

use rdb_proto::pd as pb;
use tokio::time::Instant;

use super::{Member, Members, PdClient};
use crate::Result;

impl PdClient {
    /// The PD nodes (PD's live membership, as the answering node applied it) and which one
    /// leads. Their client addresses join the endpoints this client tries, so a client given
    /// an older list of PD nodes also reaches the ones added since.
    pub async fn get_members(&self) -> Result<Members> {
        let members = self.get_members_until(self.deadline()).await?;
        self.learn(&members);
        Ok(members)
    }

    /// PD's members from any node, or from the leader it names when that one answers too
    /// (only the leader knows how far each member holds the log).
    async fn get_members_until(&self, deadline: Instant) -> Result<Members> {
        let m: Members = self
            .call_until(false, deadline, |mut c| async move {
                let r = c.get_members(pb::GetMembersRequest {}).await?.into_inner();
                let error = r.error.clone();
                Ok((Members::from(r), error))
            })
            .await?;
        let Some(leader) = m.leader.clone().filter(|l| l.id != m.node_id) else {
            return Ok(m);
        };
        let Ok(mut c) = self.client_for(&leader.client_addr) else {
            return Ok(m);
        };
        let budget = self
            .inner
            .opts
            .attempt_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(budget, c.get_members(pb::GetMembersRequest {})).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                if r.error.is_none() && r.node_id == leader.id {
                    self.inner.endpoints.set_leader(Some(leader.client_addr));
                    return Ok(Members::from(r));
                }
                Ok(m)
            }
            _ => Ok(m),
        }
    }

    /// Changes PD's own membership (add, promote, remove PD nodes) through the PD leader's log
    /// and returns the members once the change applied there; several steps touching voters
    /// run as joint consensus. Retried like a write; a change found already in effect
    /// succeeds, so retrying after an `Indeterminate` is safe.
    pub async fn change_members(&self, changes: &[crate::MemberChange]) -> Result<Members> {
        let deadline = self.deadline();
        let req = pb::ChangeMembersRequest {
            changes: changes.iter().map(pd_change).collect(),
        };
        let r = self
            .call_until(true, deadline, |mut c| {
                let req = req.clone();
                async move {
                    let r = c.change_members(req).await?.into_inner();
                    Ok((r.members, r.error))
                }
            })
            .await;
        let members = match r {
            Ok(members) => Members {
                members: members.into_iter().map(Member::from).collect(),
                ..Default::default()
            },
            // Whether the change took effect after all is checked within the same deadline.
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => match self.get_members_until(deadline).await {
                Ok(m) if m.leader.is_some() && changes.iter().all(|c| m.hold(c)) => m,
                _ => return Err(e),
            },
        };
        self.learn(&members);
        Ok(members)
    }

    /// Adds the client addresses of `members` to the endpoints this client tries.
    fn learn(&self, members: &Members) {
        for m in &members.members {
            if !m.client_addr.is_empty() {
                // Connecting is lazy: this only records the endpoint.
                let _ = self.client_for(&m.client_addr);
            }
        }
    }
}

/// One step of a change of PD's membership on the wire.
fn pd_change(c: &crate::MemberChange) -> pb::MemberChange {
    use crate::MemberChange as C;
    let (ty, id, peer_addr, client_addr) = match c {
        C::AddVoter {
            id,
            peer_addr,
            client_addr,
        } => (pb::MemberChangeType::AddVoter, *id, peer_addr, client_addr),
        C::AddLearner {
            id,
            peer_addr,
            client_addr,
        } => (
            pb::MemberChangeType::AddLearner,
            *id,
            peer_addr,
            client_addr,
        ),
        C::Promote(id) => (
            pb::MemberChangeType::Promote,
            *id,
            &String::new(),
            &String::new(),
        ),
        C::Remove(id) => (
            pb::MemberChangeType::Remove,
            *id,
            &String::new(),
            &String::new(),
        ),
    };
    pb::MemberChange {
        r#type: ty as i32,
        id,
        peer_addr: peer_addr.clone(),
        client_addr: client_addr.clone(),
    }
}
