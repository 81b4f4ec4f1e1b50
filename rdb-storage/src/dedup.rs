//! Expiring dedup records without writing anything for it.
//!
//! A dedup record (`s` + client id + seq -> index + result) counts for `dedup_window` log
//! entries after the one that wrote it, decided by log index alone (see
//! [`crate::StateMachine`]). Once the applied index passes that, the record is dead: no entry
//! will ever read it again. Dead records used to be deleted by the apply batch, which cost each
//! write an expiry key, and later a lookup and two tombstones. Now RocksDB's compaction drops
//! them ([`filter`]), at no cost to the write path.
//!
//! Compaction runs at different times on different replicas, so replicas may hold different
//! dead records. Everything that compares or counts records skips the dead ones
//! ([`is_dead`]); the apply logic never trusts a record past its window anyway. Compaction may
//! also drop records that an open RocksDB view (a snapshot being built, a hash point being
//! hashed) still shows, so such a view first pins the horizon ([`DedupHorizon::pin`]): while
//! it is pinned, only records dead as of the pinned index can go.
//!
//! The horizon follows the applied index that is durable, not just written: apply batches are
//! not synced, and after a power cut the node applies the lost tail of entries again. Those
//! entries must find the records they found the first time, so a record may only go once the
//! applied index that killed it is on disk (the next synced write makes it so).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rocksdb::compaction_filter::Decision;
use rocksdb::{Direction, IteratorMode, ReadOptions};

use crate::engine::Engine;
use crate::keys::{self, CF_DATA, DEDUP_EXPIRY_PREFIX, DEDUP_PREFIX, REGION_PREFIX};
use crate::{Index, Result};

/// Length of a dedup record's key: prefix, client id, seq.
const DEDUP_KEY_LEN: usize = 17;
/// Length of a region's dedup record key: `r`, region id, then a static node's dedup key.
const REGION_DEDUP_KEY_LEN: usize = 9 + DEDUP_KEY_LEN;
/// Length of the expiry keys that earlier versions wrote beside each dedup record.
const LEGACY_EXPIRY_KEY_LEN: usize = 25;

/// Whether the `data` family record (`key`, `value`) is a dedup record that no entry after
/// `applied` can read (or an expiry key of an earlier version, which nothing reads), so that
/// comparisons of replicas must skip it.
///
/// A region's records (`r` + id + `s` ...) count by that region's applied index: callers pass
/// the applied index of the group whose records they read.
pub fn is_dead(key: &[u8], value: &[u8], applied: Index, window: u64) -> bool {
    match classify(key) {
        Kind::LegacyExpiry => true,
        Kind::Dedup(_) => {
            record_index(value).is_some_and(|at| at.saturating_add(window) <= applied)
        }
        Kind::Other => false,
    }
}

/// The dedup records of region `from` that are live at its applied index `applied`, each moved
/// under region `to`'s prefix (same client id and seq) and re-dated to index `at` (same
/// result): the records a split or a merge copies, so a write retried against the region that
/// now holds its key is still applied at most once. Both are apply paths, so the pairs depend
/// only on the database's records and the arguments, in key order, alike on every replica.
pub(crate) fn moved_records(
    engine: &Engine,
    from: u64,
    applied: Index,
    window: u64,
    to: u64,
    at: Index,
) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + '_ {
    let mut lower = keys::region_prefix(from);
    lower.push(DEDUP_PREFIX);
    let mut upper = keys::region_prefix(from);
    upper.push(DEDUP_PREFIX + 1);
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(upper);
    engine
        .db()
        .iterator_cf_opt(
            engine.cf(CF_DATA),
            ro,
            IteratorMode::From(&lower, Direction::Forward),
        )
        .filter_map(move |item| {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            if is_dead(&k, &v, applied, window) {
                return None;
            }
            let mut key = keys::region_prefix(to);
            key.extend_from_slice(k.get(9..).unwrap_or_default());
            let mut rec = at.to_be_bytes().to_vec();
            rec.extend_from_slice(v.get(8..).unwrap_or_default());
            Some(Ok((key, rec)))
        })
}

/// What a `data` record is, for expiry.
enum Kind {
    /// An expiry key of an earlier version.
    LegacyExpiry,
    /// A dedup record of a static node (`None`) or of a region.
    Dedup(Option<u64>),
    /// Anything else: never dropped.
    Other,
}

