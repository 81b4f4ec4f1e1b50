//! Durable state of an rdb node in RocksDB: the Raft log, the Raft hard/conf/apply state and
//! the user data, in the column families `raft_log`, `raft_state` and `data`.
//!
//! This is the only crate that names `rocksdb`. It knows nothing of gRPC or threads beyond the
//! snapshot builder and the background snapshot installer of a store's regions.
//!
//! - [`Engine`]: opens the database, checks identity, serves reads of user data.
//! - [`RaftStorage`]: `raft::Storage` plus the writes a Ready needs (entries + hard state in one
//!   synced batch), compaction and snapshot installation (inline, or on a thread of its own).
//! - [`StateMachine`]: applies committed entries, with the applied index in the same batch.
//! - [`backup`]: backup files of the data, and restoring one into a new cluster's directory.

pub mod backup;
mod checks;
pub mod dedup;
mod descriptor;
pub mod engine;
pub mod error;
mod installs;
pub mod keys;
pub mod membership;
pub mod mvcc;
mod open;
pub mod raft_storage;
pub mod range_stats;
pub mod region;
pub mod snapshot;
pub mod state_machine;
mod upgrade;

#[cfg(test)]
mod hardening_tests;
#[cfg(test)]
mod merge_tests;
#[cfg(test)]
mod region_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod version_tests;

pub use engine::AppendBatch;
pub use engine::{
    ApplySettings, ApplyState, DirKind, Engine, EngineOptions, Ident, MemoryStats, Revisions,
    ScanPage,
};
pub use error::{Error, Result};
pub use membership::{member_key, records_of_change};
pub use raft_storage::RaftStorage;
pub use rdb_proto::command::MemberRecord;
pub use state_machine::{
    apply_command, Applied, CommandResult, HashResults, HashState, Records, StateMachine,
};

/// A Raft log index.
pub type Index = u64;
/// A Raft term.
pub type Term = u64;
