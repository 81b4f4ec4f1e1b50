//! PD mode: a region's membership and leadership, changed through the region's own log.
//!
//! Every call goes to the region's leader, found like any request for the region's start key
//! (a split never moves it): leader hints, epoch changes and store moves are followed within
//! the client's deadline. A new peer's id comes from PD's id allocator; it is placed on a
//! store with no peer of the region, first as a learner, then promoted once it caught up (the
//! leader refuses a promotion before it holds 90% of the log).

use rdb_proto::kv::{
    MemberChangeRequest, MemberChangeStep, MemberChangeType, MemberListRequest, MergeRegionRequest,
    RegionContext, TransferLeaderRequest,
};
use tokio::time::Instant;

use crate::members::member_of;
use crate::pd::RegionInfo;
use crate::route::{Outcome, Progress, Route};
use crate::routing::pd_call;
use crate::{Client, Error, MemberInfo, Result};

/// One step of a change of a region's peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionMemberChange {
    /// Add peer `id` on store `store_id` as a learner (it receives the log, does not vote).
    AddLearner {
        /// The new peer's id (from PD's id allocator).
        id: u64,
        /// The store to host it: one with no peer of the region.
        store_id: u64,
    },
    /// Add peer `id` on store `store_id` as a voter at once.
    AddVoter {
        /// The new peer's id (from PD's id allocator).
        id: u64,
        /// The store to host it.
        store_id: u64,
    },
    /// Make learner `id` a voter (refused while it is far behind).
    Promote(u64),
    /// Remove peer `id` (a leader hands over first); its store drops its copy.
    Remove(u64),
}

impl RegionMemberChange {
    fn to_pb(self) -> MemberChangeStep {
        let (ty, id, store_id) = match self {
            RegionMemberChange::AddLearner { id, store_id } => {
                (MemberChangeType::AddLearner, id, store_id)
            }
            RegionMemberChange::AddVoter { id, store_id } => {
                (MemberChangeType::AddVoter, id, store_id)
            }
            RegionMemberChange::Promote(id) => (MemberChangeType::Promote, id, 0),
            RegionMemberChange::Remove(id) => (MemberChangeType::Remove, id, 0),
        };
        MemberChangeStep {
            r#type: ty as i32,
            id,
            store_id,
            ..Default::default()
        }
    }
}

/// A region's peers as its leader sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionMembers {
    /// The region.
    pub region_id: u64,
    /// Its leader's peer id.
    pub leader_id: u64,
    /// The leader's commit index (what a learner's progress is judged by).
    pub commit_index: u64,
    /// Its peers: id, store, role and progress.
    pub members: Vec<MemberInfo>,
}

impl Client {
    /// PD mode: region `region_id`'s peers, as its leader sees them.
    pub async fn region_members(&self, region_id: u64) -> Result<RegionMembers> {
        let deadline = self.deadline();
        let info = self.region_info(region_id, deadline).await?;
        self.region_call(info, false, deadline, |mut c, ctx| async move {
            let region_id = ctx.map_or(0, |c| c.region_id);
            let r = c
                .member_list(MemberListRequest {
                    local: false,
                    region_id,
                })
                .await?
                .into_inner();
            let members = RegionMembers {
                region_id,
                leader_id: r.leader_id,
                commit_index: r.commit_index,
                members: r.members.into_iter().map(member_of).collect(),
            };
            Ok((members, r.error))
        })
        .await
    }

    /// PD mode: changes region `region_id`'s peers through its leader's log; returns them once
    /// the change applied there. A change found already in effect after an unknown outcome
    /// succeeds, so retrying is safe.
    pub async fn change_region_members(
        &self,
        region_id: u64,
        changes: &[RegionMemberChange],
    ) -> Result<Vec<MemberInfo>> {
        let deadline = self.deadline();
        let info = self.region_info(region_id, deadline).await?;
        let steps: Vec<MemberChangeStep> = changes.iter().map(|c| c.to_pb()).collect();
        let r = self
            .region_call(info, true, deadline, |mut c, ctx| {
                let changes = steps.clone();
                async move {
                    let region_id = ctx.map_or(0, |c| c.region_id);
                    let r = c
                        .member_change(MemberChangeRequest { changes, region_id })
                        .await?
                        .into_inner();
                    Ok((r.members, r.error))
                }
            })
            .await;
        match r {
            Ok(members) => Ok(members.into_iter().map(member_of).collect()),
            Err(e) if Instant::now() >= deadline => Err(e),
            Err(e) => match self.region_members(region_id).await {
                Ok(now) if changes.iter().all(|c| holds_in(c, &now.members)) => Ok(now.members),
                _ => Err(e),
            },
        }
    }

