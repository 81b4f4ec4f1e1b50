//! The replicated key-value state machine: applies committed entries to the `data` column family.
//!
//! Each call to [`StateMachine::apply`] writes the user data, the dedup records and the applied
//! index in one atomic batch, so after a crash the node resumes exactly after the last applied
//! entry: nothing is lost and nothing is applied twice.
//!
//! Every write that changes data gets the group's next revision and keeps the versions it
//! supersedes as history (specs/018-versions, [`crate::mvcc`]); history behind the group's
//! compacted revision is deleted a bounded step after each batch.
//!
//! Writes carry a client request id. The first time an id is applied, its result is recorded;
//! a retry of the same id (a client that did not hear the answer) is not applied again and gets
//! the recorded result back. A record counts for `dedup_window` log entries after the one that
//! wrote it, decided by log index alone so every replica agrees; a retry later than that
//! applies again (documented in specs/). Records past the window are dead: RocksDB's compaction
//! drops them (see [`crate::dedup`]), which bounds their number without writing anything, and
//! replicas hold the same live records at the same applied index.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prost::Message as _;
use raft::prelude::{ConfChangeV2, ConfState, Entry, EntryType};
use rdb_proto::command::{command::Op, Command};
use rocksdb::{IteratorMode, WriteBatch};

use crate::dedup::{self, DedupPin};
use crate::engine::{ApplySettings, Engine};
use crate::keys::{self, Space, CF_DATA, CF_RAFT_STATE};
use crate::mvcc::{self, Change};
use crate::region::{self, Region};
use crate::{Error, Index, Result, Term};

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResult {
    /// The value was written.
    Put {
        /// The write's revision (specs/018-versions).
        revision: u64,
    },
    /// The key was removed; `existed` says whether it was there.
    Delete {
        /// Whether the key existed (for a deduplicated retry: as first recorded).
        existed: bool,
        /// The delete's revision; when nothing was deleted, the group's last revision.
        revision: u64,
    },
    /// A compare-and-swap ran.
    Cas {
        /// Whether the value matched and was replaced.
        succeeded: bool,
        /// On failure, the value found (None if absent, or unknown for a deduplicated retry).
        current: Option<Vec<u8>>,
        /// The swap's revision; on failure, the group's last revision.
        revision: u64,
        /// On failure, the key's versions (None if absent, or unknown for a deduplicated
        /// retry).
        current_meta: Option<mvcc::Meta>,
    },
    /// A delete whose condition did not hold: nothing was deleted.
    DeleteRefused {
        /// The key's versions (None if absent, or unknown for a deduplicated retry).
        current: Option<mvcc::Meta>,
        /// The group's last revision.
        revision: u64,
    },
    /// A hash point: every replica hashes its data as of this entry (see `rdb-cli check`).
    HashPoint {
        /// Log index of the hash point.
        index: Index,
    },
    /// A batch of puts and deletes applied as one.
    Batch {
        /// How many of its deletes found their key (for a deduplicated retry: as first
        /// recorded).
        deleted: u64,
        /// The batch's one revision (the group's last one if it changed nothing).
        revision: u64,
    },
    /// A region split (PD mode): this region now ends at the split key and `new_region` has
    /// state on this store; the store starts its peer.
    Split {
        /// Id of the region made by the split.
        new_region: u64,
    },
    /// This region (the source of a merge) prepared to merge into `target`: it applies no
    /// write from here on (specs/017-merge).
    MergePrepared {
        /// The region it merges into.
        target: u64,
    },
    /// Region `source` became part of this region (the target of a merge).
    Merged {
        /// The region merged in; gone from this store.
        source: u64,
    },
    /// This region's prepared merge was undone: it serves writes again.
    MergeRolledBack,
    /// A write stamped at or below the group's last revision (PD mode): refused, nothing
    /// changed and nothing recorded; the leader stamps it again.
    StaleStamp {
        /// The group's last revision.
        last: u64,
    },
    /// The group's last revision moved up to a read's revision (or already was there).
    Advanced {
        /// The group's last revision after it.
        last: u64,
    },
    /// A compaction ran (or was refused for a revision the group has not reached).
    Compacted {
        /// The group's compacted revision after it.
        compacted: u64,
        /// The group's last revision: a compaction above it was refused and changed nothing.
        last: u64,
    },
}

/// One applied entry and, for a client command, its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Log index of the entry.
    pub index: Index,
    /// Term of the entry; a waiting client compares it with the term it proposed in.
    pub term: Term,
    /// `None` for entries that are not client commands (a new leader's empty entry).
    /// `Some(Err)` for a command that does not decode (deterministic: every replica agrees).
    pub result: Option<std::result::Result<CommandResult, String>>,
}

/// What a hash point found (see [`StateMachine::hashes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashState {
    /// The data as of the hash point is being hashed in the background.
    Computing,
    /// The hash of every live record of the `data` column family as of the hash point.
    Done {
        /// xxh3 over every live (key, value), in key order, with their lengths (dead dedup
        /// records and history behind the compacted revision are skipped: compaction and the
        /// history sweep drop them at different times on each replica).
        hash: u64,
        /// Records hashed.
        records: u64,
    },
    /// Reading the data failed.
    Failed(String),
}

/// Results of recent hash points by log index, shared with the service that answers `Hash`.
pub type HashResults = Arc<Mutex<BTreeMap<Index, HashState>>>;

/// How many hash results are kept.
const HASH_RESULTS_KEPT: usize = 16;

/// History records the background deletion looks at after every apply batch, at least...
const SWEEP_MIN: usize = 64;
/// ...and per entry the batch applied (a pass every half retention then keeps up with writes).
const SWEEP_PER_ENTRY: usize = 8;

