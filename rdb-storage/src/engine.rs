//! The RocksDB database of one node: opening it, its identity, and reads of user data.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::prelude::{ConfState, HardState};
use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteOptions, DB,
};

use crate::dedup::{self, DedupHorizon, Horizons};
use crate::descriptor::SnapshotDescriptor;
use crate::installs::{InstallId, Installs, KeyRange};
use crate::keys::{self, Space, CF_DATA, CF_RAFT_LOG, CF_RAFT_STATE};
use crate::{Error, Index, Result, Term};

/// Which cluster and node a data directory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ident {
    /// Cluster id from the configuration file.
    pub cluster_id: u64,
    /// This node's id.
    pub node_id: u64,
}

/// What kind of process a data directory belongs to. Each refuses the others' directories: a PD
/// node started on a config-file node's directory (same cluster id and node id in its file)
/// would otherwise join that node's Raft group and apply its own commands to the KV data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirKind {
    /// A node of a config-file cluster (`rdb-server --config`, `--join`, no arguments).
    Node,
    /// A store of a PD-mode cluster (`rdb-server --pd`).
    Store,
    /// A node of the placement driver (`rdb-pd`).
    Pd,
}

impl DirKind {
    pub(crate) fn code(self) -> &'static [u8] {
        match self {
            DirKind::Node => b"node",
            DirKind::Store => b"store",
            DirKind::Pd => b"pd",
        }
    }

    pub(crate) fn from_code(b: &[u8]) -> Option<DirKind> {
        [DirKind::Node, DirKind::Store, DirKind::Pd]
            .into_iter()
            .find(|k| k.code() == b)
    }

    /// How an error message names this kind.
    pub fn describe(self) -> &'static str {
        match self {
            DirKind::Node => "a node of a config-file cluster",
            DirKind::Store => "a PD-mode store",
            DirKind::Pd => "a PD node",
        }
    }
}

/// Index and term of the last applied entry; persisted atomically with the data it produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyState {
    /// Last applied log index.
    pub index: Index,
    /// Term of that entry.
    pub term: Term,
}

/// Settings that change what applying an entry does. Every replica must apply the same log to
/// the same bytes, so these are fixed when a data directory is created and a node whose
/// configuration disagrees refuses to start (a per-node value would let replicas drift apart,
/// for example during a rolling restart with a new value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplySettings {
    /// Log entries a client request id is remembered for (see [`crate::StateMachine`]).
    pub dedup_window: u64,
    /// Revisions of history a group keeps readable: its compacted revision follows its last
    /// one this far behind (0: history is kept until compacted by hand; specs/018-versions).
    pub history_revisions: u64,
    /// Where writes carry PD timestamps as their revisions (PD mode): the milliseconds of
    /// history kept readable instead (0: kept until compacted by hand).
    pub history_ms: u64,
}

/// How a directory's writes get their revisions, which decides the one retention setting of
/// [`ApplySettings`] they use (the other is recorded but never checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revisions {
    /// A config-file node: each region counts its writes (`history_revisions`).
    Counted,
    /// A PD-mode store: writes carry PD timestamps (`history_ms`).
    Stamped,
}

/// Milliseconds of history a PD-mode region keeps when the configuration does not say.
pub const DEFAULT_HISTORY_MS: u64 = 600_000;

/// Bits of a PD timestamp below its milliseconds (rdb-client's `Timestamp::LOGICAL_BITS`).
pub const STAMP_LOGICAL_BITS: u32 = 16;

/// Revisions of history kept when the configuration does not say.
pub const DEFAULT_HISTORY_REVISIONS: u64 = 10_000;

/// File beside the database holding the last index known to be durable in the log.
pub(crate) const DURABLE_INDEX_FILE: &str = "RDB_DURABLE_INDEX";

