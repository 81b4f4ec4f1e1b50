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
    /// The data directory holds another kind of node (a config-file node, a PD-mode store, a
    /// PD node) than the one started on it.
    #[error(
        "this data directory holds {found}, not {wanted}; give each process a directory of its own"
    )]
    WrongKind {
        /// What the directory holds.
        found: &'static str,
        /// What was started on it.
        wanted: &'static str,
    },
    /// A config-file node's directory in the layout of versions before its data became
    /// region 1 of a store: it is neither read nor rewritten.
    #[error("this data directory was written by an older rdb version, which kept a config-file node's data outside region 1; it is left untouched: take a backup with the older version (rdb-cli snapshot save FILE) and restore it with this one (rdb-server --restore FILE --config CLUSTER.toml) into new directories")]
    OldLayout,
    /// A store's directory belongs to another store or another PD cluster.
    #[error("{0}")]
    WrongStore(String),
    /// A read at a revision whose history compaction has dropped (specs/018-versions).
    #[error("revision {revision} is compacted (history starts at {compacted})")]
    Compacted {
        /// The revision asked.
        revision: u64,
        /// The group's compacted revision: reads at or above it are answered.
        compacted: u64,
    },
    /// A read at a revision the group has not reached.
    #[error("revision {revision} is not reached yet (the last is {last})")]
    FutureRevision {
        /// The revision asked.
        revision: u64,
        /// The group's last revision.
        last: u64,
    },
    /// A setting that decides what applying an entry does differs from the one the data
    /// directory was created with.
    #[error("setting {name} is {configured} in the configuration but this data directory was created with {stored}; it must be the same on every node for the life of the cluster")]
    SettingChanged {
        /// The setting.
        name: &'static str,
        /// Value recorded in the data directory.
        stored: u64,
        /// Value in the configuration.
        configured: u64,
    },
    /// The user data and the Raft state disagree on what was applied.
    #[error("user data is at applied index {data_index} but the raft state says {state_index}: the data directory is damaged (rolled back or partly lost); replace this node's data from a healthy replica")]
    Diverged {
        /// Applied index recorded beside the user data.
        data_index: u64,
        /// Applied index recorded in the Raft state.
        state_index: u64,
    },
    /// RocksDB opened an older state than this node had already made durable.
    #[error("the raft log ends at index {log_end} but this node had already made index {recorded} durable: the data directory was rolled back (damaged MANIFEST or lost files); replace this node's data from a healthy replica")]
    RolledBack {
        /// Where the log ends now.
        log_end: u64,
        /// The durable index recorded earlier.
        recorded: u64,
    },
    /// A region of a PD-mode store opened older than the store had already made durable.
    #[error("region {region}'s raft log ends at index {log_end} but this store had already made index {recorded} of it durable: the data directory was rolled back (an old copy put back, or lost files); replace this store's data (a new store takes its regions from the others)")]
    RegionRolledBack {
        /// The region.
        region: u64,
        /// Where the region's log ends now.
        log_end: u64,
        /// The durable index recorded earlier.
        recorded: u64,
    },
    /// A snapshot descriptor or file does not decode or does not match its checksum.
    #[error("bad snapshot: {0}")]
    BadSnapshot(String),
    /// A backup file is damaged, truncated, or not a backup file; nothing was changed.
    #[error("bad backup: {0}")]
    BadBackup(String),
    /// A restore was asked to write into a data directory that already holds something.
    #[error("data directory {} is not empty: a restore never overwrites data (give a new directory, or remove this one first)", .0.display())]
    DataDirNotEmpty(std::path::PathBuf),
    /// A reader asked for a region this store has not opened (it hosts no peer of it).
    #[error("region {0} is not open on this store")]
    RegionNotOpen(u64),
    /// A snapshot is being installed: user data is being replaced and must not be read now.
    #[error("a snapshot is being installed; retry shortly")]
    SnapshotInstalling,
    /// A snapshot install was stopped half way because its node is stopping; the next start
    /// finishes it.
    #[error("the snapshot install was stopped half way (the node is stopping); the next start finishes it")]
    InstallStopped,
    /// A file outside RocksDB (a snapshot file, the durable-index file) could not be read or
    /// written.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A fault point configured through FAILPOINTS failed this write (tests only).
    #[error("injected fault at {0}")]
    Injected(String),
}

impl Error {
    /// The error a fault point returns: `name`, with the argument it was configured with.
    #[cfg(feature = "failpoints")]
    pub(crate) fn injected(name: &str, arg: Option<String>) -> Error {
        Error::Injected(match arg {
            Some(a) => format!("{name} ({a})"),
            None => name.to_string(),
        })
    }
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
