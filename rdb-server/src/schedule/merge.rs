//! The merge checker (as TiKV's): a region whose size and keys are both under `[pd]`
//! thresholds merges into its right neighbour when that one is small too and both are whole on
//! the same stores. Only right neighbours: every adjacent pair is the left one's to propose,
//! and the last region is only ever a target. Merged, two small regions stay well under the
//! split thresholds, so a merge is never split again at once.

use super::{Kind, Plan, Step, StoreView};
use rdb_proto::pd::Region;

/// When regions are small enough to merge (`[pd]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeRules {
    /// At most this many bytes each (0: merge is off).
    pub max_size: u64,
    /// At most this many keys each.
    pub max_keys: u64,
}

/// The voters' stores of a whole region (`replicas` voters on up stores, no learner), sorted.
fn whole_on(region: &Region, stores: &[StoreView], replicas: usize) -> Option<Vec<u64>> {
    let up = |id: u64| stores.iter().any(|s| s.id == id && s.up && !s.gone);
    if region.peers.len() != replicas || region.peers.iter().any(|p| p.learner || !up(p.store_id)) {
        return None;
    }
    let mut on: Vec<u64> = region.peers.iter().map(|p| p.store_id).collect();
    on.sort_unstable();
    Some(on)
}

/// A plan merging `region` (`stats`: bytes and keys) into `next`, its right neighbour, if both
/// are small and whole on the same stores.
pub fn merge_plan(
    region: &Region,
    stats: (u64, u64),
    next: &Region,
    next_stats: (u64, u64),
    stores: &[StoreView],
    replicas: usize,
    rules: MergeRules,
) -> Option<Plan> {
    let small = |(size, keys): (u64, u64)| size <= rules.max_size && keys <= rules.max_keys;
    if rules.max_size == 0
        || region.end_key.is_empty()
        || next.start_key != region.end_key
        || !small(stats)
        || !small(next_stats)
    {
        return None;
    }
    let on = whole_on(region, stores, replicas)?;
    if whole_on(next, stores, replicas)? != on {
        return None;
    }
    Some(Plan {
        kind: Kind::Merge,
        steps: vec![Step::Merge { target: next.id }],
        reason: format!(
            "regions {} ({} keys, {} bytes) and {} ({} keys, {} bytes) are small",
            region.id, stats.1, stats.0, next.id, next_stats.1, next_stats.0
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{stores, voters};
    use super::*;

    const RULES: MergeRules = MergeRules {
        max_size: 20 << 20,
        max_keys: 200_000,
    };

    /// Region `id` over `[start, end)` with voters `id * 10 + store` on `stores`.
    fn region(id: u64, start: &str, end: &str, stores: &[u64]) -> Region {
        Region {
            start_key: start.into(),
            end_key: end.into(),
            ..voters(id, stores)
        }
    }

    #[test]
    fn two_small_neighbours_on_the_same_stores_merge_into_the_right_one() {
        let s = stores(4);
        let a = region(1, "", "m", &[1, 2, 3]);
        let b = region(2, "m", "", &[3, 2, 1]);
        let p = merge_plan(&a, (100, 10), &b, (100, 10), &s, 3, RULES).expect("a merge");
        assert_eq!(p.steps, vec![Step::Merge { target: 2 }]);
        assert_eq!(p.kind, Kind::Merge);
    }

    #[test]
    fn nothing_merges_that_is_big_apart_elsewhere_or_not_whole() {
        let s = stores(4);
        let a = region(1, "", "m", &[1, 2, 3]);
        let b = region(2, "m", "", &[1, 2, 3]);
        // Too many keys, too many bytes, merge off.
        assert_eq!(
            merge_plan(&a, (100, 300_000), &b, (1, 1), &s, 3, RULES),
            None
        );
        assert_eq!(
            merge_plan(&a, (1, 1), &b, (30 << 20, 1), &s, 3, RULES),
            None
        );
        let off = MergeRules {
            max_size: 0,
            ..RULES
        };
        assert_eq!(merge_plan(&a, (1, 1), &b, (1, 1), &s, 3, off), None);
        // Not adjacent; the last region has no right neighbour.
        let c = region(3, "n", "", &[1, 2, 3]);
        assert_eq!(merge_plan(&a, (1, 1), &c, (1, 1), &s, 3, RULES), None);
        assert_eq!(merge_plan(&b, (1, 1), &a, (1, 1), &s, 3, RULES), None);
        // Other stores; a learner; a store down.
        let d = region(2, "m", "", &[1, 2, 4]);
        assert_eq!(merge_plan(&a, (1, 1), &d, (1, 1), &s, 3, RULES), None);
        let mut e = b.clone();
        e.peers[0].learner = true;
        assert_eq!(merge_plan(&a, (1, 1), &e, (1, 1), &s, 3, RULES), None);
        let mut down = stores(4);
        down[1].up = false;
        assert_eq!(merge_plan(&a, (1, 1), &b, (1, 1), &down, 3, RULES), None);
    }
}
