//! The errors a caller can act on.

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request breaks a limit or is malformed (the message names the limit). Not retried.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The cluster kept redirecting until the deadline; the last hint is given when known.
    #[error("not leader (leader {leader_id:?} at {leader_addr:?})")]
    NotLeader {
        /// The leader's id, when known.
        leader_id: Option<u64>,
        /// The leader's client address, when known.
        leader_addr: Option<String>,
    },
    /// No leader or no quorum within the deadline. For a write: it was not applied.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A write may or may not have been applied: its outcome was still unknown at the deadline.
    #[error("indeterminate: {0}")]
    Indeterminate(String),
    /// The node does not implement this call (a server older than this client), or the client
    /// cannot make it (a PD-mode client and a call about one Raft group). Not retried.
    #[error("unsupported by the server: {0}")]
    Unsupported(String),
    /// PD refused a region heartbeat: it holds a newer epoch for the region. The reporter's
    /// view of the region is out of date. Not retried.
    #[error("stale epoch: {0}")]
    StaleEpoch(String),
    /// PD was bootstrapped already. Not retried. After a retried bootstrap (an earlier attempt
    /// whose answer was lost), this may be the caller's own bootstrap.
    #[error("already bootstrapped: {0}")]
    AlreadyBootstrapped(String),
    /// PD has no such store or region. Not retried.
    #[error("not found: {0}")]
    NotFound(String),
    /// PD belongs to another cluster than the one the client expects
    /// ([`crate::PdClient::set_cluster_id`]): a store of another cluster, or a PD that lost its
    /// data and minted a new id. The message names both ids. Not retried.
    #[error("cluster mismatch: {0}")]
    ClusterMismatch(String),
    /// A local file could not be written (a backup being saved). Not retried.
    #[error("i/o: {0}")]
    Io(String),
}
