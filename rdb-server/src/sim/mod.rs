//! Stores in one process under faults, reproducibly from one seed.
//!
//! Every node is a [`StoreCore`](crate::store::StoreCore) over a RocksDB directory of its own
//! (on `/dev/shm` when there is one), as the server runs it, in one of the two shapes of a
//! cluster ([`Mode`]):
//!
//! - a config-file cluster: every store hosts region 1 (every key), store id = peer id, no PD;
//!   a spare store joins through membership changes and gets region 1 from its leader;
//! - PD-mode stores: regions split at random keys and move between stores (a learner added
//!   on another store, promoted, a peer removed), ids drawn as PD draws them; in runs with
//!   `scheduling`, PD's own scheduler (`crate::schedule`) runs on simulated time and moves,
//!   repairs, balances and merges regions, while a store may be lost for good or
//!   decommissioned (`world::pd`).
//!
//! One seeded generator decides everything: message delays, drops, duplicates and
//! reordering; partitions; process crashes (the store is dropped and opened again from its
//! directory: what it wrote is kept, as a process that dies keeps what reached the OS) and
//! power losses (one store or every store: the newest write-ahead log loses a random part of
//! what was written to it after its last sync, see `world::disk`); paused processes; clocks
//! that run slow; leadership handovers; compactions; and the clients' operations and retries.
//! Time is counted in steps (ten per tick); nothing reads the wall clock. Snapshot builds and
//! installs run on threads of their own: the world waits for each before it goes on, so a seed
//! replays alike.
//!
//! Each run records the clients' history, heals every fault at the end, waits for every
//! region to converge, reads every key once more, then checks: the history is linearizable,
//! versions included ([`linearizability::check_versioned`]: reads' versions, writes'
//! revisions, conditional writes by version or `mod_revision`, which clients send in
//! scenarios with `conditional_writes`; an acknowledged write that is lost shows there), and
//! within each region every replica holds the same data, the same live dedup records and the
//! same applied index; with PD's scheduler, a run ends only once every region has three
//! voters on the stores that remain. A panic anywhere in the stores is a failure too.

pub mod linearizability;
#[cfg(test)]
mod world;

#[cfg(test)]
mod tests;

#[cfg(test)]
pub use world::{run, Failure, Mode, Scenario, Stats};

use crate::raft_core::PlantedBugs;

/// Deliberate bugs a scenario can plant (see `tests.rs`: each must be caught).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Planted {
    /// The cores' own planted bugs, in every region (through the store's core template).
    pub core: PlantedBugs,
    /// Clients send each retry of a write with a new request id, so a retried write that
    /// had applied applies again.
    pub retries_with_new_ids: bool,
    /// PD hears every store always (a store lost for good never counts as gone), so its
    /// peers are never replaced.
    pub pd_never_repairs: bool,
    /// Reads answer a key's `create_revision` as its `mod_revision`: values stay right, only
    /// the versions' check can tell.
    pub reads_report_create_revision: bool,
}