/// Applies committed entries. Owned by whichever task applies (one at a time).
pub struct StateMachine {
    engine: Engine,
    /// The settings applying follows: the dedup window, and how many revisions of history
    /// automatic compaction keeps.
    settings: ApplySettings,
    /// The background deletion of compacted history: the horizon its last full pass ran at,
    /// and the pass under way (its horizon and the user key it goes on from).
    swept: u64,
    sweep: Option<(u64, Vec<u8>)>,
    hashes: HashResults,
    /// The region's meta as applied (PD mode); `None` for a static node.
    region: Option<Region>,
    /// Regions this region's splits created since the store last asked ([`StateMachine::take_splits`]).
    splits: Vec<u64>,
    /// This region's merge state while it is the source of a merge (see [`region::merge`]).
    merging: Option<rdb_proto::command::MergeState>,
    /// Regions merged into this one since the store last asked ([`StateMachine::take_merges`]).
    merges: Vec<u64>,
    /// The merge this region's apply waits for: (source, prepare index) until the store's
    /// source replica applied that far ([`StateMachine::waiting_for`]).
    waiting: Option<(u64, Index)>,
}

const CODE_PUT: u8 = 1;
const CODE_DELETE_EXISTED: u8 = 2;
const CODE_DELETE_ABSENT: u8 = 3;
const CODE_CAS_OK: u8 = 4;
const CODE_CAS_FAILED: u8 = 5;
const CODE_HASH_POINT: u8 = 6;
/// A batch; the record goes on with the number of keys its deletes removed (8 bytes).
const CODE_BATCH: u8 = 7;
/// A split (never written: splits carry no request id; kept so every result has a code).
const CODE_SPLIT: u8 = 8;
/// A step of a merge (never written, as splits).
const CODE_MERGE: u8 = 9;
/// A delete whose condition did not hold.
const CODE_DELETE_REFUSED: u8 = 10;
/// Never recorded: a compaction carries no request id (running it twice changes nothing).
const CODE_COMPACT: u8 = 11;
/// Never recorded: a refused stamp leaves no trace, and an advance carries no request id.
const CODE_STAMP: u8 = 12;

impl StateMachine {
    /// A state machine over `engine`, keeping dedup records for `dedup_window` applied entries,
    /// and as many revisions of history as the directory's apply settings say.
    pub fn new(engine: Engine, dedup_window: u64) -> Result<StateMachine> {
        let stored = engine.apply_settings()?;
        let mut sm = StateMachine {
            engine,
            settings: ApplySettings {
                dedup_window: dedup_window.max(1),
                history_revisions: stored.map_or(crate::engine::DEFAULT_HISTORY_REVISIONS, |s| {
                    s.history_revisions
                }),
                history_ms: stored.map_or(crate::engine::DEFAULT_HISTORY_MS, |s| s.history_ms),
            },
            swept: 0,
            sweep: None,
            hashes: HashResults::default(),
            region: None,
            splits: Vec::new(),
            merging: None,
            merges: Vec::new(),
            waiting: None,
        };
        sm.reload()?;
        Ok(sm)
    }

    /// Re-reads what is cached from disk (after a snapshot replaced the data): the applied
    /// index, which decides which dedup records compaction may drop.
    pub fn reload(&mut self) -> Result<()> {
        // A directory not bootstrapped yet has no apply state: nothing is dead then.
        let applied = self
            .engine
            .get_pair(keys::APPLY_STATE_KEY)?
            .map_or(0, |(index, _)| index);
        self.engine
            .dedup_horizon()
            .configure(self.settings.dedup_window, applied);
        self.region = self.engine.region_meta()?;
        self.merging = self.engine.merge_state()?;
        // New data may bring history the sweep has not looked at: it starts over.
        self.swept = 0;
        self.sweep = None;
        Ok(())
    }

    /// This region's merge state while it is the source of a merge (between its PrepareMerge
    /// and the commit or rollback).
    pub fn merging(&self) -> Option<&rdb_proto::command::MergeState> {
        self.merging.as_ref()
    }

