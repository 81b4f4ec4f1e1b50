//! Leader and region balance: leadership moves toward stores that lead fewer regions, and
//! peers toward stores that hold fewer regions (or, at counts one apart, fewer bytes), one
//! region per heartbeat, within the stores' snapshot limits. The margins (two regions or
//! leaders apart, or twice the region's size) make each move shrink the gap it closes, so two
//! stores never trade a region back and forth. A move never makes a region less isolated by
//! labels than it was.

use super::{closeness, Kind, Plan, Step, StoreView, NEW_PEER};
use rdb_proto::pd::Region;

/// A region smaller than this is not moved for its size alone (only for counts).
const MIN_SIZE_TO_MOVE: u64 = 1 << 20;

/// Which balancers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    /// Leader balance.
    pub leaders: bool,
    /// Region balance.
    pub regions: bool,
}

/// A balancing plan for `region` (led by peer `leader`, about `size` bytes), if it is whole
/// (`replicas` voters on up stores, no learner) and moving it narrows a gap between stores.
pub fn balance_plan(
    region: &Region,
    leader: u64,
    size: u64,
    stores: &[StoreView],
    replicas: usize,
    balance: Balance,
) -> Option<Plan> {
    let view = |id: u64| stores.iter().find(|s| s.id == id);
    let whole = region.peers.len() == replicas
        && region
            .peers
            .iter()
            .all(|p| !p.learner && view(p.store_id).is_some_and(|s| s.up && !s.gone));
    if !whole {
        return None;
    }
    let leader_peer = region.peers.iter().find(|p| p.id == leader)?;
    let from = view(leader_peer.store_id)?;
    // The voter that leads the fewest regions.
    let heir = |not: u64| {
        region
            .peers
            .iter()
            .filter(|p| p.id != not)
            .filter_map(|p| Some((p, view(p.store_id)?)))
            .min_by_key(|(p, s)| (s.leaders, p.id))
    };
    if balance.leaders {
        if let Some((to, s)) = heir(leader) {
            if from.leaders >= s.leaders + 2 {
                return Some(Plan {
                    kind: Kind::BalanceLeader,
                    steps: vec![Step::TransferLeader { peer: to.id }],
                    reason: format!(
                        "store {} leads {} regions, store {} {}",
                        from.id, from.leaders, s.id, s.leaders
                    ),
                });
            }
        }
    }
    if !balance.regions || !from.can_send {
        return None;
    }
    // From the busiest store the region is on...
    let (peer, source) = region
        .peers
        .iter()
        .filter_map(|p| Some((p, view(p.store_id)?)))
        .max_by_key(|(p, s)| (s.regions, s.size, p.store_id))?;
    // ...to the idlest that has none of its peers, no less isolated than the source.
    let isolation = closeness(region, stores, source.id, source.id);
    let target = stores
        .iter()
        .filter(|s| s.up && !s.gone && s.room)
        .filter(|s| !region.peers.iter().any(|p| p.store_id == s.id))
        .filter(|s| closeness(region, stores, s.id, source.id) <= isolation)
        .min_by_key(|s| (s.regions, s.size, s.id))?;
    let by_count = source.regions >= target.regions + 2;
    let by_size = source.regions > target.regions
        && size >= MIN_SIZE_TO_MOVE
        && source.size > target.size.saturating_add(size.saturating_mul(2));
    if !by_count && !by_size {
        return None;
    }
    let mut steps = vec![
        Step::AddLearner {
            store: target.id,
            peer: NEW_PEER,
        },
        Step::Promote { peer: NEW_PEER },
    ];
    if peer.id == leader {
        let to = heir(leader).map_or(NEW_PEER, |(p, _)| p.id);
        steps.push(Step::TransferLeader { peer: to });
    }
    steps.push(Step::Remove { peer: peer.id });
    let reason = if by_count {
        format!(
            "store {} holds {} regions, store {} {}",
            source.id, source.regions, target.id, target.regions
        )
    } else {
        format!(
            "store {} holds {} bytes, store {} {}",
            source.id, source.size, target.id, target.size
        )
    };
    Some(Plan {
        kind: Kind::BalanceRegion,
        steps,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{store, voters};
    use super::*;

    const BOTH: Balance = Balance {
        leaders: true,
        regions: true,
    };

    /// Region 1 with voters `10 + store` on `stores`.
    fn region(stores: &[u64]) -> Region {
        voters(1, stores)
    }

    /// Stores 1..=n, with (regions, leaders) each.
    fn stores(load: &[(usize, usize)]) -> Vec<StoreView> {
        load.iter()
            .zip(1..)
            .map(|(&(regions, leaders), id)| StoreView {
                regions,
                leaders,
                ..store(id)
            })
            .collect()
    }

    #[test]
    fn a_new_store_takes_regions_from_the_busiest() {
        // Store 4 is new; store 2 holds the most (and leads none here).
        let s = stores(&[(10, 3), (12, 3), (10, 3), (0, 0)]);
        let p = balance_plan(&region(&[1, 2, 3]), 11, 0, &s, 3, BOTH).expect("a move");
        assert_eq!(p.kind, Kind::BalanceRegion);
        assert_eq!(
            p.steps,
            vec![
                Step::AddLearner {
                    store: 4,
                    peer: NEW_PEER
                },
                Step::Promote { peer: NEW_PEER },
                Step::Remove { peer: 12 }
            ]
        );
        // The leader's peer moving: leadership goes to another voter first.
        let p = balance_plan(&region(&[1, 2, 3]), 12, 0, &s, 3, BOTH).expect("a move");
        assert_eq!(
            p.steps[2..],
            [Step::TransferLeader { peer: 11 }, Step::Remove { peer: 12 }]
        );
    }

    #[test]
    fn leadership_moves_to_the_voter_that_leads_least() {
        let s = stores(&[(10, 6), (10, 4), (10, 3)]);
        let p = balance_plan(&region(&[1, 2, 3]), 11, 0, &s, 3, BOTH).expect("a transfer");
        assert_eq!(p.steps, vec![Step::TransferLeader { peer: 13 }]);
        // One apart is balanced.
        let s = stores(&[(10, 4), (10, 4), (10, 3)]);
        assert_eq!(balance_plan(&region(&[1, 2, 3]), 11, 0, &s, 3, BOTH), None);
        let off = Balance {
            leaders: false,
            regions: true,
        };
        let s = stores(&[(10, 6), (10, 4), (10, 3)]);
        assert_eq!(balance_plan(&region(&[1, 2, 3]), 11, 0, &s, 3, off), None);
    }

    #[test]
    fn nothing_moves_when_balanced_limited_or_not_whole() {
        let s = stores(&[(10, 3), (11, 3), (10, 3), (10, 3)]);
        assert_eq!(balance_plan(&region(&[1, 2, 3]), 11, 0, &s, 3, BOTH), None);
        // The target has no room for another snapshot.
        let mut s = stores(&[(10, 3), (12, 3), (10, 3), (0, 0)]);
        s[3].room = false;
        assert_eq!(balance_plan(&region(&[1, 2, 3]), 11, 0, &s, 3, BOTH), None);
        // The leader's store sends too many already.
        let mut s = stores(&[(10, 3), (12, 3), (10, 3), (0, 0)]);
        s[0].can_send = false;
        assert_eq!(balance_plan(&region(&[1, 2, 3]), 11, 0, &s, 3, BOTH), None);
        // A region the replica checker is working on is left to it.
        let s = stores(&[(10, 3), (12, 3), (10, 3), (0, 0), (0, 0)]);
        assert_eq!(
            balance_plan(&region(&[1, 2, 3, 5]), 11, 0, &s, 3, BOTH),
            None
        );
    }

    #[test]
    fn bytes_count_when_regions_are_one_apart_and_the_region_is_big_enough() {
        let mb = 1 << 20;
        let mut s = stores(&[(10, 3), (11, 3), (10, 3), (10, 3)]);
        s[1].size = 100 * mb;
        s[3].size = 10 * mb;
        let p = balance_plan(&region(&[1, 2, 3]), 11, 8 * mb, &s, 3, BOTH).expect("a move");
        assert_eq!(
            p.steps[0],
            Step::AddLearner {
                store: 4,
                peer: NEW_PEER
            }
        );
        // A region half the gap or more would only swap which store is bigger.
        assert_eq!(
            balance_plan(&region(&[1, 2, 3]), 11, 50 * mb, &s, 3, BOTH),
            None
        );
        // Tiny regions move only for counts.
        assert_eq!(
            balance_plan(&region(&[1, 2, 3]), 11, 1000, &s, 3, BOTH),
            None
        );
    }

    #[test]
    fn a_move_never_makes_a_region_less_isolated() {
        // Zones: 1 a, 2 b, 3 c, 4 a (idle). Moving store 2's peer to store 4 would put two
        // replicas in zone a.
        let mut s = stores(&[(10, 3), (12, 3), (10, 3), (0, 0)]);
        for (v, zone) in s.iter_mut().zip(["a", "b", "c", "a"]) {
            v.labels = vec![zone.into()];
        }
        assert_eq!(balance_plan(&region(&[1, 2, 3]), 11, 0, &s, 3, BOTH), None);
        s[3].labels = vec!["b".into()];
        assert!(balance_plan(&region(&[1, 2, 3]), 11, 0, &s, 3, BOTH).is_some());
    }
}
