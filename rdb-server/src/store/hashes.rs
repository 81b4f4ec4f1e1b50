//! Every hosted region's hash results, shared between the store's Raft thread and its KV
//! service (specs/009-regions, "Replica checks").
//!
//! A region's state machine hashes the region's data when it applies a hash point and keeps
//! the result in its [`HashResults`]. [`StoreCore`](super::StoreCore) adds a region here when
//! it starts the region's peer and takes it out when it drops the peer; the KV service answers
//! `Hash(region, index)` from it without a trip through the Raft thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rdb_storage::{Engine, HashResults};

/// What answering `Hash` for one region needs.
#[derive(Clone)]
pub struct RegionHashes {
    /// The results of the region's hash points, by log index.
    pub results: HashResults,
    /// The region's view of the database: its applied index says whether a hash point is
    /// still to come.
    pub engine: Engine,
}

/// The hash results of every region hosted here, by region id. Cheap to clone; clones share.
#[derive(Clone, Default)]
pub struct StoreHashes(Arc<Mutex<HashMap<u64, RegionHashes>>>);

impl StoreHashes {
    /// Region `id`'s results, if this store hosts a peer of it.
    pub fn get(&self, id: u64) -> Option<RegionHashes> {
        self.lock().get(&id).cloned()
    }

    /// Records region `id`'s peer (replacing one started before).
    pub(crate) fn insert(&self, id: u64, hashes: RegionHashes) {
        self.lock().insert(id, hashes);
    }

    /// Forgets region `id`: its peer is gone from this store.
    pub(crate) fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, RegionHashes>> {
        // The map stays whole whatever a panicking holder did: every change is one call.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