    /// The regions merged into this one (gone from this store, in the same batch) since the
    /// last call: the store drops their peers.
    pub fn take_merges(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.merges)
    }

    /// The merge whose commit this region's apply stopped at: (source region, prepare
    /// index). Applying goes on once this store's source replica applied up to that index.
    pub fn waiting_for(&self) -> Option<(u64, Index)> {
        self.waiting
    }

    /// The region's meta as applied (range, epoch, peers); `None` for a static node.
    pub fn region(&self) -> Option<&Region> {
        self.region.as_ref()
    }

    /// Applies the membership change at (`index`, `term`) ([`Engine::apply_conf_change`]); a
    /// region's meta then names its new peers.
    pub fn apply_conf_change(
        &mut self,
        index: Index,
        term: Term,
        cc: &ConfChangeV2,
        cs: &ConfState,
    ) -> Result<()> {
        self.engine.apply_conf_change(index, term, cc, cs)?;
        if self.region.is_some() {
            self.region = self.engine.region_meta()?;
        }
        Ok(())
    }

    /// The regions this region's splits created (their state is written, on every replica
    /// alike) since the last call: the store starts their peers.
    pub fn take_splits(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.splits)
    }

    /// The engine this state machine writes to.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Results of hash points, for the service that answers `Hash` requests.
    pub fn hashes(&self) -> HashResults {
        self.hashes.clone()
    }

    /// Applies `entries` (committed, in index order, contiguous after the applied index).
    ///
    /// The writes of a run of entries and the new applied index go in one atomic batch. What
    /// the batch leaves on disk depends only on the entries and the applied index, never on how
    /// entries were split into calls: replicas that applied the same log hold the same live
    /// records (dead dedup records go whenever compaction runs). A hash point ends its batch, so
    /// that the data hashed is exactly the state as of that entry.
    ///
    /// A merge's commit whose source replica on this store has not applied up to the merge's
    /// prepare yet stops the apply before it: the result then holds fewer entries than were
    /// given, and the caller gives the rest again later ([`StateMachine::waiting_for`]).
    pub fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Applied>> {
        let mut out = Vec::with_capacity(entries.len());
        let mut decoded: Vec<Option<std::result::Result<Command, prost::DecodeError>>> = entries
            .iter()
            .map(|e| {
                (e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty())
                    .then(|| Command::decode(e.data.as_ref()))
            })
            .collect();
        let mut batch = Batch::new(&self.engine, self.settings);
        batch.prefetch(decoded.iter().flatten().flatten())?;
        self.waiting = None;
        // Whether a write of this batch carried a PD timestamp (the history kept is then a
        // time, see `sweep_history`).
        let mut stamped = false;
        for (e, cmd) in entries.iter().zip(decoded.iter_mut()) {
            let result = match (e.get_entry_type(), cmd.take()) {
                (EntryType::EntryNormal, None) => None,
                (EntryType::EntryNormal, Some(cmd)) => Some(match cmd {
                    Ok(Command {
                        op: Some(Op::CommitMerge(c)),
                        ..
                    }) => {
                        // The merge reads the target's and the source's records from the
                        // database: what the batch holds so far goes first.
                        let done =
                            std::mem::replace(&mut batch, Batch::new(&self.engine, self.settings));
                        self.commit(done)?;
                        match self.commit_merge(&mut batch, &c, e.index)? {
                            Some(result) => result,
                            None => {
                                self.waiting = Some((c.source_id, c.prepare_index));
                                return Ok(out);
                            }
                        }
                    }
                    Ok(Command {
                        op: Some(Op::PrepareMerge(p)),
                        ..
                    }) => self.prepare_merge(&mut batch, &p, e.index)?,
                    Ok(Command {
                        op: Some(Op::RollbackMerge(r)),
                        ..
                    }) => self.rollback_merge(&mut batch, &r)?,
                    Ok(Command {
                        op: Some(Op::Split(split)),
                        ..
                    }) => {
                        // A split reads the region's dedup records from the database: what
                        // the batch holds so far goes first.
                        let done =
                            std::mem::replace(&mut batch, Batch::new(&self.engine, self.settings));
                        self.commit(done)?;
                        self.split(&mut batch, &split, e.index)?
                    }
                    Ok(cmd) => {
                        stamped |= cmd.stamp != 0;
                        match self.outside_region(&cmd).or_else(|| self.frozen(&cmd)) {
                            Some(refused) => Err(refused),
                            None => batch.apply_command(cmd, e.index)?,
                        }
                    }
                    Err(err) => Err(format!("undecodable command at index {}: {err}", e.index)),
                }),
                // Conf changes never come here: the core applies them through
                // `Application::apply_conf_change`.
                _ => None,
            };
            batch.last = Some((e.index, e.term));
            let hash_point = matches!(result, Some(Ok(CommandResult::HashPoint { .. })));
            // A merge writes past the batch's overlay (the source's records it moves): it ends
            // its batch, so later entries read what it wrote.
            let merged = matches!(result, Some(Ok(CommandResult::Merged { .. })));
            out.push(Applied {
                index: e.index,
                term: e.term,
                result,
            });
            if merged {
                let done = std::mem::replace(&mut batch, Batch::new(&self.engine, self.settings));
                self.commit(done)?;
            }
            if hash_point {
                let done = std::mem::replace(&mut batch, Batch::new(&self.engine, self.settings));
                self.commit(done)?;
                self.start_hash(e.index);
            }
        }
        if batch.last.is_some() {
            self.commit(batch)?;
        }
        let newest = out
            .iter()
            .filter_map(|a| match &a.result {
                Some(Ok(r)) => result_revision(r),
                _ => None,
            })
            .max();
        // A compaction by hand starts a pass at once, to its revision.
        let by_hand = out
            .iter()
            .filter_map(|a| match &a.result {
                Some(Ok(CommandResult::Compacted { compacted, .. })) => Some(*compacted),
                _ => None,
            })
            .max();
        if let Some(horizon) = by_hand {
            let under_way = self.sweep.as_ref().map_or(self.swept, |(h, _)| *h);
            if horizon > under_way.max(self.swept) {
                self.sweep = Some((horizon, Vec::new()));
            }
        }
        self.sweep_history(newest, stamped, SWEEP_MIN + SWEEP_PER_ENTRY * entries.len())?;
        Ok(out)
    }

    /// One bounded step of the background deletion of this group's compacted history (see
    /// [`mvcc::Sweep`]), run after an apply batch whose newest write got revision `newest`:
    /// about `budget` history records looked at. A pass over the group's range starts once
    /// the compacted revision moved a whole retention past the last pass's (history then
    /// holds at most about two retentions), so each write pays a record or two of it. What it
    /// deletes is no longer part of the replicated state (reads below the compacted revision
    /// are refused, and the replica hash skips it), so replicas may sweep at their own pace.
    fn sweep_history(&mut self, newest: Option<u64>, stamped: bool, budget: usize) -> Result<()> {
        if self.sweep.is_none() {
            // Only a write moves the compacted revision, to at least its revision minus the
            // retention (a merge may have moved it further: sweeping to a lower horizon only
            // keeps more). Without automatic compaction there is nothing to sweep. Writes
            // stamped with PD timestamps keep history for a time, not a count.
            let keep = if stamped {
                self.settings
                    .history_ms
                    .saturating_mul(1 << crate::engine::STAMP_LOGICAL_BITS)
            } else {
                self.settings.history_revisions
            };
            let (Some(newest), true) = (newest, keep > 0) else {
                return Ok(());
            };
            let compacted = newest.saturating_sub(keep);
            if compacted < self.swept.saturating_add(keep) {
                return Ok(());
            }
            self.sweep = Some((compacted, Vec::new()));
        }
        let Some((horizon, from)) = self.sweep.take() else {
            return Ok(());
        };
        let (start, end) = match &self.region {
            Some(r) => (r.start_key.as_slice(), r.end_key.as_slice()),
            None => (&[][..], &[][..]),
        };
        let from = if from.as_slice() < start {
            start.to_vec()
        } else {
            from
        };
        let next = if !end.is_empty() && from.as_slice() >= end {
            None
        } else {
            self.engine
                .compact_history_step(horizon, &from, end, budget)?
                .1
        };
        match next {
            Some(k) => self.sweep = Some((horizon, k)),
            None => self.swept = horizon,
        }
        Ok(())
    }

    /// In a region, a write whose keys are not all inside the region's range as applied is
    /// refused: a write proposed before a split and applied after it must not touch the other
    /// half's keys. The same on every replica, as the range changes only through the log.
    fn outside_region(&self, cmd: &Command) -> Option<String> {
        let region = self.region.as_ref()?;
        let outside = |k: &[u8]| !region::contains(region, k);
        let key = match &cmd.op {
            Some(Op::Put(p)) => outside(&p.key).then_some(&p.key),
            Some(Op::Delete(d)) => outside(&d.key).then_some(&d.key),
            Some(Op::Cas(c)) => outside(&c.key).then_some(&c.key),
            Some(Op::Batch(b)) => b
                .puts
                .iter()
                .map(|p| &p.key)
                .chain(b.deletes.iter().map(|d| &d.key))
                .find(|k| outside(k)),
            _ => None,
        }?;
        Some(format!(
            "key not in region: {:?} is outside region {} (version {})",
            String::from_utf8_lossy(key),
            region.id,
            region::epoch(region).version
        ))
    }

    /// While this region is the source of a merge, a write (or a split) is refused: its data
    /// is what the target takes over, as of the prepare.
    fn frozen(&self, cmd: &Command) -> Option<String> {
        let state = self.merging.as_ref()?;
        match &cmd.op {
            Some(Op::HashPoint(_)) | None => None,
            _ => Some(format!(
                "region merging: region {} is merging into region {}",
                self.region.as_ref().map_or(0, |r| r.id),
                state.prepare.as_ref().map_or(0, |p| p.target_id)
            )),
        }
    }

    /// Applies a PrepareMerge at `index` into `batch`: the source's new epoch and its merge
    /// state, in the batch that records the applied index.
    fn prepare_merge(
        &mut self,
        batch: &mut Batch,
        p: &rdb_proto::command::PrepareMerge,
        index: Index,
    ) -> Result<std::result::Result<CommandResult, String>> {
        let Some(source) = self.region.as_ref() else {
            return Ok(Err(format!(
                "merge at index {index} in a group that is not a region"
            )));
        };
        let prepared = match region::merge::plan_prepare(source, self.merging.as_ref(), p) {
            Ok(r) => r,
            Err(refused) => return Ok(Err(refused)),
        };
        let state = rdb_proto::command::MergeState {
            prepare: Some(*p),
            index,
        };
        batch.put(keys::region_meta_key(prepared.id), prepared.encode_to_vec());
        batch.put(keys::region_merge_key(prepared.id), state.encode_to_vec());
        self.region = Some(prepared);
        self.merging = Some(state);
        Ok(Ok(CommandResult::MergePrepared {
            target: p.target_id,
        }))
    }

    /// Applies a RollbackMerge into `batch`: the merge state goes and the version moves on.
    fn rollback_merge(
        &mut self,
        batch: &mut Batch,
        r: &rdb_proto::command::RollbackMerge,
    ) -> Result<std::result::Result<CommandResult, String>> {
        let (Some(source), Some(state)) = (self.region.as_ref(), self.merging.as_ref()) else {
            return Ok(Err(
                "rollback of a merge in a region that is not merging".into()
            ));
        };
        if state.index != r.prepare_index {
            return Ok(Err(format!(
                "rollback names the merge prepared at index {}, region {} prepared at {}",
                r.prepare_index, source.id, state.index
            )));
        }
        let mut back = source.clone();
        let mut ep = region::epoch(source);
        ep.version += 1;
        back.epoch = Some(ep);
        batch.put(keys::region_meta_key(back.id), back.encode_to_vec());
        batch.delete(keys::region_merge_key(back.id));
        self.region = Some(back);
        self.merging = None;
        Ok(Ok(CommandResult::MergeRolledBack))
    }

    /// Applies a CommitMerge at `index` into `batch` (which the caller just emptied): refused
    /// the same on every replica if the target's epoch or the ranges do not fit; `None` if the
    /// store's source replica has not applied up to the prepare yet (the caller stops there);
    /// otherwise the whole merge, in the one batch that records the applied index.
    fn commit_merge(
        &mut self,
        batch: &mut Batch,
        c: &rdb_proto::command::CommitMerge,
        index: Index,
    ) -> Result<Option<std::result::Result<CommandResult, String>>> {
        let Some(target) = self.region.as_ref() else {
            return Ok(Some(Err(format!(
                "merge at index {index} in a group that is not a region"
            ))));
        };
        let merged = match region::merge::plan_commit(target, c) {
            Ok(r) => r,
            Err(refused) => return Ok(Some(Err(refused))),
        };
        // Every replica of the target waits for its store's source replica (every store of
        // one hosts one of the other: the prepare checked that, and neither's peers can change
        // before the commit without failing the epoch check).
        match self.engine.region_applied(c.source_id)? {
            Some(applied) if applied >= c.prepare_index => {}
            _ => return Ok(None),
        }
        let source = self.engine.region(c.source_id)?;
        let state = source.merge_state()?;
        let prepared_here = state.as_ref().is_some_and(|s| {
            s.index == c.prepare_index
                && s.prepare.as_ref().is_some_and(|p| p.target_id == merged.id)
        });
        if !prepared_here {
            // The source's leader proposed this commit only after the prepare applied, and
            // only a target that can no longer take the commit lets the source roll back.
            return Err(Error::Corrupt(format!(
                "region {} applied the merge of region {} prepared at index {}, but this \
                 store's replica of region {} is not prepared for it",
                merged.id, c.source_id, c.prepare_index, c.source_id
            )));
        }
        // A crash here leaves both regions as they were on this store: nothing of the merge is
        // written until its one batch.
        fail::fail_point!("storage-merge", |arg| Err(Error::injected(
            "storage-merge",
            arg
        )));
        region::merge_batch(
            &self.engine,
            &mut batch.wb,
            &merged,
            c.source_id,
            c.prepare_index,
            index,
            self.settings.dedup_window,
        )?;
        self.region = Some(merged);
        self.merges.push(c.source_id);
        Ok(Some(Ok(CommandResult::Merged {
            source: c.source_id,
        })))
    }

    /// Applies a split at `index` into `batch` (which the caller just emptied): the parent's
    /// new range and epoch, and the new region's whole initial state, in the one batch that
    /// also records the applied index, so the split is atomic on every replica.
    fn split(
        &mut self,
        batch: &mut Batch,
        split: &rdb_proto::command::Split,
        index: Index,
    ) -> Result<std::result::Result<CommandResult, String>> {
        let Some(parent) = self.region.as_ref() else {
            return Ok(Err(format!(
                "split at index {index} in a group that is not a region"
            )));
        };
        let (left, right) = match region::plan_split(parent, split) {
            Ok(halves) => halves,
            Err(refused) => return Ok(Err(refused)),
        };
        region::split_batch(
            &self.engine,
            &mut batch.wb,
            &left,
            &right,
            index,
            self.settings.dedup_window,
        )?;
        self.region = Some(left);
        self.splits.push(right.id);
        Ok(Ok(CommandResult::Split {
            new_region: right.id,
        }))
    }

    /// Writes a batch with the apply state; once a synced write follows, compaction may drop
    /// the dedup records that died with it.
    fn commit(&mut self, mut batch: Batch) -> Result<()> {
        let Some((index, term)) = batch.last else {
            return Ok(());
        };
        if let Some(revisions) = batch.revisions.take() {
            batch
                .wb
                .put_cf(self.engine.cf(CF_DATA), &batch.revisions_key, revisions);
        }
        let applied = keys::encode_pair(index, term);
        batch.wb.put_cf(
            self.engine.cf(CF_RAFT_STATE),
            self.engine.state_key(keys::APPLY_STATE_KEY),
            applied,
        );
        batch.wb.put_cf(
            self.engine.cf(CF_DATA),
            self.engine.space().data_apply_key(),
            applied,
        );
        fail::fail_point!("storage-apply", |arg| Err(Error::injected(
            "storage-apply",
            arg
        )));
        // Not synced: the entries are durable in the log; if this batch is lost in a crash, the
        // applied index goes back with it and the entries are applied again from the log.
        self.engine.write(batch.wb, false)?;
        self.engine.dedup_horizon().written(index);
        Ok(())
    }

    /// Hashes the data as it is now (right after a hash point was written) on a thread of its
    /// own. The thread takes its RocksDB snapshot before this returns, so later batches cannot
    /// leak into the hash, and the Raft thread does not wait for the hashing itself.
    fn start_hash(&mut self, index: Index) {
        {
            let mut hashes = lock(&self.hashes);
            hashes.insert(index, HashState::Computing);
            while hashes.len() > HASH_RESULTS_KEPT {
                hashes.pop_first();
            }
        }
        let (taken_tx, taken_rx) = std::sync::mpsc::channel::<()>();
        let engine = self.engine.clone();
        let hashes = self.hashes.clone();
        let window = self.settings.dedup_window;
        let ranges = match region::owned_ranges(engine.space(), self.region.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                lock(&self.hashes).insert(index, HashState::Failed(e.to_string()));
                return;
            }
        };
        // Pinned here, at `index`, before the view exists: records live at the hash point stay
        // in the view whatever compaction does meanwhile.
        let pin = engine.dedup_horizon().pin();
        let spawned = std::thread::Builder::new()
            .name("hash-point".into())
            .spawn(move || {
                let view = engine.db().snapshot();
                let _ = taken_tx.send(());
                let result = hash_view(&engine, &view, &ranges, index, window, pin);
                lock(&hashes).insert(
                    index,
                    match result {
                        Ok((hash, records)) => HashState::Done { hash, records },
                        Err(e) => HashState::Failed(e.to_string()),
                    },
                );
            });
        match spawned {
            // An error here means the thread ended before taking its view: it recorded nothing.
            Ok(_) => {
                let _ = taken_rx.recv();
            }
            Err(e) => {
                lock(&self.hashes).insert(index, HashState::Failed(format!("cannot start: {e}")));
            }
        }
    }
}

