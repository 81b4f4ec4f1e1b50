//! Where the service meets the scheduler (see [`crate::schedule`]): the store views the
//! replica checker reads, the operator for a region's heartbeat answer (a new peer's id from
//! the allocator), and the tombstone of a store whose removal drained it.

use super::*;

impl PdService {
    /// The replica checker's view of every store (see [`crate::schedule`]): gone when
    /// tombstoned or silent for longer than `max_store_down`, up when heard lately.
    pub(super) fn store_views(&self) -> Vec<crate::schedule::StoreView> {
        let stores = self.read(|s| {
            s.stores
                .values()
                .map(|st| {
                    let regions = s
                        .regions
                        .values()
                        .filter(|r| r.peers.iter().any(|p| p.store_id == st.id))
                        .count();
                    (st.id, st.state, regions)
                })
                .collect::<Vec<_>>()
        });
        let b = lock(&self.beats);
        stores
            .into_iter()
            .map(|(id, state, regions)| {
                // A store being removed is gone for placement: its peers move away.
                let tombstone =
                    state == StoreState::Tombstone as i32 || state == StoreState::Offline as i32;
                let silent = b
                    .stores
                    .get(&id)
                    .copied()
                    .or(b.since)
                    .map_or(Duration::ZERO, |t| t.elapsed());
                crate::schedule::StoreView {
                    id,
                    gone: tombstone || silent > self.max_store_down,
                    up: !tombstone && silent <= self.store_down_after,
                    regions,
                }
            })
            .collect()
    }

    /// Tombstones every store being removed (Offline) that PD's region map names no replica
    /// on any more: its drain is over. A failure is retried at the next heartbeat.
    pub(super) async fn tombstone_drained(&self) {
        let drained: Vec<u64> = self.read(|s| {
            s.stores
                .values()
                .filter(|st| st.state == StoreState::Offline as i32)
                .filter(|st| s.replicas_on(st.id).is_none())
                .map(|st| st.id)
                .collect()
        });
        for id in drained {
            let op = Op::SetStoreState(SetStoreStateRequest {
                store_id: id,
                state: StoreState::Tombstone as i32,
            });
            if let Ok((None, _)) = self.change(op).await {
                slog::info!(self.logger, "store drained and tombstoned"; "store" => id);
            }
        }
    }

    /// The next scheduling step for `region`, led by `leader`, as an operator for the answer
    /// to its heartbeat. A new peer's id comes from the allocator; a failure to allocate asks
    /// nothing this time (the next heartbeat asks again).
    pub(super) async fn operator_for(&self, region: &Region, leader: &Peer) -> Option<Operator> {
        use crate::schedule::Step;
        use rdb_proto::pd::operator::Kind;
        let replicas = self.read(|s| s.replicas) as usize;
        let step = crate::schedule::replica_step(region, leader.id, &self.store_views(), replicas)?;
        let peer_of = |id: u64| region.peers.iter().find(|p| p.id == id).copied();
        let (kind, peer, reason) = match step {
            Step::AddLearner { store, reason } => {
                let id = match self.change(Op::AllocId(AllocIdRequest { count: 1 })).await {
                    Ok((None, PdOutput::Ids { first })) => first,
                    _ => return None,
                };
                let peer = Peer {
                    id,
                    store_id: store,
                    learner: true,
                };
                (Kind::AddLearner, peer, reason)
            }
            Step::Promote { peer, reason } => (Kind::Promote, peer_of(peer)?, reason),
            Step::TransferLeader { peer, reason } => (Kind::TransferLeader, peer_of(peer)?, reason),
            Step::Remove { peer, reason } => (Kind::Remove, peer_of(peer)?, reason),
        };
        let conf_ver = region.epoch.map_or(0, |e| e.conf_ver);
        slog::info!(self.logger, "operator"; "region" => region.id, "kind" => kind.as_str_name(),
            "peer" => peer.id, "store" => peer.store_id, "conf_ver" => conf_ver,
            "reason" => &reason);
        crate::metrics::metrics()
            .operators
            .with_label_values(&[kind.as_str_name()])
            .inc();
        Some(Operator {
            kind: kind as i32,
            peer: Some(peer),
            conf_ver,
            reason,
        })
    }
}