    /// PD mode: hands region `region_id`'s leadership to its peer `to`, and returns once that
    /// peer leads (or fails at the deadline).
    pub async fn transfer_region_leader(&self, region_id: u64, to: u64) -> Result<()> {
        let deadline = self.deadline();
        loop {
            let info = self.region_info(region_id, deadline).await?;
            if !info.region.peers.iter().any(|p| p.id == to) {
                return Err(Error::InvalidArgument(format!(
                    "region {region_id} has no peer {to}"
                )));
            }
            let now = self.region_members(region_id).await?;
            if now.leader_id == to {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "peer {to} of region {region_id} did not take over before the deadline"
                )));
            }
            self.region_call(info, false, deadline, move |mut c, ctx| async move {
                let region_id = ctx.map_or(0, |c| c.region_id);
                let r = c
                    .transfer_leader(TransferLeaderRequest { to, region_id })
                    .await?
                    .into_inner();
                Ok(((), r.error))
            })
            .await?;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// PD mode: merges region `source` into the adjacent region `target` (specs/017-merge),
    /// asking the source's leader; returns once the source prepared the merge (the stores
    /// finish it by themselves). Refused with `InvalidArgument` when the two regions do not
    /// fit (not adjacent, peers on different stores, the source merging already).
    pub async fn merge_regions(&self, source: u64, target: u64) -> Result<()> {
        let deadline = self.deadline();
        let info = self.region_info(source, deadline).await?;
        self.region_call(info, true, deadline, move |mut c, _| async move {
            let r = c
                .merge_region(MergeRegionRequest {
                    source_id: source,
                    target_id: target,
                })
                .await?
                .into_inner();
            Ok(((), r.error))
        })
        .await
    }

    /// What PD knows of region `region_id`.
    async fn region_info(&self, region_id: u64, deadline: Instant) -> Result<RegionInfo> {
        let Some(routing) = &self.inner.routing else {
            return Err(Error::Unsupported(
                "a region's members are changed through PD: pass --pd (Client::with_pd)".into(),
            ));
        };
        pd_call(deadline, routing.pd.get_region_by_id(region_id))
            .await?
            .ok_or_else(|| Error::NotFound(format!("PD knows no region {region_id}")))
    }

    /// Runs `f` at the leader of the region `info` names, routed by its start key.
    async fn region_call<T, F, Fut>(
        &self,
        info: RegionInfo,
        write: bool,
        deadline: Instant,
        f: F,
    ) -> Result<T>
    where
        F: Fn(
            rdb_proto::kv::kv_client::KvClient<tonic::transport::Channel>,
            Option<RegionContext>,
        ) -> Fut,
        Fut: std::future::Future<
            Output = std::result::Result<(T, Option<rdb_proto::kv::Error>), tonic::Status>,
        >,
    {
        let region_id = info.region.id;
        let start = info.region.start_key.clone();
        if let Some(routing) = &self.inner.routing {
            routing.cache.insert(info);
        }
        let keys = [start.as_slice()];
        let route = Route::Region {
            keys: &keys,
            any_peer: false,
        };
        match self
            .run(write, deadline, route, &mut Progress::default(), f)
            .await?
        {
            Outcome::Done(v) => Ok(v),
            Outcome::Regroup => Err(Error::Unavailable(format!(
                "region {region_id} changed while it was asked; ask again"
            ))),
        }
    }
}

/// Whether change `c` is in effect among `members`.
fn holds_in(c: &RegionMemberChange, members: &[MemberInfo]) -> bool {
    let role = |id: u64| members.iter().find(|m| m.id == id).map(|m| m.role);
    match *c {
        RegionMemberChange::AddVoter { id, .. } | RegionMemberChange::Promote(id) => {
            role(id) == Some(crate::MemberRole::Voter)
        }
        RegionMemberChange::AddLearner { id, .. } => role(id).is_some(),
        RegionMemberChange::Remove(id) => role(id).is_none(),
    }
}
