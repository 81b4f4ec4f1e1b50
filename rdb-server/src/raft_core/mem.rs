//! An in-memory log store and KV application over one simulated disk, for the core's tests.
//!
//! [`MemDisk`] models what RocksDB's write-ahead log promises: writes become visible at once
//! and in order; a synced write makes itself and everything before it durable; a crash keeps
//! the durable state plus some prefix of the unsynced writes (torn at a write boundary, never
//! inside one). [`MemLog`] and [`MemKv`] are the two halves the core sees, like `RaftStorage`
//! and `StateMachine` over one RocksDB. The KV half runs `rdb_storage`'s own command logic
//! ([`rdb_storage::apply_command`]), so the tests apply exactly what the server does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use prost::Message as _;
use raft::prelude::{
    ConfChangeV2, ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata,
};
use raft::{GetEntriesContext, RaftState, StorageError};
use rdb_proto::command::Command;
use rdb_storage::{keys, CommandResult, Records};

use super::{Application, Applied, CoreError, LogStore};

/// How to undo one unsynced change.
#[derive(Debug, Clone)]
enum Undo {
    Entry(u64, Option<Entry>),
    HardState(HardState),
    Data(Vec<u8>, Option<Vec<u8>>),
    Applied((u64, u64)),
    ConfState(ConfState),
}

/// What one node's disk holds.
#[derive(Debug, Default)]
pub struct DiskState {
    entries: BTreeMap<u64, Entry>,
    hard_state: HardState,
    conf_state: ConfState,
    /// The voters the disk was bootstrapped with (none for a node that joined later).
    initial_voters: Vec<u64>,
    truncated: (u64, u64),
    /// The `data` family: user records and dedup records.
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    applied: (u64, u64),
    /// Unsynced writes, oldest first, each as the changes that undo it.
    unsynced: Vec<Vec<Undo>>,
    /// Synced writes so far (each one an fsync on a real disk).
    synced_writes: u64,
}

impl DiskState {
    /// The user data, dedup records and applied index, to compare replicas.
    pub fn data(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.data
    }

    /// Index and term of the last applied entry recorded on disk.
    pub fn applied(&self) -> (u64, u64) {
        self.applied
    }

    /// The value of user key `key`, as a read after a read barrier sees it (its newest
    /// version; None for a record that does not decode, which the replica comparison shows).
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let rec = self.data.get(&keys::data_key(key))?;
        rdb_storage::mvcc::decode(rec).ok().map(|(_, v)| v.to_vec())
    }

    fn last_index(&self) -> u64 {
        self.entries
            .last_key_value()
            .map_or(self.truncated.0, |(&i, _)| i)
    }

    fn set_entry(&mut self, undo: &mut Option<&mut Vec<Undo>>, index: u64, e: Option<Entry>) {
        let old = match e {
            Some(e) => self.entries.insert(index, e),
            None => self.entries.remove(&index),
        };
        if let Some(u) = undo {
            u.push(Undo::Entry(index, old));
        }
    }

    /// What compaction does to the `data` family in RocksDB: drops the dedup records that died
    /// by the durable applied index, durably (a crash does not bring them back). Like
    /// compaction, it runs at a different moment on every replica.
    pub fn drop_dead_records(&mut self, window: u64) {
        // The applied index as a crash losing every unsynced write would leave it.
        let durable = self
            .unsynced
            .iter()
            .flatten()
            .find_map(|u| match u {
                Undo::Applied(a) => Some(a.0),
                _ => None,
            })
            .unwrap_or(self.applied.0);
        self.data
            .retain(|k, v| !rdb_storage::dedup::is_dead(k, v, durable, window));
    }

    fn finish(&mut self, undo: Option<Vec<Undo>>, sync: bool) {
        if sync {
            self.synced_writes += 1;
        }
        match undo {
            Some(u) if !sync => self.unsynced.push(u),
            _ => self.unsynced.clear(),
        }
    }
}

