//! The task of a process with one Raft group and no regions: a PD node's (`rdb-pd`, whose
//! application is PD's metadata). rdb's own nodes and stores run the store task instead
//! (`store::serve`), whose regions are groups of their own; both drive the same [`Core`].
//!
//! It owns the [`Core`] (over RocksDB) and reads one mailbox ([`Inbox`]: transport reports
//! first, then Raft messages, then client requests). Each turn it drains what is queued (so many
//! proposals share one Ready and one fsync), advances the core, then answers the clients the
//! core decided about. Every decision is the core's; this task adds tokio, the clock (a tick
//! every `tick_interval_ms`) and the background chores of the RocksDB stores.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::StateRole;
use rdb_storage::{RaftStorage, StateMachine};
use slog::{crit, info, warn, Logger};
use tokio::sync::oneshot;

use crate::config::{ClusterConfig, NodeId, Settings};
use crate::members::{Directory, SharedDirectory};
use crate::raft_core::{
    Answer, Application, Core, CoreConfig, Membership, MessageSink, Output, Refusal, ReplicaConfig,
    RequestId,
};
use crate::router::{
    Control, Inbox, LeaderHint, MembersView, Msg, NodeStatus, ProposeResult, ReadResult,
    RequestError,
};
use crate::upkeep::{join_chore, DiskSampler, DurableRecorder, Warnings};

/// Mailbox messages handled per turn before running a Ready, bounding latency under load.
const MAX_MSGS_PER_TURN: usize = 4096;

/// A client waiting for the core's answer.
enum Waiter<O> {
    Write(oneshot::Sender<ProposeResult<O>>, Instant),
    Read(oneshot::Sender<ReadResult>),
    Change(oneshot::Sender<Result<(u64, Membership), RequestError>>),
}

/// Where messages to peers go from the node task: the sink must be movable to its thread.
pub trait Transport: MessageSink + Send {
    /// The members changed: open streams to new peers (`peers` maps id to peer address, without
    /// this node) and close those to nodes that left.
    fn set_peers(&mut self, peers: &std::collections::BTreeMap<NodeId, String>);
}

/// The core's settings from the cluster file's.
pub fn core_config(id: NodeId, s: &Settings) -> CoreConfig {
    CoreConfig {
        replica: ReplicaConfig {
            id,
            election_ticks: s.election_ticks,
            heartbeat_ticks: s.heartbeat_ticks,
            fixed_election_timeout: None,
            snapshot_threshold: s.snapshot_threshold,
            catch_up_entries: s.catch_up_entries,
            retained_log_cap: s.retained_log_cap(),
        },
        // Four ticks, and at least 200 ms.
        read_retry_ticks: 4u64.max(200u64.div_ceil(s.tick_interval_ms.max(1))),
        planted: Default::default(),
        read_ctx_salt: rand::random(),
    }
}

/// The task that owns the Raft core, over the RocksDB log store and application `A` (the KV
/// state machine in `rdb-server`, PD's metadata in `rdb-pd`).
pub struct Node<A: Application = StateMachine> {
    core: Core<RaftStorage, A>,
    inbox: Inbox<A::Output>,
    transport: Box<dyn Transport>,
    config: Arc<ClusterConfig>,
    members: SharedDirectory,
    tick: Duration,
    waiters: HashMap<RequestId, Waiter<A::Output>>,
    next_request: RequestId,
    compactor: Option<std::thread::JoinHandle<()>>,
    /// Writes the durable-index file (see `Engine::record_durable_index`) off this thread.
    recorder: DurableRecorder<u64>,
    /// Reads that arrived this turn (they share one ReadIndex round).
    reads_this_turn: u64,
    /// The leader last seen, to count leader changes.
    last_leader: u64,
    /// Slow-disk and lag warnings.
    warnings: Warnings,
    /// The RocksDB size gauges.
    disk: DiskSampler,
    /// A clean stop was asked for: the loop ends after this turn's messages.
    stopping: bool,
    logger: Logger,
}

