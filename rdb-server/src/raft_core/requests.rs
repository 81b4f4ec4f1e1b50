//! [`Core`]: a replica plus the bookkeeping of client requests, as one synchronous state machine.
//!
//! Proposals are tracked by log index with the term they were proposed in. A client hears
//! success only when the entry at its index is applied *with that term*; if another entry took
//! the index, or this replica stops leading, the client gets `Indeterminate` (the write may
//! still commit under a new leader) and never a false success.
//!
//! Reads that arrive in one turn share one ReadIndex round; a read is answered once the round
//! confirmed leadership and the applied index reached the read index. raft-rs drops a
//! ReadIndex silently (no leader, or a new leader not yet committed in its term), so rounds
//! without an answer are re-issued after `read_retry_ticks`.

use std::collections::{BTreeMap, VecDeque};

use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Message};
use raft::StateRole;
use slog::{debug, warn, Logger};

use super::replica::{Persisting, ReadyOutput};
use super::{Application, CoreError, LogStore, MessageSink, Replica, ReplicaConfig};

/// The caller's handle for one client request; answers carry it back.
pub type RequestId = u64;

/// One answer: the request it is for, and its outcome.
pub type Reply<R> = (RequestId, Result<Answer<R>, Refusal>);

/// Why a request did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This replica does not lead; `leader` is the one it knows of (0 for none).
    NotLeader {
        /// The known leader, 0 if none.
        leader: u64,
    },
    /// Nothing was applied (no quorum in contact, proposal dropped). Safe to retry.
    Unavailable(String),
    /// Proposed, but the outcome is unknown. Retrying with the same request id is safe.
    Indeterminate(&'static str),
    /// The application refused the command (every replica refuses it alike).
    Rejected(String),
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<R> {
    /// The write applied, with this result.
    Written(R),
    /// Reading the local state is now linearizable: a quorum confirmed this replica led in
    /// `term` after the read arrived.
    ReadReady {
        /// The term in which leadership was confirmed.
        term: u64,
    },
    /// The membership change applied at `index`; the group's membership is now this.
    MembershipChanged {
        /// Log index of the change.
        index: u64,
        /// The membership it led to.
        membership: Membership,
    },
}

/// Who votes and who learns, as raft-rs's conf state says (sorted ids).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Voters (of the new half, in a joint configuration).
    pub voters: Vec<u64>,
    /// Voters of the old half while a joint configuration is being left; empty otherwise.
    pub voters_outgoing: Vec<u64>,
    /// Learners (and voters being demoted, which learn once the joint configuration is left).
    pub learners: Vec<u64>,
}

impl From<&ConfState> for Membership {
    fn from(cs: &ConfState) -> Membership {
        let sorted = |v: &[u64]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v
        };
        let mut learners = sorted(&cs.learners);
        learners.extend(cs.learners_next.iter().copied());
        learners.sort_unstable();
        Membership {
            voters: sorted(&cs.voters),
            voters_outgoing: sorted(&cs.voters_outgoing),
            learners,
        }
    }
}

/// One step of a membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberStep {
    /// Add a new node as a voter.
    AddVoter(u64),
    /// Add a new node as a learner.
    AddLearner(u64),
    /// Make a learner a voter.
    Promote(u64),
    /// Remove a voter or a learner.
    Remove(u64),
}

impl MemberStep {
    /// The node the step is about.
    pub fn id(&self) -> u64 {
        match *self {
            MemberStep::AddVoter(id)
            | MemberStep::AddLearner(id)
            | MemberStep::Promote(id)
            | MemberStep::Remove(id) => id,
        }
    }
}

/// A learner may be promoted once it holds this share of the leader's committed log (etcd's
/// rule, in tenths): a far-behind voter would count towards quorums it cannot serve.
const PROMOTE_READY_TENTHS: u64 = 9;

/// What [`Core::advance`] produced besides messages.
#[derive(Debug)]
pub struct Output<R> {
    /// Answers to requests, in the order they were decided.
    pub replies: Vec<Reply<R>>,
    /// The log was compacted below this index; the store may reclaim space in the background.
    pub compacted_to: Option<u64>,
    /// A snapshot replaced the local state this turn.
    pub snapshot_applied: bool,
    /// The membership changed this turn (a conf change applied, or a snapshot installed).
    pub membership_changed: bool,
    /// This replica was removed from the group: it must stop serving.
    pub removed: bool,
}