/// One node's disk, shared by its [`MemLog`] and [`MemKv`]; it outlives their crashes.
#[derive(Debug, Clone, Default)]
pub struct MemDisk(Arc<Mutex<DiskState>>);

impl MemDisk {
    /// A disk bootstrapped for a group of `voters`.
    pub fn bootstrap(voters: &[u64]) -> MemDisk {
        let disk = MemDisk::default();
        let mut d = disk.lock();
        d.conf_state = ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        };
        d.initial_voters = voters.to_vec();
        drop(d);
        disk
    }

    /// Locks the disk's state.
    pub fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Synced writes so far: what would be fsyncs on a real disk.
    pub fn synced_writes(&self) -> u64 {
        self.lock().synced_writes
    }

    /// Unsynced writes that a crash may lose.
    pub fn unsynced_writes(&self) -> usize {
        self.lock().unsynced.len()
    }

    /// Power loss: keeps the first `keep` unsynced writes and loses the rest.
    pub fn crash(&self, keep: usize) {
        let mut d = self.lock();
        while d.unsynced.len() > keep {
            let Some(undo) = d.unsynced.pop() else { break };
            for u in undo.into_iter().rev() {
                match u {
                    Undo::Entry(i, Some(e)) => {
                        d.entries.insert(i, e);
                    }
                    Undo::Entry(i, None) => {
                        d.entries.remove(&i);
                    }
                    Undo::HardState(hs) => d.hard_state = hs,
                    Undo::Data(k, Some(v)) => {
                        d.data.insert(k, v);
                    }
                    Undo::Data(k, None) => {
                        d.data.remove(&k);
                    }
                    Undo::Applied(a) => d.applied = a,
                    Undo::ConfState(cs) => d.conf_state = cs,
                }
            }
        }
        d.unsynced.clear();
    }
}

/// The Raft log and state of one node, on a [`MemDisk`].
pub struct MemLog {
    disk: MemDisk,
    /// The hard state as Raft knows it; the commit index reaches the disk lazily, as in
    /// `RaftStorage`.
    hard_state: HardState,
}

impl MemLog {
    /// Opens the log of `disk` as a restarted node finds it.
    pub fn open(disk: MemDisk) -> MemLog {
        let mut hard_state = {
            let d = disk.lock();
            d.hard_state.clone()
        };
        let applied = disk.lock().applied.0;
        hard_state.commit = hard_state.commit.max(applied);
        MemLog { disk, hard_state }
    }
}

fn unavailable() -> raft::Error {
    raft::Error::Store(StorageError::Unavailable)
}

impl raft::Storage for MemLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.disk.lock().conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let d = self.disk.lock();
        if low <= d.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > d.last_index() + 1 {
            panic!(
                "entries high {high} is out of bound, last index {}",
                d.last_index()
            );
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut size = 0u64;
        for i in low..high {
            let e = d.entries.get(&i).ok_or_else(unavailable)?;
            size += u64::from(protobuf::Message::compute_size(e));
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let d = self.disk.lock();
        if idx == d.truncated.0 {
            return Ok(d.truncated.1);
        }
        if idx < d.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        d.entries.get(&idx).map(|e| e.term).ok_or_else(unavailable)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.disk.lock().truncated.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.disk.lock().last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let d = self.disk.lock();
        if d.applied.0 < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut data = Vec::new();
        for (k, v) in &d.data {
            for part in [k, v] {
                data.extend_from_slice(&(part.len() as u32).to_be_bytes());
                data.extend_from_slice(part);
            }
        }
        let mut meta = SnapshotMetadata {
            index: d.applied.0,
            term: d.applied.1,
            ..Default::default()
        };
        meta.set_conf_state(d.conf_state.clone());
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        snap.set_metadata(meta);
        Ok(snap)
    }
}

