//! The node task: the one place where the Raft core meets the outside world.
//!
//! It owns the [`RaftPeer`] and reads one mailbox ([`Inbox`]: transport reports first, then Raft
//! messages, then client requests). Each turn it drains what is queued (so many proposals share
//! one Ready and one fsync), starts one ReadIndex round for all reads that arrived, runs the
//! Ready cycle, then answers the clients whose entries were applied or whose reads became safe.
//!
//! Proposals are tracked by log index with the term they were proposed in. A client hears
//! success only when the entry at its index is applied *with that term*; if another entry
//! took the index, or this node stops leading, the client gets `Indeterminate` (the write may
//! still commit under a new leader) and never a false success.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::StateRole;
use slog::{crit, debug, warn, Logger};
use tokio::sync::oneshot;

use crate::config::{ClusterConfig, NodeId};
use crate::raft::{RaftPeer, ReadyOutput, Transport};
use crate::router::{Inbox, LeaderHint, Msg, NodeStatus, ProposeResult, ReadResult, RequestError};

/// Mailbox messages handled per turn before running a Ready, bounding latency under load.
const MAX_MSGS_PER_TURN: usize = 4096;

struct Proposal {
    term: u64,
    tx: oneshot::Sender<ProposeResult>,
}

struct ReadBatch {
    issued: Instant,
    waiters: Vec<oneshot::Sender<ReadResult>>,
}

/// The task that owns the Raft core.
pub struct Node {
    peer: RaftPeer,
    inbox: Inbox,
    transport: Box<dyn Transport>,
    config: Arc<ClusterConfig>,
    tick: Duration,
    proposals: BTreeMap<u64, Proposal>,
    reads_new: Vec<oneshot::Sender<ReadResult>>,
    reads_inflight: HashMap<u64, ReadBatch>,
    reads_wait_apply: VecDeque<(u64, Vec<oneshot::Sender<ReadResult>>)>,
    next_read_ctx: u64,
    /// Membership is fixed by the config file, so the voters are read once.
    voters: Vec<NodeId>,
    compactor: Option<std::thread::JoinHandle<()>>,
    /// Writes the durable-index file (see `Engine::record_durable_index`) off this thread.
    recorder: Option<std::thread::JoinHandle<()>>,
    recorded_at: Instant,
    recorded_index: u64,
    logger: Logger,
}

/// How often the durable index is recorded outside RocksDB.
const RECORD_DURABLE_EVERY: Duration = Duration::from_secs(5);

impl Node {
    /// A node task over `peer`, reading `inbox` and sending through `transport`.
    pub fn new(
        peer: RaftPeer,
        inbox: Inbox,
        transport: Box<dyn Transport>,
        config: Arc<ClusterConfig>,
        logger: Logger,
    ) -> Node {
        let s = &config.settings;
        let tick = Duration::from_millis(s.tick_interval_ms);
        let voters = peer.voters();
        Node {
            voters,
            peer,
            inbox,
            transport,
            tick,
            config,
            proposals: BTreeMap::new(),
            reads_new: Vec::new(),
            reads_inflight: HashMap::new(),
            reads_wait_apply: VecDeque::new(),
            next_read_ctx: 1,
            compactor: None,
            recorder: None,
            recorded_at: Instant::now(),
            recorded_index: 0,
            logger,
        }
    }