impl<R> Default for Output<R> {
    fn default() -> Self {
        Output {
            replies: Vec::new(),
            compacted_to: None,
            snapshot_applied: false,
            membership_changed: false,
            removed: false,
        }
    }
}

/// Settings of a [`Core`].
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Settings of the replica inside.
    pub replica: ReplicaConfig,
    /// Ticks after which a ReadIndex round without an answer is issued again.
    pub read_retry_ticks: u64,
    /// Deliberate bugs, for proving the simulation catches them. All off in the server.
    pub planted: PlantedBugs,
    /// Distinguishes this life of the replica in ReadIndex contexts (random in the server,
    /// drawn from the seed in the simulation).
    pub read_ctx_salt: u64,
}

/// Deliberate bugs a test can switch on to show the simulation catches them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// Persist the log without syncing it, so votes, append responses and acknowledgements
    /// can leave before their entries are durable.
    pub ack_before_sync: bool,
    /// Answer a read as soon as this replica believes it leads, without a ReadIndex round.
    pub read_without_index: bool,
    /// A follower answers a read as soon as the leader gives the read index, without waiting
    /// to apply that far.
    pub follower_read_before_apply: bool,
}

struct ReadRound {
    issued: u64,
    term: u64,
    waiters: Vec<RequestId>,
    /// Times the round was issued; a follower gives up after [`FOLLOWER_READ_TRIES`].
    tries: u32,
}

/// How many times a follower issues a read round before refusing its reads: the leader it
/// forwards to may be gone, and it cannot tell.
const FOLLOWER_READ_TRIES: u32 = 3;

/// The synchronous node logic: feed it inputs, call [`Core::advance`], act on the output.
pub struct Core<S: LogStore, A: Application> {
    replica: Replica<S, A>,
    ticks: u64,
    read_retry_ticks: u64,
    planted: PlantedBugs,
    /// Writes waiting for their entry to apply: index -> (term proposed in, request).
    proposals: BTreeMap<u64, (u64, RequestId)>,
    reads_new: Vec<RequestId>,
    reads_inflight: BTreeMap<u64, ReadRound>,
    reads_wait_apply: VecDeque<(u64, u64, Vec<RequestId>)>,
    next_read_ctx: u64,
    /// Answers decided outside `advance` (refusals on arrival), returned by the next one.
    pending: Vec<Reply<A::Output>>,
    voters: Vec<u64>,
    read_ctx_salt: u64,
    /// Peer messages refused before raft-rs saw them (see [`Core::step`]).
    refused: u64,
    logger: Logger,
}

impl<S: LogStore, A: Application> Core<S, A> {
    /// A core over stores that were already bootstrapped or recovered.
    pub fn new(cfg: &CoreConfig, store: S, app: A, logger: &Logger) -> Result<Self, CoreError> {
        let mut replica = Replica::new(&cfg.replica, store, app, logger)?;
        replica.set_sync_log(!cfg.planted.ack_before_sync);
        let voters = replica.voters();
        Ok(Core {
            replica,
            ticks: 0,
            read_retry_ticks: cfg.read_retry_ticks.max(1),
            planted: cfg.planted,
            proposals: BTreeMap::new(),
            reads_new: Vec::new(),
            reads_inflight: BTreeMap::new(),
            reads_wait_apply: VecDeque::new(),
            next_read_ctx: 1,
            pending: Vec::new(),
            voters,
            read_ctx_salt: cfg.read_ctx_salt,
            refused: 0,
            logger: logger.clone(),
        })
    }

    /// The application, to take what it recorded for the caller (a store's splits).
    pub fn app_mut(&mut self) -> &mut A {
        self.replica.app_mut()
    }

    /// Starts an election now (a split's new region, on the store that led its parent).
    pub fn campaign(&mut self) -> Result<(), CoreError> {
        Ok(self.replica.campaign()?)
    }

    /// The replica inside, for status and for reads of its stores.
    pub fn replica(&self) -> &Replica<S, A> {
        &self.replica
    }

