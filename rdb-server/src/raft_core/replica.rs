//! [`Replica`]: `RawNode` + log store + application, driven one step at a time.

use std::collections::BTreeMap;

use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, ReadState,
};
use raft::{Config, ProgressState, RawNode, SnapshotStatus, StateRole};
use raft_proto::ConfChangeI;
use slog::{debug, info, o, warn, Logger};

use super::{Application, Applied, CoreError, LogStore, MessageSink};

/// What a replica needs to know besides its stores.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This replica's Raft id.
    pub id: u64,
    /// Ticks without a leader before an election.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// raft-rs randomises each election timeout in `[election_ticks, 2 x election_ticks)` with
    /// its thread-local generator; a simulation fixes it here (`Some(t)`: exactly `t` ticks)
    /// and varies timing through ticks and delays it controls instead.
    pub fixed_election_timeout: Option<usize>,
    /// Compact the log once this many applied entries are in it.
    pub snapshot_threshold: u64,
    /// Entries kept after compaction so lagging followers catch up from the log.
    pub catch_up_entries: u64,
    /// Log length past which the leader compacts without waiting for slow followers.
    pub retained_log_cap: u64,
}

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

/// One replica of a Raft group: its Raft state machine, log store and application.
pub struct Replica<S: LogStore, A: Application> {
    raw: RawNode<S>,
    app: A,
    applied: u64,
    snapshot_threshold: u64,
    catch_up_entries: u64,
    retained_log_cap: u64,
    /// Ticks so far, and the tick each peer was last heard from: raft-rs clears
    /// `recent_active` at every quorum check, so it alone cannot say who is alive.
    ticks: u64,
    last_heard: BTreeMap<u64, u64>,
    /// Ticks without a message after which a peer counts as gone.
    active_ticks: u64,
    /// Followers that received a snapshot and may still be installing it (silently: the
    /// install blocks their Raft thread): the snapshot index and the tick it was delivered.
    snapshot_delivered: BTreeMap<u64, (u64, u64)>,
    /// Whether entries and hard state are synced before messages that depend on them leave.
    /// Always true outside tests of the simulation itself.
    sync_log: bool,
    /// Term and vote as last written to the log store: a Ready whose hard state changes
    /// neither (only the commit index) and carries no entries needs no fsync.
    persisted_term_vote: (u64, u64),
    /// A Ready whose snapshot the log store installs in the background (see
    /// [`Replica::begin_ready`]). Until the install is over, nothing of it is written or sent,
    /// and raft-rs is neither stepped nor ticked nor asked for another Ready.
    held: Option<raft::Ready>,
    /// Committed entries the application did not apply yet (it stopped before one: a merge
    /// waiting for its source, specs/017-merge), applied first in every later cycle.
    unapplied: Vec<Entry>,
    logger: Logger,
}

/// How many election timeouts a follower that received a snapshot may take to install it
/// while the leader keeps the log after the snapshot for it.
const INSTALL_GRACE_ELECTIONS: u64 = 30;

