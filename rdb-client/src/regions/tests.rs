//! [`RegionCache`]: eviction by epoch, lookups at boundaries and open ends, batch grouping and
//! range splitting with gaps.

use super::*;

/// A region `[start, end)` at `version` (conf_ver 1) with peers 10+id on stores 1, 2, 3.
fn region(id: u64, start: &[u8], end: &[u8], version: u64) -> Region {
    Region {
        id,
        start_key: start.to_vec(),
        end_key: end.to_vec(),
        epoch: RegionEpoch {
            version,
            conf_ver: 1,
        },
        peers: (1..=3).map(|s| peer(10 * id + s, s)).collect(),
    }
}

fn peer(id: u64, store_id: u64) -> Peer {
    Peer {
        id,
        store_id,
        learner: false,
    }
}

fn info(region: Region) -> RegionInfo {
    RegionInfo {
        region,
        ..RegionInfo::default()
    }
}

/// A cache holding these regions; panics if one is refused.
fn cache_of(regions: &[Region]) -> RegionCache {
    let cache = RegionCache::new();
    for r in regions {
        assert!(cache.insert(info(r.clone())), "insert {r:?}");
    }
    cache
}

/// The cached (id, start, end) in key order, after checking that no ranges overlap and that
/// the id index agrees.
fn ranges(cache: &RegionCache) -> Vec<Span> {
    let inner = lock(&cache.inner);
    let mut prev_end: Option<&Vec<u8>> = None;
    for (k, c) in &inner.regions {
        assert_eq!(k, &c.region.start_key);
        assert_eq!(inner.ids.get(&c.region.id), Some(k));
        if let Some(e) = prev_end {
            assert!(!e.is_empty() && e <= k, "overlap before {k:?}");
        }
        prev_end = Some(&c.region.end_key);
    }
    assert_eq!(inner.ids.len(), inner.regions.len());
    let r = inner.regions.values();
    r.map(|c| span(c.region.id, &c.region.start_key, &c.region.end_key))
        .collect()
}

/// A region's (or a piece's) id, start and end.
type Span = (u64, Vec<u8>, Vec<u8>);

fn span(id: u64, start: &[u8], end: &[u8]) -> Span {
    (id, start.to_vec(), end.to_vec())
}

fn id_at(cache: &RegionCache, key: &[u8]) -> Option<u64> {
    cache.locate(key).map(|c| c.region.id)
}

#[test]
fn split_evicts_the_parent_and_stale_inserts_are_ignored() {
    let cache = cache_of(&[region(1, b"", b"", 1)]);
    assert_eq!(id_at(&cache, b"\xff"), Some(1));
    // The left half arrives first: the parent goes, leaving a gap on the right.
    assert!(cache.insert(info(region(1, b"", b"m", 2))));
    assert_eq!(ranges(&cache), vec![span(1, b"", b"m")]);
    assert_eq!(id_at(&cache, b"m"), None);
    assert!(cache.insert(info(region(2, b"m", b"", 2))));
    assert_eq!(ranges(&cache), vec![span(1, b"", b"m"), span(2, b"m", b"")]);
    // A late answer from before the split changes nothing.
    assert!(!cache.insert(info(region(1, b"", b"", 1))));
    let mut old_members = region(1, b"", b"m", 2);
    old_members.epoch.conf_ver = 0;
    assert!(!cache.insert(info(old_members)));
    assert_eq!(ranges(&cache).len(), 2);
    assert_eq!(cache.get(1).unwrap().region.epoch.version, 2);
}

#[test]
fn merge_evicts_every_covered_region_and_equal_version_replaces_other_ids() {
    let cache = cache_of(&[
        region(1, b"", b"c", 2),
        region(2, b"c", b"m", 2),
        region(3, b"m", b"", 2),
    ]);
    assert!(cache.insert(info(region(2, b"b", b"n", 3))));
    assert_eq!(ranges(&cache), vec![span(2, b"b", b"n")]);
    // Same version, another id: PD's latest answer wins.
    assert!(cache.insert(info(region(4, b"a", b"c", 3))));
    assert_eq!(ranges(&cache), vec![span(4, b"a", b"c")]);
    // Touching but not overlapping ranges stay.
    assert!(cache.insert(info(region(5, b"c", b"", 1))));
    assert!(cache.insert(info(region(6, b"", b"a", 1))));
    assert_eq!(cache.len(), 3);
    // Empty ranges are refused.
    assert!(!cache.insert(info(region(7, b"x", b"x", 9))));
    assert!(!cache.insert(info(region(7, b"y", b"x", 9))));
    assert_eq!(ranges(&cache).len(), 3);
}