fn classify(key: &[u8]) -> Kind {
    match (key.first(), key.len()) {
        (Some(&DEDUP_EXPIRY_PREFIX), LEGACY_EXPIRY_KEY_LEN) => Kind::LegacyExpiry,
        (Some(&DEDUP_PREFIX), DEDUP_KEY_LEN) => Kind::Dedup(None),
        (Some(&REGION_PREFIX), REGION_DEDUP_KEY_LEN) if key[9] == DEDUP_PREFIX => {
            match key[1..9].try_into() {
                Ok(id) => Kind::Dedup(Some(u64::from_be_bytes(id))),
                Err(_) => Kind::Other,
            }
        }
        _ => Kind::Other,
    }
}

/// The horizons of every group in one database: a static node's, or each region's (registered
/// when the store opens the region's view). The compaction filter reads them.
#[derive(Debug, Default)]
pub(crate) struct Horizons {
    node: Arc<AtomicU64>,
    regions: RwLock<HashMap<u64, Arc<DedupHorizon>>>,
}

impl Horizons {
    /// A set whose static-node horizon is `node`'s.
    pub(crate) fn new(node: &DedupHorizon) -> Horizons {
        Horizons {
            node: node.shared(),
            regions: RwLock::default(),
        }
    }

    /// Makes compaction follow `h` for region `id`'s records (replacing an earlier view's).
    pub(crate) fn register(&self, id: u64, h: &Arc<DedupHorizon>) {
        self.regions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, h.clone());
    }

    /// The horizon compaction follows for region `id`, if a view of the region registered one.
    pub(crate) fn get(&self, id: u64) -> Option<Arc<DedupHorizon>> {
        self.regions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Every region's horizon with the applied index it has written: read before a synced
    /// write of the whole store, which makes them all durable.
    pub(crate) fn written(&self) -> Vec<(Arc<DedupHorizon>, Index)> {
        self.regions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|h| (h.clone(), h.written_index()))
            .collect()
    }

    /// The horizon for records of `region`, if its group is known; 0 (nothing) otherwise.
    fn of(&self, region: Option<u64>) -> Index {
        match region {
            None => self.node.load(Ordering::Acquire),
            Some(id) => self
                .regions
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .map_or(0, |h| h.current()),
        }
    }
}