/// Version tag of the stored [`ApplySettings`] record of directories whose `d` records hold
/// bare values (before versioned keys): opening one upgrades it.
pub(crate) const APPLY_SETTINGS_V1: u64 = 1;
/// Version tag of the stored [`ApplySettings`] record: the dedup window, the history kept, and
/// `d` records that hold versions (specs/018-versions).
pub(crate) const APPLY_SETTINGS_V2: u64 = 2;
/// Version tag of the stored [`ApplySettings`] record that adds the history kept in time, for
/// writes stamped with PD timestamps.
pub(crate) const APPLY_SETTINGS_V3: u64 = 3;

/// The stored form of `settings` (the current version of the record).
pub(crate) fn encode_apply_settings(settings: ApplySettings) -> Vec<u8> {
    let mut record = APPLY_SETTINGS_V3.to_be_bytes().to_vec();
    record.extend_from_slice(&settings.dedup_window.to_be_bytes());
    record.extend_from_slice(&settings.history_revisions.to_be_bytes());
    record.extend_from_slice(&settings.history_ms.to_be_bytes());
    record
}

/// Every database this process opened, with the flag its closing sets: a clean stop waits for
/// all of them ([`wait_all_closed`]) before the process exits, because exiting while a thread
/// still uses RocksDB runs its static destructors under that thread (an abort).
static OPENED: Mutex<Vec<(PathBuf, Arc<AtomicBool>)>> = Mutex::new(Vec::new());

/// Sets its flag when dropped: declared after the database in [`Database`], so after it closed.
struct ClosedFlag(Arc<AtomicBool>);

impl Drop for ClosedFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The RocksDB handle, which marks itself closed once RocksDB finished closing (field order:
/// `db` drops first, waiting for RocksDB's background work, then `closed`).
struct Database {
    db: DB,
    /// The block cache every column family shares (its usage is a memory figure).
    cache: rocksdb::Cache,
    /// Called after every synced write (see [`Engine::on_synced_write`]).
    on_synced: std::sync::OnceLock<SyncObserver>,
    _closed: ClosedFlag,
}

/// The memory RocksDB holds, by part, in bytes ([`Engine::memory_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Blocks in the shared block cache (bounded by `EngineOptions::block_cache_bytes`).
    pub block_cache: u64,
    /// Of those, blocks pinned by readers (iterators, table readers).
    pub block_cache_pinned: u64,
    /// Memtables of every column family, mutable and immutable (bounded by
    /// `EngineOptions::memtable_bytes`, which triggers flushes).
    pub memtables: u64,
    /// Open SST files' indexes and filters held outside the block cache.
    pub table_readers: u64,
}

/// What [`Engine::on_synced_write`] calls.
type SyncObserver = Box<dyn Fn() + Send + Sync>;

impl std::ops::Deref for Database {
    type Target = DB;
    fn deref(&self) -> &DB {
        &self.db
    }
}

/// Waits until every database this process opened is closed (every [`Engine`] of it dropped and
/// RocksDB's background work finished), for at most `timeout`. Returns the paths of those still
/// open (none after a clean stop).
pub fn wait_all_closed(timeout: Duration) -> Vec<PathBuf> {
    wait_closed_where(timeout, |_| true)
}

/// Waits until the database at `path` is closed, for at most `timeout`; whether it is. A
/// simulated power loss cuts the files only then.
pub fn wait_closed(path: &Path, timeout: Duration) -> bool {
    wait_closed_where(timeout, |p| p == path).is_empty()
}

/// Waits until every database opened at a path `which` selects is closed; those still open.
fn wait_closed_where(timeout: Duration, which: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        let open: Vec<PathBuf> = {
            let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
            opened.retain(|(_, closed)| !closed.load(Ordering::Acquire));
            opened
                .iter()
                .filter(|(p, _)| which(p))
                .map(|(p, _)| p.clone())
                .collect()
        };
        if open.is_empty() || Instant::now() >= deadline {
            return open;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A node's RocksDB database, seen as one Raft group's storage: a static node's one group, or
/// one region of a PD-mode store ([`Engine::region`]). Cheap to clone; safe to share between
/// threads.
#[derive(Clone)]
pub struct Engine {
    db: Arc<Database>,
    /// Whose Raft records this view reads and writes.
    space: Space,
    /// The dedup horizons of every group of the database, for the compaction filter.
    horizons: Arc<Horizons>,
    /// The key ranges snapshot installs are replacing, for every group of the database: reads
    /// of them are refused (see [`crate::installs`]).
    installs: Arc<Installs>,
    /// The interrupted snapshot install that `open_with` finished, if any.
    recovered_install: Option<SnapshotDescriptor>,
    /// Which dedup records compaction may drop (see [`crate::dedup`]).
    dedup: Arc<DedupHorizon>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.db.path())
            .field("space", &self.space)
            .finish()
    }
}

