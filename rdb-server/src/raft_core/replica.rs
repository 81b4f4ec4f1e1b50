//! [`Replica`]: `RawNode` + log store + application, driven one step at a time.

use std::collections::BTreeMap;

use raft::prelude::{ConfChangeV2, ConfState, Entry, Message, MessageType};
use raft::{Config, ProgressState, RawNode, SnapshotStatus, StateRole};
use slog::{debug, info, o, warn, Logger};

use super::{Application, CoreError, LogStore};

mod apply;
mod compact;
mod ready;

pub use ready::{Persisting, ReadyOutput};

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

    /// Tells a follower that its group committed up to `index` (learnt outside raft-rs: a
    /// merge's commit names the source's prepare index, committed in the source's group). Only
    /// as far as its own log goes; the caller vouches that its log matches the group's there.
    pub fn learn_commit(&mut self, index: u64) {
        let log = &mut self.raw.raft.raft_log;
        let to = index.min(log.last_index()).min(log.persisted);
        log.commit_to(to);
    }
}