fn decode_pairs(mut b: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, CoreError> {
    let bad = || CoreError::Raft(raft::Error::ConfigInvalid("malformed snapshot data".into()));
    let take = |b: &mut &[u8]| -> Result<Vec<u8>, CoreError> {
        let len = b
            .get(..4)
            .and_then(|l| l.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(bad)? as usize;
        let v = b.get(4..4 + len).ok_or_else(bad)?.to_vec();
        *b = &b[4 + len..];
        Ok(v)
    };
    let mut out = BTreeMap::new();
    while !b.is_empty() {
        let k = take(&mut b)?;
        let v = take(&mut b)?;
        out.insert(k, v);
    }
    Ok(out)
}

impl LogStore for MemLog {
    fn append(
        &mut self,
        entries: &[Entry],
        hs: Option<&HardState>,
        sync: bool,
    ) -> Result<(), CoreError> {
        let mut d = self.disk.lock();
        let mut undo_log = Vec::new();
        let mut undo = (!sync).then_some(&mut undo_log);
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            assert!(
                first.index > d.truncated.0 && first.index <= d.last_index() + 1,
                "append at {} outside the log ({}..={})",
                first.index,
                d.truncated.0 + 1,
                d.last_index()
            );
            for e in entries {
                d.set_entry(&mut undo, e.index, Some(e.clone()));
            }
            let stale: Vec<u64> = d.entries.range(last.index + 1..).map(|(&i, _)| i).collect();
            for i in stale {
                d.set_entry(&mut undo, i, None);
            }
        }
        if let Some(hs) = hs {
            let old = std::mem::replace(&mut d.hard_state, hs.clone());
            if let Some(u) = &mut undo {
                u.push(Undo::HardState(old));
            }
            self.hard_state = hs.clone();
        }
        d.finish((!sync).then_some(undo_log), sync);
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = self.hard_state.commit.max(commit);
    }

    fn compact(&mut self, compact_to: u64, applied: u64) -> Result<(), CoreError> {
        let mut d = self.disk.lock();
        let compact_to = compact_to.min(applied + 1).min(d.last_index() + 1);
        if compact_to <= d.truncated.0 + 1 {
            return Ok(());
        }
        let term = d
            .entries
            .get(&(compact_to - 1))
            .map(|e| e.term)
            .ok_or_else(unavailable)?;
        d.entries = d.entries.split_off(&compact_to);
        d.truncated = (compact_to - 1, term);
        // Synced, like `RaftStorage::compact`: earlier apply writes are durable first.
        d.finish(None, true);
        Ok(())
    }

    fn apply_snapshot(&mut self, snap: &Snapshot, hs: Option<&HardState>) -> Result<(), CoreError> {
        let meta = snap.get_metadata();
        let data = decode_pairs(&snap.data)?;
        let mut d = self.disk.lock();
        let mut hard_state = hs.cloned().unwrap_or_else(|| self.hard_state.clone());
        hard_state.commit = hard_state.commit.max(meta.index);
        d.hard_state = hard_state.clone();
        d.conf_state = meta.get_conf_state().clone();
        d.entries.clear();
        d.truncated = (meta.index, meta.term);
        d.data = data;
        d.applied = (meta.index, meta.term);
        d.finish(None, true);
        self.hard_state = hard_state;
        Ok(())
    }

    fn truncated(&self) -> (u64, u64) {
        self.disk.lock().truncated
    }

    /// The disk already holds it: [`MemKv`] wrote it with the apply.
    fn set_conf_state(&mut self, _cs: &ConfState) {}

    fn initial_voters(&self) -> Vec<u64> {
        self.disk.lock().initial_voters.clone()
    }
}

/// The KV state machine on a [`MemDisk`]: `rdb_storage`'s command logic over a map.
pub struct MemKv {
    disk: MemDisk,
    /// The dedup window, and the history kept (the simulation never deletes history: what
    /// the background deletion drops is not part of what replicas compare).
    settings: rdb_storage::ApplySettings,
    /// Apply calls between two runs of the modelled compaction (see
    /// [`DiskState::drop_dead_records`]).
    pub compact_every: u32,
    applies: u32,
}

impl MemKv {
    /// The KV application of `disk`, remembering request ids for `dedup_window` entries.
    pub fn open(disk: MemDisk, dedup_window: u64) -> MemKv {
        MemKv {
            disk,
            settings: rdb_storage::ApplySettings {
                dedup_window: dedup_window.max(1),
                history_revisions: rdb_storage::engine::DEFAULT_HISTORY_REVISIONS,
                history_ms: 0,
            },
            compact_every: 1,
            applies: 0,
        }
    }

    /// The disk, for reads after a read barrier.
    pub fn disk(&self) -> &MemDisk {
        &self.disk
    }
}

/// The writes of one apply call, visible at once, with what undoes them.
struct MemBatch<'a> {
    d: &'a mut DiskState,
    undo: Vec<Undo>,
}

