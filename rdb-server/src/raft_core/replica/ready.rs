//! The Ready cycle of a [`Replica`], in the order raft-rs documents, in two halves so that a
//! store of many regions syncs once for all of them.

use raft::prelude::{ConfState, ReadState};
use raft::StateRole;
use slog::info;

use super::Replica;
use crate::raft_core::{Application, Applied, CoreError, LogStore, MessageSink};

/// What one Ready cycle produced that the caller must act on.
#[derive(Debug)]
pub struct ReadyOutput<R> {
    /// Results of applied entries, in index order.
    pub applied: Vec<Applied<R>>,
    /// ReadIndex answers: (context, read index).
    pub read_states: Vec<ReadState>,
    /// The new role, if it changed.
    pub role_changed: Option<StateRole>,
    /// The log was compacted below this index; its files can be compacted in the background.
    pub compacted_to: Option<u64>,
    /// A snapshot from the leader replaced the local state.
    pub snapshot_applied: bool,
    /// Membership changes applied this cycle: the entry's index and the resulting conf state,
    /// or why raft-rs refused it (then the entry changed nothing, on every replica alike).
    pub conf_changes: Vec<(u64, Result<ConfState, String>)>,
    /// This replica is no longer a member: a conf change (or a snapshot) removed it.
    pub removed: bool,
}

impl<R> Default for ReadyOutput<R> {
    fn default() -> Self {
        ReadyOutput {
            applied: Vec::new(),
            read_states: Vec::new(),
            role_changed: None,
            compacted_to: None,
            snapshot_applied: false,
            conf_changes: Vec::new(),
            removed: false,
        }
    }
}

/// A Ready whose entries and hard state are written, but whose fsync may still be owed (see
/// [`Replica::begin_ready`]); [`Replica::finish_ready`] completes it.
pub struct Persisting<R> {
    ready: raft::Ready,
    out: ReadyOutput<R>,
    needs_sync: bool,
}

impl<R> Persisting<R> {
    /// Whether the write must reach the disk before [`Replica::finish_ready`] runs.
    pub fn needs_sync(&self) -> bool {
        self.needs_sync
    }
}

impl<S: LogStore, A: Application> Replica<S, A> {
    /// Runs one Ready cycle if raft has work, in raft-rs's documented order: send the leader's
    /// messages, install a snapshot, apply committed entries, persist entries and hard state in
    /// one synced write, then send the messages that depended on it, then the light ready.
    ///
    /// Any storage error is returned and must be treated as fatal by the caller.
    pub fn handle_ready(
        &mut self,
        sink: &mut dyn MessageSink,
    ) -> Result<ReadyOutput<A::Output>, CoreError> {
        match self.begin_ready(sink, true)? {
            Some(p) => self.finish_ready(p, sink),
            None => Ok(ReadyOutput::default()),
        }
    }

