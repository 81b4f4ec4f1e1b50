//! The deterministic Raft core: everything a replica decides, with no clock, thread or socket.
//!
//! - [`Replica`]: raft-rs's `RawNode` over a [`LogStore`] and an [`Application`], running the
//!   Ready cycle in the order raft-rs documents, and compacting the log.
//! - [`Core`]: a replica plus the bookkeeping of client requests: proposals tracked by
//!   (index, term), ReadIndex rounds batched per turn, answers on apply, and failing what is in
//!   flight when leadership is lost.
//! - [`mem`]: an in-memory log store and KV application with a crash model, for the core's
//!   tests.
//!
//! The core is driven by inputs (a tick, a peer message, a client request, a transport report)
//! and [`Core::advance`], which persists through the log store, applies through the
//! application and returns an [`Output`]: replies to clients and what the caller may do in the
//! background. Messages to peers leave through a [`MessageSink`]. Time is counted in ticks, so
//! a test decides when time passes. The server (`node.rs`) wraps it with tokio, RocksDB and
//! gRPC; the store (`store.rs`) runs one per region, and the simulation (`sim`) drives stores
//! over a simulated network.

mod replica;
mod requests;

pub mod mem;

pub use replica::{Persisting, ReadyOutput};
pub use replica::{Replica, ReplicaConfig};
pub use requests::{
    Answer, Core, CoreConfig, MemberStep, Membership, Output, PlantedBugs, Refusal, Reply,
    RequestId,
};

use raft::prelude::{ConfChangeV2, ConfState, Entry, HardState, Message, Snapshot};

/// Where messages to peers go. Implementations must not block: queue and return.
pub trait MessageSink {
    /// Hands messages to the network (real or simulated).
    fn send(&mut self, msgs: Vec<Message>);
}

impl MessageSink for Vec<Message> {
    fn send(&mut self, msgs: Vec<Message>) {
        self.extend(msgs);
    }
}

/// A failure of durable state; the replica cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The log store or the application failed to read or write.
    #[error("storage: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// raft-rs refused its configuration or state.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

impl CoreError {
    /// Wraps a store's own error.
    pub fn storage(e: impl std::error::Error + Send + Sync + 'static) -> CoreError {
        CoreError::Storage(Box::new(e))
    }
}

/// The Raft log and Raft state of one replica: `raft::Storage` plus the writes a Ready needs.
pub trait LogStore: raft::Storage {
    /// Persists entries (overwriting a conflicting suffix) and the hard state in one atomic
    /// write. With `sync`, the write and every earlier one are durable when this returns.
    fn append(
        &mut self,
        entries: &[Entry],
        hs: Option<&HardState>,
        sync: bool,
    ) -> Result<(), CoreError>;
    /// Records a commit index learnt from a light ready (in memory; see the implementations).
    fn set_commit(&mut self, commit: u64);
    /// Removes entries below `compact_to`, never past `applied + 1`.
    fn compact(&mut self, compact_to: u64, applied: u64) -> Result<(), CoreError>;
    /// Replaces the log, the Raft state and the application's data with a snapshot.
    fn apply_snapshot(&mut self, snap: &Snapshot, hs: Option<&HardState>) -> Result<(), CoreError>;
    /// [`LogStore::apply_snapshot`] off the caller's thread, if this store does that: true if
    /// the install started in the background (the caller then touches neither the log nor the
    /// Raft state until [`LogStore::poll_snapshot_install`] says it is over), false if the
    /// caller must install with `apply_snapshot`.
    fn start_snapshot_install(
        &mut self,
        snap: &Snapshot,
        hs: Option<&HardState>,
    ) -> Result<bool, CoreError> {
        let _ = (snap, hs);
        Ok(false)
    }
    /// Whether no install started by [`LogStore::start_snapshot_install`] is under way any
    /// more; once one ends, the store is as `apply_snapshot` leaves it. An install that failed
    /// returns its error.
    fn poll_snapshot_install(&mut self) -> Result<bool, CoreError> {
        Ok(true)
    }
    /// Index and term of the last entry removed from the log.
    fn truncated(&self) -> (u64, u64);
    /// Records in memory the conf state the application persisted with a conf change, so
    /// that snapshots and restarts see it.
    fn set_conf_state(&mut self, cs: &ConfState);
    /// The voters the group was bootstrapped with: they hold the log from index 1 and need no
    /// snapshot to start from it.
    fn initial_voters(&self) -> Vec<u64>;
}

/// One applied entry and, for a client command, what the application made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied<R> {
    /// Log index of the entry.
    pub index: u64,
    /// Term of the entry; a waiting client compares it with the term it proposed in.
    pub term: u64,
    /// `None` for an entry that is not a command; `Some(Err)` for a command the application
    /// refused (deterministically: every replica refuses it).
    pub result: Option<Result<R, String>>,
}

/// The replicated state machine (the KV store, or PD's metadata) the core applies entries to.
pub trait Application {
    /// What applying one command produced, for the client that proposed it.
    type Output: std::fmt::Debug;
    /// Whether followers may serve linearizable reads (a ReadIndex round through the leader,
    /// answered once the follower applied that far). Off for applications whose reads need the
    /// leader's own state (PD's timestamp oracle).
    const FOLLOWER_READS: bool = false;
    /// The applied index recorded in durable state, where applying resumes after a restart.
    fn applied_index(&self) -> Result<u64, CoreError>;
    /// Applies committed entries (contiguous after the applied index), durably with the new
    /// applied index (synced or not: the log can replay them). It may stop before an entry
    /// it cannot apply yet (a merge waiting for its source region, specs/017-merge): the
    /// results then cover a prefix of `entries`, and the rest comes again in a later cycle.
    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Applied<Self::Output>>, CoreError>;
    /// The log store installed a snapshot: reload whatever is cached from the data.
    fn restored(&mut self) -> Result<(), CoreError>;
    /// Applies the membership change at `index`: persists `cs` (the configuration raft-rs
    /// switched to) and the members `cc` adds or removes, with the applied index, in one write.
    /// `cc` is empty for a change raft-rs refused: only the applied index moves.
    fn apply_conf_change(
        &mut self,
        index: u64,
        term: u64,
        cc: &ConfChangeV2,
        cs: &ConfState,
    ) -> Result<(), CoreError>;
}

#[cfg(test)]
mod tests;
