//! Wire types for rdb, generated from `proto/*.proto` by tonic + prost.
//!
//! - [`kv`]: the client service (Put, Get, Delete, Scan, Cas, Status) with errors carried as data.
//! - [`peer`]: node-to-node transport; Raft messages are opaque bytes.
//! - [`command`]: the command format stored in Raft log entries.
//! - [`pd`]: the placement driver (timestamps, ids, stores, regions) and its replicated commands.
//! - [`backup`]: streaming a consistent backup of a node's data to a client.
//! - [`namespace`]: how the keys of a namespace are stored (shared by servers and clients).

#![allow(clippy::all, missing_docs)]

/// Client-facing KV service and messages.
pub mod kv {
    tonic::include_proto!("rdb.kv");
}

/// Node-to-node Raft transport service and messages.
pub mod peer {
    tonic::include_proto!("rdb.peer");
}

/// The placement driver's service, and the commands its Raft group replicates.
pub mod pd {
    tonic::include_proto!("rdb.pd");

    /// The gRPC metadata entry in which a PD request carries the cluster id its caller expects
    /// (decimal); a PD of another cluster answers `CLUSTER_MISMATCH`.
    pub const CLUSTER_ID_METADATA: &str = "rdb-cluster-id";
}

/// Commands replicated through the Raft log.
pub mod command {
    tonic::include_proto!("rdb.command");
}

/// Backups: a node streams a consistent copy of its data to a client.
pub mod backup {
    tonic::include_proto!("rdb.backup");
}

pub mod namespace;

pub use prost;
pub use tonic;
