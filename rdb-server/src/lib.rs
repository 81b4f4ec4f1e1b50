//! An rdb node.
//!
//! - [`binary`]: what a node binary's `main` does around the node (rdb-server, rdb-pd).
//! - [`config`]: the cluster file and its validation.
//! - [`raft_core`]: the deterministic Raft core (`RawNode` + log store + application + client
//!   request bookkeeping), free of clocks, threads and RPC; generic over its stores.
//! - [`stores`]: the RocksDB log store and KV state machine as the core's stores.
//! - [`store`]: a store: regions (Raft groups) over one RocksDB, driven as one; a config-file
//!   node is a store hosting region 1 with no PD, a PD-mode store hosts regions that split.
//! - [`sim`]: the linearizability checker, and (in test builds) the seeded simulation of
//!   stores under faults that uses it.
//! - [`schedule`]: PD's scheduling decisions (repair, balance, merge operators), free of I/O,
//!   run by rdb-pd's leader and by the simulation.
//! - [`router`]: the typed messages the node task reads.
//! - [`node`]: the task of a process of one group (a PD node): the core with tokio and a clock.
//! - [`transport`]: Raft messages to peers over tonic.
//! - [`service`]: gRPC adapters for clients and peers.
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint.
//! - [`upkeep`]: what a node or store does beside its turns: durable-index records,
//!   slow-disk and lag warnings, disk gauges.
//! - [`tls`]: TLS on the client and peer ports.
//! - [`server`]: what every server process shares (stop, Raft thread, health), and a PD node's
//!   start.
//! - [`restore`]: `rdb-server --restore`, seeding a new cluster's data directories from a backup.

pub mod binary;
pub mod config;
pub mod join;
pub mod logging;
pub mod members;
pub mod metrics;
pub mod node;
pub mod raft_core;
pub mod restore;
pub mod router;
pub mod schedule;
pub mod server;
pub mod service;
pub mod sim;
pub mod store;
pub mod stores;
pub mod tls;
pub mod transport;
pub mod upkeep;

use std::path::PathBuf;

/// Why a node could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The data directory cannot be used.
    #[error("data directory {dir}: {message}")]
    DataDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        message: String,
    },
    /// Durable state failed.
    #[error("storage: {0}")]
    Storage(#[from] rdb_storage::Error),
    /// raft-rs refused its configuration or state.
    #[error("raft: {0}")]
    Raft(String),
    /// A PD-mode store could not do what it needs from the placement driver.
    #[error("PD: {0}")]
    Pd(String),
    /// A listener could not be bound.
    #[error("cannot listen for {what} traffic on {addr}: {source}")]
    Bind {
        /// Client or peer.
        what: &'static str,
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("serving: {0}")]
    Serve(String),
    /// A TLS certificate or key cannot be used.
    #[error("tls: {0}")]
    Tls(String),
    /// Other OS failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
