//! Log compaction, and the followers a leader keeps the log for: those still catching up
//! that were heard from lately or are installing a snapshot.

use raft::ProgressState;
use slog::{debug, info};

use super::Replica;
use crate::raft_core::{Application, CoreError, LogStore};

/// How many election timeouts a follower that received a snapshot may take to install it
/// while the leader keeps the log after the snapshot for it.
const INSTALL_GRACE_ELECTIONS: u64 = 30;

impl<S: LogStore, A: Application> Replica<S, A> {
    /// Compacts the log once `snapshot_threshold` applied entries are in it, keeping
    /// `catch_up_entries`. A leader also keeps what the slowest live follower still needs (see
    /// [`Replica::slowest_live_follower`]) unless the log is longer than `retained_log_cap`.
    /// Never past the applied index.
    pub(super) fn maybe_compact(&mut self) -> Result<Option<u64>, CoreError> {
        let truncated = self.raw.store().truncated().0;
        if self.applied.saturating_sub(truncated) <= self.snapshot_threshold {
            return Ok(None);
        }
        let mut compact_to = self.applied.saturating_sub(self.catch_up_entries) + 1;
        let mut held_for = None;
        let log_len = self
            .raw
            .raft
            .raft_log
            .last_index()
            .saturating_sub(truncated);
        if self.is_leader() && log_len <= self.retained_log_cap {
            if let Some((id, needed)) = self.slowest_live_follower() {
                if needed < compact_to {
                    compact_to = needed;
                    held_for = Some(id);
                }
            }
        }
        if compact_to <= truncated + 1 {
            debug!(self.logger, "compaction held for a follower"; "follower" => held_for,
                "needed" => compact_to, "log_len" => log_len);
            return Ok(None);
        }
        self.raw.mut_store().compact(compact_to, self.applied)?;
        info!(self.logger, "log compacted"; "compact_to" => compact_to, "applied" => self.applied,
            "held_for" => held_for);
        Ok(Some(compact_to))
    }

    /// Whether a message from `id` arrived within the last election timeout (in ticks).
    pub fn heard_lately(&self, id: u64) -> bool {
        self.last_heard
            .get(&id)
            .is_some_and(|&t| self.ticks.saturating_sub(t) <= self.active_ticks)
    }

    /// The follower still catching up that needs the oldest entry, and that entry's index.
    ///
    /// Counted: followers heard from within an election timeout, those raft-rs marks recently
    /// active, and those that received a snapshot lately (they are silent while installing it).
    /// What one has: its matched index, or the snapshot it is receiving or installing.
    fn slowest_live_follower(&mut self) -> Option<(u64, u64)> {
        let (me, ticks) = (self.id(), self.ticks);
        let grace = self.active_ticks * INSTALL_GRACE_ELECTIONS;
        let prs = self.raw.raft.prs();
        self.snapshot_delivered.retain(|id, &mut (index, at)| {
            ticks.saturating_sub(at) <= grace && prs.get(*id).is_some_and(|pr| pr.matched < index)
        });
        prs.iter()
            .filter_map(|(&id, pr)| {
                if id == me {
                    return None;
                }
                let heard = self.heard_lately(id);
                let delivered = self.snapshot_delivered.get(&id).map(|&(index, _)| index);
                if !(pr.recent_active || heard || delivered.is_some()) {
                    return None;
                }
                let mut have = pr.matched.max(delivered.unwrap_or(0));
                if pr.state == ProgressState::Snapshot {
                    have = have.max(pr.pending_snapshot);
                }
                Some((id, have + 1))
            })
            .min_by_key(|&(_, needed)| needed)
    }
}