/// One page of a scan.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// Pairs in ascending key order.
    pub kvs: Vec<(Vec<u8>, Vec<u8>)>,
    /// True when the limit cut the result.
    pub more: bool,
}

/// Tunables of the RocksDB database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Total size of write-ahead log files before RocksDB flushes the column families that
    /// keep the oldest one alive. Without it, the small, constantly overwritten Raft state
    /// would pin old WAL files and disk use would grow with every write.
    pub max_wal_bytes: u64,
    /// RocksDB's block cache, one for all the column families: uncompressed blocks of the
    /// files read most.
    pub block_cache_bytes: u64,
    /// The memtables of all column families together: past it RocksDB flushes the largest.
    pub memtable_bytes: u64,
}

/// Name of the snapshot folder inside a data directory.
pub const SNAP_DIR: &str = "snap";

/// The snapshot folder of the data directory `data_dir`.
pub fn snap_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(SNAP_DIR)
}

/// A PD-mode store's batch of every region's appends of one turn (see
/// [`RaftStorage::defer_appends`] and `Engine::write_appends`). Cheap to clone; clones share it.
#[derive(Clone, Default)]
pub struct AppendBatch(Arc<Mutex<WriteBatch>>);

impl AppendBatch {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, WriteBatch> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_wal_bytes: 64 << 20,
            block_cache_bytes: 32 << 20,
            memtable_bytes: 64 << 20,
        }
    }
}

