//! Applying committed entries: commands go to the application in runs, each membership change
//! on its own, so its conf state is written with exactly the index it belongs to.

use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeV2, Entry, EntryType};
use raft_proto::ConfChangeI;
use slog::{info, warn};

use super::{ReadyOutput, Replica};
use crate::raft_core::{Application, Applied, CoreError, LogStore};

impl<S: LogStore, A: Application> Replica<S, A> {
    /// Whether the application stopped before a committed entry and is waiting to go on (see
    /// [`Application::apply`]).
    pub fn apply_waiting(&self) -> bool {
        !self.unapplied.is_empty()
    }

    /// Applies `entries` after any the application left unapplied in an earlier cycle; once
    /// it stops again, the rest waits in `unapplied`.
    pub(super) fn apply(
        &mut self,
        entries: &[Entry],
        out: &mut ReadyOutput<A::Output>,
    ) -> Result<(), CoreError> {
        if !self.unapplied.is_empty() {
            let held = std::mem::take(&mut self.unapplied);
            self.apply_in_order(&held, out)?;
            if !self.unapplied.is_empty() {
                let applied = self.applied;
                self.unapplied
                    .extend(entries.iter().filter(|e| e.index > applied).cloned());
                return Ok(());
            }
        }
        self.apply_in_order(entries, out)
    }

    fn apply_in_order(
        &mut self,
        entries: &[Entry],
        out: &mut ReadyOutput<A::Output>,
    ) -> Result<(), CoreError> {
        // Entries at or below the applied index were installed by a snapshot in this cycle.
        let fresh = match entries.iter().position(|e| e.index > self.applied) {
            Some(i) => &entries[i..],
            None => return Ok(()),
        };
        // Commands go to the application in runs; a membership change ends a run, so the
        // conf state is written with exactly the applied index it belongs to.
        let mut run_start = 0;
        for (i, e) in fresh.iter().enumerate() {
            if matches!(
                e.get_entry_type(),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2
            ) {
                if !self.apply_commands(&fresh[run_start..i], out)? {
                    self.keep_unapplied(fresh);
                    return Ok(());
                }
                self.apply_conf_change(e, out)?;
                run_start = i + 1;
            }
        }
        if !self.apply_commands(&fresh[run_start..], out)? {
            self.keep_unapplied(fresh);
        }
        Ok(())
    }

    /// Keeps the entries of `fresh` past the applied index for a later cycle.
    fn keep_unapplied(&mut self, fresh: &[Entry]) {
        let applied = self.applied;
        self.unapplied = fresh
            .iter()
            .filter(|e| e.index > applied)
            .cloned()
            .collect();
    }

    fn apply_commands(
        &mut self,
        entries: &[Entry],
        out: &mut ReadyOutput<A::Output>,
    ) -> Result<bool, CoreError> {
        if entries.is_empty() {
            return Ok(true);
        }
        let results = self.app.apply(entries)?;
        let all = results.len() == entries.len();
        if let Some(last) = results.last() {
            self.applied = last.index;
        }
        out.applied.extend(results);
        Ok(all)
    }

    /// Applies one membership change: raft-rs switches configuration, and the application
    /// records the new conf state and members with the entry's index. A change raft-rs refuses
    /// (deterministically, on every replica) is applied as an entry that changes nothing.
    fn apply_conf_change(
        &mut self,
        e: &Entry,
        out: &mut ReadyOutput<A::Output>,
    ) -> Result<(), CoreError> {
        let was_member = self.is_member();
        let decoded = if e.get_entry_type() == EntryType::EntryConfChange {
            ConfChange::parse_from_bytes(&e.data).map(ConfChangeI::into_v2)
        } else {
            ConfChangeV2::parse_from_bytes(&e.data)
        };
        let changed = decoded
            .map_err(|err| format!("undecodable membership change: {err}"))
            .and_then(|cc| {
                self.raw
                    .apply_conf_change(&cc)
                    .map(|cs| (cc, cs))
                    .map_err(|err| err.to_string())
            });
        let result = match changed {
            Ok((cc, cs)) => {
                self.app.apply_conf_change(e.index, e.term, &cc, &cs)?;
                self.raw.mut_store().set_conf_state(&cs);
                info!(self.logger, "membership changed"; "index" => e.index,
                    "voters" => ?cs.voters, "learners" => ?cs.learners,
                    "voters_outgoing" => ?cs.voters_outgoing);
                Ok(cs)
            }
            Err(err) => {
                warn!(self.logger, "membership change refused"; "index" => e.index, "error" => &err);
                let cs = self.conf_state();
                self.app
                    .apply_conf_change(e.index, e.term, &ConfChangeV2::default(), &cs)?;
                Err(err)
            }
        };
        self.applied = e.index;
        out.applied.push(Applied {
            index: e.index,
            term: e.term,
            result: None,
        });
        out.conf_changes.push((e.index, result));
        if was_member && !self.is_member() {
            out.removed = true;
        }
        self.keep_new_members_off_the_initial_log()?;
        Ok(())
    }

    /// A member that was not in the group from the start has no conf state of its own to
    /// replay the log from index 1 onto: it must get a snapshot. So once the group has such a
    /// member, entry 1 leaves every log that still holds it (any later leader needs a snapshot
    /// to reach the new member, and the snapshot carries the conf state).
    pub(super) fn keep_new_members_off_the_initial_log(&mut self) -> Result<(), CoreError> {
        if self.raw.store().truncated().0 > 0 || self.applied == 0 {
            return Ok(());
        }
        let initial = self.raw.store().initial_voters();
        let conf = self.conf_state();
        let newcomer = conf
            .voters
            .iter()
            .chain(&conf.learners)
            .chain(&conf.voters_outgoing)
            .chain(&conf.learners_next)
            .any(|id| !initial.contains(id));
        if newcomer {
            self.raw.mut_store().compact(2, self.applied)?;
            info!(self.logger, "log start compacted for a new member"; "applied" => self.applied);
        }
        Ok(())
    }
}