#[test]
fn locate_at_boundaries_and_open_ends() {
    let cache = cache_of(&[
        region(1, b"", b"a", 1),
        region(2, b"a", b"\xff", 1),
        region(3, b"\xff", b"", 1),
    ]);
    assert_eq!(id_at(&cache, b""), Some(1));
    assert_eq!(id_at(&cache, b"\x00"), Some(1));
    assert_eq!(id_at(&cache, b"a"), Some(2));
    assert_eq!(id_at(&cache, b"\xfe\xff\xff"), Some(2));
    assert_eq!(id_at(&cache, b"\xff"), Some(3));
    assert_eq!(id_at(&cache, b"\xff\xff\xff"), Some(3));

    let gaps = cache_of(&[region(1, b"a", b"c", 1)]);
    assert_eq!(id_at(&gaps, b""), None);
    assert_eq!(id_at(&gaps, b"a"), Some(1));
    assert_eq!(id_at(&gaps, b"b\xff"), Some(1));
    assert_eq!(id_at(&gaps, b"c"), None);
    assert!(RegionCache::new().locate(b"").is_none());
}

#[test]
fn leaders_follow_hints_and_survive_refreshes_without_one() {
    let cache = cache_of(&[region(1, b"", b"m", 1), region(2, b"m", b"", 1)]);
    assert!(!cache.update_leader(9, peer(91, 1)));
    assert!(cache.update_leader(1, peer(12, 2)));
    assert_eq!(cache.locate(b"a").unwrap().leader, Some(peer(12, 2)));
    // A hint that names only the store.
    assert!(cache.update_leader(1, peer(0, 3)));
    assert_eq!(cache.get(1).unwrap().leader, Some(peer(13, 3)));
    // PD's answer without a leader keeps the known one; with one, it wins.
    assert!(cache.insert(info(region(1, b"", b"m", 1))));
    assert_eq!(cache.get(1).unwrap().leader.map(|p| p.id), Some(13));
    let mut with_leader = info(region(1, b"", b"m", 1));
    with_leader.leader = Some(peer(11, 1));
    assert!(cache.insert(with_leader));
    assert_eq!(cache.get(1).unwrap().leader.map(|p| p.id), Some(11));
    // The leader left the peers: not kept.
    let mut moved = region(1, b"", b"m", 1);
    moved.epoch.conf_ver = 2;
    moved.peers.retain(|p| p.id != 11);
    assert!(cache.insert(info(moved)));
    assert_eq!(cache.get(1).unwrap().leader, None);
    // A leader the cache does not know as a peer: the peers are stale.
    assert!(!cache.update_leader(2, peer(24, 4)));
    assert_eq!(cache.get(2), None);
    assert!(cache.invalidate(1));
    assert!(!cache.invalidate(1));
    assert!(cache.is_empty());
}

#[test]
fn epoch_not_match_replaces_the_sent_region() {
    let parent = region(1, b"", b"", 1);
    let cache = cache_of(std::slice::from_ref(&parent));
    assert!(cache.update_leader(1, peer(11, 1)));
    let halves = vec![region(1, b"", b"m", 2), region(2, b"m", b"", 2)];
    cache.on_epoch_not_match(&parent, halves.clone());
    assert_eq!(ranges(&cache), vec![span(1, b"", b"m"), span(2, b"m", b"")]);
    assert_eq!(cache.get(1).unwrap().leader.map(|p| p.id), Some(11));
    // A late answer to an older request keeps the newer region.
    cache.on_epoch_not_match(&parent, vec![]);
    assert_eq!(cache.len(), 2);
    // No current regions: the sent one goes, and the caller asks PD.
    cache.on_epoch_not_match(&halves[1], vec![]);
    assert_eq!(ranges(&cache), vec![span(1, b"", b"m")]);
}