/// The hash a hash point at the group's applied index would give, computed now from the
/// group's own view `engine` and its meta `region` (None for a static node): what the
/// simulation compares replicas by, besides their data.
pub fn replica_hash(
    engine: &Engine,
    region: Option<&Region>,
    applied: Index,
    window: u64,
) -> Result<(u64, u64)> {
    let ranges = region::owned_ranges(engine.space(), region)?;
    let pin = engine.dedup_horizon().pin();
    let view = engine.db().snapshot();
    hash_view(engine, &view, &ranges, applied, window, pin)
}

/// xxh3 over every live record of the group's `ranges` of the data column family in `view`
/// (taken at `applied`), with lengths, in key order. `_pin` keeps compaction from dropping
/// records the view shows.
fn hash_view(
    engine: &Engine,
    view: &rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>,
    ranges: &[(Vec<u8>, Vec<u8>)],
    applied: Index,
    window: u64,
    _pin: DedupPin,
) -> Result<(u64, u64)> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut records = 0u64;
    let cf = engine.cf(CF_DATA);
    let horizon =
        mvcc::decode_revisions(view.get_cf(cf, engine.space().revisions_key())?.as_deref())?
            .compacted;
    for (lower, upper) in ranges {
        // History below the compacted revision that the background deletion may or may not
        // have reached yet on this replica is not hashed.
        let mut sweep = mvcc::Sweep::new(horizon);
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound(upper.clone());
        let it = view.iterator_cf_opt(
            cf,
            ro,
            IteratorMode::From(lower, rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            if dedup::is_dead(&k, &v, applied, window) {
                continue;
            }
            if let Some((key, rev)) = mvcc::history_record_key(&k) {
                let newest = |key: &[u8]| match view.get_cf(cf, keys::data_key(key))? {
                    Some(rec) => Ok(Some(mvcc::decode(&rec)?.0)),
                    None => Ok(None),
                };
                if sweep.drops(key, rev, &v, newest)? {
                    continue;
                }
            }
            h.update(&(k.len() as u64).to_be_bytes());
            h.update(&k);
            h.update(&(v.len() as u64).to_be_bytes());
            h.update(&v);
            records += 1;
        }
    }
    Ok((h.digest(), records))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One apply batch, with the writes made so far readable before they reach RocksDB.
struct Batch {
    engine: Engine,
    settings: ApplySettings,
    wb: WriteBatch,
    overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Index and term of the last entry in the batch.
    last: Option<(Index, Term)>,
    /// The group's revisions record, written once when the batch is committed (every write
    /// of the batch moves it; writing each would put them all in the memtable).
    revisions_key: Vec<u8>,
    revisions: Option<Vec<u8>>,
    /// Records read ahead for the batch's commands ([`Batch::prefetch`]), as the database held
    /// them before the batch: reads look in `overlay` (the batch's own writes) first.
    cache: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Batch {
    fn new(engine: &Engine, settings: ApplySettings) -> Batch {
        Batch {
            engine: engine.clone(),
            settings,
            wb: WriteBatch::default(),
            overlay: HashMap::new(),
            last: None,
            revisions_key: engine.space().revisions_key(),
            revisions: None,
            cache: HashMap::new(),
        }
    }

    /// Reads, in one batched lookup, every record `cmds` will read: their dedup records, the
    /// newest versions of their keys and the group's revisions. Each command reads them
    /// anyway, one lookup at a time; RocksDB's batched MultiGet does the lot in one pass over
    /// the memtables and files, which matters as each put reads its key's version (most of
    /// them misses for new keys, or blocks of recent files).
    fn prefetch<'a>(&mut self, cmds: impl Iterator<Item = &'a Command>) -> Result<()> {
        let space = self.engine.space();
        let mut wanted = vec![self.revisions_key.clone()];
        for cmd in cmds {
            if cmd.client_id != 0 {
                wanted.push(space.dedup_key(cmd.client_id, cmd.seq));
            }
            match &cmd.op {
                Some(Op::Put(p)) => wanted.push(keys::data_key(&p.key)),
                Some(Op::Delete(d)) => wanted.push(keys::data_key(&d.key)),
                Some(Op::Cas(c)) => wanted.push(keys::data_key(&c.key)),
                Some(Op::Batch(b)) => wanted.extend(
                    b.puts
                        .iter()
                        .map(|p| keys::data_key(&p.key))
                        .chain(b.deletes.iter().map(|d| keys::data_key(&d.key))),
                ),
                _ => {}
            }
        }
        wanted.sort();
        wanted.dedup();
        let found = self
            .engine
            .db()
            .batched_multi_get_cf(self.engine.cf(CF_DATA), &wanted, true);
        for (key, value) in wanted.into_iter().zip(found) {
            self.cache.insert(key, value?.map(|v| v.to_vec()));
        }
        Ok(())
    }

    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.cache.get(key) {
            return Ok(v.clone());
        }
        Ok(self.engine.db().get_cf(self.engine.cf(CF_DATA), key)?)
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if key == self.revisions_key {
            self.revisions = Some(value.clone());
        } else {
            self.wb.put_cf(self.engine.cf(CF_DATA), &key, &value);
        }
        self.overlay.insert(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.wb.delete_cf(self.engine.cf(CF_DATA), &key);
        self.overlay.insert(key, None);
    }

    fn apply_command(
        &mut self,
        cmd: Command,
        index: Index,
    ) -> Result<std::result::Result<CommandResult, String>> {
        let settings = self.settings;
        apply_command(self, cmd, index, &settings)
    }
}

impl Records for Batch {
    fn space(&self) -> Space {
        self.engine.space()
    }

    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Batch::read(self, key)
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        Batch::put(self, key, value)
    }

    fn delete(&mut self, key: Vec<u8>) {
        Batch::delete(self, key)
    }
}

