//! The replicated key-value state machine: applies committed entries to the `data` column family.
//!
//! Each call to [`StateMachine::apply`] writes the user data, the dedup records and the applied
//! index in one atomic batch, so after a crash the node resumes exactly after the last applied
//! entry: nothing is lost and nothing is applied twice.
//!
//! Writes carry a client request id. The first time an id is applied, its result is recorded;
//! a retry of the same id (a client that did not hear the answer) is not applied again and gets
//! the recorded result back. A record counts for `dedup_window` log entries after the one that
//! wrote it, decided by log index alone so every replica agrees; a retry later than that
//! applies again (documented in specs/). Records past the window are deleted in the background
//! of later batches, which bounds their number.

use std::collections::HashMap;

use prost::Message as _;
use raft::prelude::{Entry, EntryType};
use rdb_proto::command::{command::Op, Command};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use crate::engine::Engine;
use crate::keys::{self, CF_DATA, CF_RAFT_STATE};
use crate::{Error, Index, Result, Term};

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResult {
    /// The value was written.
    Put,
    /// The key was removed; `existed` says whether it was there.
    Delete {
        /// Whether the key existed (for a deduplicated retry: as first recorded).
        existed: bool,
    },
    /// A compare-and-swap ran.
    Cas {
        /// Whether the value matched and was replaced.
        succeeded: bool,
        /// On failure, the value found (None if absent, or unknown for a deduplicated retry).
        current: Option<Vec<u8>>,
    },
    /// A hash point: the replica hashes its data as of this entry (see `rdb-cli check`).
    HashPoint,
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

/// Applies committed entries. Owned by whichever task applies (one at a time).
pub struct StateMachine {
    engine: Engine,
    dedup_window: u64,
    /// Every expiry record below this index has been removed.
    dedup_floor: Index,
}

const CODE_PUT: u8 = 1;
const CODE_DELETE_EXISTED: u8 = 2;
const CODE_DELETE_ABSENT: u8 = 3;
const CODE_CAS_OK: u8 = 4;
const CODE_CAS_FAILED: u8 = 5;
const CODE_HASH_POINT: u8 = 6;

impl StateMachine {
    /// A state machine over `engine`, keeping dedup records for `dedup_window` applied entries.
    pub fn new(engine: Engine, dedup_window: u64) -> Result<StateMachine> {
        let mut sm = StateMachine {
            engine,
            dedup_window: dedup_window.max(1),
            dedup_floor: 0,
        };
        sm.reload()?;
        Ok(sm)
    }

    /// Re-reads what is cached from disk (after a snapshot replaced the data).
    pub fn reload(&mut self) -> Result<()> {
        let db = self.engine.db();
        let mut it = db.iterator_cf(
            self.engine.cf(CF_DATA),
            IteratorMode::From(&[keys::DEDUP_EXPIRY_PREFIX], Direction::Forward),
        );
        self.dedup_floor = match it.next() {
            Some(item) => {
                let (k, _) = item?;
                keys::parse_dedup_expiry_key(&k).map_or(0, |(index, _, _)| index)
            }
            None => 0,
        };
        Ok(())
    }

    /// The engine this state machine writes to.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Applies `entries` (committed, in index order, contiguous after the applied index) in one
    /// atomic batch together with the new applied index.
    pub fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Applied>> {
        let Some(last) = entries.last() else {
            return Ok(Vec::new());
        };
        let mut batch = Batch {
            engine: &self.engine,
            dedup_window: self.dedup_window,
            wb: WriteBatch::default(),
            overlay: HashMap::new(),
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let result = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => None,
                EntryType::EntryNormal => Some(match Command::decode(e.data.as_ref()) {
                    Ok(cmd) => batch.apply_command(cmd, e.index)?,
                    Err(err) => Err(format!("undecodable command at index {}: {err}", e.index)),
                }),
                // Membership is fixed by the configuration file in this phase.
                _ => None,
            };
            out.push(Applied {
                index: e.index,
                term: e.term,
                result,
            });
        }
        let mut wb = batch.wb;
        self.expire_dedup(&mut wb, last.index, entries[0].index)?;
        wb.put_cf(
            self.engine.cf(CF_RAFT_STATE),
            keys::APPLY_STATE_KEY,
            keys::encode_pair(last.index, last.term),
        );
        // Not synced: the entries are durable in the log; if this batch is lost in a crash, the
        // applied index goes back with it and the entries are applied again from the log.
        self.engine.write(wb, false)?;
        Ok(out)
    }

    /// Deletes dedup records that no longer count (see `apply_command`). Only what is already
    /// in RocksDB is visible here, so the floor stops at this batch's first index: records the
    /// batch itself wrote are removed by a later batch.
    fn expire_dedup(
        &mut self,
        wb: &mut WriteBatch,
        applied: Index,
        batch_first: Index,
    ) -> Result<()> {
        let Some(threshold) = applied.checked_sub(self.dedup_window) else {
            return Ok(());
        };
        let threshold = threshold.min(batch_first);
        if threshold <= self.dedup_floor {
            return Ok(());
        }
        let data = self.engine.cf(CF_DATA);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::dedup_expiry_key(threshold, 0, 0).to_vec());
        let from = keys::dedup_expiry_key(self.dedup_floor, 0, 0);
        for item in self.engine.db().iterator_cf_opt(
            data,
            ro,
            IteratorMode::From(&from, Direction::Forward),
        ) {
            let (k, _) = item?;
            if let Some((_, client, seq)) = keys::parse_dedup_expiry_key(&k) {
                wb.delete_cf(data, keys::dedup_key(client, seq));
            }
            wb.delete_cf(data, &k);
        }
        self.dedup_floor = threshold;
        Ok(())
    }
}