    /// The first half of a Ready cycle, up to writing entries and hard state. With
    /// `sync_now`, the write is synced when it needs to be; without it, the write goes
    /// unsynced and [`Persisting::needs_sync`] says whether the caller owes an fsync before
    /// [`Replica::finish_ready`] (a store of many regions syncs once for all of them). Nothing
    /// that depends on the write leaves through `sink` before `finish_ready`. `None`: no Ready.
    ///
    /// A Ready with a snapshot installs it first. If the log store installs in the background
    /// ([`LogStore::start_snapshot_install`]), the Ready is held instead and `None` returned:
    /// later calls check whether the install is over (`None` until it is) and then go on with
    /// the held Ready as if it had just been taken. raft-rs's `RawNode` allows a Ready to stay
    /// unadvanced for as long as no other is taken; its messages to send after persisting, its
    /// entries and hard state wait with it. See [`Replica::is_installing`] for what the replica
    /// does meanwhile. A crash during the install is finished at the next start (the log store
    /// records the install before it touches the data), so the Ready's effects stay atomic.
    pub fn begin_ready(
        &mut self,
        sink: &mut dyn MessageSink,
        sync_now: bool,
    ) -> Result<Option<Persisting<A::Output>>, CoreError> {
        let mut out = ReadyOutput::default();
        let mut ready = match self.held.take() {
            Some(ready) => {
                if !self.raw.mut_store().poll_snapshot_install()? {
                    self.held = Some(ready);
                    return Ok(None);
                }
                self.snapshot_installed(&ready)?;
                out.snapshot_applied = true;
                ready
            }
            None => {
                if !self.raw.has_ready() {
                    return Ok(None);
                }
                let mut ready = self.raw.ready();
                // A leader may send appends before its own write (raft thesis 10.2.1).
                if !ready.messages().is_empty() {
                    sink.send(ready.take_messages());
                }
                if !ready.snapshot().is_empty() {
                    // The Ready's hard state goes into the install's first write, so term and
                    // vote on disk always come from one hard state.
                    let hs = ready.hs().cloned();
                    let meta = ready.snapshot().get_metadata();
                    info!(self.logger, "installing snapshot"; "index" => meta.index,
                        "term" => meta.term);
                    let store = self.raw.mut_store();
                    if store.start_snapshot_install(ready.snapshot(), hs.as_ref())? {
                        self.held = Some(ready);
                        return Ok(None);
                    }
                    store.apply_snapshot(ready.snapshot(), hs.as_ref())?;
                    self.snapshot_installed(&ready)?;
                    out.snapshot_applied = true;
                }
                ready
            }
        };
        let committed = ready.take_committed_entries();
        self.apply(&committed, &mut out)?;
        if let Some(ss) = ready.ss() {
            out.role_changed = Some(ss.raft_state);
            info!(self.logger, "role changed"; "role" => ?ss.raft_state,
                "leader" => ss.leader_id, "term" => self.raw.raft.term);
        }
        if !ready.read_states().is_empty() {
            out.read_states = ready.take_read_states();
        }
        // Entries and hard state: one atomic write, synced, before anything depending on them
        // (votes, append responses, acknowledgements) leaves this replica. As etcd's MustSync
        // decides: only new entries, a new term or a new vote need the fsync. A write that only
        // raises the commit index goes unsynced (the next synced write carries it to disk): a
        // crash that loses it leaves a lower commit index, which the applied index and the
        // log recover, and saves every commit advance (each write's second round on the
        // leader, each heartbeat on a follower) an fsync before the answer.
        let mut needs_sync = false;
        if !ready.entries().is_empty() || ready.hs().is_some() {
            let hs = ready.hs().cloned();
            let term_vote = hs.as_ref().map(|h| (h.term, h.vote));
            let must_sync = !ready.entries().is_empty()
                || term_vote.is_some_and(|tv| tv != self.persisted_term_vote);
            let sync = self.sync_log && must_sync;
            self.raw
                .mut_store()
                .append(ready.entries(), hs.as_ref(), sync && sync_now)?;
            needs_sync = sync && !sync_now;
            if let Some(tv) = term_vote {
                self.persisted_term_vote = tv;
            }
        }
        Ok(Some(Persisting {
            ready,
            out,
            needs_sync,
        }))
    }

    /// The second half of a Ready cycle, once its write is durable: sends what depended on
    /// it, advances raft-rs, applies what committed and compacts.
    pub fn finish_ready(
        &mut self,
        p: Persisting<A::Output>,
        sink: &mut dyn MessageSink,
    ) -> Result<ReadyOutput<A::Output>, CoreError> {
        let Persisting {
            mut ready, mut out, ..
        } = p;
        if !ready.persisted_messages().is_empty() {
            sink.send(ready.take_persisted_messages());
        }
        // Applying is advanced below to what the application applied, which may stop short
        // of what the Ready committed (see `Replica::apply`).
        let mut light = self.raw.advance_append(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        if !light.messages().is_empty() {
            sink.send(light.take_messages());
        }
        let committed = light.take_committed_entries();
        self.apply(&committed, &mut out)?;
        self.raw.advance_apply_to(self.applied);
        out.compacted_to = self.maybe_compact()?;
        Ok(out)
    }

    /// The log store installed `ready`'s snapshot: the application reloads, and applying
    /// resumes after it. The install wrote the Ready's hard state, synced.
    fn snapshot_installed(&mut self, ready: &raft::Ready) -> Result<(), CoreError> {
        self.app.restored()?;
        self.applied = ready.snapshot().get_metadata().index;
        if let Some(hs) = ready.hs() {
            self.persisted_term_vote = (hs.term, hs.vote);
        }
        Ok(())
    }
}
