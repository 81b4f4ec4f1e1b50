//! [`RaftStorage`]: the Raft log, hard state and conf state in RocksDB, implementing
//! `raft::Storage` to its contract.
//!
//! The log holds entries `first_index ..= last_index`. Everything at or below the *truncated*
//! index (the last entry removed by compaction or replaced by a snapshot) is gone; its term is
//! kept so that `term(first_index - 1)` still answers, as raft-rs requires.
//!
//! Recent entries are also kept in memory ([`EntryCache`]) because the leader reads the entries
//! it just persisted to send them to followers and to apply them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};
use slog::{debug, info, warn, Logger};

use crate::engine::{AppendBatch, Engine};
use crate::keys::{self, CF_RAFT_LOG, CF_RAFT_STATE};
use crate::snapshot::{self, SnapshotSlot};
use crate::{Error, Index, Result, Term};

/// Most entries kept in memory.
const CACHE_MAX_ENTRIES: usize = 16 * 1024;
/// Most payload bytes kept in memory.
const CACHE_MAX_BYTES: usize = 64 << 20;

/// A window of the most recent log entries, contiguous by index.
#[derive(Default)]
struct EntryCache {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl EntryCache {
    fn first(&self) -> Option<Index> {
        self.entries.front().map(|e| e.index)
    }

    fn get(&self, index: Index) -> Option<&Entry> {
        let first = self.first()?;
        if index < first {
            return None;
        }
        self.entries.get((index - first) as usize)
    }

    /// Adds freshly persisted entries, dropping any cached ones they overwrite.
    fn append(&mut self, ents: &[Entry]) {
        let Some(new_first) = ents.first().map(|e| e.index) else {
            return;
        };
        if let Some(first) = self.first() {
            let contiguous = new_first <= first + self.entries.len() as u64;
            if new_first <= first || !contiguous {
                self.clear();
            } else {
                self.truncate_from(new_first);
            }
        }
        for e in ents {
            self.bytes += e.data.len() + e.context.len();
            self.entries.push_back(e.clone());
        }
        while self.entries.len() > CACHE_MAX_ENTRIES || self.bytes > CACHE_MAX_BYTES {
            self.pop_front();
        }
    }

    fn truncate_from(&mut self, index: Index) {
        while self.entries.back().is_some_and(|e| e.index >= index) {
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= e.data.len() + e.context.len();
            }
        }
    }

