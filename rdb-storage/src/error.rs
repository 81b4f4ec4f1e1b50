//! Errors of the storage layer.

/// What can go wrong reading or writing a node's durable state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RocksDB failed (I/O, corruption detected by its checksums, a locked directory, ...).
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored record does not decode: the data directory is damaged or from an incompatible version.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The data directory belongs to another cluster or node.
    #[error("data directory belongs to cluster {found_cluster} node {found_node}, not cluster {cluster} node {node}")]
    WrongIdentity {
        /// Cluster id found on disk.
        found_cluster: u64,
        /// Node id found on disk.
        found_node: u64,
        /// Cluster id this process was started with.
        cluster: u64,
        /// Node id this process was started with.
        node: u64,
    },
    /// The voters stored on disk differ from the configured membership.
    #[error("stored membership {stored:?} differs from the configured one {configured:?}")]
    MembershipChanged {
        /// Voters on disk.
        stored: Vec<u64>,
        /// Voters in the configuration.
        configured: Vec<u64>,
    },
    /// A snapshot descriptor or file does not decode or does not match its checksum.
    #[error("bad snapshot: {0}")]
    BadSnapshot(String),
    /// A snapshot is being installed: user data is being replaced and must not be read now.
    #[error("a snapshot is being installed; retry shortly")]
    SnapshotInstalling,
    /// A snapshot file could not be read or written.
    #[error("snapshot file: {0}")]
    Io(#[from] std::io::Error),
}

/// Result with the storage [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<protobuf::ProtobufError> for Error {
    fn from(e: protobuf::ProtobufError) -> Self {
        Error::Corrupt(e.to_string())
    }
}

impl From<Error> for raft::Error {
    fn from(e: Error) -> Self {
        raft::Error::Store(raft::StorageError::Other(Box::new(e)))
    }
}