impl<S: LogStore, A: Application> Replica<S, A> {
    /// A replica over stores that were already bootstrapped or recovered.
    pub fn new(
        cfg: &ReplicaConfig,
        store: S,
        app: A,
        logger: &Logger,
    ) -> Result<Replica<S, A>, CoreError> {
        let applied = app.applied_index()?;
        let (min_election, max_election) = match cfg.fixed_election_timeout {
            Some(t) => (t, t + 1),
            None => (0, 0),
        };
        let config = Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            min_election_tick: min_election,
            max_election_tick: max_election,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            max_uncommitted_size: 256 << 20,
            max_committed_size_per_ready: 16 << 20,
            read_only_option: raft::ReadOnlyOption::Safe,
            ..Config::default()
        };
        config.validate()?;
        // raft-rs adds `raft_id` to every line itself.
        let logger = logger.new(o!());
        let mut raw = RawNode::new(&config, store, &logger)?;
        // What was recovered from disk, before anything changes it.
        info!(logger, "replica started"; "applied" => applied,
            "term" => raw.raft.term, "vote" => raw.raft.vote, "commit" => raw.raft.raft_log.committed,
            "last_index" => raw.raft.raft_log.last_index());
        // What the disk holds, before a campaign below changes term and vote in memory only.
        let (term, vote) = (raw.raft.term, raw.raft.vote);
        // A lone voter need not wait an election timeout to lead.
        if raw.raft.prs().conf().voters().ids().iter().eq([cfg.id]) {
            raw.campaign()?;
        } else if raw.raft.promotable() {
            // etcd's initial election tick advance: start one tick short of the election
            // timeout, so a group restarted together elects within one randomised spread
            // (50 ms-1.05 s with the default 50 ms ticks) instead of a whole timeout plus the
            // spread. A node that restarts beside a live leader disrupts nothing: peers that
            // hear from the leader refuse its pre-vote (check-quorum), and pre-votes change no
            // term.
            for _ in 1..cfg.election_ticks {
                raw.tick();
            }
        }
        let mut replica = Replica {
            raw,
            app,
            applied,
            snapshot_threshold: cfg.snapshot_threshold,
            catch_up_entries: cfg.catch_up_entries,
            retained_log_cap: cfg.retained_log_cap,
            ticks: 0,
            last_heard: BTreeMap::new(),
            active_ticks: cfg.election_ticks as u64,
            snapshot_delivered: BTreeMap::new(),
            sync_log: true,
            persisted_term_vote: (term, vote),
            held: None,
            unapplied: Vec::new(),
            logger,
        };
        replica.keep_new_members_off_the_initial_log()?;
        Ok(replica)
    }

    /// The application, to take what it recorded for the caller (a store's splits).
    pub fn app_mut(&mut self) -> &mut A {
        &mut self.app
    }

    /// Starts an election now (a split's new region, on the store that led its parent); not
    /// while a snapshot installs.
    pub fn campaign(&mut self) -> raft::Result<()> {
        if self.held.is_some() {
            return Ok(());
        }
        self.raw.campaign()
    }

    /// Test-only: persist the log without syncing, so acknowledgements can outrun the disk.
    pub(crate) fn set_sync_log(&mut self, sync: bool) {
        self.sync_log = sync;
    }

    /// Advances logical time by one tick. raft-rs's clock stands still while a snapshot
    /// installs (see [`Replica::is_installing`]).
    pub fn tick(&mut self) {
        self.ticks += 1;
        if self.held.is_none() {
            self.raw.tick();
        }
    }

    /// Whether a snapshot is being installed in the background. Meanwhile the replica is
    /// silent, as a node busy installing inline would be: messages to it are dropped (the
    /// leader sends again), its election clock stands still, and it proposes and reads
    /// nothing. raft-rs allows stepping between `ready` and `advance`, but any message that
    /// makes a follower answer (a heartbeat, an append, a vote request) or an election timeout
    /// would leave raft-rs a message to send that `advance` refuses on a follower (it ends the
    /// process), and an answer would leave before the Ready it depends on is persisted.
    pub fn is_installing(&self) -> bool {
        self.held.is_some()
    }

    /// The (index, term) of the snapshot being installed in the background, if one is.
    pub fn installing_snapshot(&self) -> Option<(u64, u64)> {
        let meta = self.held.as_ref()?.snapshot().get_metadata();
        Some((meta.index, meta.term))
    }

    /// Feeds a message from a peer; check it with [`Replica::refusal`] first. Dropped while a
    /// snapshot installs (see [`Replica::is_installing`]).
    pub fn step(&mut self, m: Message) -> raft::Result<()> {
        if self.held.is_some() {
            debug!(self.logger, "message dropped while a snapshot installs";
                "from" => m.from, "type" => ?m.get_msg_type());
            return Ok(());
        }
        self.last_heard.insert(m.from, self.ticks);
        // A node that joined with no membership of its own must start from a snapshot, which
        // brings the conf state: entries from index 1 would rebuild membership from nothing.
        if m.get_msg_type() == MessageType::MsgAppend && m.index == 0 && !self.is_member() {
            warn!(self.logger, "refusing the log from its start before a snapshot";
                "from" => m.from, "term" => m.term);
            return Ok(());
        }
        self.raw.step(m)
    }

    /// Why a message from the network must not reach raft-rs, if it must not. raft-rs trusts
    /// its caller with some inputs and ends the process (`fatal!`, or a slice out of range) on
    /// what a correct peer never sends: a heartbeat committing past the end of the log, entries
    /// that are not contiguous or that rewrite a committed entry. Local message types (a
    /// campaign, a proposal, a leader transfer) never come from a peer here either: followers
    /// forward no proposals and only a leader transfers leadership.
    pub fn refusal(&self, m: &Message) -> Option<&'static str> {
        let log = &self.raw.raft.raft_log;
        match m.get_msg_type() {
            MessageType::MsgHup
            | MessageType::MsgBeat
            | MessageType::MsgUnreachable
            | MessageType::MsgSnapStatus
            | MessageType::MsgCheckQuorum
            | MessageType::MsgPropose
            | MessageType::MsgTransferLeader => return Some("a local message type from a peer"),
            _ => {}
        }
        if m.from == 0 || m.to != self.id() || m.from == m.to {
            return Some("a message not from a peer to this replica");
        }
        match m.get_msg_type() {
            MessageType::MsgHeartbeat if m.commit > log.last_index() => {
                Some("a heartbeat that commits past the end of the log")
            }
            MessageType::MsgAppend => {
                let mut prev_term = m.log_term;
                for (i, e) in m.entries.iter().enumerate() {
                    if m.index.checked_add(1 + i as u64) != Some(e.index) {
                        return Some("an append whose entries are not contiguous");
                    }
                    if e.term < prev_term || e.term > m.term {
                        return Some("an append whose entry terms are out of order");
                    }
                    prev_term = e.term;
                }
                // raft-rs appends after the entry at (index, log_term) only if it has it; the
                // entries must then agree with every committed one they cover.
                if log.match_term(m.index, m.log_term) {
                    let rewrites = m
                        .entries
                        .iter()
                        .take_while(|e| e.index <= log.committed)
                        .any(|e| log.term(e.index).is_ok_and(|t| t != e.term));
                    if rewrites {
                        return Some("an append that rewrites a committed entry");
                    }
                }
                None
            }
            MessageType::MsgAppendResponse if !m.reject && m.index > log.last_index() => {
                Some("an acknowledgement of entries past the end of the log")
            }
            MessageType::MsgSnapshot if m.get_snapshot().get_metadata().index == 0 => {
                Some("an empty snapshot")
            }
            _ => None,
        }
    }

    /// Proposes a membership change; on success returns the (index, term) its entry got.
    pub fn propose_conf_change(&mut self, cc: ConfChangeV2) -> raft::Result<(u64, u64)> {
        if self.held.is_some() {
            return Err(raft::Error::ProposalDropped);
        }
        let before = self.raw.raft.raft_log.last_index();
        self.raw.propose_conf_change(Vec::new(), cc)?;
        let index = self.raw.raft.raft_log.last_index();
        if index <= before {
            return Err(raft::Error::ProposalDropped);
        }
        Ok((index, self.raw.raft.term))
    }

    /// Whether a membership change is proposed but not yet applied (raft-rs allows one at a
    /// time, and turns a second one into an empty entry).
    pub fn has_pending_conf(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }

    /// The group's membership as this replica applied it.
    pub fn conf_state(&self) -> ConfState {
        self.raw.raft.prs().conf().to_conf_state()
    }

    /// Whether this replica is in its own membership (as a voter or a learner).
    pub fn is_member(&self) -> bool {
        let conf = self.raw.raft.prs().conf();
        let me = self.raw.raft.id;
        conf.voters().contains(me)
            || conf.learners().contains(&me)
            || conf.learners_next().contains(&me)
    }

    /// Proposes a command; on success returns the (index, term) its entry got.
    pub fn propose(&mut self, data: Vec<u8>) -> raft::Result<(u64, u64)> {
        if self.held.is_some() {
            return Err(raft::Error::ProposalDropped);
        }
        let before = self.raw.raft.raft_log.last_index();
        self.raw.propose(Vec::new(), data)?;
        let index = self.raw.raft.raft_log.last_index();
        if index <= before {
            return Err(raft::Error::ProposalDropped);
        }
        Ok((index, self.raw.raft.term))
    }

    /// Starts a ReadIndex round; the answer arrives as a `ReadState` with this context. None
    /// starts while a snapshot installs (the caller's retry gives up on it in time).
    pub fn read_index(&mut self, ctx: Vec<u8>) {
        if self.held.is_none() {
            self.raw.read_index(ctx);
        }
    }

    /// Tells raft whether a snapshot reached `to`, so it stops waiting on it.
    pub fn report_snapshot(&mut self, to: u64, ok: bool) {
        // Only a leader sends snapshots, and a replica installing one is a follower.
        if self.held.is_some() {
            return;
        }
        if ok {
            if let Some(pr) = self.raw.raft.prs().get(to) {
                if pr.state == ProgressState::Snapshot {
                    self.snapshot_delivered
                        .insert(to, (pr.pending_snapshot, self.ticks));
                }
            }
        }
        let status = if ok {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to, status);
    }

    /// Starts handing leadership to `to` (a leader only; raft-rs ignores it otherwise).
    pub fn transfer_leader(&mut self, to: u64) {
        if self.held.is_none() {
            self.raw.transfer_leader(to);
        }
    }

    /// Tells raft a peer could not be reached, so it probes instead of pipelining.
    pub fn report_unreachable(&mut self, to: u64) {
        if self.held.is_none() {
            self.raw.report_unreachable(to);
        }
    }

    /// This replica's id.
    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    /// Current role.
    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this replica knows of, 0 for none.
    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// Commit index.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// Applied index (durable with the data it produced, or replayable from the log).
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// First and last index of the log.
    pub fn log_bounds(&self) -> (u64, u64) {
        (
            self.raw.store().truncated().0 + 1,
            self.raw.raft.raft_log.last_index(),
        )
    }

    /// The voters of the group (both halves of a joint configuration).
    pub fn voters(&self) -> Vec<u64> {
        self.raw.raft.prs().conf().voters().ids().iter().collect()
    }

    /// Whether `id` has a vote in the current configuration (either half of a joint one).
    pub fn is_voter(&self, id: u64) -> bool {
        self.raw.raft.prs().conf().voters().contains(id)
    }

    /// Whether `id` is a learner.
    pub fn is_learner(&self, id: u64) -> bool {
        self.raw.raft.prs().conf().learners().contains(&id)
    }

    /// The log store.
    pub fn store(&self) -> &S {
        self.raw.store()
    }

    /// The application.
    pub fn app(&self) -> &A {
        &self.app
    }

    /// On a leader: (id, matched index) of every other voter, by id; empty otherwise.
    pub fn follower_progress(&self) -> Vec<(u64, u64)> {
        let mut v = self.progress();
        v.retain(|&(id, _)| self.is_voter(id));
        v
    }

    /// On a leader: (id, matched index) of every other member, learners included, by id;
    /// empty otherwise.
    pub fn progress(&self) -> Vec<(u64, u64)> {
        if !self.is_leader() {
            return Vec::new();
        }
        let me = self.id();
        let mut v: Vec<(u64, u64)> = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(&id, _)| id != me)
            .map(|(&id, pr)| (id, pr.matched))
            .collect();
        v.sort_unstable();
        v
    }

    /// What the leader knows of `id`'s log: its matched index, if it is a tracked peer.
    pub fn matched(&self, id: u64) -> Option<u64> {
        self.raw.raft.prs().get(id).map(|pr| pr.matched)
    }

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

    /// Whether the application stopped before a committed entry and is waiting to go on (see
    /// [`Application::apply`]).
    pub fn apply_waiting(&self) -> bool {
        !self.unapplied.is_empty()
    }

    /// Tells a follower that its group committed up to `index` (learnt outside raft-rs: a
    /// merge's commit names the source's prepare index, committed in the source's group). Only
    /// as far as its own log goes; the caller vouches that its log matches the group's there.
    pub fn learn_commit(&mut self, index: u64) {
        let log = &mut self.raw.raft.raft_log;
        let to = index.min(log.last_index()).min(log.persisted);
        log.commit_to(to);
    }

    /// Applies `entries` after any the application left unapplied in an earlier cycle; once
    /// it stops again, the rest waits in `unapplied`.
    fn apply(
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
        out.applied.push(super::Applied {
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
    fn keep_new_members_off_the_initial_log(&mut self) -> Result<(), CoreError> {
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

    /// Compacts the log once `snapshot_threshold` applied entries are in it, keeping
    /// `catch_up_entries`. A leader also keeps what the slowest live follower still needs (see
    /// [`Replica::slowest_live_follower`]) unless the log is longer than `retained_log_cap`.
    /// Never past the applied index.
    fn maybe_compact(&mut self) -> Result<Option<u64>, CoreError> {
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
