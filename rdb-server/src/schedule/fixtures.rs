//! Regions and stores the scheduling tests build: a region from its peers, and stores that are
//! up with room to take and to send a snapshot, which each test then loads or takes down.

use rdb_proto::pd::{Peer, Region};

use super::StoreView;

/// Region `id` with `peers` as (peer id, store, learner), no range and no epoch.
pub(super) fn region(id: u64, peers: &[(u64, u64, bool)]) -> Region {
    Region {
        id,
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

/// Region `id` with one voter, peer `id * 10 + store`, on each of `stores`.
pub(super) fn voters(id: u64, stores: &[u64]) -> Region {
    let peers: Vec<(u64, u64, bool)> = stores.iter().map(|&s| (id * 10 + s, s, false)).collect();
    region(id, &peers)
}

/// Store `id`, up, with room to take a new peer and to send a snapshot, holding nothing.
pub(super) fn store(id: u64) -> StoreView {
    StoreView {
        id,
        up: true,
        room: true,
        can_send: true,
        ..Default::default()
    }
}

/// Stores 1..=n as [`store`] makes them.
pub(super) fn stores(n: u64) -> Vec<StoreView> {
    (1..=n).map(store).collect()
}