    /// Advances logical time by one tick, and re-issues read rounds that got no answer.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.replica.tick();
        let stale: Vec<u64> = self
            .reads_inflight
            .iter()
            .filter(|(_, r)| self.ticks.saturating_sub(r.issued) >= self.read_retry_ticks)
            .map(|(&ctx, _)| ctx)
            .collect();
        for ctx in stale {
            let Some(round) = self.reads_inflight.remove(&ctx) else {
                continue;
            };
            match self.read_check() {
                Ok(()) if self.replica.is_leader() || round.tries < FOLLOWER_READ_TRIES => {
                    self.start_read_round(round.waiters, round.tries + 1)
                }
                Ok(()) => self.refuse_all(
                    round.waiters,
                    Refusal::Unavailable("the leader did not confirm a follower's read".into()),
                ),
                Err(e) => self.refuse_all(round.waiters, e),
            }
        }
    }

    /// Feeds a message from a peer; false if it was refused before raft-rs saw it (see
    /// [`super::Replica::refusal`]: no legitimate peer sends such a message).
    pub fn step(&mut self, m: Message) -> bool {
        let (from, ty, term) = (m.from, m.get_msg_type(), m.term);
        if let Some(why) = self.replica.refusal(&m) {
            self.refused += 1;
            // The first one is worth a warning; a flood of them is not worth a line each.
            if self.refused.is_power_of_two() {
                warn!(self.logger, "refused a peer message"; "from" => from, "type" => ?ty,
                    "term" => term, "why" => why, "refused_so_far" => self.refused);
            }
            return false;
        }
        if let Err(e) = self.replica.step(m) {
            debug!(self.logger, "step failed"; "from" => from, "type" => ?ty, "error" => %e);
        }
        true
    }

    /// Proposes an encoded command for request `id`.
    pub fn propose(&mut self, id: RequestId, data: Vec<u8>) {
        if let Err(e) = self.leader_check() {
            self.pending.push((id, Err(e)));
            return;
        }
        let proposed = self.replica.propose(data);
        self.track(id, proposed);
    }

    /// Tells this replica its group committed up to `index` (see [`Replica::learn_commit`]).
    pub fn learn_commit(&mut self, index: u64) {
        self.replica.learn_commit(index);
    }

    /// Waits for request `id`'s entry at (index, term), or refuses it if raft dropped it.
    fn track(&mut self, id: RequestId, proposed: raft::Result<(u64, u64)>) {
        match proposed {
            Ok((index, term)) => {
                // An older waiter at this index lost its entry to this one.
                if let Some((_, old)) = self.proposals.insert(index, (term, id)) {
                    self.pending.push((
                        old,
                        Err(Refusal::Indeterminate(
                            "entry was replaced by a newer leader",
                        )),
                    ));
                }
            }
            Err(e) => self.pending.push((
                id,
                Err(Refusal::Unavailable(format!("proposal dropped: {e}"))),
            )),
        }
    }

    /// Asks for a linearizable read barrier for request `id`.
    pub fn read(&mut self, id: RequestId) {
        if self.planted.read_without_index && self.replica.is_leader() {
            let term = self.replica.term();
            self.pending.push((id, Ok(Answer::ReadReady { term })));
            return;
        }
        match self.read_check() {
            Ok(()) => self.reads_new.push(id),
            Err(e) => self.pending.push((id, Err(e))),
        }
    }

    /// Ok if this replica may start a read round: it leads with a quorum, or (for an
    /// application that allows it, [`Application::FOLLOWER_READS`]) it is a member that knows a
    /// leader, which its ReadIndex request is forwarded to.
    fn read_check(&self) -> Result<(), Refusal> {
        if self.replica.is_installing() {
            return Err(match self.replica.leader_id() {
                0 => Refusal::Unavailable("a snapshot is being installed here".into()),
                leader => Refusal::NotLeader { leader },
            });
        }
        if self.replica.is_leader() || !A::FOLLOWER_READS {
            return self.leader_check();
        }
        match self.replica.leader_id() {
            0 => Err(Refusal::Unavailable("no leader is known".into())),
            _ if !self.replica.is_member() => Err(Refusal::Unavailable(
                "this node is not a member of the group".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Starts handing leadership to voter `to`; refused unless this replica leads and `to` is
    /// another voter.
    pub fn transfer_leader(&mut self, to: u64) -> Result<(), Refusal> {
        self.leader_check()?;
        if to == self.replica.id() {
            return Err(Refusal::Rejected(format!("node {to} already leads")));
        }
        if !self.voters.contains(&to) {
            return Err(Refusal::Rejected(format!(
                "node {to} is not a voter (voters: {:?})",
                self.voters
            )));
        }
        self.replica.transfer_leader(to);
        Ok(())
    }

    /// Proposes the membership change `steps` for request `id`, with `context` (the added
    /// nodes' addresses, for the application) in the entry. One step is a simple change; a
    /// change of several voters runs as joint consensus, left automatically once applied.
    ///
    /// Refused unless this replica leads with a quorum, no other change is in flight, every
    /// step fits the current membership, and a promoted learner has caught up. A change that
    /// removes the leader first hands leadership to the most caught-up remaining voter and is
    /// refused as `Unavailable` (retry it with the new leader).
    pub fn change_membership(&mut self, id: RequestId, steps: &[MemberStep], context: Vec<u8>) {
        if let Err(e) = self.check_membership_change(steps) {
            self.pending.push((id, Err(e)));
            return;
        }
        let changes = steps
            .iter()
            .map(|step| {
                let mut c = ConfChangeSingle {
                    node_id: step.id(),
                    ..Default::default()
                };
                c.set_change_type(match step {
                    MemberStep::AddVoter(_) | MemberStep::Promote(_) => ConfChangeType::AddNode,
                    MemberStep::AddLearner(_) => ConfChangeType::AddLearnerNode,
                    MemberStep::Remove(_) => ConfChangeType::RemoveNode,
                });
                c
            })
            .collect();
        let cc = ConfChangeV2 {
            changes,
            context: context.into(),
            ..Default::default()
        };
        let proposed = self.replica.propose_conf_change(cc);
        self.track(id, proposed);
    }

    fn check_membership_change(&mut self, steps: &[MemberStep]) -> Result<(), Refusal> {
        self.leader_check()?;
        if steps.is_empty() {
            return Err(Refusal::Rejected("no membership change given".into()));
        }
        if self.replica.has_pending_conf() {
            return Err(Refusal::Unavailable(
                "another membership change is still being applied".into(),
            ));
        }
        let r = &self.replica;
        let mut seen = Vec::new();
        for step in steps {
            let id = step.id();
            if id == 0 || seen.contains(&id) {
                return Err(Refusal::Rejected(format!(
                    "node id {id} is zero or appears twice in one change"
                )));
            }
            seen.push(id);
            let member = r.is_voter(id) || r.is_learner(id);
            match step {
                MemberStep::AddVoter(_) | MemberStep::AddLearner(_) if member => {
                    return Err(Refusal::Rejected(format!("node {id} is already a member")));
                }
                MemberStep::Promote(_) if !r.is_learner(id) => {
                    return Err(Refusal::Rejected(format!("node {id} is not a learner")));
                }
                MemberStep::Promote(_) => {
                    let matched = r.matched(id).unwrap_or(0);
                    let commit = r.commit_index();
                    if matched * 10 < commit * PROMOTE_READY_TENTHS {
                        return Err(Refusal::Rejected(format!(
                            "learner {id} is not caught up: it has the log to index {matched} of \
                             {commit}; promote it once it has at least 90%"
                        )));
                    }
                }
                MemberStep::Remove(_) if !member => {
                    return Err(Refusal::Rejected(format!("node {id} is not a member")));
                }
                _ => {}
            }
        }
        let removed = |v: &u64| steps.contains(&MemberStep::Remove(*v));
        let remaining: Vec<u64> = self
            .voters
            .iter()
            .copied()
            .filter(|v| !removed(v))
            .collect();
        let added = steps
            .iter()
            .any(|s| matches!(s, MemberStep::AddVoter(_) | MemberStep::Promote(_)));
        if remaining.is_empty() && !added {
            return Err(Refusal::Rejected(
                "a change may not remove every voter".into(),
            ));
        }
        let me = self.replica.id();
        if removed(&me) {
            // raft-rs keeps a removed leader leading; hand over first, so the change is made
            // by a leader that stays.
            let to = self
                .replica
                .follower_progress()
                .into_iter()
                .filter(|(id, _)| remaining.contains(id))
                .max_by_key(|&(_, matched)| matched)
                .map(|(id, _)| id)
                .ok_or_else(|| Refusal::Rejected("no other voter to hand leadership to".into()))?;
            self.replica.transfer_leader(to);
            return Err(Refusal::Unavailable(format!(
                "node {me} leads: leadership moves to node {to} before {me} is removed; retry"
            )));
        }
        Ok(())
    }

    /// The transport finished (or failed) sending a snapshot to `to`.
    pub fn report_snapshot(&mut self, to: u64, ok: bool) {
        self.replica.report_snapshot(to, ok);
    }

    /// The transport cannot reach `to`.
    pub fn report_unreachable(&mut self, to: u64) {
        self.replica.report_unreachable(to);
    }

    /// Ok if this replica leads and has heard from a quorum within an election timeout, so a
    /// proposal has a chance to commit. Otherwise the refusal the client should see.
    pub fn leader_check(&self) -> Result<(), Refusal> {
        if !self.replica.is_leader() {
            return Err(match self.replica.leader_id() {
                0 => Refusal::Unavailable("no leader is known".into()),
                leader => Refusal::NotLeader { leader },
            });
        }
        let me = self.replica.id();
        let active = self
            .voters
            .iter()
            .filter(|&&v| v == me || self.replica.heard_lately(v))
            .count();
        if active * 2 <= self.voters.len() {
            return Err(Refusal::Unavailable(format!(
                "leader is in contact with {active} of {} nodes, no quorum",
                self.voters.len()
            )));
        }
        Ok(())
    }

    /// Runs a turn: one ReadIndex round for the reads that arrived, one Ready cycle (persist,
    /// apply, send through `sink`), then the answers it decided.
    ///
    /// A storage error is returned and must end the replica: it cannot persist.
    pub fn advance(&mut self, sink: &mut dyn MessageSink) -> Result<Output<A::Output>, CoreError> {
        let p = self.begin_advance(sink, true)?;
        self.finish_advance(p, sink)
    }

    /// The first half of [`Core::advance`]: the read round and the Ready's write, synced now
    /// or owed by the caller (see [`Replica::begin_ready`]).
    pub fn begin_advance(
        &mut self,
        sink: &mut dyn MessageSink,
        sync_now: bool,
    ) -> Result<Option<Persisting<A::Output>>, CoreError> {
        if !self.reads_new.is_empty() {
            let waiters = std::mem::take(&mut self.reads_new);
            self.start_read_round(waiters, 1);
        }
        self.replica.begin_ready(sink, sync_now)
    }

    /// The second half of [`Core::advance`], once the write of `begin_advance` is durable.
    pub fn finish_advance(
        &mut self,
        p: Option<Persisting<A::Output>>,
        sink: &mut dyn MessageSink,
    ) -> Result<Output<A::Output>, CoreError> {
        let ready = match p {
            Some(p) => self.replica.finish_ready(p, sink)?,
            None => ReadyOutput::default(),
        };
        let mut out = Output {
            replies: std::mem::take(&mut self.pending),
            compacted_to: ready.compacted_to,
            snapshot_applied: ready.snapshot_applied,
            membership_changed: ready.snapshot_applied || !ready.conf_changes.is_empty(),
            removed: ready.removed,
        };
        if out.membership_changed {
            self.voters = self.replica.voters();
        }
        if self.replica.is_installing() {
            // A snapshot replaces the state in the background (it started this turn, or goes
            // on): nothing in flight is answered from here until it is over, and a follower
            // has no writes of its own in flight.
            self.step_down(&mut out);
        }
        self.after_ready(ready, &mut out);
        Ok(out)
    }

    fn start_read_round(&mut self, waiters: Vec<RequestId>, tries: u32) {
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        // The leader keys pending rounds by context, followers' and its own alike: the
        // context names this replica and this life of it, so no two ever collide there (a
        // collision would answer one round with another's, older, read index).
        let mut bytes = Vec::with_capacity(24);
        bytes.extend_from_slice(&self.replica.id().to_be_bytes());
        bytes.extend_from_slice(&self.read_ctx_salt.to_be_bytes());
        bytes.extend_from_slice(&ctx.to_be_bytes());
        self.replica.read_index(bytes);
        self.reads_inflight.insert(
            ctx,
            ReadRound {
                issued: self.ticks,
                term: self.replica.term(),
                waiters,
                tries,
            },
        );
    }

    /// The round number in a read context this replica made in this life, if it is one.
    fn own_read_ctx(&self, bytes: &[u8]) -> Option<u64> {
        let word = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
        };
        if bytes.len() != 24 || word(0)? != self.replica.id() || word(1)? != self.read_ctx_salt {
            return None;
        }
        word(2)
    }

    fn refuse_all(&mut self, ids: Vec<RequestId>, e: Refusal) {
        self.pending
            .extend(ids.into_iter().map(|id| (id, Err(e.clone()))));
    }

    fn after_ready(&mut self, ready: ReadyOutput<A::Output>, out: &mut Output<A::Output>) {
        let mut conf_changes: BTreeMap<u64, Result<ConfState, String>> =
            ready.conf_changes.into_iter().collect();
        for a in ready.applied {
            let Some((term, id)) = self.proposals.remove(&a.index) else {
                continue;
            };
            let conf_change = conf_changes.remove(&a.index);
            let reply = if term != a.term {
                Err(Refusal::Indeterminate(
                    "entry was replaced by a newer leader",
                ))
            } else if let Some(changed) = conf_change {
                match changed {
                    Ok(cs) => Ok(Answer::MembershipChanged {
                        index: a.index,
                        membership: Membership::from(&cs),
                    }),
                    Err(e) => Err(Refusal::Rejected(e)),
                }
            } else {
                match a.result {
                    Some(Ok(r)) => Ok(Answer::Written(r)),
                    Some(Err(e)) => Err(Refusal::Rejected(e)),
                    None => Err(Refusal::Indeterminate("entry was not a command")),
                }
            };
            out.replies.push((id, reply));
        }
        // Entries below the applied index that we still wait for can no longer apply at
        // their index with our term (only after a snapshot jumped past them).
        let applied = self.replica.applied_index();
        while let Some(entry) = self.proposals.first_entry() {
            if *entry.key() > applied {
                break;
            }
            let (_, id) = entry.remove();
            out.replies.push((
                id,
                Err(Refusal::Indeterminate("state was replaced by a snapshot")),
            ));
        }
        for rs in ready.read_states {
            let Some(ctx) = self.own_read_ctx(&rs.request_ctx) else {
                continue;
            };
            if let Some(round) = self.reads_inflight.remove(&ctx) {
                let index = if self.planted.follower_read_before_apply && !self.replica.is_leader()
                {
                    0
                } else {
                    rs.index
                };
                self.reads_wait_apply
                    .push_back((index, round.term, round.waiters));
            }
        }
        while self
            .reads_wait_apply
            .front()
            .is_some_and(|(index, _, _)| *index <= applied)
        {
            if let Some((_, term, waiters)) = self.reads_wait_apply.pop_front() {
                out.replies.extend(
                    waiters
                        .into_iter()
                        .map(|id| (id, Ok(Answer::ReadReady { term }))),
                );
            }
        }
        if let Some(role) = ready.role_changed {
            if role != StateRole::Leader {
                self.step_down(out);
            }
        }
    }

    /// Leadership is lost: writes in flight may or may not commit; reads must go elsewhere.
    fn step_down(&mut self, out: &mut Output<A::Output>) {
        if !self.proposals.is_empty() {
            warn!(self.logger, "lost leadership with writes in flight";
                "count" => self.proposals.len(), "term" => self.replica.term());
        }
        for (_, (_, id)) in std::mem::take(&mut self.proposals) {
            out.replies.push((
                id,
                Err(Refusal::Indeterminate(
                    "leadership changed before the write committed",
                )),
            ));
        }
        let err = match self.replica.leader_id() {
            0 => Refusal::Unavailable("leadership changed".into()),
            leader => Refusal::NotLeader { leader },
        };
        let inflight = std::mem::take(&mut self.reads_inflight)
            .into_values()
            .flat_map(|r| r.waiters);
        let waiting = std::mem::take(&mut self.reads_wait_apply)
            .into_iter()
            .flat_map(|(_, _, w)| w);
        let ids: Vec<RequestId> = inflight
            .chain(waiting)
            .chain(std::mem::take(&mut self.reads_new))
            .collect();
        out.replies
            .extend(ids.into_iter().map(|id| (id, Err(err.clone()))));
    }
}