impl<A: Application> Node<A>
where
    A::Output: std::fmt::Debug,
{
    /// A node task over `core`, reading `inbox` and sending through `transport`.
    pub fn new(
        core: Core<RaftStorage, A>,
        inbox: Inbox<A::Output>,
        transport: Box<dyn Transport>,
        config: Arc<ClusterConfig>,
        members: SharedDirectory,
        logger: Logger,
    ) -> Self {
        let tick = Duration::from_millis(config.settings.tick_interval_ms);
        Node {
            core,
            inbox,
            transport,
            tick,
            config,
            members,
            waiters: HashMap::new(),
            next_request: 1,
            compactor: None,
            recorder: DurableRecorder::new(0),
            reads_this_turn: 0,
            last_leader: 0,
            warnings: Warnings::default(),
            disk: DiskSampler::default(),
            stopping: false,
            logger,
        }
    }

    /// Runs until it is stopped ([`Control::Stop`]) or every mailbox sender is gone, then waits
    /// for its chores' threads. A storage failure ends the process: a node that cannot persist
    /// must not keep voting or acknowledging.
    pub async fn run(mut self) {
        let mut clock = crate::router::RaftClock::new(self.tick);
        while !self.stopping {
            tokio::select! {
                biased;
                // Only a wake-up: the tick itself goes by the clock, below.
                _ = clock.wake() => {}
                Some(c) = self.inbox.control.recv() => self.control(c),
                Some(m) = self.inbox.raft.recv() => self.step(m.msg),
                m = self.inbox.client.recv() => {
                    let Some(m) = m else { break };
                    self.handle(m);
                }
            }
            // A tick is due by the clock, whatever woke the task (see `RaftClock`): a PD
            // leader under a storm of heartbeats keeps its followers' election timers reset.
            if clock.due() {
                self.on_tick();
            }
            let turn = Instant::now();
            self.drain();
            if self.stopping {
                // What this turn stepped is dropped unpersisted, as in a crash: none of it was
                // acknowledged.
                break;
            }
            if self.reads_this_turn > 0 {
                let m = crate::metrics::metrics();
                m.read_rounds.inc();
                m.reads_per_round.observe(self.reads_this_turn as f64);
                self.reads_this_turn = 0;
            }
            match self.core.advance(self.transport.as_mut()) {
                Ok(out) => {
                    self.after_advance(out);
                    self.observe(turn.elapsed());
                }
                Err(e) => {
                    crit!(self.logger, "storage failure, stopping the node"; "error" => %e);
                    crate::logging::fatal_exit(&format!("fatal storage error: {e}"));
                }
            }
        }
        join_chore(self.compactor.take());
        self.recorder.join();
    }

    /// Handles what else is queued, in priority order, up to a bound per queue so one Ready
    /// serves many messages without starving the loop.
    fn drain(&mut self) {
        while let Ok(c) = self.inbox.control.try_recv() {
            self.control(c);
        }
        for _ in 0..MAX_MSGS_PER_TURN {
            match self.inbox.raft.try_recv() {
                Ok(m) => self.step(m.msg),
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

    /// Steps a peer's message, counting it if it was refused.
    fn step(&mut self, m: raft::prelude::Message) {
        if !self.core.step(m) {
            crate::metrics::metrics()
                .peer_messages_refused
                .with_label_values(&["raft"])
                .inc();
        }
    }

    fn request_id(&mut self, w: Waiter<A::Output>) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        self.waiters.insert(id, w);
        id
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::SnapshotSent { to, ok, .. } => self.core.report_snapshot(to, ok),
            Control::Unreachable { to } => self.core.report_unreachable(to),
            Control::Removed { by } => {
                let applied = self.core.replica().applied_index();
                self.stop_removed(&format!("node {by} says so"), applied);
            }
            Control::Stop => self.stopping = true,
        }
    }

    /// This node is no longer a member: record it (so a restart refuses to serve) and stop
    /// with exit 0: leaving the group is the end an operator asked for, and a supervisor that
    /// restarts failed processes must not start it again.
    fn stop_removed(&self, how: &str, index: u64) -> ! {
        let engine = self.core.replica().store().engine();
        if let Err(e) = engine.mark_removed(index) {
            warn!(self.logger, "cannot record the removal"; "error" => %e);
        }
        info!(self.logger, "this node was removed from the group; stopping"; "how" => how,
            "index" => index);
        crate::logging::exit_now(
            0,
            &format!(
                "node {} was removed from the group ({how}); it will not serve again",
                self.core.replica().id()
            ),
        )
    }

    /// Re-reads the member directory after a membership change, and tells the transport.
    fn reload_members(&mut self) {
        let engine = self.core.replica().store().engine();
        match Directory::load(engine, &self.config) {
            Ok(d) => {
                self.transport
                    .set_peers(&d.peers_of(self.core.replica().id()));
                self.members.replace(d);
            }
            Err(e) => {
                crit!(self.logger, "cannot read the member records"; "error" => %e);
                crate::logging::fatal_exit(&format!("cannot read the member records: {e}"));
            }
        }
    }

    fn handle(&mut self, msg: Msg<A::Output>) {
        match msg {
            Msg::Propose { data, tx } => {
                let id = self.request_id(Waiter::Write(tx, Instant::now()));
                self.core.propose(id, data);
            }
            Msg::Read { tx } => {
                self.reads_this_turn += 1;
                let id = self.request_id(Waiter::Read(tx));
                self.core.read(id);
            }
            Msg::Status { tx } => {
                let _ = tx.send(self.status());
            }
            Msg::Members { region_id, tx } if region_id > 1 => {
                let _ = tx.send(Err(not_a_store(region_id)));
            }
            Msg::ChangeMembers { region_id, tx, .. } if region_id > 1 => {
                let _ = tx.send(Err(not_a_store(region_id)));
            }
            Msg::TransferLeader { region_id, tx, .. } if region_id > 1 => {
                let _ = tx.send(Err(not_a_store(region_id)));
            }
            Msg::Members { tx, .. } => {
                let r = self.core.replica();
                let _ = tx.send(Ok(MembersView {
                    node_id: r.id(),
                    leader_id: r.leader_id(),
                    commit_index: r.commit_index(),
                    membership: Membership::from(&r.conf_state()),
                    progress: r.progress(),
                    stores: Vec::new(),
                }));
            }
            Msg::ChangeMembers {
                steps, added, tx, ..
            } => {
                let reused = steps
                    .iter()
                    .map(|s| s.id())
                    .find(|&id| self.members.is_removed(id));
                if let Some(id) = reused {
                    let _ = tx.send(Err(RequestError::InvalidArgument(format!(
                        "node id {id} was removed from this cluster and cannot be used again"
                    ))));
                    return;
                }
                let clash = {
                    let dir = self.members.read();
                    added.iter().find_map(|r| dir.clash(r))
                };
                if let Some(why) = clash {
                    let _ = tx.send(Err(RequestError::InvalidArgument(why)));
                    return;
                }
                let context =
                    prost::Message::encode_to_vec(&rdb_proto::command::MemberContext { added });
                info!(self.logger, "proposing a membership change"; "steps" => ?steps,
                    "term" => self.core.replica().term());
                let id = self.request_id(Waiter::Change(tx));
                self.core.change_membership(id, &steps, context);
            }
            Msg::RegionPropose { route, tx, .. } => {
                let _ = tx.send(Err(not_a_store(route.region_id)));
            }
            Msg::MergeRegion { source, tx, .. } => {
                let _ = tx.send(Err(not_a_store(source)));
            }
            Msg::RegionRead { route, tx, .. } => {
                let _ = tx.send(Err(not_a_store(route.region_id)));
            }
            Msg::TransferLeader { to, tx, .. } => {
                let r = self
                    .core
                    .transfer_leader(to)
                    .map_err(|r| self.request_error(r));
                if r.is_ok() {
                    info!(self.logger, "transferring leadership"; "to" => to,
                        "term" => self.core.replica().term());
                }
                let _ = tx.send(r);
            }
        }
    }

    fn leader_hint(&self, id: NodeId) -> Option<LeaderHint> {
        if id == 0 {
            return None;
        }
        let addr = self.members.client_addr(id)?;
        Some(LeaderHint {
            id,
            addr,
            peer_id: 0,
        })
    }

    fn request_error(&self, r: Refusal) -> RequestError {
        match r {
            Refusal::NotLeader { leader } => match self.leader_hint(leader) {
                Some(h) => RequestError::NotLeader(Some(h)),
                None => RequestError::Unavailable("no leader is known".into()),
            },
            Refusal::Unavailable(m) => RequestError::Unavailable(m),
            Refusal::Indeterminate(m) => RequestError::Indeterminate(m.into()),
            Refusal::Rejected(m) => RequestError::InvalidArgument(m),
        }
    }

    fn after_advance(&mut self, out: Output<A::Output>) {
        // First, so that answers to membership changes find the new members' addresses.
        if out.membership_changed {
            self.reload_members();
        }
        for (id, answer) in out.replies {
            let Some(w) = self.waiters.remove(&id) else {
                continue;
            };
            let answer = answer.map_err(|r| self.request_error(r));
            match (w, answer) {
                (Waiter::Write(tx, proposed), Ok(Answer::Written(r))) => {
                    crate::metrics::metrics()
                        .propose_apply_seconds
                        .observe(proposed.elapsed().as_secs_f64());
                    let _ = tx.send(Ok(r));
                }
                (Waiter::Read(tx), Ok(Answer::ReadReady { term })) => {
                    let _ = tx.send(Ok(term));
                }
                (Waiter::Write(tx, _), Err(e)) => {
                    let _ = tx.send(Err(e));
                }
                (Waiter::Read(tx), Err(e)) => {
                    let _ = tx.send(Err(e));
                }
                (Waiter::Change(tx), Ok(Answer::MembershipChanged { index, membership })) => {
                    let _ = tx.send(Ok((index, membership)));
                }
                (Waiter::Change(tx), Err(e)) => {
                    let _ = tx.send(Err(e));
                }
                (w, Ok(a)) => {
                    warn!(self.logger, "answer does not fit the request"; "id" => id, "answer" => ?a);
                    drop(w);
                }
            }
        }
        if let Some(below) = out.compacted_to {
            self.compact_files(below);
        }
        if out.removed {
            let applied = self.core.replica().applied_index();
            self.stop_removed("it applied its own removal", applied);
        }
    }

    /// Updates the Raft gauges after a turn, and warns about a slow turn, a slow synced write
    /// or apply falling behind, with the duration or lag.
    fn observe(&mut self, turn: Duration) {
        self.warnings.turn(turn, &self.logger);
        let m = crate::metrics::metrics();
        let r = self.core.replica();
        let leader = r.leader_id();
        if leader != self.last_leader {
            if leader != 0 {
                m.leader_changes.inc();
            }
            self.last_leader = leader;
        }
        let (first, last) = r.log_bounds();
        let (commit, applied) = (r.commit_index(), r.applied_index());
        m.term.set(r.term() as i64);
        m.is_leader.set(i64::from(r.is_leader()));
        m.role.set(role_metric(r.role()));
        m.commit_index.set(commit as i64);
        m.applied_index.set(applied as i64);
        m.log_first_index.set(first as i64);
        m.log_entries.set((last + 1).saturating_sub(first) as i64);
        self.warnings.lag(None, commit, applied, &self.logger);
    }

    fn on_tick(&mut self) {
        self.core.tick();
        if self.compactor.as_ref().is_some_and(|h| h.is_finished()) {
            self.compactor = None;
        }
        self.record_durable_index(Instant::now());
        self.disk.sample(self.core.replica().store().engine());
    }

    /// Every few seconds, records the applied index (its entries are in the synced log) in a
    /// file beside the database, so that a start from a rolled-back database is refused.
    fn record_durable_index(&mut self, now: Instant) {
        let applied = self.core.replica().applied_index();
        let (engine, logger) = (
            self.core.replica().store().engine().clone(),
            self.logger.clone(),
        );
        self.recorder.offer(
            now,
            || applied,
            move |applied| {
                if let Err(e) = engine.record_durable_index(applied) {
                    warn!(logger, "cannot record the durable index"; "index" => applied, "error" => %e);
                }
            },
        );
    }

    /// Reclaims the disk space of compacted log entries off the Raft task.
    fn compact_files(&mut self, below: u64) {
        if self.compactor.is_some() {
            return;
        }
        let engine = self.core.replica().store().engine().clone();
        self.compactor = std::thread::Builder::new()
            .name("log-compact".into())
            .spawn(move || engine.compact_log_files(below))
            .ok();
    }

    fn status(&self) -> NodeStatus {
        let r = self.core.replica();
        let leader_addr = self
            .leader_hint(r.leader_id())
            .map(|h| h.addr)
            .unwrap_or_default();
        group_status(r.id(), r, leader_addr)
    }
}

/// What a node of one group (a PD node) answers a request that names a region.
fn not_a_store(region_id: u64) -> RequestError {
    RequestError::InvalidArgument(format!(
        "region {region_id} was named, but this process has one Raft group and no regions"
    ))
}

/// The status of a process of one group (a PD node, or a config-file node's region 1) as node
/// `node_id` reports it, with its leader's client address.
pub(crate) fn group_status<S: crate::raft_core::LogStore, A: Application>(
    node_id: NodeId,
    r: &crate::raft_core::Replica<S, A>,
    leader_addr: String,
) -> NodeStatus {
    let (first_index, last_index) = r.log_bounds();
    NodeStatus {
        node_id,
        role: role_code(r.role()),
        term: r.term(),
        leader_id: r.leader_id(),
        leader_addr,
        commit_index: r.commit_index(),
        applied_index: r.applied_index(),
        first_index,
        last_index,
        followers: r.follower_progress(),
        regions: None,
    }
}

/// The `rdb_raft_role` value of a raft role.
pub(crate) fn role_metric(role: StateRole) -> i64 {
    match role {
        StateRole::Follower => 0,
        StateRole::Candidate => 1,
        StateRole::Leader => 2,
        StateRole::PreCandidate => 3,
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