/// One apply batch, with the writes made so far readable before they reach RocksDB.
struct Batch<'a> {
    engine: &'a Engine,
    dedup_window: u64,
    wb: WriteBatch,
    overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Batch<'_> {
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        Ok(self.engine.db().get_cf(self.engine.cf(CF_DATA), key)?)
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.wb.put_cf(self.engine.cf(CF_DATA), &key, &value);
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
        let dedup = (cmd.client_id != 0).then(|| keys::dedup_key(cmd.client_id, cmd.seq));
        if let Some(dk) = dedup {
            if let Some(rec) = self.read(&dk)? {
                // Whether a record still counts must depend only on the log, never on when a
                // replica got round to deleting it (apply batches differ between replicas).
                let recorded_at = record_index(&rec)?;
                if recorded_at.saturating_add(self.dedup_window) >= index {
                    return Ok(Ok(decode_result(&rec)?));
                }
            }
        }
        let Some(op) = cmd.op else {
            return Ok(Err(format!("command at index {index} has no operation")));
        };
        let result = match op {
            Op::Put(p) => {
                self.put(keys::data_key(&p.key), p.value);
                CommandResult::Put
            }
            Op::Delete(d) => {
                let k = keys::data_key(&d.key);
                let existed = self.read(&k)?.is_some();
                self.delete(k);
                CommandResult::Delete { existed }
            }
            Op::Cas(c) => {
                let k = keys::data_key(&c.key);
                let current = self.read(&k)?;
                if current == c.expected {
                    self.put(k, c.new_value);
                    CommandResult::Cas {
                        succeeded: true,
                        current: None,
                    }
                } else {
                    CommandResult::Cas {
                        succeeded: false,
                        current,
                    }
                }
            }
            // Writes nothing; the hashing itself is done by the caller of `apply`.
            Op::HashPoint(_) => CommandResult::HashPoint,
        };
        if let Some(dk) = dedup {
            let mut rec = index.to_be_bytes().to_vec();
            rec.push(encode_result(&result));
            self.put(dk.to_vec(), rec);
            let ek = keys::dedup_expiry_key(index, cmd.client_id, cmd.seq);
            self.put(ek.to_vec(), Vec::new());
        }
        Ok(Ok(result))
    }
}

fn encode_result(r: &CommandResult) -> u8 {
    match r {
        CommandResult::Put => CODE_PUT,
        CommandResult::Delete { existed: true } => CODE_DELETE_EXISTED,
        CommandResult::Delete { existed: false } => CODE_DELETE_ABSENT,
        CommandResult::Cas {
            succeeded: true, ..
        } => CODE_CAS_OK,
        CommandResult::Cas {
            succeeded: false, ..
        } => CODE_CAS_FAILED,
        CommandResult::HashPoint => CODE_HASH_POINT,
    }
}

fn record_index(rec: &[u8]) -> Result<Index> {
    rec.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(Index::from_be_bytes)
        .ok_or_else(|| Error::Corrupt("dedup record shorter than 8 bytes".into()))
}

fn decode_result(rec: &[u8]) -> Result<CommandResult> {
    match rec.get(8) {
        Some(&CODE_PUT) => Ok(CommandResult::Put),
        Some(&CODE_DELETE_EXISTED) => Ok(CommandResult::Delete { existed: true }),
        Some(&CODE_DELETE_ABSENT) => Ok(CommandResult::Delete { existed: false }),
        Some(&CODE_CAS_OK) => Ok(CommandResult::Cas {
            succeeded: true,
            current: None,
        }),
        Some(&CODE_CAS_FAILED) => Ok(CommandResult::Cas {
            succeeded: false,
            current: None,
        }),
        Some(&CODE_HASH_POINT) => Ok(CommandResult::HashPoint),
        _ => Err(Error::Corrupt("unknown dedup record".into())),
    }
}
