//! [`RegionCache`]: the client's copy of the part of PD's region map it has used, so most calls
//! go straight to the right region's leader without asking PD first (specs/009-regions).
//!
//! The cache is pure data: it never calls PD or a store. The caller fills it from PD
//! ([`PdClient::get_region`](crate::PdClient::get_region),
//! [`PdClient::scan_regions`](crate::PdClient::scan_regions)) and corrects it from the errors
//! stores send back (`NotLeader` hints, `EpochNotMatch` with the current regions).
//!
//! Regions are kept by start key in a `BTreeMap`, so finding a key's region is O(log n). The
//! cached ranges never overlap: an insert evicts the overlapping regions it is newer than (by
//! epoch `version`, which splits and merges raise) and is ignored if one is newer than it, so a
//! late answer never brings back a region that was split or merged away. The cache may have
//! gaps; lookups report them so the caller asks PD.
//!
//! A `Mutex` inside makes the cache shareable (`Arc<RegionCache>`); each method takes it once,
//! so a batch ([`RegionCache::group_keys`]) or a range ([`RegionCache::split_range`]) is cut
//! against one consistent view.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Mutex;

use crate::lock;
use crate::pd::{Peer, Region, RegionEpoch, RegionInfo};

/// A cached region and its leader: where a request for one of its keys goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CachedRegion {
    /// The region: range, epoch (sent with each request) and peers.
    pub region: Region,
    /// The peer believed to lead it (from PD or a `NotLeader` hint); `None` if unknown.
    pub leader: Option<Peer>,
}

impl CachedRegion {
    /// Whether `key` is in the region's range `[start_key, end_key)` (empty end: no bound).
    pub fn contains(&self, key: &[u8]) -> bool {
        self.region.start_key.as_slice() <= key && ends_after(&self.region, key)
    }
}

/// One region's piece of a scan range, from [`RegionCache::split_range`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangePart {
    /// The region that holds the piece.
    pub region: CachedRegion,
    /// Inclusive start of the piece: the scan's start or the region's start.
    pub start: Vec<u8>,
    /// Exclusive end of the piece: the region's end or the scan's end; empty for no bound.
    pub end: Vec<u8>,
}

/// Keys of a batch by region, in key order: each region with the positions of its keys in
/// the batch, ascending, to put the answers back in the caller's order.
pub type KeyGroups = Vec<(CachedRegion, Vec<usize>)>;

/// The client's cache of regions and store addresses; see the module docs.
#[derive(Debug, Default)]
pub struct RegionCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Regions by start key; their ranges never overlap.
    regions: BTreeMap<Vec<u8>, CachedRegion>,
    /// Region id to its start key in `regions`.
    ids: HashMap<u64, Vec<u8>>,
    /// Store id to client address.
    stores: HashMap<u64, String>,
}

impl RegionCache {
    /// An empty cache.
    pub fn new() -> RegionCache {
        RegionCache::default()
    }

    /// Adds or replaces a region from PD, evicting the overlapping regions it is newer than.
    ///
    /// Returns false, changing nothing, when the region is stale: an overlapping cached region
    /// has a higher epoch version, or the cached region with the same id a higher version or
    /// conf_ver. At an equal version a region with another id is replaced (PD's latest answer
    /// wins). Also false for an empty range (`end_key <= start_key`). When `info` names no
    /// leader, the cached leader of the same region is kept if it is still one of its peers.
    pub fn insert(&self, info: RegionInfo) -> bool {
        lock(&self.inner).insert(info.region, info.leader)
    }

    /// The region whose range holds `key`; `None` if no cached region does (ask PD).
    pub fn locate(&self, key: &[u8]) -> Option<CachedRegion> {
        lock(&self.inner).locate(key).cloned()
    }

    /// The cached region with this id, if any.
    pub fn get(&self, region_id: u64) -> Option<CachedRegion> {
        let inner = lock(&self.inner);
        inner.regions.get(&inner.start_of(region_id)?).cloned()
    }

    /// Drops a region (its store said it has no such region, or it cannot be reached); returns
    /// whether it was cached.
    pub fn invalidate(&self, region_id: u64) -> bool {
        let mut inner = lock(&self.inner);
        inner.start_of(region_id).is_some_and(|k| inner.remove(&k))
    }

    /// Records the leader a `NotLeader` hint names, matched by peer id (or by store when the
    /// hint's peer id is 0). A leader that is not among the cached peers means the peers are
    /// stale: the region is dropped. Returns whether the leader was recorded.
    pub fn update_leader(&self, region_id: u64, leader: Peer) -> bool {
        let mut inner = lock(&self.inner);
        let Some(k) = inner.start_of(region_id) else {
            return false;
        };
        let Some(cached) = inner.regions.get_mut(&k) else {
            return false;
        };
        let hinted =
            |p: &&Peer| p.id == leader.id || (leader.id == 0 && p.store_id == leader.store_id);
        match cached.region.peers.iter().find(hinted).copied() {
            Some(p) => {
                cached.leader = Some(p);
                true
            }
            None => {
                inner.remove(&k);
                false
            }
        }
    }

    /// Applies an `EpochNotMatch` answer to a request sent with `sent`: caches `current`, the
    /// regions that now cover its range, then drops `sent`'s region unless the cache already
    /// holds a newer epoch of it (so an empty `current` makes the caller ask PD).
    pub fn on_epoch_not_match(&self, sent: &Region, current: Vec<Region>) {
        let mut inner = lock(&self.inner);
        for region in current {
            inner.insert(region, None);
        }
        let Some(k) = inner.start_of(sent.id) else {
            return;
        };
        if !is_stale(sent.epoch, inner.regions[&k].region.epoch, true) {
            inner.remove(&k);
        }
    }