/// Where KV commands read and write the records of the `data` family: a RocksDB apply batch
/// here, memory in the simulation. Both run [`apply_command`], so the simulation tests the very
/// logic the server applies with.
pub trait Records {
    /// Whose records these are (a region keeps its dedup records under its own prefix).
    fn space(&self) -> Space {
        Space::Node
    }
    /// The record at `key`, including writes made earlier in the same batch.
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Writes a record.
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>);
    /// Removes a record.
    fn delete(&mut self, key: Vec<u8>);
}

/// Applies one command at `index`: a retry of a request id recorded within the settings'
/// dedup window gets the recorded result and changes nothing; anything else runs, and a
/// command with a request id records its result (dead once the window has passed, see
/// [`crate::dedup`]).
///
/// A command that changes data gets the group's next revision (specs/018-versions): every
/// key it writes keeps its newest version in its `d` record and the one it superseded in
/// history, and the group's revisions record moves on in the same batch, with its compacted
/// revision kept `history_revisions` behind (0: no automatic compaction). All of it depends
/// only on the log, so every replica records the same.
pub fn apply_command<R: Records + ?Sized>(
    r: &mut R,
    cmd: Command,
    index: Index,
    settings: &ApplySettings,
) -> Result<std::result::Result<CommandResult, String>> {
    let dedup = (cmd.client_id != 0).then(|| r.space().dedup_key(cmd.client_id, cmd.seq));
    if let Some(dk) = &dedup {
        if let Some(rec) = r.read(dk)? {
            // Whether a record still counts must depend only on the log, never on when a
            // replica got round to deleting it (apply batches differ between replicas).
            let recorded_at = record_index(&rec)?;
            if recorded_at.saturating_add(settings.dedup_window) >= index {
                return Ok(Ok(decode_result(&rec)?));
            }
        }
    }
    let Some(op) = cmd.op else {
        return Ok(Err(format!("command at index {index} has no operation")));
    };
    let revs = mvcc::revisions(r)?;
    // PD mode: the leader's stamp is the revision, if it is above every one recorded (the
    // same check on every replica, so all refuse or all apply).
    let stamped = cmd.stamp != 0;
    let writes = matches!(op, Op::Put(_) | Op::Delete(_) | Op::Cas(_) | Op::Batch(_));
    if stamped && writes && cmd.stamp <= revs.last {
        return Ok(Ok(CommandResult::StaleStamp { last: revs.last }));
    }
    let next = if stamped { cmd.stamp } else { revs.last + 1 };
    // How far behind the last revision the compacted one follows (0: not at all): revisions
    // counted, or for PD timestamps the milliseconds of history kept.
    let behind = if stamped {
        settings
            .history_ms
            .saturating_mul(1 << crate::engine::STAMP_LOGICAL_BITS)
    } else {
        settings.history_revisions
    };
    let compacted_at = |last: u64| match behind {
        0 => revs.compacted,
        behind => revs.compacted.max(last.saturating_sub(behind)),
    };
    let result = match op {
        Op::Put(p) => {
            mvcc::write(r, &p.key, Change::Put(p.value), next)?;
            CommandResult::Put { revision: next }
        }
        Op::Delete(d) => {
            let refused = match d.condition.and_then(|c| c.check) {
                None => None,
                Some(check) => {
                    let current = current_version(r, &d.key)?.map(|(meta, _)| meta);
                    (!holds(&check, current.as_ref())).then_some(current)
                }
            };
            match refused {
                Some(current) => CommandResult::DeleteRefused {
                    current,
                    revision: revs.last,
                },
                None => {
                    let existed = mvcc::write(r, &d.key, Change::Delete, next)?
                        .before
                        .is_some();
                    CommandResult::Delete {
                        existed,
                        revision: if existed { next } else { revs.last },
                    }
                }
            }
        }
        Op::Cas(c) => {
            let current = current_version(r, &c.key)?;
            let matched = match c.condition.and_then(|c| c.check) {
                Some(check) => holds(&check, current.as_ref().map(|(meta, _)| meta)),
                None => current.as_ref().map(|(_, v)| v) == c.expected.as_ref(),
            };
            if matched {
                mvcc::write(r, &c.key, Change::Put(c.new_value), next)?;
                CommandResult::Cas {
                    succeeded: true,
                    current: None,
                    revision: next,
                    current_meta: None,
                }
            } else {
                let (current_meta, current) = current.unzip();
                CommandResult::Cas {
                    succeeded: false,
                    current,
                    revision: revs.last,
                    current_meta,
                }
            }
        }
        // Writes nothing; `StateMachine::apply` hashes the data as of this entry.
        Op::HashPoint(_) => CommandResult::HashPoint { index },
        // Moves the compacted revision forward, never past the last one; the history behind
        // it goes in the background (`StateMachine::sweep_history`).
        Op::Advance(a) => {
            if a.revision > revs.last {
                let behind = settings
                    .history_ms
                    .saturating_mul(1 << crate::engine::STAMP_LOGICAL_BITS);
                let compacted = match behind {
                    0 => revs.compacted,
                    behind => revs.compacted.max(a.revision.saturating_sub(behind)),
                };
                mvcc::set_revisions(
                    r,
                    mvcc::Revisions {
                        last: a.revision,
                        compacted,
                    },
                );
            }
            CommandResult::Advanced {
                last: revs.last.max(a.revision),
            }
        }
        Op::Compact(c) => {
            let to = match (c.revision > revs.last, c.up_to_last) {
                (false, _) => c.revision,
                (true, true) => revs.last,
                (true, false) => revs.compacted,
            };
            if to > revs.compacted {
                mvcc::set_revisions(
                    r,
                    mvcc::Revisions {
                        last: revs.last,
                        compacted: to,
                    },
                );
            }
            CommandResult::Compacted {
                compacted: revs.compacted.max(to),
                last: revs.last,
            }
        }
        // `StateMachine::apply` runs a region's splits and merges itself; anywhere else they
        // are refused.
        Op::Split(_) | Op::PrepareMerge(_) | Op::CommitMerge(_) | Op::RollbackMerge(_) => {
            return Ok(Err(format!(
                "split or merge at index {index} in a group that is not a region"
            )))
        }
        Op::Batch(b) if b.deletes.iter().any(|d| d.condition.is_some()) => {
            return Ok(Err(format!(
                "command at index {index}: a batch's deletes take no condition"
            )))
        }
        Op::Batch(b) => {
            let changes = !b.puts.is_empty();
            for p in b.puts {
                mvcc::write(r, &p.key, Change::Put(p.value), next)?;
            }
            let mut deleted = 0;
            for d in b.deletes {
                if mvcc::write(r, &d.key, Change::Delete, next)?
                    .before
                    .is_some()
                {
                    deleted += 1;
                }
            }
            CommandResult::Batch {
                deleted,
                revision: if changes || deleted > 0 {
                    next
                } else {
                    revs.last
                },
            }
        }
    };
    if writes && result_revision(&result) == Some(next) {
        mvcc::set_revisions(
            r,
            mvcc::Revisions {
                last: next,
                compacted: compacted_at(next),
            },
        );
    }
    if let Some(dk) = dedup {
        let mut rec = index.to_be_bytes().to_vec();
        rec.push(encode_result(&result));
        if let CommandResult::Batch { deleted, .. } = result {
            rec.extend_from_slice(&deleted.to_be_bytes());
        }
        if let Some(revision) = result_revision(&result) {
            rec.extend_from_slice(&revision.to_be_bytes());
        }
        r.put(dk, rec);
    }
    Ok(Ok(result))
}

