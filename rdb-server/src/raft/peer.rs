//! [`RaftPeer`]: `RawNode` + storage + state machine, driven one step at a time.

use std::collections::HashMap;
use std::time::Instant;

use raft::prelude::{HardState, Message as RaftMessage, ReadState, Snapshot};
use raft::{Config, ProgressState, RawNode, SnapshotStatus, StateRole};
use rdb_storage::{Applied, Engine, RaftStorage, StateMachine};
use slog::{debug, info, o, Logger};

use super::Transport;
use crate::config::{NodeId, Settings};

/// What one Ready cycle produced that the node task must act on.
#[derive(Debug, Default)]
pub struct ReadyOutput {
    /// Results of applied entries, in index order.
    pub applied: Vec<Applied>,
    /// ReadIndex answers: (context, read index).
    pub read_states: Vec<ReadState>,
    /// The new role, if it changed.
    pub role_changed: Option<StateRole>,
    /// The log was compacted below this index; its files can be compacted in the background.
    pub compacted_to: Option<u64>,
    /// A snapshot from the leader replaced the local state.
    pub snapshot_applied: bool,
}

/// A node's Raft state machine, free of I/O scheduling.
pub struct RaftPeer {
    raw: RawNode<RaftStorage>,
    sm: StateMachine,
    applied: u64,
    snapshot_threshold: u64,
    catch_up_entries: u64,
    /// Log length past which the leader compacts without waiting for slow followers.
    retained_log_cap: u64,
    /// Ticks so far, and the tick each peer was last heard from: raft-rs clears
    /// `recent_active` at every quorum check, so it alone cannot say who is alive.
    ticks: u64,
    last_heard: HashMap<NodeId, u64>,
    /// Ticks without a message after which a follower no longer holds back compaction.
    active_ticks: u64,
    /// Followers that received a snapshot and may still be installing it (silently: the
    /// install blocks their Raft thread): the snapshot index and the tick it was delivered.
    snapshot_delivered: HashMap<NodeId, (u64, u64)>,
    logger: Logger,
}

/// How many election timeouts a follower that received a snapshot may take to install it
/// while the leader keeps the log after the snapshot for it.
const INSTALL_GRACE_ELECTIONS: u64 = 30;