#[test]
fn group_keys_keeps_positions_and_reports_missing_keys() {
    let cache = cache_of(&[region(1, b"", b"m", 2), region(2, b"m", b"", 2)]);
    let keys: Vec<&[u8]> = vec![b"z", b"a", b"m", b"", b"z", b"\xff", b"l\xff"];
    let groups = cache.group_keys(&keys).unwrap();
    let got = groups.iter().map(|(c, i)| (c.region.id, i.clone()));
    assert_eq!(
        got.collect::<Vec<_>>(),
        vec![(1, vec![1, 3, 6]), (2, vec![0, 2, 4, 5])]
    );
    for (c, idx) in &groups {
        assert!(idx.iter().all(|&i| c.contains(keys[i])));
    }
    assert_eq!(cache.group_keys::<&[u8]>(&[]), Ok(vec![]));

    let gappy = cache_of(&[region(1, b"b", b"m", 2)]);
    let missing = vec![b"\xff".to_vec(), b"".to_vec(), b"m".to_vec()];
    let keys: [&[u8]; 5] = [b"c", b"\xff", b"", b"\xff", b"m"];
    assert_eq!(gappy.group_keys(&keys), Err(missing));
}

/// `split_range` as (id, start, end) pieces and the gap.
fn pieces(cache: &RegionCache, start: &[u8], end: &[u8]) -> (Vec<Span>, Option<Vec<u8>>) {
    let (parts, gap) = cache.split_range(start, end);
    let parts = parts
        .iter()
        .map(|p| span(p.region.region.id, &p.start, &p.end));
    (parts.collect(), gap)
}

#[test]
fn split_range_cuts_at_region_ends_and_stops_at_gaps() {
    let cache = cache_of(&[
        region(1, b"", b"c", 1),
        region(2, b"c", b"m", 1),
        region(3, b"m", b"", 1),
    ]);
    let all = vec![span(1, b"", b"c"), span(2, b"c", b"m"), span(3, b"m", b"")];
    assert_eq!(pieces(&cache, b"", b""), (all, None));
    // Inside one region; ending exactly at a boundary makes no empty piece after it.
    let d_e = vec![span(2, b"d", b"e")];
    assert_eq!(pieces(&cache, b"d", b"e"), (d_e, None));
    let a_m = vec![span(1, b"a", b"c"), span(2, b"c", b"m")];
    assert_eq!(pieces(&cache, b"a", b"m"), (a_m, None));
    let ff = vec![span(3, b"\xff", b"")];
    assert_eq!(pieces(&cache, b"\xff", b""), (ff, None));
    let x_ff = vec![span(3, b"x", b"\xff")];
    assert_eq!(pieces(&cache, b"x", b"\xff"), (x_ff, None));
    assert_eq!(pieces(&cache, b"x", b"x"), (vec![], None));
    assert_eq!(pieces(&cache, b"y", b"x"), (vec![], None));

    let gappy = cache_of(&[region(1, b"", b"c", 1), region(2, b"f", b"", 1)]);
    let a_c = vec![span(1, b"a", b"c")];
    assert_eq!(pieces(&gappy, b"a", b""), (a_c, Some(b"c".to_vec())));
    assert_eq!(pieces(&gappy, b"d", b"z"), (vec![], Some(b"d".to_vec())));
    // A gap at or past the end does not matter.
    assert_eq!(pieces(&gappy, b"", b"c").1, None);
    assert_eq!(pieces(&gappy, b"g", b""), (vec![span(2, b"g", b"")], None));
}

#[test]
fn store_addresses() {
    let cache = RegionCache::new();
    assert_eq!(cache.store_address(1), None);
    cache.set_store(1, "10.0.0.1:2379");
    cache.set_store(1, "10.0.0.9:2379");
    assert_eq!(cache.store_address(1).as_deref(), Some("10.0.0.9:2379"));
    assert_eq!(cache.store_address(2), None);
}

#[test]
fn concurrent_splits_leave_no_overlap() {
    let cache = cache_of(&[region(1, b"", b"", 1)]);
    // Each thread splits off every [k, k+1) at a version of its own; the newest must win.
    std::thread::scope(|s| {
        for version in 2..10 {
            let cache = &cache;
            s.spawn(move || {
                for k in 0u8..50 {
                    cache.insert(info(region(100 + u64::from(k), &[k], &[k + 1], version)));
                    cache.split_range(b"", b"");
                }
            });
        }
    });
    assert_eq!(ranges(&cache).len(), 50);
    assert!((100..150).all(|id| cache.get(id).unwrap().region.epoch.version == 9));
}