/// The index a dedup record was written at (its first 8 bytes).
pub(crate) fn record_index(value: &[u8]) -> Option<Index> {
    Some(Index::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

/// The compaction filter of the `data` family: drops dedup records written at or below the
/// horizon of their group, and expiry keys of earlier versions. Everything else is kept.
pub(crate) fn filter(horizons: Arc<Horizons>) -> impl FnMut(u32, &[u8], &[u8]) -> Decision {
    move |_level, key, value| match classify(key) {
        Kind::LegacyExpiry => Decision::Remove,
        Kind::Dedup(region) => {
            let h = horizons.of(region);
            match record_index(value) {
                Some(at) if h > 0 && at <= h => Decision::Remove,
                _ => Decision::Keep,
            }
        }
        Kind::Other => Decision::Keep,
    }
}

/// The highest index at or below which dedup records may be dropped by compaction: the applied
/// index (or the oldest pinned one) minus the window; 0 (nothing) until a state machine says
/// what its window is.
#[derive(Debug, Default)]
pub struct DedupHorizon {
    /// Read by the compaction filter on RocksDB's threads.
    horizon: Arc<AtomicU64>,
    state: Mutex<HorizonState>,
}

#[derive(Debug, Default)]
struct HorizonState {
    /// 0 until a state machine configured it: then nothing is dropped.
    window: u64,
    /// The applied index of the newest apply batch written.
    written: Index,
    /// The applied index known to be durable (written before a synced write completed).
    applied: Index,
    /// Applied indexes of open views, with how many views share each.
    pins: BTreeMap<Index, usize>,
}

impl DedupHorizon {
    /// The value the compaction filter reads.
    pub(crate) fn shared(&self) -> Arc<AtomicU64> {
        self.horizon.clone()
    }

    /// Sets the window and the applied index, which is on disk (at start, and after a snapshot
    /// replaced the data).
    pub(crate) fn configure(&self, window: u64, applied: Index) {
        let mut st = self.lock();
        st.window = window;
        st.written = applied;
        st.applied = applied;
        self.publish(&st);
    }

    /// Records that an apply batch up to `applied` was written (not yet synced).
    pub(crate) fn written(&self, applied: Index) {
        let mut st = self.lock();
        st.written = st.written.max(applied);
    }

    /// The applied index written so far; read before a synced write starts.
    pub(crate) fn written_index(&self) -> Index {
        self.lock().written
    }

    /// A synced write that started after `written` was read has completed: the apply batches
    /// up to it are durable, and so are the deaths of the records they outlived.
    pub(crate) fn synced(&self, written: Index) {
        let mut st = self.lock();
        if written > st.applied {
            st.applied = written;
            self.publish(&st);
        }
    }

    /// Keeps every record live at the current durable applied index until the returned guard
    /// drops. Take it before the RocksDB view it protects.
    pub fn pin(self: &Arc<Self>) -> DedupPin {
        let mut st = self.lock();
        let at = st.applied;
        *st.pins.entry(at).or_default() += 1;
        self.publish(&st);
        DedupPin {
            horizon: self.clone(),
            at,
        }
    }

    /// The current horizon (for tests and stats).
    pub fn current(&self) -> Index {
        self.horizon.load(Ordering::Acquire)
    }

    fn unpin(&self, at: Index) {
        let mut st = self.lock();
        if let Some(n) = st.pins.get_mut(&at) {
            *n -= 1;
            if *n == 0 {
                st.pins.remove(&at);
            }
        }
        self.publish(&st);
    }

    fn publish(&self, st: &HorizonState) {
        let h = if st.window == 0 {
            0
        } else {
            let base = st
                .pins
                .keys()
                .next()
                .map_or(st.applied, |&p| p.min(st.applied));
            base.saturating_sub(st.window)
        };
        self.horizon.store(h, Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, HorizonState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Holds the dedup horizon back while a RocksDB view is read (see [`DedupHorizon::pin`]).
#[derive(Debug)]
pub struct DedupPin {
    horizon: Arc<DedupHorizon>,
    at: Index,
}

impl Drop for DedupPin {
    fn drop(&mut self) {
        self.horizon.unpin(self.at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::dedup_key;

    fn rec(at: Index) -> Vec<u8> {
        let mut v = at.to_be_bytes().to_vec();
        v.push(1);
        v
    }

    #[test]
    fn a_record_dies_when_the_window_has_passed() {
        let k = dedup_key(1, 2);
        assert!(!is_dead(&k, &rec(10), 14, 5));
        assert!(is_dead(&k, &rec(10), 15, 5));
        assert!(!is_dead(b"dkey", &rec(1), 100, 5), "user data never dies");
        assert!(is_dead(&[DEDUP_EXPIRY_PREFIX; 25], b"", 0, 5));
    }

    #[test]
    fn pins_hold_the_horizon_until_the_last_one_drops() {
        let h = Arc::new(DedupHorizon::default());
        h.written(50);
        h.synced(50);
        assert_eq!(h.current(), 0, "nothing goes before a window is known");
        h.configure(10, 50);
        assert_eq!(h.current(), 40);
        let a = h.pin();
        let b = h.pin();
        h.written(100);
        h.synced(h.written_index());
        assert_eq!(h.current(), 40);
        drop(a);
        assert_eq!(h.current(), 40);
        drop(b);
        assert_eq!(h.current(), 90);
        h.written(120);
        assert_eq!(h.current(), 90, "an unsynced apply batch kills nothing");
        h.synced(120);
        assert_eq!(h.current(), 110);
        let mut f = filter(Arc::new(Horizons::new(&h)));
        assert!(matches!(
            f(0, &dedup_key(1, 1), &rec(110)),
            Decision::Remove
        ));
        assert!(matches!(f(0, &dedup_key(1, 1), &rec(111)), Decision::Keep));
        assert!(matches!(f(0, b"d90", &rec(1)), Decision::Keep));
    }

    #[test]
    fn a_region_s_records_follow_that_region_s_horizon_only() {
        use crate::keys::Space;
        let node = DedupHorizon::default();
        let horizons = Arc::new(Horizons::new(&node));
        let r7 = Arc::new(DedupHorizon::default());
        r7.configure(10, 100);
        horizons.register(7, &r7);
        let mut f = filter(horizons.clone());
        let k7 = Space::Region(7).dedup_key(1, 1);
        let k8 = Space::Region(8).dedup_key(1, 1);
        assert!(matches!(f(0, &k7, &rec(90)), Decision::Remove));
        assert!(matches!(f(0, &k7, &rec(91)), Decision::Keep));
        assert!(
            matches!(f(0, &k8, &rec(1)), Decision::Keep),
            "a region without a view on this store keeps its records"
        );
        assert!(is_dead(&k7, &rec(90), 100, 10));
        assert!(!is_dead(&k7, &rec(91), 100, 10));
        assert!(
            matches!(f(0, &dedup_key(1, 1), &rec(1)), Decision::Keep),
            "the static node's horizon is still 0"
        );
    }
}