impl RaftPeer {
    /// Opens the peer over storage that was already bootstrapped or recovered.
    pub fn new(
        id: NodeId,
        storage: RaftStorage,
        settings: &Settings,
        logger: &Logger,
    ) -> Result<RaftPeer, crate::ServerError> {
        let engine = storage.engine().clone();
        let applied = engine.apply_state()?.index;
        let config = Config {
            id,
            election_tick: settings.election_ticks,
            heartbeat_tick: settings.heartbeat_ticks,
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
        config
            .validate()
            .map_err(|e| crate::ServerError::Raft(e.to_string()))?;
        // raft-rs adds `raft_id` to every line itself.
        let logger = logger.new(o!());
        let mut raw = RawNode::new(&config, storage, &logger)
            .map_err(|e| crate::ServerError::Raft(e.to_string()))?;
        // What was recovered from disk, before anything changes it.
        info!(logger, "raft peer started"; "applied" => applied,
            "term" => raw.raft.term, "vote" => raw.raft.vote, "commit" => raw.raft.raft_log.committed,
            "last_index" => raw.raft.raft_log.last_index());
        // A lone voter need not wait an election timeout to lead.
        if raw.raft.prs().conf().voters().ids().iter().eq([id]) {
            raw.campaign()
                .map_err(|e| crate::ServerError::Raft(e.to_string()))?;
        }
        let sm = StateMachine::new(engine, settings.dedup_window)?;
        Ok(RaftPeer {
            raw,
            sm,
            applied,
            snapshot_threshold: settings.snapshot_threshold,
            catch_up_entries: settings.catch_up_entries,
            retained_log_cap: settings.retained_log_cap(),
            ticks: 0,
            last_heard: HashMap::new(),
            active_ticks: settings.election_ticks as u64,
            snapshot_delivered: HashMap::new(),
            logger,
        })
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.raw.tick();
    }

    /// Feeds a message from a peer.
    pub fn step(&mut self, m: RaftMessage) -> raft::Result<()> {
        self.last_heard.insert(m.from, self.ticks);
        self.raw.step(m)
    }

    /// Proposes a command; on success returns the (index, term) its entry got.
    pub fn propose(&mut self, data: Vec<u8>) -> raft::Result<(u64, u64)> {
        let before = self.raw.raft.raft_log.last_index();
        self.raw.propose(Vec::new(), data)?;
        let index = self.raw.raft.raft_log.last_index();
        if index <= before {
            return Err(raft::Error::ProposalDropped);
        }
        Ok((index, self.raw.raft.term))
    }

    /// Starts a ReadIndex round; the answer arrives as a `ReadState` with this context.
    pub fn read_index(&mut self, ctx: Vec<u8>) {
        self.raw.read_index(ctx);
    }

    /// Tells raft whether a snapshot reached `to`, so it stops waiting on it.
    pub fn report_snapshot(&mut self, to: NodeId, ok: bool) {
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

    /// Tells raft a peer could not be reached, so it probes instead of pipelining.
    pub fn report_unreachable(&mut self, to: NodeId) {
        self.raw.report_unreachable(to);
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.raw.raft.id
    }

    /// Current role.
    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// Whether this node leads.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this node knows of, 0 for none.
    pub fn leader_id(&self) -> NodeId {
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

    /// Applied index (durable with the data it produced).
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// First and last index of the log.
    pub fn log_bounds(&self) -> (u64, u64) {
        let store = self.raw.store();
        (store.truncated().0 + 1, self.raw.raft.raft_log.last_index())
    }

    /// The voters of the group.
    pub fn voters(&self) -> Vec<NodeId> {
        self.raw.raft.prs().conf().voters().ids().iter().collect()
    }

    /// Results of hash points, for the service that answers `Hash`.
    pub fn hash_results(&self) -> rdb_storage::HashResults {
        self.sm.hashes()
    }

    /// The engine, for reads outside the Raft task.
    pub fn engine(&self) -> &Engine {
        self.sm.engine()
    }

    /// Runs one Ready cycle if raft has work, in raft-rs's documented order: send the leader's
    /// messages, install a snapshot, apply committed entries, persist entries and hard state in
    /// one synced batch, then send the messages that depended on it, then the light ready.
    ///
    /// Any storage error is returned and must be treated as fatal by the caller.
    pub fn handle_ready(
        &mut self,
        transport: &mut dyn Transport,
    ) -> Result<ReadyOutput, crate::ServerError> {
        let mut out = ReadyOutput::default();
        if !self.raw.has_ready() {
            return Ok(out);
        }
        let mut ready = self.raw.ready();

        // A leader may send appends before its own write (raft thesis 10.2.1).
        if !ready.messages().is_empty() {
            transport.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            // The Ready's hard state goes into the install's first batch, so term and vote on
            // disk always come from one hard state.
            let hs = ready.hs().cloned();
            self.install_snapshot(ready.snapshot(), hs.as_ref())?;
            out.snapshot_applied = true;
        }
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
        // Entries and hard state: one atomic batch, WAL synced, before anything depending on
        // them (votes, append responses, acknowledgements) leaves this node.
        if !ready.entries().is_empty() || ready.hs().is_some() {
            let hs = ready.hs().cloned();
            self.raw.mut_store().append(ready.entries(), hs.as_ref())?;
        }
        if !ready.persisted_messages().is_empty() {
            transport.send(ready.take_persisted_messages());
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        if !light.messages().is_empty() {
            transport.send(light.take_messages());
        }
        let committed = light.take_committed_entries();
        self.apply(&committed, &mut out)?;
        self.raw.advance_apply_to(self.applied);
        out.compacted_to = self.maybe_compact()?;
        Ok(out)
    }

    fn install_snapshot(
        &mut self,
        snap: &Snapshot,
        hs: Option<&HardState>,
    ) -> Result<(), crate::ServerError> {
        let meta = snap.get_metadata();
        info!(self.logger, "installing snapshot"; "index" => meta.index, "term" => meta.term);
        self.raw.mut_store().apply_snapshot(snap, hs)?;
        self.sm.reload()?;
        self.applied = meta.index;
        Ok(())
    }

    fn apply(
        &mut self,
        entries: &[raft::prelude::Entry],
        out: &mut ReadyOutput,
    ) -> Result<(), crate::ServerError> {
        // Entries at or below the applied index were installed by a snapshot in this cycle.
        let fresh: &[raft::prelude::Entry] =
            match entries.iter().position(|e| e.index > self.applied) {
                Some(i) => &entries[i..],
                None => return Ok(()),
            };
        if fresh.is_empty() {
            return Ok(());
        }
        let results = self.sm.apply(fresh)?;
        if let Some(last) = results.last() {
            self.applied = last.index;
        }
        out.applied.extend(results);
        Ok(())
    }

    /// Compacts the log once `snapshot_threshold` applied entries are in it, keeping
    /// `catch_up_entries`. A leader also keeps what the slowest live follower still needs (see
    /// [`RaftPeer::slowest_live_follower`]) unless the log is longer than `retained_log_cap`.
    /// Never past the applied index.
    fn maybe_compact(&mut self) -> Result<Option<u64>, crate::ServerError> {
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
        let started = Instant::now();
        self.raw.mut_store().compact(compact_to, self.applied)?;
        info!(self.logger, "log compacted"; "compact_to" => compact_to, "applied" => self.applied,
            "held_for" => held_for, "ms" => started.elapsed().as_millis() as u64);
        Ok(Some(compact_to))
    }

    /// Whether a message from `id` arrived within the last election timeout (in ticks).
    pub fn heard_lately(&self, id: NodeId) -> bool {
        self.last_heard
            .get(&id)
            .is_some_and(|&t| self.ticks.saturating_sub(t) <= self.active_ticks)
    }

    /// The follower still catching up that needs the oldest entry, and that entry's index.
    ///
    /// Counted: followers heard from within an election timeout, those raft-rs marks recently
    /// active, and those that received a snapshot lately (they are silent while installing it).
    /// What one has: its matched index, or the snapshot it is receiving or installing.
    fn slowest_live_follower(&mut self) -> Option<(NodeId, u64)> {
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

#[cfg(test)]
mod tests {
    //! Compaction against follower progress, on three in-process peers driven tick by tick.

    use std::sync::{Arc, Mutex};

    use prost::Message as _;
    use raft::prelude::MessageType;
    use rdb_proto::command::{command::Op, Command, Put};
    use rdb_storage::Ident;

    use super::*;

    #[derive(Clone, Default)]
    struct Net(Arc<Mutex<Vec<RaftMessage>>>);

    impl Transport for Net {
        fn send(&mut self, msgs: Vec<RaftMessage>) {
            self.0.lock().unwrap().extend(msgs);
        }
    }

    struct Group {
        peers: Vec<RaftPeer>,
        net: Net,
        _dirs: Vec<tempfile::TempDir>,
    }

    impl Group {
        fn new(max_retained_log_entries: u64) -> Group {
            let settings = Settings {
                snapshot_threshold: 20,
                catch_up_entries: 5,
                max_retained_log_entries,
                election_ticks: 10,
                heartbeat_ticks: 1,
                ..Settings::default()
            };
            let logger = slog::Logger::root(slog::Discard, slog::o!());
            let (mut peers, mut dirs) = (Vec::new(), Vec::new());
            for id in 1..=3 {
                let dir = tempfile::tempdir().unwrap();
                let engine = Engine::open(dir.path()).unwrap();
                engine
                    .bootstrap_or_check(
                        Ident {
                            cluster_id: 1,
                            node_id: id,
                        },
                        &[1, 2, 3],
                    )
                    .unwrap();
                let storage = RaftStorage::open(engine, logger.clone()).unwrap();
                peers.push(RaftPeer::new(id, storage, &settings, &logger).unwrap());
                dirs.push(dir);
            }
            Group {
                peers,
                net: Net::default(),
                _dirs: dirs,
            }
        }

        /// Runs Ready cycles and delivers messages until the group is quiet; `cut` drops some.
        fn pump(&mut self, cut: &dyn Fn(&RaftMessage) -> bool) {
            loop {
                for p in &mut self.peers {
                    p.handle_ready(&mut self.net).unwrap();
                }
                let msgs = std::mem::take(&mut *self.net.0.lock().unwrap());
                if msgs.is_empty() {
                    return;
                }
                for m in msgs.into_iter().filter(|m| !cut(m)) {
                    let to = m.to as usize - 1;
                    let _ = self.peers[to].step(m);
                }
            }
        }

        fn tick(&mut self, cut: &dyn Fn(&RaftMessage) -> bool) {
            for p in &mut self.peers {
                p.tick();
            }
            self.pump(cut);
        }

        fn leader(&mut self) -> usize {
            for _ in 0..500 {
                if let Some(i) = self.peers.iter().position(|p| p.is_leader()) {
                    return i;
                }
                self.tick(&|_| false);
            }
            panic!("no leader elected");
        }

        /// Proposes `n` puts on the leader, ticking between them.
        fn write(&mut self, leader: usize, n: usize, cut: &dyn Fn(&RaftMessage) -> bool) {
            for i in 0..n {
                let cmd = Command {
                    client_id: 0,
                    seq: 0,
                    op: Some(Op::Put(Put {
                        key: format!("k{i}").into(),
                        value: b"v".to_vec(),
                    })),
                };
                self.peers[leader].propose(cmd.encode_to_vec()).unwrap();
                self.pump(cut);
                self.tick(cut);
            }
        }

        fn matched(&self, leader: usize, id: NodeId) -> u64 {
            self.peers[leader].raw.raft.prs().get(id).unwrap().matched
        }

        fn first_index(&self, leader: usize) -> u64 {
            self.peers[leader].log_bounds().0
        }
    }

    /// Cuts appends to `f`: it stays live (heartbeats flow) but falls behind.
    fn appends_to(f: NodeId) -> impl Fn(&RaftMessage) -> bool {
        move |m| m.to == f && m.get_msg_type() == MessageType::MsgAppend
    }

    /// Cuts every message to and from `f`: it looks dead.
    fn all_of(f: NodeId) -> impl Fn(&RaftMessage) -> bool {
        move |m| m.to == f || m.from == f
    }

    #[test]
    fn the_leader_keeps_the_log_a_live_follower_needs_but_not_for_a_dead_one() {
        let mut g = Group::new(1000);
        let l = g.leader();
        let f = (l as u64 + 1) % 3 + 1;
        g.write(l, 5, &|_| false);
        let lag = appends_to(f);
        g.write(l, 60, &lag);
        let have = g.matched(l, f);
        assert!(g.peers[l].applied_index() > have + 40, "the follower lags");
        assert!(
            g.first_index(l) <= have + 1,
            "compacted past a live follower: first index {}, follower matched {have}",
            g.first_index(l)
        );
        // Once it is gone for longer than an election timeout, it no longer holds the log.
        let dead = all_of(f);
        for _ in 0..15 {
            g.tick(&dead);
        }
        g.write(l, 30, &dead);
        assert!(
            g.first_index(l) > have + 1,
            "a dead follower still holds the log at {}",
            g.first_index(l)
        );
        let applied = g.peers[l].applied_index();
        assert!(applied - g.first_index(l) < 25, "compacted as usual");
    }

    #[test]
    fn past_the_retained_log_cap_the_leader_compacts_for_no_one() {
        let mut g = Group::new(30);
        let l = g.leader();
        let f = (l as u64 + 1) % 3 + 1;
        g.write(l, 5, &|_| false);
        let lag = appends_to(f);
        g.write(l, 80, &lag);
        let have = g.matched(l, f);
        let (first, last) = g.peers[l].log_bounds();
        assert!(
            first > have + 1,
            "the cap let a live follower hold the log: first {first}, matched {have}"
        );
        assert!(
            last - first <= 31,
            "log bounded by the cap: {first}..{last}"
        );
    }
}