    /// Groups the keys of a batch call by region, keeping each key's position; `Err` with the
    /// keys no cached region holds (each once, in the order given), for the caller to look up.
    pub fn group_keys<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<KeyGroups, Vec<Vec<u8>>> {
        let inner = lock(&self.inner);
        let mut groups: BTreeMap<&[u8], (CachedRegion, Vec<usize>)> = BTreeMap::new();
        let mut missing = Vec::new();
        let mut seen = HashSet::new();
        for (i, key) in keys.iter().enumerate() {
            let key = key.as_ref();
            match inner.locate(key) {
                Some(r) => groups
                    .entry(r.region.start_key.as_slice())
                    .or_insert_with(|| (r.clone(), Vec::new()))
                    .1
                    .push(i),
                None if seen.insert(key) => missing.push(key.to_vec()),
                None => {}
            }
        }
        if missing.is_empty() {
            Ok(groups.into_values().collect())
        } else {
            Err(missing)
        }
    }

    /// Cuts the scan range `[start, end)` (empty `end`: no bound) into per-region pieces in key
    /// order. Stops at the first key no cached region holds and returns it as the gap, for the
    /// caller to fetch from PD and retry from there; `None` when the pieces cover the range.
    pub fn split_range(&self, start: &[u8], end: &[u8]) -> (Vec<RangePart>, Option<Vec<u8>>) {
        let inner = lock(&self.inner);
        let mut parts = Vec::new();
        let mut cur = start.to_vec();
        loop {
            if !end.is_empty() && cur.as_slice() >= end {
                return (parts, None);
            }
            let Some(r) = inner.locate(&cur) else {
                return (parts, Some(cur));
            };
            let region_end = &r.region.end_key;
            let last = region_end.is_empty() || (!end.is_empty() && region_end.as_slice() >= end);
            let piece_end = if last { end } else { region_end.as_slice() };
            parts.push(RangePart {
                region: r.clone(),
                start: std::mem::replace(&mut cur, piece_end.to_vec()),
                end: piece_end.to_vec(),
            });
            if last {
                return (parts, None);
            }
        }
    }

    /// Records a store's client address (from PD), where requests to its peers go.
    pub fn set_store(&self, store_id: u64, address: impl Into<String>) {
        lock(&self.inner).stores.insert(store_id, address.into());
    }

    /// The cached client address of a store; `None` if unknown (ask PD).
    pub fn store_address(&self, store_id: u64) -> Option<String> {
        lock(&self.inner).stores.get(&store_id).cloned()
    }

    /// Number of cached regions.
    pub fn len(&self) -> usize {
        lock(&self.inner).regions.len()
    }

    /// Whether no region is cached.
    pub fn is_empty(&self) -> bool {
        lock(&self.inner).regions.is_empty()
    }
}

/// Whether the region's range ends after `key` (an empty end never ends).
fn ends_after(r: &Region, key: &[u8]) -> bool {
    r.end_key.is_empty() || key < r.end_key.as_slice()
}

/// Whether epoch `new` is older than `cached`: by version alone across regions, and by
/// version or conf_ver within the same region (`same_region`).
fn is_stale(new: RegionEpoch, cached: RegionEpoch, same_region: bool) -> bool {
    new.version < cached.version || (same_region && new.conf_ver < cached.conf_ver)
}

impl Inner {
    /// The start key a cached region is kept under.
    fn start_of(&self, region_id: u64) -> Option<Vec<u8>> {
        self.ids.get(&region_id).cloned()
    }

    fn locate(&self, key: &[u8]) -> Option<&CachedRegion> {
        let upto = (Bound::Unbounded, Bound::Included(key));
        let (_, r) = self.regions.range::<[u8], _>(upto).next_back()?;
        r.contains(key).then_some(r)
    }

    /// Start keys of the cached regions overlapping `[start, end)` (empty `end`: no bound),
    /// last first. Cached ranges are disjoint, so their ends ascend with their starts: walking
    /// back from the last region starting before `end`, they overlap until one ends by `start`.
    fn overlapping(&self, start: &[u8], end: &[u8]) -> Vec<Vec<u8>> {
        let upper = match end {
            [] => Bound::Unbounded,
            _ => Bound::Excluded(end),
        };
        let before_end = self.regions.range::<[u8], _>((Bound::Unbounded, upper));
        let overlaps = before_end
            .rev()
            .take_while(|(_, r)| ends_after(&r.region, start));
        overlaps.map(|(k, _)| k.clone()).collect()
    }

    fn insert(&mut self, region: Region, leader: Option<Peer>) -> bool {
        if !region.end_key.is_empty() && region.end_key <= region.start_key {
            return false;
        }
        let mut conflicts = self.overlapping(&region.start_key, &region.end_key);
        // The same region elsewhere (not possible after a split or merge, but never keep two).
        if let Some(k) = self.start_of(region.id).filter(|k| !conflicts.contains(k)) {
            conflicts.push(k);
        }
        let mut kept_leader = None;
        for k in &conflicts {
            let old = &self.regions[k];
            let same = old.region.id == region.id;
            if is_stale(region.epoch, old.region.epoch, same) {
                return false;
            }
            if same {
                kept_leader = old.leader.filter(|l| region.peers.contains(l));
            }
        }
        for k in &conflicts {
            self.remove(k);
        }
        self.ids.insert(region.id, region.start_key.clone());
        let leader = leader.or(kept_leader);
        self.regions
            .insert(region.start_key.clone(), CachedRegion { region, leader });
        true
    }

    fn remove(&mut self, start: &[u8]) -> bool {
        let Some(r) = self.regions.remove(start) else {
            return false;
        };
        self.ids.remove(&r.region.id);
        true
    }
}

#[cfg(test)]
mod tests;