impl Records for MemBatch<'_> {
    fn read(&self, key: &[u8]) -> rdb_storage::Result<Option<Vec<u8>>> {
        Ok(self.d.data.get(key).cloned())
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        let old = self.d.data.insert(key.clone(), value);
        self.undo.push(Undo::Data(key, old));
    }

    fn delete(&mut self, key: Vec<u8>) {
        let old = self.d.data.remove(&key);
        self.undo.push(Undo::Data(key, old));
    }
}

impl Application for MemKv {
    type Output = CommandResult;
    const FOLLOWER_READS: bool = true;

    fn applied_index(&self) -> Result<u64, CoreError> {
        Ok(self.disk.lock().applied.0)
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Applied<CommandResult>>, CoreError> {
        let Some(last) = entries.last() else {
            return Ok(Vec::new());
        };
        let mut d = self.disk.lock();
        let mut b = MemBatch {
            d: &mut d,
            undo: Vec::new(),
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let result = match e.get_entry_type() {
                EntryType::EntryNormal if !e.data.is_empty() => {
                    Some(match Command::decode(e.data.as_ref()) {
                        Ok(cmd) => rdb_storage::apply_command(&mut b, cmd, e.index, &self.settings)
                            .map_err(CoreError::storage)?,
                        Err(err) => Err(format!("undecodable command at index {}: {err}", e.index)),
                    })
                }
                _ => None,
            };
            out.push(Applied {
                index: e.index,
                term: e.term,
                result,
            });
        }
        let old = std::mem::replace(&mut b.d.applied, (last.index, last.term));
        b.undo.push(Undo::Applied(old));
        let undo = std::mem::take(&mut b.undo);
        // Not synced, like `StateMachine::apply`: the log can replay it.
        d.finish(Some(undo), false);
        self.applies = self.applies.wrapping_add(1);
        if self.applies.is_multiple_of(self.compact_every.max(1)) {
            d.drop_dead_records(self.settings.dedup_window);
        }
        Ok(out)
    }

    fn restored(&mut self) -> Result<(), CoreError> {
        Ok(())
    }

    fn apply_conf_change(
        &mut self,
        index: u64,
        term: u64,
        cc: &ConfChangeV2,
        cs: &ConfState,
    ) -> Result<(), CoreError> {
        let records = rdb_storage::records_of_change(cc).map_err(CoreError::storage)?;
        let mut d = self.disk.lock();
        let mut undo = Vec::new();
        for r in records {
            let k = rdb_storage::member_key(r.id).to_vec();
            let old = d.data.insert(k.clone(), prost::Message::encode_to_vec(&r));
            undo.push(Undo::Data(k, old));
        }
        let old = std::mem::replace(&mut d.conf_state, cs.clone());
        undo.push(Undo::ConfState(old));
        let old = std::mem::replace(&mut d.applied, (index, term));
        undo.push(Undo::Applied(old));
        // Not synced, like any apply: the log can replay it.
        d.finish(Some(undo), false);
        Ok(())
    }
}