impl Engine {
    /// Opens (creating if missing) the database with rdb's column families, nothing more: see
    /// `Engine::open_with` (crate::open) for what opening a data directory also does.
    pub(crate) fn open_raw(path: &Path, engine_opts: EngineOptions) -> Result<Engine> {
        let mut opts = Options::default();
        opts.set_max_total_wal_size(engine_opts.max_wal_bytes);
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Corruption must stop the node, never be skipped silently.
        opts.set_paranoid_checks(true);
        // Apply batches are written unsynced, so a power cut or a full disk can leave the newest
        // WAL ending in a half-written record: nothing acknowledged depends on it (synced writes
        // come whole), so replay stops there. A damaged record with valid ones after it is still
        // corruption and refuses the open.
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
        // Column families must never disagree with each other: flush them together, and record
        // live WALs in the MANIFEST so that a rolled-back MANIFEST (whose WALs are gone) is
        // refused instead of opening as an older state.
        opts.set_atomic_flush(true);
        opts.set_track_and_verify_wals_in_manifest(true);
        // Replaying the WAL at open must not flush each family on its own (such recovery
        // flushes are separate MANIFEST edits, so a cut MANIFEST could take one family's back
        // while the others keep theirs); the next regular, atomic flush covers them.
        // (The Rust binding has no setter for it; the options-string parser does.)
        let mut opts = opts.get_options_from_string("avoid_flush_during_recovery=true")?;
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        // Memory is bounded by settings: one block cache for every family, and one budget
        // for all memtables (without them each family has its own cache and memtables).
        opts.set_db_write_buffer_size(engine_opts.memtable_bytes as usize);
        let cache = rocksdb::Cache::new_lru_cache(engine_opts.block_cache_bytes as usize);
        let table = |bloom: bool| {
            let mut t = BlockBasedOptions::default();
            t.set_block_cache(&cache);
            if bloom {
                t.set_bloom_filter(10.0, false);
            }
            t
        };
        // The log column family is written and deleted in index order; smaller memtables keep
        // compacted entries from lingering.
        let mut log_opts = Options::default();
        log_opts.set_write_buffer_size(32 << 20);
        log_opts.set_block_based_table_factory(&table(false));
        let mut state_opts = Options::default();
        state_opts.set_block_based_table_factory(&table(false));
        // Every write looks up its request id's dedup record, and nearly every lookup misses:
        // without bloom filters each miss reads an index and a data block of every L0 file and
        // level, so puts slowed down as the data grew (a third in 50 s of 64 writers).
        let mut data_opts = Options::default();
        data_opts.set_block_based_table_factory(&table(true));
        // Dead dedup records go with compaction instead of costing each write deletes.
        let dedup = Arc::new(DedupHorizon::default());
        let horizons = Arc::new(Horizons::new(&dedup));
        data_opts.set_compaction_filter("rdb-dead-dedup-records", dedup::filter(horizons.clone()));
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_RAFT_LOG, log_opts),
            ColumnFamilyDescriptor::new(CF_RAFT_STATE, state_opts),
            ColumnFamilyDescriptor::new(CF_DATA, data_opts),
        ];
        // An existing database written by someone else would lack our column families: refuse it
        // rather than adding them to a foreign database.
        if path.join("CURRENT").exists() {
            let existing = DB::list_cf(&Options::default(), path)?;
            for cf in [CF_RAFT_LOG, CF_RAFT_STATE, CF_DATA] {
                if !existing.iter().any(|c| c == cf) {
                    return Err(Error::Corrupt(format!(
                        "{} is a RocksDB database without the {cf} column family",
                        path.display()
                    )));
                }
            }
        }
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let closed = Arc::new(AtomicBool::new(false));
        OPENED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((path.to_path_buf(), closed.clone()));
        Ok(Engine {
            db: Arc::new(Database {
                db,
                cache,
                on_synced: std::sync::OnceLock::new(),
                _closed: ClosedFlag(closed),
            }),
            space: Space::Node,
            horizons,
            installs: Arc::default(),
            recovered_install: None,
            dedup,
        })
    }

    /// The view of region `id` over the same database, nothing more: see `Engine::region`
    /// (crate::open) for what taking a region's view also does.
    pub(crate) fn region_view(&self, id: u64) -> Result<Engine> {
        if id == 0 {
            return Err(Error::Corrupt("region id 0".into()));
        }
        let dedup = Arc::new(DedupHorizon::default());
        self.horizons.register(id, &dedup);
        Ok(Engine {
            db: self.db.clone(),
            space: Space::Region(id),
            horizons: self.horizons.clone(),
            // Shared with every view: user data is shared, so a read through any view (the
            // store's client service reads through the store's) must see any install.
            installs: self.installs.clone(),
            recovered_install: None,
            dedup,
        })
    }

    /// A reader's view of region `id`, which the store already has open: it shares that
    /// view's dedup horizon instead of taking it over (see [`Engine::region`]), so a backup
    /// that pins the horizon holds back compaction for the records the store applies, and the
    /// store's own pins keep working. Refuses a region no view was opened for here.
    pub fn open_region_reader(&self, id: u64) -> Result<Engine> {
        let dedup = self.horizons.get(id).ok_or(Error::RegionNotOpen(id))?;
        Ok(Engine {
            db: self.db.clone(),
            space: Space::Region(id),
            horizons: self.horizons.clone(),
            installs: self.installs.clone(),
            recovered_install: None,
            dedup,
        })
    }

    /// Records the interrupted snapshot install that opening this view finished.
    pub(crate) fn set_recovered_install(&mut self, desc: SnapshotDescriptor) {
        self.recovered_install = Some(desc);
    }

    /// Whose Raft records this view reads and writes.
    pub fn space(&self) -> Space {
        self.space
    }

    /// Key of one of this group's records in `raft_state`.
    pub(crate) fn state_key(&self, name: &[u8]) -> Vec<u8> {
        self.space.state_key(name)
    }

    /// The interrupted snapshot install that opening this database finished, if any.
    pub fn recovered_install(&self) -> Option<SnapshotDescriptor> {
        self.recovered_install
    }

    /// Where snapshot files of this group are kept: `<data_dir>/snap`, or `<data_dir>/snap/r<id>`
    /// for a region.
    pub fn snap_dir(&self) -> PathBuf {
        let dir = snap_dir(self.db.path());
        match self.space {
            Space::Node => dir,
            Space::Region(id) => dir.join(format!("r{id}")),
        }
    }

    /// Which dedup records compaction may drop; views of the data pin it (see [`crate::dedup`]).
    pub fn dedup_horizon(&self) -> &Arc<DedupHorizon> {
        &self.dedup
    }

    /// Compacts the whole `data` family now (dropping dead dedup records); for tests and tools.
    pub fn compact_data(&self) {
        self.db
            .compact_range_cf(self.cf(CF_DATA), None::<&[u8]>, None::<&[u8]>);
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    /// Marks the start of a snapshot install replacing `ranges` of the `data` family: reads
    /// of them are refused until [`Engine::end_install`] (for good, if it never comes).
    pub(crate) fn begin_install(&self, ranges: Vec<KeyRange>) -> InstallId {
        self.installs.begin(ranges)
    }

    /// Marks the end of a snapshot install.
    pub(crate) fn end_install(&self, id: InstallId) {
        self.installs.end(id);
    }

    /// Runs a read of the `data` family's keys in `[lower, upper)`, refusing it if a snapshot
    /// install of an overlapping range overlapped it in time (it could have seen a mix of the
    /// old and the new data).
    pub(crate) fn guarded<T>(
        &self,
        lower: &[u8],
        upper: &[u8],
        read: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let before = self.installs.check_start(lower, upper)?;
        let out = read()?;
        self.installs.check_end(before, lower, upper)?;
        Ok(out)
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        // The three families are created by `open`; a missing one is a programming error.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} missing"))
    }

    /// Writes a PD-mode store's batch of every region's appends of a turn (see
    /// `RaftStorage::defer_appends`) as one write, synced when `sync`, which then also makes
    /// every earlier write durable: every region's apply batches too, so their dedup horizons
    /// move on. Returns whether there was anything to write.
    pub fn write_appends(&self, appends: &AppendBatch, sync: bool) -> Result<bool> {
        let batch = std::mem::take(&mut *appends.lock());
        if batch.is_empty() {
            return Ok(false);
        }
        let written = if sync {
            self.horizons.written()
        } else {
            Vec::new()
        };
        self.write(batch, sync)?;
        for (h, w) in written {
            h.synced(w);
        }
        Ok(true)
    }

    /// Writes a batch; `sync` waits for the WAL to reach the disk.
    ///
    /// Fault point `storage-write` covers every write; callers add their own named one.
    pub(crate) fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        fail::fail_point!("storage-write", |arg| Err(Error::injected(
            "storage-write",
            arg
        )));
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        // A synced write makes every write before it durable, apply batches included.
        let written = sync.then(|| self.dedup.written_index());
        self.db.write_opt(batch, &wo)?;
        if let Some(w) = written {
            self.dedup.synced(w);
            if let Some(observe) = self.db.on_synced.get() {
                observe();
            }
        }
        Ok(())
    }

    /// Calls `observe` after every synced write to the database, from the writing thread: what
    /// is on disk then is what a power loss keeps (a simulation records it, see
    /// `rdb-server`'s `sim`). Set once per open database; false if one was set already.
    pub fn on_synced_write(&self, observe: impl Fn() + Send + Sync + 'static) -> bool {
        self.db.on_synced.set(Box::new(observe)).is_ok()
    }

    /// The stored conf state, if any.
    pub fn conf_state(&self) -> Result<Option<ConfState>> {
        self.get_proto(keys::CONF_STATE_KEY)
    }

    /// The stored hard state, if any.
    pub fn hard_state(&self) -> Result<Option<HardState>> {
        self.get_proto(keys::HARD_STATE_KEY)
    }

    fn get_proto<M: protobuf::Message>(&self, name: &[u8]) -> Result<Option<M>> {
        match self
            .db
            .get_cf(self.cf(CF_RAFT_STATE), self.state_key(name))?
        {
            None => Ok(None),
            Some(v) => Ok(Some(M::parse_from_bytes(&v)?)),
        }
    }

    /// One of this group's 16-byte records of `raft_state`, by name.
    pub(crate) fn get_pair(&self, name: &[u8]) -> Result<Option<(u64, u64)>> {
        self.get_raw_pair(&self.state_key(name), name)
    }

    fn get_raw_pair(&self, key: &[u8], name: &[u8]) -> Result<Option<(u64, u64)>> {
        match self.db.get_cf(self.cf(CF_RAFT_STATE), key)? {
            None => Ok(None),
            Some(v) => keys::decode_pair(&v).map(Some).ok_or_else(|| {
                Error::Corrupt(format!("{} is not 16 bytes", String::from_utf8_lossy(name)))
            }),
        }
    }

    /// The persisted apply state.
    pub fn apply_state(&self) -> Result<ApplyState> {
        let (index, term) = self
            .get_pair(keys::APPLY_STATE_KEY)?
            .ok_or_else(|| Error::Corrupt("apply state missing".into()))?;
        Ok(ApplyState { index, term })
    }

    /// Writes the records of an application other than the KV store (PD's metadata) with the
    /// new applied index, in one unsynced batch (the log replays it), exactly as the KV state
    /// machine's apply does. `None` deletes. Keys live in the `data` family and must start with
    /// [`keys::APP_PREFIX`], so they never meet user data or the apply record.
    pub fn write_app_records(
        &self,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
        applied: (Index, Term),
    ) -> Result<()> {
        let mut wb = WriteBatch::default();
        let data = self.cf(CF_DATA);
        for (k, v) in records {
            if k.first() != Some(&keys::APP_PREFIX) {
                return Err(Error::Corrupt(format!(
                    "application key {k:?} lacks the application prefix"
                )));
            }
            match v {
                Some(v) => wb.put_cf(data, k, v),
                None => wb.delete_cf(data, k),
            }
        }
        let pair = keys::encode_pair(applied.0, applied.1);
        wb.put_cf(
            self.cf(CF_RAFT_STATE),
            self.state_key(keys::APPLY_STATE_KEY),
            pair,
        );
        wb.put_cf(data, self.space.data_apply_key(), pair);
        self.write(wb, false)
    }

    /// Every application record (see [`Engine::write_app_records`]) whose key starts with
    /// `prefix`, in key order.
    pub fn app_records(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.guarded(prefix, &keys::prefix_end(prefix), || {
            let mut out = Vec::new();
            let it = self.db.iterator_cf(
                self.cf(CF_DATA),
                IteratorMode::From(prefix, Direction::Forward),
            );
            for item in it {
                let (k, v) = item?;
                if !k.starts_with(prefix) {
                    break;
                }
                out.push((k.to_vec(), v.to_vec()));
            }
            Ok(out)
        })
    }

    /// A RocksDB integer property summed over every column family (0 where one is missing).
    fn property_sum(&self, name: &str) -> u64 {
        [CF_RAFT_LOG, CF_RAFT_STATE, CF_DATA]
            .into_iter()
            .map(|cf| {
                self.db
                    .property_int_value_cf(self.cf(cf), name)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Bytes of live SST files and bytes compaction still has to rewrite, over every column
    /// family (for metrics).
    pub fn disk_stats(&self) -> (u64, u64) {
        (
            self.property_sum("rocksdb.live-sst-files-size"),
            self.property_sum("rocksdb.estimate-pending-compaction-bytes"),
        )
    }

    /// The memory RocksDB holds, by part (for metrics): what of a node's resident set the
    /// database's settings bound, and what they do not.
    pub fn memory_stats(&self) -> MemoryStats {
        MemoryStats {
            block_cache: self.db.cache.get_usage() as u64,
            block_cache_pinned: self.db.cache.get_pinned_usage() as u64,
            memtables: self.property_sum("rocksdb.cur-size-all-mem-tables"),
            table_readers: self.property_sum("rocksdb.estimate-table-readers-mem"),
        }
    }

    /// Bytes the data takes: live SST files and memtables (data not flushed yet), over every
    /// column family (for PD's store list).
    pub fn used_bytes(&self) -> u64 {
        self.property_sum("rocksdb.live-sst-files-size")
            + self.property_sum("rocksdb.cur-size-all-mem-tables")
    }

    /// The size of the file system holding the database and the bytes still free on it (for
    /// PD's store list); `None` if the system does not say.
    pub fn file_system_space(&self) -> Option<(u64, u64)> {
        let s = rustix::fs::statvfs(self.db.path()).ok()?;
        Some((
            s.f_blocks.saturating_mul(s.f_frsize),
            s.f_bavail.saturating_mul(s.f_frsize),
        ))
    }

    /// Reads a user key's newest value from the applied state.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let (lower, upper) = keys::data_key_range(key);
        self.guarded(&lower, &upper, || {
            value_of(self.db.get_cf(self.cf(CF_DATA), &lower)?)
        })
    }

    /// Reads several user keys through one RocksDB snapshot, so the values are all as of one
    /// applied index; `None` for an absent key, in the order given.
    pub fn get_many(&self, user_keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        // The range from the first key to the last covers them all.
        let (Some(first), Some(last)) = (user_keys.iter().min(), user_keys.iter().max()) else {
            return Ok(Vec::new());
        };
        let (lower, upper) = (keys::data_key(first), keys::data_key_range(last).1);
        self.guarded(&lower, &upper, || {
            let view = self.db.snapshot();
            let cf = self.cf(CF_DATA);
            user_keys
                .iter()
                .map(|k| value_of(view.get_cf(cf, keys::data_key(k))?))
                .collect()
        })
    }

    /// Reads user keys in `[start, end)` (an empty `end` means unbounded): at most `limit`
    /// pairs, and no more pairs once their keys and values reach `max_bytes` (always at least
    /// one pair, so a scan makes progress). `more` says whether either bound cut the page.
    pub fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        max_bytes: usize,
    ) -> Result<ScanPage> {
        let (lower, upper) = keys::data_range(start, end);
        self.guarded(&lower, &upper, || {
            self.scan_unguarded(&lower, &upper, limit, max_bytes)
        })
    }

    /// [`Engine::scan`] of the stored keys `[lower, upper)`.
    fn scan_unguarded(
        &self,
        lower: &[u8],
        upper: &[u8],
        limit: usize,
        max_bytes: usize,
    ) -> Result<ScanPage> {
        let mut page = ScanPage::default();
        if lower >= upper {
            return Ok(page);
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper);
        let it = self.db.iterator_cf_opt(
            self.cf(CF_DATA),
            ro,
            IteratorMode::From(lower, Direction::Forward),
        );
        let mut bytes = 0usize;
        for item in it {
            let (k, rec) = item?;
            let (_, v) = crate::mvcc::decode(&rec)?;
            let size = k.len() + v.len();
            if page.kvs.len() >= limit || (!page.kvs.is_empty() && bytes + size > max_bytes) {
                page.more = true;
                break;
            }
            let uk = keys::user_key(&k)
                .ok_or_else(|| Error::Corrupt("non-data key inside the data range".into()))?;
            bytes += size;
            page.kvs.push((uk.to_vec(), v.to_vec()));
        }
        Ok(page)
    }

    /// Compacts the files of the log column family below `index`, so entries removed by log
    /// compaction stop taking disk space. Slow; call it off the Raft task.
    pub fn compact_log_files(&self, index: Index) {
        let (lower, _) = self.space.log_bounds();
        self.db.compact_range_cf(
            self.cf(CF_RAFT_LOG),
            Some(&lower[..]),
            Some(&self.space.log_key(index)[..]),
        );
    }
}

/// The value in a `d` record (its newest version, specs/018-versions), if there is one.
fn value_of(record: Option<Vec<u8>>) -> Result<Option<Vec<u8>>> {
    match record {
        None => Ok(None),
        Some(rec) => Ok(Some(crate::mvcc::decode(&rec)?.1.to_vec())),
    }
}
