//! The replica checker, always on (as TiKV's): a region with a peer on a store that is gone
//! (tombstoned, being removed, or silent for longer than `max_store_down_secs`), or with fewer
//! voters than the cluster's replication factor, gets a learner on a healthy store that has
//! none of its peers (the best isolated by labels, then the one with the fewest regions), that
//! learner promoted (the leader's catch-up rule decides when), and then the peer on the gone
//! store removed. A learner on a store that is not up goes first (it cannot catch up). Once a
//! region's membership has settled (no change for a while: an operator's own moves are not
//! undone halfway), extra voters and learners nobody promotes are removed too.

use super::{closeness, Kind, Plan, Step, StoreView, NEW_PEER};
use rdb_proto::pd::{Peer, Region};

/// The replica checker's plan for `region`, led by peer `leader`, toward `replicas` voters on
/// stores that are not gone, if one is needed and possible now. `settled`: the region's
/// membership has not changed for a while, so extra peers are not an operator's work halfway.
pub fn replica_plan(
    region: &Region,
    leader: u64,
    stores: &[StoreView],
    replicas: usize,
    settled: bool,
) -> Option<Plan> {
    if replicas == 0 {
        return None;
    }
    let view = |id: u64| stores.iter().find(|s| s.id == id);
    // A store PD does not know is not taken for gone: nothing is removed on a guess.
    let gone = |store: u64| view(store).is_some_and(|s| s.gone);
    let up = |store: u64| view(store).is_some_and(|s| s.up);
    let voters: Vec<&Peer> = region.peers.iter().filter(|p| !p.learner).collect();
    let learners: Vec<&Peer> = region.peers.iter().filter(|p| p.learner).collect();
    let plan = |steps: Vec<Step>, reason: String| {
        Some(Plan {
            kind: Kind::Replica,
            steps,
            reason,
        })
    };
    // A learner on a store that is not up never catches up: it goes first.
    if let Some(l) = learners.iter().find(|p| !up(p.store_id)) {
        let why = if gone(l.store_id) { "gone" } else { "down" };
        return plan(
            vec![Step::Remove { peer: l.id }],
            format!("learner on store {}, which is {why}", l.store_id),
        );
    }
    let healthy = voters.iter().filter(|p| !gone(p.store_id)).count();
    let leader_store = region
        .peers
        .iter()
        .find(|p| p.id == leader)
        .map_or(0, |p| p.store_id);
    let dead = voters.iter().find(|p| gone(p.store_id));
    // The voter that leads next when the leader's peer goes: healthy, on an up store, leading
    // the fewest regions.
    let heir = |not: u64| {
        voters
            .iter()
            .filter(|p| p.id != not && !gone(p.store_id) && up(p.store_id))
            .min_by_key(|p| (view(p.store_id).map_or(0, |s| s.leaders), p.id))
            .map(|p| p.id)
    };
    // Removing `peer`, handing leadership over first if it leads.
    let remove = |peer: &Peer, steps: &mut Vec<Step>| -> Option<()> {
        if peer.id == leader {
            steps.push(Step::TransferLeader {
                peer: heir(peer.id)?,
            });
        }
        steps.push(Step::Remove { peer: peer.id });
        Some(())
    };
    if healthy < replicas {
        let reason = format!("{healthy} healthy voters of {replicas}");
        let mut steps = Vec::new();
        if let Some(l) = learners.first() {
            steps.push(Step::Promote { peer: l.id });
        } else {
            let except = dead.map_or(0, |d| d.store_id);
            // A snapshot goes from the leader's store to the new peer's: both within limits.
            if !view(leader_store).is_some_and(|s| s.can_send) {
                return None;
            }
            let target = stores
                .iter()
                .filter(|s| s.up && !s.gone && s.room)
                .filter(|s| !region.peers.iter().any(|p| p.store_id == s.id))
                .min_by_key(|s| (closeness(region, stores, s.id, except), s.regions, s.id))?;
            steps.push(Step::AddLearner {
                store: target.id,
                peer: NEW_PEER,
            });
            steps.push(Step::Promote { peer: NEW_PEER });
        }
        if let Some(d) = dead {
            // Its leadership can also go to the new voter, once promoted.
            if d.id == leader && heir(d.id).is_none() {
                let to = match steps.last() {
                    Some(Step::Promote { peer }) => *peer,
                    _ => return plan(steps, reason),
                };
                steps.push(Step::TransferLeader { peer: to });
                steps.push(Step::Remove { peer: d.id });
            } else if remove(d, &mut steps).is_none() {
                return plan(steps, reason);
            }
        }
        return plan(steps, reason);
    }
    if let Some(d) = dead {
        let mut steps = Vec::new();
        remove(d, &mut steps)?;
        let why = if d.id == leader { "leader" } else { "voter" };
        return plan(
            steps,
            format!(
                "{why} on store {}, which is gone ({healthy} healthy voters)",
                d.store_id
            ),
        );
    }
    if !settled {
        return None;
    }
    if voters.len() > replicas {
        // The worst placed voter goes: the least isolated, then on the busiest store.
        let worst = voters.iter().max_by_key(|p| {
            let s = view(p.store_id);
            (
                closeness(region, stores, p.store_id, 0),
                p.id != leader,
                s.map_or(0, |s| s.regions),
                p.store_id,
            )
        })?;
        let mut steps = Vec::new();
        remove(worst, &mut steps)?;
        return plan(steps, format!("{} voters, {replicas} wanted", voters.len()));
    }
    let l = learners.first()?;
    plan(
        vec![Step::Remove { peer: l.id }],
        format!(
            "learner on store {} that no operator promotes ({} voters)",
            l.store_id,
            voters.len()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{self, store};
    use super::*;

    /// Region 1 with `peers` as (peer id, store, learner).
    fn region(peers: &[(u64, u64, bool)]) -> Region {
        fixtures::region(1, peers)
    }

    /// Stores `ids`, those in `gone` gone (and not up), each holding as many regions as its id.
    fn stores(gone: &[u64], ids: &[u64]) -> Vec<StoreView> {
        ids.iter()
            .map(|&id| StoreView {
                gone: gone.contains(&id),
                up: !gone.contains(&id),
                regions: id as usize,
                ..store(id)
            })
            .collect()
    }

    fn steps(p: Option<Plan>) -> Vec<Step> {
        p.map(|p| p.steps).unwrap_or_default()
    }

    #[test]
    fn a_region_on_a_gone_store_is_repaired_learner_promote_remove() {
        let s = stores(&[2], &[1, 2, 3, 4, 5]);
        // A learner on the healthy store with the fewest regions and none of the peers,
        // promoted, then the dead voter removed.
        let r = region(&[(11, 1, false), (12, 2, false), (13, 3, false)]);
        assert_eq!(
            steps(replica_plan(&r, 11, &s, 3, false)),
            vec![
                Step::AddLearner {
                    store: 4,
                    peer: NEW_PEER
                },
                Step::Promote { peer: NEW_PEER },
                Step::Remove { peer: 12 }
            ]
        );
        // Picked up halfway (a new PD leader): the learner is promoted, the dead one removed.
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, true),
        ]);
        assert_eq!(
            steps(replica_plan(&r, 11, &s, 3, false)),
            vec![Step::Promote { peer: 14 }, Step::Remove { peer: 12 }]
        );
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, false),
        ]);
        assert_eq!(
            steps(replica_plan(&r, 11, &s, 3, false)),
            vec![Step::Remove { peer: 12 }]
        );
        // Done.
        let r = region(&[(11, 1, false), (13, 3, false), (14, 4, false)]);
        assert_eq!(replica_plan(&r, 11, &s, 3, true), None);
    }

    #[test]
    fn a_leader_on_a_store_being_removed_hands_over_before_it_is_removed() {
        // Store 1 is being removed (gone for placement) and leads; store 3 leads less.
        let mut s = stores(&[1], &[1, 2, 3, 4]);
        s[1].leaders = 5;
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, false),
        ]);
        assert_eq!(
            steps(replica_plan(&r, 11, &s, 3, false)),
            vec![Step::TransferLeader { peer: 13 }, Step::Remove { peer: 11 }]
        );
        // Under-replicated with a leader to move: add, promote, hand over, remove.
        let r = region(&[(11, 1, false), (12, 2, false), (13, 3, false)]);
        assert_eq!(
            steps(replica_plan(&r, 11, &s, 3, false)),
            vec![
                Step::AddLearner {
                    store: 4,
                    peer: NEW_PEER
                },
                Step::Promote { peer: NEW_PEER },
                Step::TransferLeader { peer: 13 },
                Step::Remove { peer: 11 }
            ]
        );
    }

    #[test]
    fn nothing_is_asked_that_cannot_be_done_or_is_not_needed() {
        // No healthy store without a peer: wait.
        let s = stores(&[2], &[1, 2, 3]);
        let r = region(&[(11, 1, false), (12, 2, false), (13, 3, false)]);
        assert_eq!(replica_plan(&r, 11, &s, 3, true), None);
        // Healthy: nothing; a store PD does not know is not taken for gone.
        let s = stores(&[], &[1, 3]);
        assert_eq!(replica_plan(&r, 11, &s, 3, true), None);
        // A learner on a gone store goes before anything else.
        let s = stores(&[4], &[1, 2, 3, 4, 5]);
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, true),
        ]);
        assert_eq!(
            steps(replica_plan(&r, 11, &s, 3, false)),
            vec![Step::Remove { peer: 14 }]
        );
        // Too few voters with no gone store (a peer removed by hand): one is added.
        let s = stores(&[], &[1, 2, 3]);
        let r = region(&[(11, 1, false), (12, 2, false)]);
        assert_eq!(
            steps(replica_plan(&r, 11, &s, 3, false)),
            vec![
                Step::AddLearner {
                    store: 3,
                    peer: NEW_PEER
                },
                Step::Promote { peer: NEW_PEER }
            ]
        );
    }

    #[test]
    fn a_learner_on_a_down_store_is_removed_before_it_is_gone() {
        let mut s = stores(&[], &[1, 2, 3, 4]);
        s[3].up = false; // down, not yet gone
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, true),
        ]);
        assert_eq!(
            steps(replica_plan(&r, 11, &s, 3, false)),
            vec![Step::Remove { peer: 14 }]
        );
    }

    #[test]
    fn extra_peers_are_removed_only_once_the_membership_settled() {
        let s = stores(&[], &[1, 2, 3, 4]);
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, false),
        ]);
        // An operator (or a person) moving a peer: left alone.
        assert_eq!(replica_plan(&r, 11, &s, 3, false), None);
        // Settled: the voter on the busiest store goes, and never the leader when another
        // can go.
        assert_eq!(
            steps(replica_plan(&r, 14, &s, 3, true)),
            vec![Step::Remove { peer: 13 }]
        );
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, true),
        ]);
        assert_eq!(replica_plan(&r, 11, &s, 3, false), None);
        assert_eq!(
            steps(replica_plan(&r, 11, &s, 3, true)),
            vec![Step::Remove { peer: 14 }]
        );
    }

    #[test]
    fn a_new_replica_goes_where_it_shares_the_fewest_labels() {
        // zone, host: stores 1-2 in zone a, 3 in zone b, 4 in zone c (busiest), 5 in zone a,
        // 6 (idle) on store 1's host.
        let labels = [
            ("a", "h1"),
            ("a", "h2"),
            ("b", "h3"),
            ("c", "h4"),
            ("a", "h5"),
            ("a", "h1"),
        ];
        let mut s = stores(&[2], &[1, 2, 3, 4, 5, 6]);
        for (v, (zone, host)) in s.iter_mut().zip(labels) {
            v.labels = vec![zone.into(), host.into()];
        }
        s[3].regions = 100;
        s[5].regions = 0;
        // Peers on 1 (a), 2 (a, gone) and 3 (b): zone c has none, though store 4 is busiest.
        let r = region(&[(11, 1, false), (12, 2, false), (13, 3, false)]);
        assert_eq!(
            steps(replica_plan(&r, 11, &s, 3, false)).first(),
            Some(&Step::AddLearner {
                store: 4,
                peer: NEW_PEER
            })
        );
        // With zone c down, zone a is all that is left: a host of its own is still honoured
        // over the idle store on store 1's host.
        s[3].up = false;
        assert_eq!(
            steps(replica_plan(&r, 11, &s, 3, false)).first(),
            Some(&Step::AddLearner {
                store: 5,
                peer: NEW_PEER
            })
        );
    }
}