    /// Drops entries below `index`.
    fn compact_to(&mut self, index: Index) {
        while self.first().is_some_and(|f| f < index) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.data.len() + e.context.len();
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

/// Raft's view of a node's durable state. Owned by the Raft task (inside `RawNode`).
pub struct RaftStorage {
    engine: Engine,
    hard_state: HardState,
    conf_state: ConfState,
    initial_voters: Vec<u64>,
    truncated: (Index, Term),
    last_index: Index,
    cache: EntryCache,
    snapshots: Arc<Mutex<SnapshotSlot>>,
    /// A store's batch of every region's appends this turn (see [`RaftStorage::defer_appends`]).
    deferred: Option<AppendBatch>,
    /// Whether snapshots install on a thread of their own (see
    /// [`RaftStorage::install_in_background`]).
    background_installs: bool,
    /// A snapshot install running on a thread of its own.
    installing: Option<BackgroundInstall>,
    logger: Logger,
}

impl RaftStorage {
    /// From now on, appends go into `batch` instead of to the database: a PD-mode store writes
    /// every region's appends of a turn as one synced write (`Engine::write_store_batch`)
    /// before anything that depends on them leaves the store. Until then the entries are only
    /// in this storage's memory (its entry cache serves them).
    pub fn defer_appends(&mut self, batch: AppendBatch) {
        self.deferred = Some(batch);
    }

    /// From now on, the caller installs snapshots with [`RaftStorage::start_snapshot_install`]
    /// (a PD-mode store: one region's install must not hold up the others).
    pub fn install_in_background(&mut self) {
        self.background_installs = true;
    }

    /// Whether the caller installs snapshots with [`RaftStorage::start_snapshot_install`].
    pub fn installs_in_background(&self) -> bool {
        self.background_installs
    }

    /// Loads the Raft state of an engine that was bootstrapped with `Engine::bootstrap_or_check`.
    pub fn open(engine: Engine, logger: Logger) -> Result<RaftStorage> {
        let mut hard_state = engine
            .hard_state()?
            .ok_or_else(|| Error::Corrupt("hard state missing".into()))?;
        let conf_state = engine
            .conf_state()?
            .ok_or_else(|| Error::Corrupt("conf state missing".into()))?;
        let truncated = engine
            .get_pair(keys::TRUNCATED_STATE_KEY)?
            .ok_or_else(|| Error::Corrupt("truncated state missing".into()))?;
        let apply = engine.apply_state()?;
        // The commit index in the hard state may lag what was applied (it is written lazily);
        // anything applied was committed.
        if hard_state.commit < apply.index {
            hard_state.commit = apply.index;
        }
        let space = engine.space();
        let (lower, upper) = space.log_bounds();
        let mut ro = ReadOptions::default();
        ro.set_total_order_seek(true);
        ro.set_iterate_lower_bound(lower);
        ro.set_iterate_upper_bound(upper);
        let mut it = engine
            .db()
            .iterator_cf_opt(engine.cf(CF_RAFT_LOG), ro, IteratorMode::End);
        let last_index = match it.next() {
            Some(item) => {
                let (k, _) = item?;
                space
                    .log_index(&k)
                    .ok_or_else(|| Error::Corrupt("raft log key of the wrong shape".into()))?
            }
            None => truncated.0,
        };
        drop(it);
        if last_index < truncated.0 {
            return Err(Error::Corrupt(format!(
                "last log index {last_index} below truncated index {}",
                truncated.0
            )));
        }
        if apply.index > last_index.max(truncated.0) {
            return Err(Error::Corrupt(format!(
                "applied index {} beyond the log's last index {last_index}",
                apply.index
            )));
        }
        let initial_voters = engine.initial_voters()?;
        let s = RaftStorage {
            engine,
            hard_state,
            conf_state,
            initial_voters,
            truncated,
            last_index,
            cache: EntryCache::default(),
            snapshots: Arc::new(Mutex::new(SnapshotSlot::default())),
            deferred: None,
            background_installs: false,
            installing: None,
            logger,
        };
        // Check that the log is contiguous from first to last: a gap means lost writes.
        if s.last_index > s.truncated.0 {
            let count = s.count_entries()?;
            let expected = s.last_index - s.truncated.0;
            if count != expected {
                return Err(Error::Corrupt(format!(
                    "raft log has {count} entries between {} and {}, expected {expected}",
                    s.truncated.0 + 1,
                    s.last_index
                )));
            }
        }
        Ok(s)
    }

    /// How many entries the retained log holds, from their keys alone: a raw iterator copies
    /// no value out (entries can be batches of hundreds of KiB, and copying them was most of a
    /// restart's time), and the walk leaves the block cache as it was.
    fn count_entries(&self) -> Result<u64> {
        let mut n = 0;
        let space = self.engine.space();
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(space.log_bounds().1);
        ro.fill_cache(false);
        let mut it = self
            .engine
            .db()
            .raw_iterator_cf_opt(self.engine.cf(CF_RAFT_LOG), ro);
        it.seek(space.log_key(self.truncated.0 + 1));
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status()?;
        Ok(n)
    }

    /// The engine this storage writes to.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Index and term of the last entry removed from the log.
    pub fn truncated(&self) -> (Index, Term) {
        self.truncated
    }

    /// Takes the conf state a conf change wrote (with its apply batch) as the current one.
    pub fn set_conf_state(&mut self, cs: &ConfState) {
        self.conf_state = cs.clone();
    }

    /// The voters the group was bootstrapped with (see [`Engine::initial_voters`]).
    pub fn initial_voters(&self) -> &[u64] {
        &self.initial_voters
    }

    /// Persists a Ready's entries and hard state in one batch with a synced WAL.
    ///
    /// Entries may overwrite a conflicting suffix; any stale entries after the new last index
    /// are deleted in the same batch.
    pub fn append(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<()> {
        self.append_with(entries, hard_state, true)
    }

    /// [`RaftStorage::append`], with the WAL synced only if `sync` (unsynced is for tests that
    /// show what an unsynced log breaks).
    pub fn append_with(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<()> {
        let mut local = WriteBatch::default();
        let deferred = self.deferred.clone();
        let mut shared = deferred.as_ref().map(AppendBatch::lock);
        let batch: &mut WriteBatch = match shared.as_mut() {
            Some(b) => b,
            None => &mut local,
        };
        let log = self.engine.cf(CF_RAFT_LOG);
        let space = self.engine.space();
        let mut new_last = self.last_index;
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            if first.index <= self.truncated.0 {
                // raft-rs never appends below the snapshot; doing so would corrupt the log.
                panic!(
                    "append at {} overlaps truncated index {}",
                    first.index, self.truncated.0
                );
            }
            if first.index > self.last_index + 1 {
                panic!(
                    "append at {} leaves a gap after last index {}",
                    first.index, self.last_index
                );
            }
            for e in entries {
                batch.put_cf(log, space.log_key(e.index), e.write_to_bytes()?);
            }
            if last.index < self.last_index {
                batch.delete_range_cf(
                    log,
                    space.log_key(last.index + 1),
                    space.log_key(self.last_index + 1),
                );
            }
            new_last = last.index;
        }
        if let Some(hs) = hard_state {
            batch.put_cf(
                self.engine.cf(CF_RAFT_STATE),
                self.engine.state_key(keys::HARD_STATE_KEY),
                hs.write_to_bytes()?,
            );
        }
        fail::fail_point!("storage-append", |arg| Err(Error::injected(
            "storage-append",
            arg
        )));
        if shared.is_none() {
            self.engine.write(local, sync)?;
        }
        drop(shared);
        if !entries.is_empty() {
            self.last_index = new_last;
            self.cache.append(entries);
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Records a new commit index (from a LightReady) in memory only. It reaches the disk with
    /// the next hard state a Ready persists; until then nothing is lost: the entries committed
    /// in a LightReady are applied in the same turn, `open` recovers the commit index as at
    /// least the applied index, and anything beyond that is re-learned from the leader.
    pub fn set_commit(&mut self, commit: Index) {
        self.hard_state.commit = self.hard_state.commit.max(commit);
    }

    /// Removes entries below `compact_to` (exclusive), keeping `term(compact_to - 1)` answerable.
    /// `compact_to - 1` must be applied, so a snapshot can always stand in for what is removed.
    pub fn compact(&mut self, compact_to: Index, applied: Index) -> Result<()> {
        if compact_to <= self.truncated.0 + 1 {
            return Ok(());
        }
        let compact_to = compact_to.min(applied + 1).min(self.last_index + 1);
        if compact_to <= self.truncated.0 + 1 {
            return Ok(());
        }
        let new_truncated = (compact_to - 1, self.term_of(compact_to - 1)?);
        let mut batch = WriteBatch::default();
        let space = self.engine.space();
        batch.delete_range_cf(
            self.engine.cf(CF_RAFT_LOG),
            space.log_key(0),
            space.log_key(compact_to),
        );
        batch.put_cf(
            self.engine.cf(CF_RAFT_STATE),
            self.engine.state_key(keys::TRUNCATED_STATE_KEY),
            keys::encode_pair(new_truncated.0, new_truncated.1),
        );
        // Synced: the apply batches before this point must be durable before the log that could
        // re-create them is gone, and a synced write flushes every earlier WAL record.
        self.engine.write(batch, true)?;
        info!(self.logger, "compacted raft log"; "truncated_index" => new_truncated.0, "truncated_term" => new_truncated.1);
        self.truncated = new_truncated;
        self.cache.compact_to(compact_to);
        Ok(())
    }

    /// Replaces the whole state with a received snapshot: user data, dedup records, apply
    /// state, truncated state, conf state, hard state, and an emptied log.
    ///
    /// `hard_state` is the Ready's hard state, if it has one: it is written as is (commit raised
    /// to the snapshot index), so term and vote always come from the same hard state. Without
    /// one, the current hard state is kept with its commit raised.
    ///
    /// The snapshot's file is verified first (a bad one changes nothing). Then, with bounded
    /// memory: one synced batch records the pending install with the Raft-side state, the data
    /// is replaced in batches, and a last synced batch sets the apply state and clears the
    /// marker. A crash in between is finished by `Engine::open_with` on restart.
    ///
    /// This runs on the caller's thread for as long as the load takes; a store of many regions
    /// uses [`RaftStorage::start_snapshot_install`] instead.
    pub fn apply_snapshot(
        &mut self,
        snap: &Snapshot,
        hard_state: Option<&HardState>,
    ) -> Result<()> {
        let desc = self.begin_snapshot_install(snap, hard_state)?;
        let pairs = snapshot::finish_install(&self.engine, &desc, &AtomicBool::new(false))?;
        info!(self.logger, "applied snapshot"; "index" => desc.index, "term" => desc.term,
            "keys" => pairs, "bytes" => desc.file_len);
        Ok(())
    }

    /// The first phase of [`RaftStorage::apply_snapshot`]: verifies the file, then writes the
    /// pending-install marker, hard state, conf state, truncated state and the emptied log in
    /// one synced batch, and updates the in-memory Raft state. The data is not touched yet.
    pub(crate) fn begin_snapshot_install(
        &mut self,
        snap: &Snapshot,
        hard_state: Option<&HardState>,
    ) -> Result<snapshot::SnapshotDescriptor> {
        let (desc, hs) = self.install_plan(snap, hard_state)?;
        let never = AtomicBool::new(false);
        write_install_start(&self.engine, snap, &desc, &hs, &never, &self.logger)?;
        self.installed(snap, hs);
        Ok(desc)
    }

    /// [`RaftStorage::apply_snapshot`] on a thread of its own: verifying the file, the first
    /// batch and the load all run there, while the caller goes on with other work. The caller
    /// must not touch this group's log or Raft state until [`RaftStorage::poll_snapshot_install`]
    /// says the install is over (a store holds the region's Ready meanwhile: no step, no tick,
    /// no append), and only then does this storage take the snapshot's Raft state. Dropping the
    /// storage before then stops the install between two of its writes, as a crash would: the
    /// next start finishes it (or, stopped before its first batch, never began it).
    pub fn start_snapshot_install(
        &mut self,
        snap: &Snapshot,
        hard_state: Option<&HardState>,
    ) -> Result<()> {
        if self.installing.is_some() {
            return Err(Error::Corrupt(
                "a snapshot install started while another one is under way".into(),
            ));
        }
        let (desc, hs) = self.install_plan(snap, hard_state)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (engine, logger) = (self.engine.clone(), self.logger.clone());
        let (thread_snap, thread_hs, thread_stop) = (snap.clone(), hs.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("snapshot-install".into())
            .spawn(move || {
                write_install_start(
                    &engine,
                    &thread_snap,
                    &desc,
                    &thread_hs,
                    &thread_stop,
                    &logger,
                )?;
                snapshot::finish_install(&engine, &desc, &thread_stop)
            })?;
        self.installing = Some(BackgroundInstall {
            handle: Some(handle),
            stop,
            snap: snap.clone(),
            hs,
            desc,
        });
        Ok(())
    }

    /// Whether the thread of an install started by [`RaftStorage::start_snapshot_install`] is
    /// still writing (a simulation waits for it, so that a seed replays alike).
    pub fn install_running(&self) -> bool {
        self.installing
            .as_ref()
            .and_then(|i| i.handle.as_ref())
            .is_some_and(|h| !h.is_finished())
    }

    /// Whether no install started by [`RaftStorage::start_snapshot_install`] is under way any
    /// more. When one just ended, this storage takes the snapshot's Raft state (as
    /// [`RaftStorage::apply_snapshot`] leaves it) before answering true; an install that failed
    /// returns its error (the store must stop: the next start finishes or redoes it).
    pub fn poll_snapshot_install(&mut self) -> Result<bool> {
        let Some(mut install) = self.installing.take() else {
            return Ok(true);
        };
        let Some(handle) = install.handle.take_if(|h| h.is_finished()) else {
            self.installing = Some(install);
            return Ok(false);
        };
        let pairs = handle.join().map_err(|_| {
            Error::Corrupt("the snapshot install thread ended without an outcome".into())
        })??;
        let (snap, hs, desc) = (install.snap.clone(), install.hs.clone(), install.desc);
        self.installed(&snap, hs);
        info!(self.logger, "applied snapshot"; "index" => desc.index, "term" => desc.term,
            "keys" => pairs, "bytes" => desc.file_len);
        Ok(true)
    }

    /// The descriptor of `snap` (checked against its metadata) and the hard state its install
    /// writes: the Ready's, or the current one, with the commit index raised to the snapshot.
    fn install_plan(
        &self,
        snap: &Snapshot,
        hard_state: Option<&HardState>,
    ) -> Result<(snapshot::SnapshotDescriptor, HardState)> {
        let meta = snap.get_metadata();
        let (index, term) = (meta.index, meta.term);
        let desc = snapshot::SnapshotDescriptor::decode(&snap.data)?;
        if (desc.index, desc.term) != (index, term) {
            return Err(Error::BadSnapshot(format!(
                "descriptor for {}/{} in a snapshot of {index}/{term}",
                desc.index, desc.term
            )));
        }
        let mut hs = hard_state.unwrap_or(&self.hard_state).clone();
        hs.commit = hs.commit.max(index);
        Ok((desc, hs))
    }

    /// Takes the Raft-side state an install of `snap` wrote (with `hs`) as the current one.
    fn installed(&mut self, snap: &Snapshot, hs: HardState) {
        let meta = snap.get_metadata();
        self.hard_state = hs;
        self.conf_state = meta.get_conf_state().clone();
        self.truncated = (meta.index, meta.term);
        self.last_index = meta.index;
        self.cache.clear();
    }

    fn term_of(&self, idx: Index) -> Result<Term> {
        if idx == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        if let Some(e) = self.cache.get(idx) {
            return Ok(e.term);
        }
        let v = self
            .engine
            .db()
            .get_cf(
                self.engine.cf(CF_RAFT_LOG),
                self.engine.space().log_key(idx),
            )?
            .ok_or_else(|| Error::Corrupt(format!("log entry {idx} missing")))?;
        Ok(Entry::parse_from_bytes(&v)?.term)
    }

    /// A handle the snapshot worker uses to publish the snapshots it builds.
    pub fn snapshot_slot(&self) -> Arc<Mutex<SnapshotSlot>> {
        self.snapshots.clone()
    }

    fn read_entries(&self, low: Index, high: Index, max_size: u64) -> Result<Vec<Entry>> {
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        let mut next = low;
        let cache_first = self.cache.first().unwrap_or(u64::MAX);
        if low < cache_first {
            let disk_high = high.min(cache_first);
            let space = self.engine.space();
            let mut ro = ReadOptions::default();
            ro.set_iterate_upper_bound(space.log_key(disk_high));
            let it = self.engine.db().iterator_cf_opt(
                self.engine.cf(CF_RAFT_LOG),
                ro,
                IteratorMode::From(&space.log_key(low), Direction::Forward),
            );
            for item in it {
                let (k, v) = item?;
                let idx = space
                    .log_index(&k)
                    .ok_or_else(|| Error::Corrupt("raft log key of the wrong shape".into()))?;
                if idx != next {
                    return Err(Error::Corrupt(format!("log entry {next} missing")));
                }
                let e = Entry::parse_from_bytes(&v)?;
                size += e.compute_size() as u64;
                if !out.is_empty() && size > max_size {
                    return Ok(out);
                }
                out.push(e);
                next += 1;
            }
            if next != disk_high {
                return Err(Error::Corrupt(format!("log entry {next} missing")));
            }
        }
        while next < high {
            let e = self
                .cache
                .get(next)
                .ok_or_else(|| Error::Corrupt(format!("log entry {next} missing from cache")))?;
            size += e.compute_size() as u64;
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e.clone());
            next += 1;
        }
        Ok(out)
    }
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    /// # Panics
    /// If `high > last_index + 1`, as the `raft::Storage` contract allows.
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            panic!(
                "entries high {high} is out of bound, last index {}",
                self.last_index
            );
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        Ok(self.read_entries(low, high, max_size)?)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        if idx < self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.term_of(idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mut slot = self
            .snapshots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // raft-rs ends the process on any error here but this one: a read that fails now is
        // tried again with the next request.
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let version = match self.engine.region_meta() {
            Ok(meta) => meta.map_or(0, |m| crate::region::epoch(&m).version),
            Err(e) => {
                warn!(self.logger, "cannot read the region meta for a snapshot"; "error" => %e);
                return Err(unavailable());
            }
        };
        // A snapshot built before `to` joined does not name it: raft-rs there ignores it, and
        // would be sent it again and again. A new build has the membership that added it.
        let ready = slot
            .ready_for(request_index.max(self.truncated.0), version)
            .filter(|s| names(s.get_metadata().get_conf_state(), to));
        if let Some(snap) = ready {
            return Ok(snap);
        }
        if slot.start_building() {
            info!(self.logger, "building snapshot"; "request_index" => request_index, "to" => to);
            snapshot::spawn_build(
                self.engine.clone(),
                self.snapshots.clone(),
                version,
                self.logger.clone(),
            );
        } else {
            debug!(self.logger, "snapshot not ready yet"; "request_index" => request_index, "to" => to);
        }
        Err(unavailable())
    }
}

/// Whether `id` is a member (voter or learner, either half of a joint configuration) of `cs`.
fn names(cs: &ConfState, id: u64) -> bool {
    [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ]
    .iter()
    .any(|ids| ids.contains(&id))
}

/// The first phase of an install: verifies the snapshot's file (a bad one, or a `stop`, changes
/// nothing), then writes the pending-install marker, hard state `hs`, conf state, truncated
/// state and the emptied log of `engine`'s group in one synced batch.
fn write_install_start(
    engine: &Engine,
    snap: &Snapshot,
    desc: &snapshot::SnapshotDescriptor,
    hs: &HardState,
    stop: &AtomicBool,
    logger: &Logger,
) -> Result<()> {
    let meta = snap.get_metadata();
    let (index, term) = (meta.index, meta.term);
    let path = desc.path_in(&engine.snap_dir());
    let pairs = snapshot::verify_file_unless(&path, desc, stop)?;
    let mut batch = WriteBatch::default();
    let log = engine.cf(CF_RAFT_LOG);
    let (lower, upper) = engine.space().log_bounds();
    batch.delete_range_cf(log, lower, upper);
    let state = engine.cf(CF_RAFT_STATE);
    let key = |name| engine.state_key(name);
    batch.put_cf(state, key(keys::HARD_STATE_KEY), hs.write_to_bytes()?);
    batch.put_cf(
        state,
        key(keys::CONF_STATE_KEY),
        meta.get_conf_state().write_to_bytes()?,
    );
    batch.put_cf(
        state,
        key(keys::TRUNCATED_STATE_KEY),
        keys::encode_pair(index, term),
    );
    batch.put_cf(state, key(keys::PENDING_SNAPSHOT_KEY), desc.encode());
    engine.write(batch, true)?;
    info!(logger, "snapshot install started"; "index" => index, "term" => term,
        "keys" => pairs, "bytes" => desc.file_len, "hs_term" => hs.term, "hs_vote" => hs.vote);
    Ok(())
}

/// A snapshot install running on a thread of its own (see
/// [`RaftStorage::start_snapshot_install`]).
struct BackgroundInstall {
    handle: Option<std::thread::JoinHandle<Result<u64>>>,
    /// Set when the storage is dropped: the install stops between two writes.
    stop: Arc<AtomicBool>,
    /// The snapshot, and the hard state its first batch writes.
    snap: Snapshot,
    hs: HardState,
    desc: snapshot::SnapshotDescriptor,
}

impl Drop for BackgroundInstall {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}