/// The newest version of `key` in `r`: its meta and value (None: absent).
fn current_version<R: Records + ?Sized>(
    r: &R,
    key: &[u8],
) -> Result<Option<(mvcc::Meta, Vec<u8>)>> {
    match r.read(&keys::data_key(key))? {
        None => Ok(None),
        Some(rec) => {
            let (meta, value) = mvcc::decode(&rec)?;
            Ok(Some((meta, value.to_vec())))
        }
    }
}

/// Whether a condition holds for a key whose newest version has `current` (None: absent, which
/// has version and mod_revision 0).
fn holds(check: &rdb_proto::command::condition::Check, current: Option<&mvcc::Meta>) -> bool {
    use rdb_proto::command::condition::Check;
    match check {
        Check::Version(v) => current.map_or(0, |m| m.version) == *v,
        Check::ModRevision(r) => current.map_or(0, |m| m.mod_revision) == *r,
    }
}

/// The revision a write's result carries (None for results that are not writes).
fn result_revision(r: &CommandResult) -> Option<u64> {
    match r {
        CommandResult::Put { revision }
        | CommandResult::Delete { revision, .. }
        | CommandResult::Cas { revision, .. }
        | CommandResult::DeleteRefused { revision, .. }
        | CommandResult::Batch { revision, .. } => Some(*revision),
        _ => None,
    }
}

