//! PD's scheduling (specs/015-scheduling). For now the replica checker, which is always on (as
//! TiKV's): a region with a peer on a store that is gone (tombstoned, being removed, or silent
//! for longer than `max_store_down_secs`) or with fewer voters than the cluster's replication factor gets, one
//! heartbeat at a time, a learner on a healthy store that has none of its peers, that learner
//! promoted (the leader's catch-up rule decides when), and then the peer on the gone store
//! removed. Every step is computed again from the region as its leader reports it, so a step
//! already taken is never asked for twice, a lost answer is asked again at the next heartbeat,
//! and a PD leader change loses nothing.

use rdb_proto::pd::Region;

/// What the checker needs to know of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreView {
    /// The store.
    pub id: u64,
    /// Tombstoned, or silent for longer than `max_store_down_secs`: its peers are replaced.
    pub gone: bool,
    /// Heard from lately and not tombstoned: it may take a new peer.
    pub up: bool,
    /// Regions with a peer on it, to spread new peers.
    pub regions: usize,
}

/// The next step of the replica checker for a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Add a learner on this store (PD gives it a new peer id).
    AddLearner {
        /// The store to host it.
        store: u64,
        /// Why.
        reason: String,
    },
    /// Promote this learner (peer id).
    Promote {
        /// The learner.
        peer: u64,
        /// Why.
        reason: String,
    },
    /// Remove this peer (peer id).
    Remove {
        /// The peer.
        peer: u64,
        /// Why.
        reason: String,
    },
    /// Hand the region's leadership to this voter (peer id): its leader is on a store being
    /// removed, and a leader cannot remove itself.
    TransferLeader {
        /// The voter to lead next.
        peer: u64,
        /// Why.
        reason: String,
    },
}

/// The step that brings `region` (led by peer `leader`) toward `replicas` voters on stores that
/// are not gone, if one is needed and possible now.
pub fn replica_step(
    region: &Region,
    leader: u64,
    stores: &[StoreView],
    replicas: usize,
) -> Option<Step> {
    if replicas == 0 {
        return None;
    }
    let view = |id: u64| stores.iter().find(|s| s.id == id);
    // A store PD does not know is not taken for gone: nothing is removed on a guess.
    let gone = |store: u64| view(store).is_some_and(|s| s.gone);
    let voters = region.peers.iter().filter(|p| !p.learner);
    let learners = region.peers.iter().filter(|p| p.learner);
    // A learner on a gone store never catches up: it goes first.
    if let Some(l) = learners.clone().find(|p| gone(p.store_id)) {
        return Some(Step::Remove {
            peer: l.id,
            reason: format!("learner on store {}, which is gone", l.store_id),
        });
    }
    let healthy = voters.clone().filter(|p| !gone(p.store_id)).count();
    if healthy < replicas {
        if let Some(l) = learners.clone().next() {
            return Some(Step::Promote {
                peer: l.id,
                reason: format!("{healthy} healthy voters of {replicas}"),
            });
        }
        let target = stores
            .iter()
            .filter(|s| s.up && !s.gone)
            .filter(|s| !region.peers.iter().any(|p| p.store_id == s.id))
            .min_by_key(|s| (s.regions, s.id))?;
        return Some(Step::AddLearner {
            store: target.id,
            reason: format!("{healthy} healthy voters of {replicas}"),
        });
    }
    // A leader on a store being removed hands over first (a dead store leads nothing).
    if let Some(l) = voters.clone().find(|p| p.id == leader && gone(p.store_id)) {
        let to = voters.clone().find(|p| !gone(p.store_id))?;
        return Some(Step::TransferLeader {
            peer: to.id,
            reason: format!("leader on store {}, which is being removed", l.store_id),
        });
    }
    let dead = voters
        .clone()
        .find(|p| gone(p.store_id) && p.id != leader)?;
    Some(Step::Remove {
        peer: dead.id,
        reason: format!(
            "voter on store {}, which is gone ({healthy} healthy voters)",
            dead.store_id
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdb_proto::pd::Peer;

    fn region(peers: &[(u64, u64, bool)]) -> Region {
        Region {
            id: 1,
            peers: peers
                .iter()
                .map(|&(id, store_id, learner)| Peer {
                    id,
                    store_id,
                    learner,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn stores(gone: &[u64], ids: &[u64]) -> Vec<StoreView> {
        ids.iter()
            .map(|&id| StoreView {
                id,
                gone: gone.contains(&id),
                up: !gone.contains(&id),
                regions: id as usize,
            })
            .collect()
    }

    #[test]
    fn a_region_on_a_gone_store_is_repaired_learner_promote_remove() {
        let s = stores(&[2], &[1, 2, 3, 4, 5]);
        // 1. A learner on the healthy store with the fewest regions and none of the peers.
        let r = region(&[(11, 1, false), (12, 2, false), (13, 3, false)]);
        assert!(matches!(
            replica_step(&r, 11, &s, 3),
            Some(Step::AddLearner { store: 4, .. })
        ));
        // 2. Promoted.
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, true),
        ]);
        assert!(matches!(
            replica_step(&r, 11, &s, 3),
            Some(Step::Promote { peer: 14, .. })
        ));
        // 3. The dead voter removed.
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, false),
        ]);
        assert!(matches!(
            replica_step(&r, 11, &s, 3),
            Some(Step::Remove { peer: 12, .. })
        ));
        // 4. Done.
        let r = region(&[(11, 1, false), (13, 3, false), (14, 4, false)]);
        assert_eq!(replica_step(&r, 11, &s, 3), None);
    }

    #[test]
    fn a_leader_on_a_store_being_removed_hands_over_before_it_is_removed() {
        // Store 1 is being removed (gone for placement) and leads.
        let s = stores(&[1], &[1, 2, 3, 4]);
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, false),
        ]);
        assert!(matches!(
            replica_step(&r, 11, &s, 3),
            Some(Step::TransferLeader { peer: 12, .. })
        ));
        // Once another leads, the peer goes.
        assert!(matches!(
            replica_step(&r, 12, &s, 3),
            Some(Step::Remove { peer: 11, .. })
        ));
    }

    #[test]
    fn nothing_is_asked_that_cannot_be_done_or_is_not_needed() {
        // No healthy store without a peer: wait.
        let s = stores(&[2], &[1, 2, 3]);
        let r = region(&[(11, 1, false), (12, 2, false), (13, 3, false)]);
        assert_eq!(replica_step(&r, 11, &s, 3), None);
        // Healthy: nothing; a store PD does not know is not taken for gone.
        let s = stores(&[], &[1, 3]);
        assert_eq!(replica_step(&r, 11, &s, 3), None);
        // A learner on a gone store goes before anything else.
        let s = stores(&[4], &[1, 2, 3, 4, 5]);
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, true),
        ]);
        assert!(matches!(
            replica_step(&r, 11, &s, 3),
            Some(Step::Remove { peer: 14, .. })
        ));
        // Too few voters with no gone store (a peer removed by hand): one is added.
        let s = stores(&[], &[1, 2, 3]);
        let r = region(&[(11, 1, false), (12, 2, false)]);
        assert!(matches!(
            replica_step(&r, 11, &s, 3),
            Some(Step::AddLearner { store: 3, .. })
        ));
    }
}
