//! An in-memory cluster that runs the Raft core under faults, reproducibly from one seed.
//!
//! Nodes are [`Core`]s over [`MemLog`] and [`MemKv`] (the KV logic of `rdb_storage`). One
//! seeded generator decides everything: message delays, drops, duplicates and reordering;
//! partitions; crashes that lose a random tail of each disk's unsynced writes (one node, or
//! every node at once, as in a power loss); paused processes; clocks that run slow; and the
//! clients' operations and retries. Time is counted in steps (ten per tick); nothing reads the
//! wall clock, so a seed replays exactly.
//!
//! Each run records the clients' history, heals every fault at the end, waits for the replicas
//! to converge, reads every key once more, then checks: the history is linearizable
//! ([`linearizability`]), and every replica holds the same bytes at the same applied index.
//! A panic anywhere in the core is a failure too.

pub mod linearizability;
mod world;

#[cfg(test)]
mod tests;

pub use world::{run, Failure, Scenario, Stats};

use crate::raft_core::mem::{MemKv, MemLog};
use crate::raft_core::{Core, PlantedBugs};

/// The core as the simulation runs it.
pub type SimCore = Core<MemLog, MemKv>;

/// Deliberate bugs a scenario can plant (see `tests.rs`: each must be caught).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Planted {
    /// The core's own planted bugs.
    pub core: PlantedBugs,
    /// The KV application applies a retried write again (drops request ids).
    pub apply_retries_twice: bool,
}