fn encode_result(r: &CommandResult) -> u8 {
    match r {
        CommandResult::Put { .. } => CODE_PUT,
        CommandResult::Delete { existed: true, .. } => CODE_DELETE_EXISTED,
        CommandResult::Delete { existed: false, .. } => CODE_DELETE_ABSENT,
        CommandResult::Cas {
            succeeded: true, ..
        } => CODE_CAS_OK,
        CommandResult::Cas {
            succeeded: false, ..
        } => CODE_CAS_FAILED,
        CommandResult::DeleteRefused { .. } => CODE_DELETE_REFUSED,
        CommandResult::HashPoint { .. } => CODE_HASH_POINT,
        CommandResult::Batch { .. } => CODE_BATCH,
        // Never recorded: a split carries no request id (the store proposes it).
        CommandResult::Split { .. } => CODE_SPLIT,
        CommandResult::MergePrepared { .. }
        | CommandResult::Merged { .. }
        | CommandResult::MergeRolledBack => CODE_MERGE,
        CommandResult::Compacted { .. } => CODE_COMPACT,
        CommandResult::StaleStamp { .. } | CommandResult::Advanced { .. } => CODE_STAMP,
    }
}

fn record_index(rec: &[u8]) -> Result<Index> {
    dedup::record_index(rec)
        .ok_or_else(|| Error::Corrupt("dedup record shorter than 8 bytes".into()))
}