    /// Runs until every mailbox sender is gone. A storage failure ends the process: a node that
    /// cannot persist must not keep voting or acknowledging.
    pub async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = ticker.tick() => self.on_tick(),
                Some(m) = self.inbox.control.recv() => self.handle(m),
                Some(m) = self.inbox.raft.recv() => self.handle(m),
                m = self.inbox.client.recv() => {
                    let Some(m) = m else { break };
                    self.handle(m);
                }
            }
            self.drain();
            self.issue_reads();
            match self.peer.handle_ready(self.transport.as_mut()) {
                Ok(out) => self.after_ready(out),
                Err(e) => {
                    crit!(self.logger, "storage failure, stopping the node"; "error" => %e);
                    crate::logging::fatal_exit(&format!("fatal storage error: {e}"));
                }
            }
        }
    }

    /// Handles what else is queued, in priority order, up to a bound per queue so one Ready
    /// serves many messages without starving the loop.
    fn drain(&mut self) {
        while let Ok(m) = self.inbox.control.try_recv() {
            self.handle(m);
        }
        for _ in 0..MAX_MSGS_PER_TURN {
            match self.inbox.raft.try_recv() {
                Ok(m) => self.handle(m),
                Err(_) => break,
            }
        }
        for _ in 0..MAX_MSGS_PER_TURN {
            match self.inbox.client.try_recv() {
                Ok(m) => self.handle(m),
                Err(_) => break,
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Raft(m) => {
                let (from, ty) = (m.from, m.get_msg_type());
                if let Err(e) = self.peer.step(*m) {
                    debug!(self.logger, "step failed"; "from" => from, "type" => ?ty, "error" => %e);
                }
            }
            Msg::Propose { cmd, tx } => self.propose(cmd, tx),
            Msg::Read { tx } => match self.leader_check() {
                Ok(()) => self.reads_new.push(tx),
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            },
            Msg::Status { tx } => {
                let _ = tx.send(self.status());
            }
            Msg::SnapshotSent { to, ok } => self.peer.report_snapshot(to, ok),
            Msg::Unreachable { to } => self.peer.report_unreachable(to),
        }
    }

    /// Ok if this node leads and has heard from a quorum within an election timeout, so a
    /// proposal has a chance to commit. Otherwise the error the client should see.
    fn leader_check(&self) -> Result<(), RequestError> {
        if !self.peer.is_leader() {
            return Err(match self.leader_hint() {
                Some(h) => RequestError::NotLeader(Some(h)),
                None => RequestError::Unavailable("no leader is known".into()),
            });
        }
        let me = self.peer.id();
        let active = self
            .voters
            .iter()
            .filter(|&&v| v == me || self.peer.heard_lately(v))
            .count();
        if active * 2 <= self.voters.len() {
            return Err(RequestError::Unavailable(format!(
                "leader is in contact with {active} of {} nodes, no quorum",
                self.voters.len()
            )));
        }
        Ok(())
    }

    fn leader_hint(&self) -> Option<LeaderHint> {
        let id = self.peer.leader_id();
        if id == 0 {
            return None;
        }
        let addr = self.config.node(id).ok()?.client_addr.clone();
        Some(LeaderHint { id, addr })
    }

    fn propose(&mut self, cmd: rdb_proto::command::Command, tx: oneshot::Sender<ProposeResult>) {
        if let Err(e) = self.leader_check() {
            let _ = tx.send(Err(e));
            return;
        }
        #[cfg(feature = "inject-early-ack")]
        let early = match &cmd.op {
            Some(rdb_proto::command::command::Op::Put(_)) => Some(rdb_storage::CommandResult::Put),
            Some(rdb_proto::command::command::Op::Delete(_)) => {
                Some(rdb_storage::CommandResult::Delete { existed: true })
            }
            Some(rdb_proto::command::command::Op::Cas(_)) => {
                Some(rdb_storage::CommandResult::Cas {
                    succeeded: true,
                    current: None,
                })
            }
            Some(rdb_proto::command::command::Op::HashPoint(_)) | None => None,
        };
        match self.peer.propose(cmd.encode_to_vec()) {
            #[cfg(feature = "inject-early-ack")]
            Ok(_) if early.is_some() => {
                let _ = tx.send(early.ok_or_else(|| RequestError::Unavailable(String::new())));
            }
            Ok((index, term)) => {
                // An older waiter at this index lost its entry to this one.
                if let Some(old) = self.proposals.insert(index, Proposal { term, tx }) {
                    let _ = old.tx.send(Err(RequestError::Indeterminate(
                        "entry was replaced by a newer leader".into(),
                    )));
                }
            }
            Err(e) => {
                let _ = tx.send(Err(RequestError::Unavailable(format!(
                    "proposal dropped: {e}"
                ))));
            }
        }
    }

    /// One ReadIndex round for every read that arrived this turn.
    fn issue_reads(&mut self) {
        if self.reads_new.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.reads_new);
        self.start_read_round(waiters);
    }

    fn start_read_round(&mut self, waiters: Vec<oneshot::Sender<ReadResult>>) {
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.peer.read_index(ctx.to_be_bytes().to_vec());
        self.reads_inflight.insert(
            ctx,
            ReadBatch {
                issued: Instant::now(),
                waiters,
            },
        );
    }

    fn on_tick(&mut self) {
        self.peer.tick();
        // raft-rs drops a ReadIndex silently (no leader, or a new leader that has not yet
        // committed in its term): re-issue rounds that got no answer, never let them hang.
        let retry_after = (self.tick * 4).max(Duration::from_millis(200));
        let now = Instant::now();
        let stale: Vec<u64> = self
            .reads_inflight
            .iter()
            .filter(|(_, b)| now.duration_since(b.issued) >= retry_after)
            .map(|(&ctx, _)| ctx)
            .collect();
        for ctx in stale {
            let Some(batch) = self.reads_inflight.remove(&ctx) else {
                continue;
            };
            let waiters: Vec<_> = batch
                .waiters
                .into_iter()
                .filter(|w| !w.is_closed())
                .collect();
            if waiters.is_empty() {
                continue;
            }
            match self.leader_check() {
                Ok(()) => self.start_read_round(waiters),
                Err(e) => waiters.into_iter().for_each(|w| {
                    let _ = w.send(Err(e.clone()));
                }),
            }
        }
        if self.compactor.as_ref().is_some_and(|h| h.is_finished()) {
            self.compactor = None;
        }
        self.record_durable_index(now);
    }

    /// Every few seconds, records the applied index (its entries are in the synced log) in a
    /// file beside the database, so that a start from a rolled-back database is refused.
    fn record_durable_index(&mut self, now: Instant) {
        if self.recorder.as_ref().is_some_and(|h| h.is_finished()) {
            self.recorder = None;
        }
        let applied = self.peer.applied_index();
        if self.recorder.is_some()
            || applied <= self.recorded_index
            || now.duration_since(self.recorded_at) < RECORD_DURABLE_EVERY
        {
            return;
        }
        self.recorded_at = now;
        self.recorded_index = applied;
        let (engine, logger) = (self.peer.engine().clone(), self.logger.clone());
        self.recorder = std::thread::Builder::new()
            .name("durable-index".into())
            .spawn(move || {
                if let Err(e) = engine.record_durable_index(applied) {
                    warn!(logger, "cannot record the durable index"; "index" => applied, "error" => %e);
                }
            })
            .ok();
    }

    fn after_ready(&mut self, out: ReadyOutput) {
        for a in out.applied {
            let Some(p) = self.proposals.remove(&a.index) else {
                continue;
            };
            let reply = if p.term != a.term {
                Err(RequestError::Indeterminate(
                    "entry was replaced by a newer leader".into(),
                ))
            } else {
                match a.result {
                    Some(Ok(r)) => Ok(r),
                    Some(Err(e)) => Err(RequestError::InvalidArgument(e)),
                    None => Err(RequestError::Indeterminate(
                        "entry was not a command".into(),
                    )),
                }
            };
            let _ = p.tx.send(reply);
        }
        // Entries below the applied index that we still wait for can no longer apply at
        // their index with our term (only after a snapshot jumped past them).
        let applied = self.peer.applied_index();
        while let Some(entry) = self.proposals.first_entry() {
            if *entry.key() > applied {
                break;
            }
            let _ = entry.remove().tx.send(Err(RequestError::Indeterminate(
                "state was replaced by a snapshot".into(),
            )));
        }
        for rs in out.read_states {
            let Some(ctx) = rs
                .request_ctx
                .as_slice()
                .try_into()
                .ok()
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            if let Some(batch) = self.reads_inflight.remove(&ctx) {
                self.reads_wait_apply.push_back((rs.index, batch.waiters));
            }
        }
        while self
            .reads_wait_apply
            .front()
            .is_some_and(|(index, _)| *index <= applied)
        {
            if let Some((_, waiters)) = self.reads_wait_apply.pop_front() {
                for w in waiters {
                    let _ = w.send(Ok(()));
                }
            }
        }
        if let Some(role) = out.role_changed {
            if role != StateRole::Leader {
                self.step_down();
            }
        }
        if let Some(below) = out.compacted_to {
            self.compact_files(below);
        }
    }

    /// Leadership is lost: writes in flight may or may not commit; reads must go elsewhere.
    fn step_down(&mut self) {
        if !self.proposals.is_empty() {
            warn!(self.logger, "lost leadership with writes in flight"; "count" => self.proposals.len(),
                "term" => self.peer.term());
        }
        for (_, p) in std::mem::take(&mut self.proposals) {
            let _ = p.tx.send(Err(RequestError::Indeterminate(
                "leadership changed before the write committed".into(),
            )));
        }
        let err = match self.leader_hint() {
            Some(h) => RequestError::NotLeader(Some(h)),
            None => RequestError::Unavailable("leadership changed".into()),
        };
        let inflight = std::mem::take(&mut self.reads_inflight)
            .into_values()
            .flat_map(|b| b.waiters);
        let waiting = std::mem::take(&mut self.reads_wait_apply)
            .into_iter()
            .flat_map(|(_, w)| w);
        for w in inflight
            .chain(waiting)
            .chain(std::mem::take(&mut self.reads_new))
        {
            let _ = w.send(Err(err.clone()));
        }
    }

    /// Reclaims the disk space of compacted log entries off the Raft task.
    fn compact_files(&mut self, below: u64) {
        if self.compactor.is_some() {
            return;
        }
        let engine = self.peer.engine().clone();
        self.compactor = std::thread::Builder::new()
            .name("log-compact".into())
            .spawn(move || engine.compact_log_files(below))
            .ok();
    }

    fn status(&self) -> NodeStatus {
        let (first_index, last_index) = self.peer.log_bounds();
        let leader_id = self.peer.leader_id();
        NodeStatus {
            node_id: self.peer.id(),
            role: role_code(self.peer.role()),
            term: self.peer.term(),
            leader_id,
            leader_addr: self.leader_hint().map(|h| h.addr).unwrap_or_default(),
            commit_index: self.peer.commit_index(),
            applied_index: self.peer.applied_index(),
            first_index,
            last_index,
        }
    }
}

/// The proto `Role` value of a raft role.
pub fn role_code(role: StateRole) -> i32 {
    use rdb_proto::kv::Role;
    (match role {
        StateRole::Follower => Role::Follower,
        StateRole::Candidate => Role::Candidate,
        StateRole::PreCandidate => Role::PreCandidate,
        StateRole::Leader => Role::Leader,
    }) as i32
}
