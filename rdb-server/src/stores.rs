//! The RocksDB stores behind the core: `RaftStorage` as its [`LogStore`] and `StateMachine`
//! as its [`Application`].

use raft::prelude::{ConfChangeV2, ConfState, Entry, HardState, Snapshot};
use rdb_storage::{CommandResult, RaftStorage, StateMachine};

use crate::raft_core::{Application, Applied, CoreError, LogStore};

impl LogStore for RaftStorage {
    fn append(
        &mut self,
        entries: &[Entry],
        hs: Option<&HardState>,
        sync: bool,
    ) -> Result<(), CoreError> {
        let started = std::time::Instant::now();
        self.append_with(entries, hs, sync)
            .map_err(CoreError::storage)?;
        let m = crate::metrics::metrics();
        if sync {
            m.observe_fsync(started.elapsed());
        }
        if !entries.is_empty() {
            m.entries_per_append.observe(entries.len() as f64);
        }
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) {
        RaftStorage::set_commit(self, commit)
    }

    fn compact(&mut self, compact_to: u64, applied: u64) -> Result<(), CoreError> {
        RaftStorage::compact(self, compact_to, applied).map_err(CoreError::storage)
    }

    fn apply_snapshot(&mut self, snap: &Snapshot, hs: Option<&HardState>) -> Result<(), CoreError> {
        RaftStorage::apply_snapshot(self, snap, hs).map_err(CoreError::storage)
    }

    fn start_snapshot_install(
        &mut self,
        snap: &Snapshot,
        hs: Option<&HardState>,
    ) -> Result<bool, CoreError> {
        if !self.installs_in_background() {
            return Ok(false);
        }
        RaftStorage::start_snapshot_install(self, snap, hs).map_err(CoreError::storage)?;
        Ok(true)
    }

    fn poll_snapshot_install(&mut self) -> Result<bool, CoreError> {
        RaftStorage::poll_snapshot_install(self).map_err(CoreError::storage)
    }

    fn truncated(&self) -> (u64, u64) {
        RaftStorage::truncated(self)
    }

    fn set_conf_state(&mut self, cs: &ConfState) {
        RaftStorage::set_conf_state(self, cs)
    }

    fn initial_voters(&self) -> Vec<u64> {
        RaftStorage::initial_voters(self).to_vec()
    }
}

impl Application for StateMachine {
    type Output = CommandResult;
    const FOLLOWER_READS: bool = true;

    fn applied_index(&self) -> Result<u64, CoreError> {
        Ok(self
            .engine()
            .apply_state()
            .map_err(CoreError::storage)?
            .index)
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Applied<CommandResult>>, CoreError> {
        let started = std::time::Instant::now();
        let applied = StateMachine::apply(self, entries).map_err(CoreError::storage)?;
        crate::metrics::metrics()
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(applied
            .into_iter()
            .map(|a| Applied {
                index: a.index,
                term: a.term,
                result: a.result,
            })
            .collect())
    }

    fn restored(&mut self) -> Result<(), CoreError> {
        self.reload().map_err(CoreError::storage)
    }

    fn apply_conf_change(
        &mut self,
        index: u64,
        term: u64,
        cc: &ConfChangeV2,
        cs: &ConfState,
    ) -> Result<(), CoreError> {
        StateMachine::apply_conf_change(self, index, term, cc, cs).map_err(CoreError::storage)
    }
}