/// The result a dedup record holds. A record carries its revision after the result (records
/// written before versioned keys have none: their revision reads as 0).
fn decode_result(rec: &[u8]) -> Result<CommandResult> {
    let u64_at = |at: usize| {
        rec.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    };
    let revision = |at: usize| u64_at(at).unwrap_or(0);
    match rec.get(8) {
        Some(&CODE_PUT) => Ok(CommandResult::Put {
            revision: revision(9),
        }),
        Some(&CODE_DELETE_EXISTED) => Ok(CommandResult::Delete {
            existed: true,
            revision: revision(9),
        }),
        Some(&CODE_DELETE_ABSENT) => Ok(CommandResult::Delete {
            existed: false,
            revision: revision(9),
        }),
        Some(&CODE_CAS_OK) => Ok(CommandResult::Cas {
            succeeded: true,
            current: None,
            revision: revision(9),
            current_meta: None,
        }),
        Some(&CODE_CAS_FAILED) => Ok(CommandResult::Cas {
            succeeded: false,
            current: None,
            revision: revision(9),
            current_meta: None,
        }),
        Some(&CODE_DELETE_REFUSED) => Ok(CommandResult::DeleteRefused {
            current: None,
            revision: revision(9),
        }),
        Some(&CODE_HASH_POINT) => Ok(CommandResult::HashPoint {
            index: record_index(rec)?,
        }),
        Some(&CODE_BATCH) => Ok(CommandResult::Batch {
            deleted: u64_at(9)
                .ok_or_else(|| Error::Corrupt("batch dedup record too short".into()))?,
            revision: revision(17),
        }),
        _ => Err(Error::Corrupt("unknown dedup record".into())),
    }
}
