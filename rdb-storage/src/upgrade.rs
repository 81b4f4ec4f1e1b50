//! The upgrade of a data directory written before versioned keys (specs/018-versions, its
//! data model): its `d` records hold bare values, which become versions with revision 0
//! ("before history": `create_revision = mod_revision = 0`, `version = 1`).
//!
//! The rewrite goes in batches of the store's `d` records in key order, each batch with the
//! key it reached, so a crash resumes after the last batch written; the new settings record
//! is written last, in a synced batch. Every replica rewrites the same records at the same
//! applied index the same way, so replicas stay identical. Nothing applies while it runs: it
//! is part of opening the directory, before any group starts.

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use crate::engine::{ApplySettings, Engine};
use crate::keys::{self, CF_DATA, CF_RAFT_STATE};
use crate::mvcc::{self, BEFORE_HISTORY};
use crate::Result;

/// Bytes of rewritten records per batch.
const UPGRADE_BATCH_BYTES: usize = 4 << 20;

impl Engine {
    /// Rewrites every `d` record from a bare value to a version (resuming after a crash), then
    /// records `settings` with the version that says the directory holds versions. Returns how
    /// many records were rewritten now.
    pub(crate) fn upgrade_to_versions(&self, settings: ApplySettings) -> Result<u64> {
        let data = self.cf(CF_DATA);
        let state = self.cf(CF_RAFT_STATE);
        let (lower, upper) = keys::data_range(b"", b"");
        // Where an interrupted upgrade stopped: the last key it rewrote.
        let resume = self.db().get_cf(state, keys::UPGRADE_CURSOR_KEY)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper);
        let from = resume.clone().unwrap_or(lower);
        let it = self
            .db()
            .iterator_cf_opt(data, ro, IteratorMode::From(&from, Direction::Forward));
        let mut batch = WriteBatch::default();
        let mut rewritten = 0u64;
        for item in it {
            let (k, v) = item?;
            if resume.as_deref() == Some(&k[..]) {
                continue;
            }
            batch.put_cf(data, &k, mvcc::encode(&BEFORE_HISTORY, &v));
            rewritten += 1;
            if batch.size_in_bytes() >= UPGRADE_BATCH_BYTES {
                batch.put_cf(state, keys::UPGRADE_CURSOR_KEY, &k);
                self.write(std::mem::take(&mut batch), false)?;
            }
        }
        batch.put_cf(
            state,
            keys::APPLY_SETTINGS_KEY,
            crate::engine::encode_apply_settings(settings),
        );
        batch.delete_cf(state, keys::UPGRADE_CURSOR_KEY);
        // Synced: it also makes every earlier batch of the rewrite durable.
        self.write(batch, true)?;
        Ok(rewritten)
    }
}
